"""The configuration: what the run is told, and where its credentials come from.

Owns the plain model the rest of the core reads (``model``), every setting declared once with
its parser and documentation (``settings``, ``parsers``), the JSON Schema of the configuration
file built from that declaration (``schema``), what is known of particular registries
(``registries``), loading from the environment and a file (``load``), and credentials from Key
Vault or the environment (``secrets``). May import ``sync_core.registry`` (names, credential
types), ``errors`` and ``logs``.

Why not pydantic: it would replace little and change the messages. Most parsers do work it has no
type for (registry URLs, repository names, a list or a comma-separated string, case-insensitive
choices, regular expressions, npm version ranges, platforms, mapping templates, referrer policies),
so each would become a custom validator wrapping the same function, with its JSON Schema still
written by hand. Its errors are located by index (``targets.0.max_path_depth``) and worded its own
way, while ours name the setting as the user wrote it (``TARGET_REGISTRY``, ``targets[hub].registry``)
and every message would need translating back. The environment's ``TARGET_*`` target, file values
over the environment and the checks across settings stay hand-written either way; the dependency
(with its compiled core, in the Functions package) would buy nothing.
"""
