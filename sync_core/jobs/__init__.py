"""The jobs: registry clients for one configuration, planning, copying, verifying, checking.

Owns the sync job (``syncer``: the clients and copier built once per process, plan then
execute), ``verify`` (is every selected tag and referrer at each target; what it finds:
``verify_findings``) and ``check`` (before
the first sync, what each registry allows: ``check`` runs ``check_source``, ``check_names`` and
``check_targets``, whose rows are ``check_findings`` and ``check_rate``). May import every layer
below: ``report``, ``plan``, ``engine``, ``config``, ``registry``, ``errors``, ``logs``.
"""
