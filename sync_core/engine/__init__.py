"""The copy engine: one source image (all platforms, exact bytes, its referrers) to its targets.

Owns the result of a copy (``results``), a target as the engine knows it (``destination``), the
validated source tree (``tree``), a target's rules applied to it (``narrowing``), blobs
(``blobs``), manifest pushes and refusals (``manifests``), referrers at the source and referrers
tags at targets (``referrers``), what a target is known to hold (``ledger``), and the copier that
runs them in order (``copier``). Knows nothing of catalogs, plans or reports. May import
``sync_core.config``, ``sync_core.registry``, ``errors`` and ``logs``.
"""
