"""The JSON Schema of the configuration file, built from the declaration (:data:`SETTINGS`).

Each setting the file may hold is a property with its parser's schema fragment, its ``help`` as the
description and its default. The repository ships the result as ``config.schema.json`` (written by
scripts/config-schema.py; a test keeps it equal to :func:`schema_text`) so that editors validate and
complete configuration files. The schema describes the file's plain form: the loader also takes keys
in upper case and numbers or booleans written as strings (as the environment gives them), and it
checks what a schema cannot (valid regular expressions and version ranges, pairs of credentials,
the age filters against the source's kind, unique target names).
"""

from __future__ import annotations

import copy
import enum
import json
from typing import Any

from sync_core.config.model import ReferrerPolicy
from sync_core.config.settings import (
    ENV_TARGET_KEYS,
    GLOBAL_SETTINGS,
    TARGET_BY_KEY,
    TARGET_SETTINGS,
    Setting,
    documented_default,
)

#: Where the repository ships the schema (relative to its root).
SCHEMA_FILE = "config.schema.json"

_DRAFT = "http://json-schema.org/draft-07/schema#"  # the newest draft editors' YAML support reads fully


def config_schema() -> dict[str, Any]:
    """The schema of a configuration file (``SYNC_CONFIG``)."""
    properties = {s.key: _property(s) for s in GLOBAL_SETTINGS if s.in_file}
    properties["targets"] = {
        "description": "the mirrors, each with its own name, credentials, filters and rules",
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {s.key: _property(s) for s in TARGET_SETTINGS if s.in_file},
            "required": [s.key for s in TARGET_SETTINGS if s.in_file and s.required],
            "additionalProperties": False,
        },
    }
    for key in sorted(ENV_TARGET_KEYS, key=[s.key for s in TARGET_SETTINGS].index):
        setting = TARGET_BY_KEY[key]
        if setting.in_file:
            single = _property(setting)
            single["description"] = f"without `targets`, the one target's `{key}`: {single['description']}"
            properties[f"target_{key}"] = single
    return {
        "$schema": _DRAFT,
        "$comment": "Generated from sync_core/config/settings.py by scripts/config-schema.py: do not edit.",
        "title": "registry-sync configuration file",
        "description": "Settings of registry-sync (SYNC_CONFIG / --config); file values win over the "
        "environment's. Passwords are never in the file: name Key Vault secrets or environment variables.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


def schema_text() -> str:
    """:func:`config_schema` as the shipped file holds it."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def _property(setting: Setting) -> dict[str, Any]:
    documented = "required" if setting.required else f"default: {documented_default(setting)}"
    description = setting.help if documented == "default: none" else f"{setting.help} ({documented})"
    schema: dict[str, Any] = {"description": description, **copy.deepcopy(dict(setting.parse.schema))}
    default = file_default(setting)
    if default is not None:
        schema["default"] = default
    return schema


def file_default(setting: Setting) -> Any:
    """The declared default as a file would write it; None where there is none or it means "not set"."""
    value = setting.default
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, ReferrerPolicy):
        if value.types is not None:
            return sorted(value.types)
        return "all" if value.enabled else "none"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value in (None, "", (), frozenset()):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{setting.key}: no file form for the default {value!r}")
