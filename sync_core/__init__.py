"""registry-sync core: mirror images between OCI registries."""
