"""Configuration: app settings / environment variables, or a YAML/JSON file (``SYNC_CONFIG``).

Every problem is collected and reported at once, each prefixed with the setting it concerns.
Passwords are never read from the configuration file itself: a file names a Key Vault secret
(``password_secret``) or an environment variable (``password_env``) instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .names import is_repository
from .registry import normalize_registry_url

DOCKER_HUB = "https://registry-1.docker.io"
_HOST_ALIASES = {"https://docker.io": DOCKER_HUB, "https://index.docker.io": DOCKER_HUB}
# Registries that accept only namespace/repository (two path levels).
_TWO_LEVEL_HOSTS = (re.compile(r"registry-1\.docker\.io"), re.compile(r"registry\.[a-z0-9-]+\.aliyuncs\.com"))
DEFAULT_SCHEDULE = "0 */15 * * * *"

# Every app setting the Functions app reads (infra/main.bicep and local.settings.json.example
# must provide each; tests check both).
APP_SETTINGS = (
    "SYNC_SCHEDULE", "SYNC_QUEUE", "SOURCE_REGISTRY", "SOURCE_KIND", "SOURCE_NAMESPACE", "SOURCE_REPOSITORIES",
    "TARGET_REGISTRY", "TARGET_NAMESPACE", "TARGET_SKIP_ARTIFACT_TYPES", "REPOSITORY_INCLUDE", "REPOSITORY_EXCLUDE",
    "TAG_INCLUDE", "TAG_EXCLUDE", "TAG_MIN_AGE_DAYS", "TAG_MAX_AGE_DAYS", "TAG_KEEP_LATEST", "SYNC_COMPARE",
    "SYNC_CONCURRENCY", "SYNC_CONFIG", "KEY_VAULT_URL", "SOURCE_USERNAME_SECRET", "SOURCE_PASSWORD_SECRET",
    "TARGET_USERNAME_SECRET", "TARGET_PASSWORD_SECRET", "SYNC_TIME_BUDGET_SECONDS",
)  # fmt: skip
# Direct credentials for local runs only (in Azure they come from Key Vault).
LOCAL_ONLY_SETTINGS = ("SOURCE_USERNAME", "SOURCE_PASSWORD", "TARGET_USERNAME", "TARGET_PASSWORD")
DEFAULT_QUEUE = "sync-work"


@dataclass(frozen=True)
class Filters:
    repository_include: re.Pattern | None = None
    repository_exclude: re.Pattern | None = None
    tag_include: re.Pattern | None = None
    tag_exclude: re.Pattern | None = None
    min_age_days: float | None = None
    max_age_days: float | None = None
    keep_latest: int | None = None

    @property
    def needs_timestamps(self) -> bool:
        return self.min_age_days is not None or self.max_age_days is not None or self.keep_latest is not None


@dataclass(frozen=True)
class CredentialSpec:
    """Where credentials come from: Key Vault secret names, or literal values from the environment."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    username_secret: str | None = None
    password_secret: str | None = None

    @property
    def from_key_vault(self) -> bool:
        return bool(self.username_secret or self.password_secret)

    @property
    def anonymous(self) -> bool:
        return not (self.from_key_vault or self.username or self.password)


@dataclass(frozen=True)
class SourceConfig:
    registry: str
    kind: str  # "acr" | "oci"
    namespace: str = ""
    repositories: tuple[str, ...] = ()
    credentials: CredentialSpec = CredentialSpec()


@dataclass(frozen=True)
class TargetConfig:
    name: str
    registry: str
    namespace: str = ""
    credentials: CredentialSpec = CredentialSpec()
    filters: Filters = Filters()
    max_path_depth: int | None = None
    skip_artifact_types: frozenset[str] = frozenset()

    @property
    def host(self) -> str:
        return urlsplit(self.registry).netloc


@dataclass(frozen=True)
class SyncConfig:
    source: SourceConfig
    targets: tuple[TargetConfig, ...]
    filters: Filters = Filters()
    compare: str = "name"  # "name" | "digest"
    concurrency: int = 8
    key_vault_url: str | None = None
    queue: str = DEFAULT_QUEUE
    time_budget_seconds: float = 1500.0

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        raise ConfigError(
            f"target {name!r} is not configured (known: {', '.join(t.name for t in self.targets)})"
        )


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, setting: str, message: str) -> None:
        self.items.append(f"{setting}: {message}")


def _get(values: Mapping[str, Any], key: str) -> Any:
    value = values.get(key)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _regex(values, key, setting, problems) -> re.Pattern | None:
    value = _get(values, key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(setting, "must be a regular expression (a string)")
        return None
    try:
        return re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
        problems.add(setting, f"invalid regular expression {value[:200]!r}: {exc}")
        return None


def _number(values, key, setting, problems, *, integer=False, minimum=0.0) -> Any:
    value = _get(values, key)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if integer else float(value)
        if integer and isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        problems.add(setting, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
        return None
    if number < minimum or number != number or number in (float("inf"), float("-inf")):
        problems.add(setting, f"must be at least {minimum:g}, got {value!r}")
        return None
    return number


def _registry(values, key, setting, problems, required=True) -> str | None:
    value = _get(values, key)
    if value is None:
        if required:
            problems.add(setting, "is required (a registry host such as gsoci.azurecr.io, or a URL)")
        return None
    if not isinstance(value, str):
        problems.add(setting, "must be a registry host or URL")
        return None
    try:
        url = normalize_registry_url(value)
    except ValueError as exc:
        problems.add(setting, str(exc))
        return None
    return _HOST_ALIASES.get(url, url)


def _namespace(values, key, setting, problems) -> str:
    value = _get(values, key) or ""
    if not isinstance(value, str):
        problems.add(setting, "must be a string")
        return ""
    value = value.strip("/")
    if value and not is_repository(value):
        problems.add(setting, f"{value!r} is not a valid repository path")
        return ""
    return value


def _string_list(values, key, setting, problems) -> tuple[str, ...]:
    value = _get(values, key)
    if value is None:
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[,\s]+", value) if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        problems.add(setting, "must be a list of strings (or a comma-separated string)")
        return ()
    return tuple(items)


def _filters(values, prefix: str, problems) -> Filters:
    """Filters from keys such as ``tag_include``; ``prefix`` names the settings in messages."""

    def name(key: str) -> str:
        return f"{prefix}{key}" if prefix else key.upper()

    filters = Filters(
        repository_include=_regex(values, "repository_include", name("repository_include"), problems),
        repository_exclude=_regex(values, "repository_exclude", name("repository_exclude"), problems),
        tag_include=_regex(values, "tag_include", name("tag_include"), problems),
        tag_exclude=_regex(values, "tag_exclude", name("tag_exclude"), problems),
        min_age_days=_number(values, "tag_min_age_days", name("tag_min_age_days"), problems),
        max_age_days=_number(values, "tag_max_age_days", name("tag_max_age_days"), problems),
        keep_latest=_number(
            values, "tag_keep_latest", name("tag_keep_latest"), problems, integer=True, minimum=1
        ),
    )
    if (
        filters.min_age_days is not None
        and filters.max_age_days is not None
        and filters.min_age_days > filters.max_age_days
    ):
        problems.add(name("tag_min_age_days"), "is greater than TAG_MAX_AGE_DAYS: no tag could pass")
    return filters


def _credentials(values, prefix: str, setting_prefix: str, problems, env: Mapping[str, str], file_mode: bool):
    username = _get(values, f"{prefix}username")
    password = _get(values, f"{prefix}password")
    if file_mode:
        if password is not None:
            problems.add(
                f"{setting_prefix}password",
                "passwords are not read from the configuration file; use password_secret (Key Vault) or password_env",
            )
            password = None
        for part in ("username", "password"):
            env_name = _get(values, f"{prefix}{part}_env")
            if env_name is not None:
                if not isinstance(env_name, str) or env_name not in env:
                    problems.add(
                        f"{setting_prefix}{part}_env", f"environment variable {env_name!r} is not set"
                    )
                elif part == "username":
                    username = env[env_name]
                else:
                    password = env[env_name]
    spec = CredentialSpec(
        username=username if isinstance(username, str) else None,
        password=password if isinstance(password, str) else None,
        username_secret=_get(values, f"{prefix}username_secret"),
        password_secret=_get(values, f"{prefix}password_secret"),
    )
    if bool(spec.username_secret) != bool(spec.password_secret):
        problems.add(
            f"{setting_prefix}password_secret", "give both the username and the password secret names"
        )
    elif not spec.from_key_vault and bool(spec.username) != bool(spec.password):
        problems.add(
            f"{setting_prefix}password", "give both a username and a password, or neither (anonymous)"
        )
    return spec


def _lower_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).lower(): v for k, v in values.items()}


def load_config(env: Mapping[str, str] | None = None, path: str | None = None) -> SyncConfig:
    """Build the configuration from the environment and, if named, a YAML/JSON file.

    File values win over environment values for the same setting. Raises :class:`ConfigError`
    listing every problem found.
    """
    env = dict(os.environ if env is None else env)
    problems = _Problems()
    settings: dict[str, Any] = _lower_keys(env)
    file_targets = None
    path = path or _get(settings, "sync_config")
    if path:
        data = _read_file(path, problems)
        if data is not None:
            for key in ("source_password", "target_password"):
                if key in _lower_keys(data):
                    problems.add(
                        f"SYNC_CONFIG {key}",
                        "passwords are not read from the configuration file; "
                        "use a Key Vault secret name or the environment",
                    )
                    data.pop(key, None)
                    data.pop(key.upper(), None)
            file_targets = data.pop("targets", None)
            settings.update(_lower_keys(data))

    source_registry = _registry(settings, "source_registry", "SOURCE_REGISTRY", problems)
    kind = _get(settings, "source_kind")
    if kind is not None and not isinstance(kind, str):
        problems.add("SOURCE_KIND", f"must be 'acr' or 'oci', got {kind!r}")
        kind = None
    kind = (kind or "").lower() or None
    if kind is None and source_registry:
        kind = "acr" if urlsplit(source_registry).hostname.endswith(".azurecr.io") else "oci"
    if kind not in ("acr", "oci", None):
        problems.add("SOURCE_KIND", f"must be 'acr' or 'oci', got {kind!r}")
    source_repositories = _string_list(settings, "source_repositories", "SOURCE_REPOSITORIES", problems)
    for repo in source_repositories:
        if not is_repository(repo):
            problems.add("SOURCE_REPOSITORIES", f"{repo!r} is not a valid repository name")
    source = SourceConfig(
        registry=source_registry or "",
        kind=kind or "oci",
        namespace=_namespace(settings, "source_namespace", "SOURCE_NAMESPACE", problems),
        repositories=source_repositories,
        credentials=_credentials(settings, "source_", "SOURCE_", problems, env, file_mode=False),
    )
    filters = _filters(settings, "", problems)

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
        registry = _registry(settings, "target_registry", "TARGET_REGISTRY", problems)
        if registry:
            targets.append(
                TargetConfig(
                    name="target",
                    registry=registry,
                    namespace=_namespace(settings, "target_namespace", "TARGET_NAMESPACE", problems),
                    credentials=_credentials(settings, "target_", "TARGET_", problems, env, file_mode=False),
                    max_path_depth=_default_depth(registry),
                    skip_artifact_types=frozenset(
                        _string_list(
                            settings, "target_skip_artifact_types", "TARGET_SKIP_ARTIFACT_TYPES", problems
                        )
                    ),
                )
            )
    names = [t.name for t in targets]
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        problems.add("targets", f"target name {duplicate!r} is used twice")

    compare = _get(settings, "sync_compare") or "name"
    compare = compare.lower() if isinstance(compare, str) else compare
    if compare not in ("name", "digest"):
        problems.add("SYNC_COMPARE", f"must be 'name' or 'digest', got {compare!r}")
    concurrency = _number(settings, "sync_concurrency", "SYNC_CONCURRENCY", problems, integer=True, minimum=1)
    if concurrency is not None and concurrency > 64:
        problems.add("SYNC_CONCURRENCY", f"at most 64, got {concurrency}")
    budget = _number(settings, "sync_time_budget_seconds", "SYNC_TIME_BUDGET_SECONDS", problems, minimum=10)
    key_vault_url = _get(settings, "key_vault_url")
    if key_vault_url is not None and (
        not isinstance(key_vault_url, str) or not key_vault_url.startswith("https://")
    ):
        problems.add("KEY_VAULT_URL", "must be an https:// URL such as https://myvault.vault.azure.net")
    uses_vault = source.credentials.from_key_vault or any(t.credentials.from_key_vault for t in targets)
    if uses_vault and not key_vault_url:
        problems.add("KEY_VAULT_URL", "is required when credentials are named as Key Vault secrets")
    queue = _get(settings, "sync_queue") or DEFAULT_QUEUE
    if not isinstance(queue, str) or not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", queue):
        problems.add("SYNC_QUEUE", f"{queue!r} is not a valid Storage queue name")
    if source.kind == "oci":
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
    if not targets and not any("TARGET_REGISTRY" in p or p.startswith("targets") for p in problems.items):
        problems.add("TARGET_REGISTRY", "is required (or a SYNC_CONFIG file with targets)")
    if problems.items:
        raise ConfigError(list(dict.fromkeys(problems.items)))
    return SyncConfig(
        source=source,
        targets=tuple(targets),
        filters=filters,
        compare=compare,
        concurrency=int(concurrency or 8),
        key_vault_url=key_vault_url,
        queue=queue,
        time_budget_seconds=float(budget or 1500.0),
    )


def _default_depth(registry: str) -> int | None:
    host = urlsplit(registry).hostname or ""
    return 2 if any(p.fullmatch(host) for p in _TWO_LEVEL_HOSTS) else None


def _read_file(path: str, problems: _Problems) -> dict | None:
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


_TARGET_KEYS = {
    "name", "registry", "namespace", "username", "password", "username_secret", "password_secret",
    "username_env", "password_env", "repository_include", "repository_exclude", "tag_include", "tag_exclude",
    "tag_min_age_days", "tag_max_age_days", "tag_keep_latest", "max_path_depth", "skip_artifact_types",
}  # fmt: skip


def _file_target(item: Any, index: int, problems: _Problems, env: Mapping[str, str]) -> TargetConfig | None:
    where = f"targets[{index}]"
    if not isinstance(item, dict):
        problems.add(where, "must be a mapping")
        return None
    item = _lower_keys(item)
    name = _get(item, "name") or f"target{index + 1}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
        problems.add(f"{where}.name", f"{name!r} must be letters, digits, '.', '_' or '-'")
        name = f"target{index + 1}"
    where = f"targets[{name}]"
    for key in sorted(set(item) - _TARGET_KEYS):
        problems.add(f"{where}.{key}", "unknown setting")
    registry = _registry(item, "registry", f"{where}.registry", problems)
    depth = _number(item, "max_path_depth", f"{where}.max_path_depth", problems, integer=True, minimum=1)
    return TargetConfig(
        name=name,
        registry=registry or "",
        namespace=_namespace(item, "namespace", f"{where}.namespace", problems),
        credentials=_credentials(item, "", f"{where}.", problems, env, file_mode=True),
        filters=_filters(item, f"{where}.", problems),
        max_path_depth=int(depth) if depth is not None else (_default_depth(registry) if registry else None),
        skip_artifact_types=frozenset(
            _string_list(item, "skip_artifact_types", f"{where}.skip_artifact_types", problems)
        ),
    )
