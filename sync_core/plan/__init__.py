"""Planning: what each target should have, what it lacks, and in what order to copy it.

Owns the work items and their kinds (``work``), the filters (``selection``), name mapping
(``mapping``), the source catalog and tag listings (``catalog``) and the diff against each
target (``planner``), which reports what it finds to a ``Findings`` (the run's recorder). May
import ``sync_core.engine`` (what the planner tells the copier about a target),
``sync_core.config``, ``sync_core.registry``, ``errors`` and ``logs``.
"""
