"""The copy engine: one source image (all platforms, exact bytes, its referrers) to its targets.

Owns the result of a copy (``results``), a target as the engine knows it (``destination``), the
validated source tree (``tree``), a target's rules applied to it (``narrowing``), blobs (``blobs``:
every descriptor checked, then placed; ``uploads``: verified uploads, one source read for all
targets), manifest pushes and refusals (``manifests``), writes whose answer contradicts what was
verified (``pushing``), referrers at the source and referrers tags at targets (``referrers``),
referrers after their subject (``following``), what a target is known to hold (``ledger``), and
the copier that runs them in order (``copier``). Knows nothing of catalogs, plans or reports. May
import ``sync_core.config``, ``sync_core.registry``, ``errors`` and ``logs``.
"""
