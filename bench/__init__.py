"""Benchmark tooling for registry-sync (latency simulation, load drivers)."""
