"""The jobs: registry clients for one configuration, planning, copying, verifying.

Owns the sync job (``syncer``: the clients and copier built once per process, plan then
execute) and ``verify`` (is every selected tag and referrer at each target; what it finds:
``findings``). May import every
layer below: ``report``, ``plan``, ``engine``, ``config``, ``registry``, ``errors``, ``logs``.
"""
