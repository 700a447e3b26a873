"""The registry client stack: everything about talking to one OCI registry, nothing about mirroring.

Owns the reference grammar (``names``), untrusted JSON (``jsondoc``), manifest parsing
(``manifest``), the one retry loop (``retry``), HTTP with safe redirects (``transport``),
authentication (``auth``), the OCI Distribution API calls (``client``) and verified byte
streams (``stream``). A request goes client -> auth -> transport. May import only
``sync_core.errors`` and ``sync_core.logs``.
"""
