"""What a run did: counted, logged as decisions, measured.

Owns the summary (``summary``: counts per target and in total, typed skips and failures), the
recorder every outcome goes through (``recorder``) and the OpenTelemetry instruments
(``metrics``). May import ``sync_core.plan`` (work items), ``sync_core.engine`` (results),
``sync_core.config``, ``sync_core.registry``, ``errors`` and ``logs``.
"""
