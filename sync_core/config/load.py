"""Loading the configuration from the environment (app settings) and a YAML/JSON file (``SYNC_CONFIG``).

File values win over the environment for the same setting. Every problem is collected and
reported at once (:class:`~sync_core.errors.ConfigError`), each prefixed with the setting it
concerns. Passwords are never read from the configuration file itself: a file names a Key Vault
secret (``password_secret``) or an environment variable (``password_env``) instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sync_core.config.model import (
    CredentialSpec,
    Filters,
    SourceConfig,
    SourceKind,
    SyncConfig,
    TargetConfig,
    TargetRules,
)
from sync_core.config.parsers import Problems, parse_target_name
from sync_core.config.registries import GENERIC_DEFAULTS, default_path_depth, default_request_limits
from sync_core.config.settings import ENV_TARGET_KEYS, GLOBAL_BY_KEY, TARGET_BY_KEY, TARGET_SETTINGS, Setting
from sync_core.errors import ConfigError

# -- loading --------------------------------------------------------------------------------------


def _get(values: Mapping[str, Any], key: str) -> Any:
    value = values.get(key)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _read(values: Mapping[str, Any], setting: Setting, name: str, problems: Problems) -> Any:
    """The parsed value of ``setting`` in ``values`` (keys lower case), or its default."""
    raw = _get(values, setting.key)
    if raw is None:
        if setting.required:
            problems.add(name, setting.required)
        return setting.default
    value = setting.parse(raw, name, problems)
    return setting.default if value is None else value


def _read_filters(values: Mapping[str, Any], prefix: str, problems: Problems) -> Filters:
    """Filters from keys such as ``tag_include``; ``prefix`` names the settings in messages."""

    def read(key: str) -> Any:
        setting = GLOBAL_BY_KEY[key]
        return _read(values, setting, f"{prefix}{key}" if prefix else key.upper(), problems)

    filters = Filters(
        repository_include=read("repository_include"),
        repository_exclude=read("repository_exclude"),
        tag_include=read("tag_include"),
        tag_exclude=read("tag_exclude"),
        min_age_days=read("tag_min_age_days"),
        max_age_days=read("tag_max_age_days"),
        keep_latest=read("tag_keep_latest"),
        semver=read("tag_semver"),
    )
    if (
        filters.min_age_days is not None
        and filters.max_age_days is not None
        and filters.min_age_days > filters.max_age_days
    ):
        name = f"{prefix}tag_min_age_days" if prefix else "TAG_MIN_AGE_DAYS"
        problems.add(name, "is greater than TAG_MAX_AGE_DAYS: no tag could pass")
    return filters


def _credentials(
    values: Mapping[str, Any],
    name: Callable[[str], str],
    problems: Problems,
    env: Mapping[str, str],
    file_mode: bool,
) -> CredentialSpec:
    """``values`` holds ``username``, ``password``, ``*_secret`` (and ``*_env`` in a file)."""
    username, password = _get(values, "username"), _get(values, "password")
    if file_mode:
        if password is not None:
            problems.add(
                name("password"),
                "passwords are not read from the configuration file; use password_secret (Key Vault) or password_env",
            )
            password = None
        for part in ("username", "password"):
            env_name = _get(values, f"{part}_env")
            if env_name is None:
                continue
            if not isinstance(env_name, str) or env_name not in env:
                problems.add(name(f"{part}_env"), f"environment variable {env_name!r} is not set")
            elif part == "username":
                username = env[env_name]
            else:
                password = env[env_name]
    spec = CredentialSpec(
        username=username if isinstance(username, str) else None,
        password=password if isinstance(password, str) else None,
        username_secret=_get(values, "username_secret"),
        password_secret=_get(values, "password_secret"),
    )
    if bool(spec.username_secret) != bool(spec.password_secret):
        problems.add(name("password_secret"), "give both the username and the password secret names")
    elif not spec.from_key_vault and bool(spec.username) != bool(spec.password):
        problems.add(name("password"), "give both a username and a password, or neither (anonymous)")
    return spec


def _lower_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in values.items()}


def _strip_prefix(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}


def load_config(env: Mapping[str, str] | None = None, path: str | None = None) -> SyncConfig:
    """Build the configuration from the environment and, if named, a YAML/JSON file.

    File values win over environment values for the same setting. Raises :class:`ConfigError`
    listing every problem found.
    """
    env = dict(os.environ if env is None else env)
    problems = Problems()
    settings: dict[str, Any] = _lower_keys(env)
    file_targets = None
    path = path or _get(settings, "sync_config")
    if path:
        data = _read_file(path, problems)
        if data is not None:
            data = _lower_keys(data)
            file_targets = data.pop("targets", None)
            _check_file_keys(data, problems)
            settings.update(data)

    def read(key: str) -> Any:
        setting = GLOBAL_BY_KEY[key]
        return _read(settings, setting, setting.env_name if setting.in_env else setting.key, problems)

    source_registry = read("source_registry")
    kind = read("source_kind")
    if kind is None and source_registry:
        kind = (
            SourceKind.ACR
            if (urlsplit(source_registry).hostname or "").endswith(".azurecr.io")
            else SourceKind.OCI
        )
    source = SourceConfig(
        registry=source_registry or "",
        kind=kind or SourceKind.OCI,
        namespace=read("source_namespace"),
        repositories=read("source_repositories"),
        allow_empty=bool(read("source_allow_empty")),
        requests_per_second=read("source_requests_per_second"),
        concurrent_requests=read("source_concurrent_requests"),
        credentials=_credentials(
            _strip_prefix(settings, "source_"),
            lambda k: f"SOURCE_{k.upper()}",
            problems,
            env,
            file_mode=False,
        ),
    )
    filters = _read_filters(settings, "", problems)

    targets: list[TargetConfig] = []
    if file_targets is not None:
        if not isinstance(file_targets, list) or not file_targets:
            problems.add("targets", "must be a non-empty list of targets")
        else:
            for index, item in enumerate(file_targets):
                target = _file_target(item, index, problems, env)
                if target is not None:
                    targets.append(target)
    else:
        target = _env_target(settings, problems, env)
        if target is not None:
            targets.append(target)
    names = [t.name for t in targets]
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        problems.add("targets", f"target name {duplicate!r} is used twice")

    key_vault_url = read("key_vault_url")
    uses_vault = source.credentials.from_key_vault or any(t.credentials.from_key_vault for t in targets)
    if uses_vault and not key_vault_url:
        problems.add("KEY_VAULT_URL", "is required when credentials are named as Key Vault secrets")
    if source.kind is SourceKind.OCI:
        scoped = [("TAG_MIN_AGE_DAYS/TAG_MAX_AGE_DAYS/TAG_KEEP_LATEST", filters)] + [
            (f"targets[{t.name}].tag_min_age_days/tag_max_age_days/tag_keep_latest", t.filters)
            for t in targets
        ]
        for setting, f in scoped:
            if f.needs_timestamps:
                problems.add(
                    setting,
                    "age and keep-latest filters need tag timestamps, which only an ACR source (SOURCE_KIND=acr) has",
                )
    config = SyncConfig(
        source=source,
        targets=tuple(targets),
        filters=filters,
        compare=read("sync_compare"),
        recheck_hours=float(read("sync_recheck_hours")),
        full_check_hours=float(read("sync_full_check_hours")),
        referrers=read("sync_referrers"),
        concurrency=int(read("sync_concurrency")),
        key_vault_url=key_vault_url,
        queue=read("sync_queue"),
        event_queue=read("sync_event_queue"),
        time_budget_seconds=float(read("sync_time_budget_seconds")),
        daily_check=bool(read("sync_daily_check")),
        mappings=read("mappings"),
    )
    read("sync_schedule")  # validated here; the Functions host is what reads it
    if (
        config.event_queue in (config.queue, f"{config.queue}-poison")
        or config.queue == f"{config.event_queue}-poison"
    ):
        problems.add(
            "SYNC_EVENT_QUEUE", f"{config.event_queue!r} must be a queue of its own, not SYNC_QUEUE's"
        )
    if problems.items:
        raise ConfigError(list(dict.fromkeys(problems.items)))
    return config


def _check_file_keys(data: dict[str, Any], problems: Problems) -> None:
    """Top-level keys of the file: global settings, or ``target_*`` for one target without a list."""
    for key in sorted(data):
        setting = GLOBAL_BY_KEY.get(key)
        if setting is not None and setting.in_file:
            continue
        if key.startswith("target_") and key[len("target_") :] in ENV_TARGET_KEYS:
            if key == "target_password":
                problems.add(
                    "SYNC_CONFIG target_password",
                    "passwords are not read from the configuration file; "
                    "use a Key Vault secret name or the environment",
                )
                data.pop(key)
            continue
        if setting is not None:  # a setting that may not appear in the file
            problems.add(
                f"SYNC_CONFIG {key}",
                "passwords are not read from the configuration file; use a Key Vault secret name or the environment"
                if key.endswith("password")
                else "is not read from the configuration file",
            )
            data.pop(key)
            continue
        problems.add(f"SYNC_CONFIG {key}", "unknown setting")


def _read_file(path: str, problems: Problems) -> dict[str, Any] | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.add("SYNC_CONFIG", f"cannot read {path}: {exc.strerror or exc}")
        return None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        problems.add(
            "SYNC_CONFIG",
            f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {str(exc).splitlines()[0]}",
        )
        return None
    if not isinstance(data, dict):
        problems.add("SYNC_CONFIG", f"{path} must hold a mapping of settings")
        return None
    return data


def _target(
    values: Mapping[str, Any],
    name: str,
    setting_name: Callable[[str], str],
    problems: Problems,
    env: Mapping[str, str],
    file_mode: bool,
) -> TargetConfig:
    def read(key: str) -> Any:
        setting = TARGET_BY_KEY[key]
        return _read(values, setting, setting_name(key), problems)

    registry = read("registry")
    depth = read("max_path_depth") if file_mode else None
    budget = default_request_limits(registry) if registry else GENERIC_DEFAULTS
    rate, concurrent = read("requests_per_second"), read("concurrent_requests")
    return TargetConfig(
        name=name,
        registry=registry or "",
        namespace=read("namespace"),
        credentials=_credentials(values, setting_name, problems, env, file_mode=file_mode),
        filters=_read_filters(values, setting_name(""), problems) if file_mode else Filters(),
        max_path_depth=int(depth)
        if depth is not None
        else (default_path_depth(registry) if registry else None),
        mappings=read("mappings") if file_mode else (),
        rules=TargetRules(
            skip_types=read("skip_artifact_types"),
            platforms=read("platforms") if file_mode else None,
            drop_attestations=bool(read("drop_attestations")) if file_mode else False,
        ),
        requests_per_second=budget.requests_per_second if rate is None else float(rate),
        concurrent_requests=budget.concurrent_requests if concurrent is None else int(concurrent),
    )


def _env_target(
    settings: Mapping[str, Any], problems: Problems, env: Mapping[str, str]
) -> TargetConfig | None:
    values = {k: v for k, v in _strip_prefix(settings, "target_").items() if k in ENV_TARGET_KEYS}
    if _get(values, "registry") is None:
        problems.add("TARGET_REGISTRY", "is required (or a SYNC_CONFIG file with targets)")
        return None
    return _target(values, "target", lambda k: f"TARGET_{k.upper()}", problems, env, file_mode=False)


def _file_target(item: Any, index: int, problems: Problems, env: Mapping[str, str]) -> TargetConfig | None:
    where = f"targets[{index}]"
    if not isinstance(item, dict):
        problems.add(where, "must be a mapping")
        return None
    item = _lower_keys(item)
    name = _get(item, "name")
    name = (
        parse_target_name(name, f"{where}.name", problems) if name is not None else None
    ) or f"target{index + 1}"
    where = f"targets[{name}]"
    known = {s.key for s in TARGET_SETTINGS}
    for key in sorted(set(item) - known):
        problems.add(f"{where}.{key}", "unknown setting")
    return _target(item, name, lambda k: f"{where}.{k}", problems, env, file_mode=True)
