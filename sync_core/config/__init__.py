"""The configuration: what the run is told, and where its credentials come from.

Owns the plain model the rest of the core reads (``model``), every setting declared once with
its parser and documentation (``settings``), what is known of particular registries
(``registries``), loading from the environment and a file (``load``), and credentials from Key
Vault or the environment (``secrets``). May import ``sync_core.registry`` (names, credential
types), ``errors`` and ``logs``.
"""
