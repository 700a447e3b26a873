"""Configuration: app settings / environment variables, or a YAML/JSON file (``SYNC_CONFIG``).

Every setting is declared once, in :data:`SETTINGS` (name, parser, where it may appear,
default, help). Parsing, the list of app settings the infrastructure must provide
(:data:`APP_SETTINGS`), the CLI's help text and the README's configuration tables all come
from that declaration.

Every problem is collected and reported at once, each prefixed with the setting it concerns.
Passwords are never read from the configuration file itself: a file names a Key Vault secret
(``password_secret``) or an environment variable (``password_env``) instead.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Mapping
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
# Registries that accept only namespace/repository (two path levels): Docker Hub, and every host
# form of Alibaba Cloud ACR (personal edition old and new, international, VPC; Enterprise Edition
# repositories are namespace/name too).
_TWO_LEVEL_HOSTS = tuple(
    re.compile(p)
    for p in (
        r"registry-1\.docker\.io",
        r"registry(-vpc|-intl|-intl-vpc|-internal)?\.[a-z0-9-]+\.aliyuncs\.com",
        r"crpi-[a-z0-9]+(-vpc)?\.[a-z0-9-]+\.personal\.cr\.aliyuncs\.com",
        r"[a-z0-9][a-z0-9-]*-registry(-vpc)?\.[a-z0-9-]+\.cr\.aliyuncs\.com",
    )
)
# A platform as a target's `platforms` list names it: os/architecture[/variant].
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
DEFAULT_QUEUE = "sync-work"


class SourceKind(str, enum.Enum):
    ACR = "acr"  # tag digests and times from /acr/v1/<repo>/_tags
    OCI = "oci"  # the plain OCI listing


class Compare(str, enum.Enum):
    NAME = "name"  # copy tags the target lacks; never look at tags it has
    RECENT = "recent"  # also recheck what the source changed lately, and everything once a day
    DIGEST = "digest"  # recheck every tag on every run


@dataclass(frozen=True)
class ReferrerPolicy:
    """Which referrers (signatures, SBOMs, attestations) travel with their images (SYNC_REFERRERS)."""

    enabled: bool = True
    types: frozenset[str] | None = None  # None: every artifact type

    def wants(self, artifact_type: str | None) -> bool:
        if not self.enabled:
            return False
        return self.types is None or artifact_type in self.types


# -- the configuration, as the rest of the core sees it --------------------------------------------


@dataclass(frozen=True)
class Filters:
    repository_include: re.Pattern[str] | None = None
    repository_exclude: re.Pattern[str] | None = None
    tag_include: re.Pattern[str] | None = None
    tag_exclude: re.Pattern[str] | None = None
    min_age_days: float | None = None
    max_age_days: float | None = None
    keep_latest: int | None = None
    semver: SemverRange | None = None

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
    kind: SourceKind
    namespace: str = ""
    repositories: tuple[str, ...] = ()
    credentials: CredentialSpec = CredentialSpec()
    allow_empty: bool = False


@dataclass(frozen=True)
class SemverRange:
    """A version range such as ``>=1.2.0 <2`` (npm semantics: space = and, ``||`` = or).

    Tags match with or without a ``v`` prefix (``v1.4.0``, ``1.4``); pre-releases (``1.4.0-rc.1``,
    also ``1.4.0-alpine``) only when the range itself names a pre-release of that version.
    """

    text: str
    spec: Any = field(compare=False)

    def matches(self, tag: str) -> bool:
        import semantic_version

        if not _VERSION_TAG_RE.fullmatch(tag):
            return False
        try:
            return bool(semantic_version.Version.coerce(tag.removeprefix("v")) in self.spec)
        except ValueError:
            return False


_VERSION_TAG_RE = re.compile(r"v?\d+(\.\d+){0,2}(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


@dataclass(frozen=True)
class MappingRule:
    """One rule of ``mappings``: a source repository that fully matches ``match`` goes to ``replace``
    (with ``\\1``-style references) at the target; ``replace`` None means: not mirrored there."""

    match: re.Pattern[str]
    replace: str | None


@dataclass(frozen=True)
class TargetConfig:
    name: str
    registry: str
    namespace: str = ""
    credentials: CredentialSpec = CredentialSpec()
    filters: Filters = Filters()
    max_path_depth: int | None = None
    skip_artifact_types: frozenset[str] = frozenset()
    mappings: tuple[MappingRule, ...] = ()
    platforms: frozenset[str] | None = None  # None: every platform (an exact copy)
    drop_attestations: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.registry).netloc


@dataclass(frozen=True)
class SyncConfig:
    source: SourceConfig
    targets: tuple[TargetConfig, ...]
    filters: Filters = Filters()
    compare: Compare = Compare.RECENT
    recheck_hours: float = 6.0
    full_check_hours: float = 24.0
    referrers: ReferrerPolicy = ReferrerPolicy()
    concurrency: int = 8
    key_vault_url: str | None = None
    queue: str = DEFAULT_QUEUE
    time_budget_seconds: float = 1500.0
    mappings: tuple[MappingRule, ...] = ()

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        raise ConfigError(
            f"target {name!r} is not configured (known: {', '.join(t.name for t in self.targets)})"
        )


# -- parsers: (value, setting name, problems) -> parsed value, or None after adding a problem -------


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, setting: str, message: str) -> None:
        self.items.append(f"{setting}: {message}")


Parser = Callable[[Any, str, Problems], Any]


def _text(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    return value


def _regex(value: Any, name: str, problems: Problems) -> re.Pattern[str] | None:
    if not isinstance(value, str):
        problems.add(name, "must be a regular expression (a string)")
        return None
    try:
        return re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}: OverflowError
        problems.add(name, f"invalid regular expression {value[:200]!r}: {exc}")
        return None


def _number(*, integer: bool = False, minimum: float = 0.0, maximum: float | None = None) -> Parser:
    def parse(value: Any, name: str, problems: Problems) -> float | int | None:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(value) if integer else float(value)
            if integer and isinstance(value, float) and not value.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            problems.add(name, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
            return None
        if number < minimum or number != number or number in (float("inf"), float("-inf")):
            problems.add(name, f"must be at least {minimum:g}, got {value!r}")
            return None
        if maximum is not None and number > maximum:
            problems.add(name, f"at most {maximum:g}, got {number}")
            return None
        return number

    return parse


def _registry(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a registry host or URL")
        return None
    try:
        url = normalize_registry_url(value)
    except ValueError as exc:
        problems.add(name, str(exc))
        return None
    return _HOST_ALIASES.get(url, url)


def _namespace(value: Any, name: str, problems: Problems) -> str | None:
    if not isinstance(value, str):
        problems.add(name, "must be a string")
        return None
    path = value.strip("/")
    if path and not is_repository(path):
        problems.add(name, f"{path!r} is not a valid repository path")
        return None
    return path


def _string_list(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return tuple(v.strip() for v in re.split(r"[,\s]+", value) if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    problems.add(name, "must be a list of strings (or a comma-separated string)")
    return None


def _repositories(value: Any, name: str, problems: Problems) -> tuple[str, ...] | None:
    names = _string_list(value, name, problems)
    for repo in names or ():
        if not is_repository(repo):
            problems.add(name, f"{repo!r} is not a valid repository name")
    return names


def _types(value: Any, name: str, problems: Problems) -> frozenset[str] | None:
    names = _string_list(value, name, problems)
    return None if names is None else frozenset(names)


def _choice(kind: type[enum.Enum]) -> Parser:
    allowed = [m.value for m in kind]

    def parse(value: Any, name: str, problems: Problems) -> enum.Enum | None:
        text = value.lower() if isinstance(value, str) else value
        try:
            return kind(text)
        except ValueError:
            problems.add(name, f"must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
            return None

    return parse


def _boolean(value: Any, name: str, problems: Problems) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    problems.add(name, f"must be true or false, got {value!r}")
    return None


def _semver(value: Any, name: str, problems: Problems) -> SemverRange | None:
    import semantic_version

    if not isinstance(value, str):
        problems.add(name, "must be a version range such as '>=1.2.0 <2'")
        return None
    text = re.sub(r"(^|[\s<>=~^|,-])v(?=\d)", r"\1", value)  # v1.2.0 -> 1.2.0 inside the range
    try:
        return SemverRange(value, semantic_version.NpmSpec(text))
    except ValueError as exc:
        problems.add(name, f"invalid version range {value!r}: {exc}")
        return None


def _platforms(value: Any, name: str, problems: Problems) -> frozenset[str] | None:
    names = _string_list(value, name, problems)
    if names is None:
        return None
    bad = [p for p in names if not _PLATFORM_RE.fullmatch(p)]
    if bad or not names:
        problems.add(
            name, f"must list platforms as os/architecture[/variant] (e.g. linux/amd64), got {bad or names!r}"
        )
        return None
    return frozenset(names)


def _mappings(value: Any, name: str, problems: Problems) -> tuple[MappingRule, ...] | None:
    if not isinstance(value, list):
        problems.add(name, "must be a list of {match: REGEX, replace: TEMPLATE or null}")
        return None
    rules: list[MappingRule] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if (
            not isinstance(item, dict)
            or set(item) - {"match", "replace"}
            or "match" not in item
            or "replace" not in item
        ):
            problems.add(
                where, "must be {match: REGEX, replace: TEMPLATE or null} (replace null: not mirrored)"
            )
            continue
        pattern = _regex(item["match"], f"{where}.match", problems)
        replace = item["replace"]
        if replace is not None and (not isinstance(replace, str) or not replace.strip()):
            problems.add(f"{where}.replace", "must be a repository name template or null")
            continue
        if pattern is None:
            continue
        if replace is not None:
            problem = _template_problem(pattern, replace)
            if problem:
                problems.add(f"{where}.replace", problem)
                continue
        rules.append(MappingRule(pattern, replace))
    return tuple(rules)


def _template_problem(pattern: re.Pattern[str], template: str) -> str | None:
    """What is wrong with ``template`` for ``pattern`` (a group it names that does not exist)."""
    for ref in re.findall(r"\\(\d+)|\\g<([^>]*)>", template):
        number, named = ref
        key = named or number
        if key.isdigit():
            if int(key) > pattern.groups:
                return f"{template!r} refers to group {key}; the pattern has {pattern.groups}"
        elif key not in pattern.groupindex:
            return f"{template!r} refers to group {key!r}, which the pattern does not name"
    return None


def _referrers(value: Any, name: str, problems: Problems) -> ReferrerPolicy | None:
    if isinstance(value, str) and value.strip().lower() in ("all", "none"):
        return ReferrerPolicy(enabled=value.strip().lower() == "all")
    types = _string_list(value, name, problems)
    if types is None:
        return None
    if not types:
        problems.add(name, "must be 'all', 'none' or a list of artifact types")
        return None
    return ReferrerPolicy(types=frozenset(types))


def _https_url(value: Any, name: str, problems: Problems) -> str | None:
    if isinstance(value, str) and value.startswith("https://"):
        return value
    problems.add(name, "must be an https:// URL such as https://myvault.vault.azure.net")
    return None


def _matching(pattern: str, problem: str) -> Parser:
    """A string matching ``pattern`` in full; ``problem`` (with ``{value}``) says what is wrong."""
    compiled = re.compile(pattern)

    def parse(value: Any, name: str, problems: Problems) -> str | None:
        if isinstance(value, str) and compiled.fullmatch(value):
            return value
        problems.add(name, problem.format(value=repr(value)))
        return None

    return parse


_queue_name = _matching(
    r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", "{value} is not a valid Storage queue name"
)
_schedule = _matching(r"\S+(\s+\S+){5}", "must be a six-field CRON expression (seconds first), got {value}")
_target_name = _matching(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "{value} must be letters, digits, '.', '_' or '-'"
)


# -- the declaration ------------------------------------------------------------------------------


class Scope(enum.Flag):
    GLOBAL = enum.auto()  # an app setting (environment variable) and a top-level key of the file
    TARGET = enum.auto()  # a key of each target in the file; TARGET_<KEY> for the environment's target


@dataclass(frozen=True)
class Setting:
    key: str  # lower case: the file key (the environment variable is derived from it)
    parse: Parser
    help: str
    scope: Scope = Scope.GLOBAL
    default: Any = None
    default_text: str = ""  # the default as the documentation shows it
    in_env: bool = True  # GLOBAL: an environment variable; TARGET: TARGET_<KEY> exists
    in_file: bool = True
    local_only: bool = False  # credentials in the environment: local runs, never an Azure app setting
    required: str = ""  # the problem reported when it is missing

    @property
    def env_name(self) -> str:
        if self.scope is Scope.TARGET:
            return f"TARGET_{self.key.upper()}"
        return self.key.upper()


_REGISTRY_REQUIRED = "is required (a registry host such as gsoci.azurecr.io, or a URL)"
G, T, GT = Scope.GLOBAL, Scope.TARGET, Scope.GLOBAL | Scope.TARGET

SETTINGS: tuple[Setting, ...] = (
    # source
    Setting(
        "source_registry",
        _registry,
        "source host (`gsoci.azurecr.io`, https) or URL (`http://127.0.0.1:5000`)",
        required=_REGISTRY_REQUIRED,
        default_text="required",
    ),
    Setting(
        "source_kind",
        _choice(SourceKind),
        "`acr` (tag digests and times from `/acr/v1/<repo>/_tags`) or `oci`",
        default_text="`acr` for `*.azurecr.io`, else `oci`",
    ),
    Setting(
        "source_namespace",
        _namespace,
        "only repositories below this path; the prefix is removed when mapping",
        default="",
    ),
    Setting(
        "source_repositories",
        _repositories,
        "explicit repository list (comma-separated), for tokens that may not list the catalog",
        default=(),
        default_text="catalog",
    ),
    Setting(
        "source_allow_empty",
        _boolean,
        "an empty catalog is not an error (by default it is: ACR answers a token that may see nothing "
        "with an empty list)",
        default=False,
        default_text="`false`",
    ),
    Setting("source_username_secret", _text, "Key Vault secret name of the source (ACR token) user name"),
    Setting("source_password_secret", _text, "Key Vault secret name of the source (ACR token) password"),
    Setting(
        "source_username",
        _text,
        "source user name from the environment (local runs)",
        local_only=True,
        default_text="anonymous",
    ),
    Setting(
        "source_password",
        _text,
        "source password from the environment (local runs; never in the file)",
        local_only=True,
        in_file=False,
        default_text="anonymous",
    ),
    # targets
    Setting(
        "name",
        _target_name,
        "target name (in summaries, `--target`, queue messages)",
        scope=T,
        in_env=False,
        default_text="`target` / `target<N>`",
    ),
    Setting(
        "registry",
        _registry,
        "the mirror; `docker.io` means Docker Hub",
        scope=T,
        required=_REGISTRY_REQUIRED,
        default_text="required",
    ),
    Setting("namespace", _namespace, "path prefix at the target", scope=T, default=""),
    Setting(
        "max_path_depth",
        _number(integer=True, minimum=1),
        "path levels the target accepts",
        scope=T,
        in_env=False,
        default_text="2 for Docker Hub and Alibaba personal edition, else unlimited",
    ),
    Setting(
        "skip_artifact_types",
        _types,
        "media/artifact types the target must not receive (comma-separated)",
        scope=T,
        default=frozenset(),
    ),
    Setting(
        "platforms",
        _platforms,
        "only these platforms (`linux/amd64`, ...): an index with others is rewritten (new digest) for this target",
        scope=T,
        in_env=False,
        default_text="all (exact copies)",
    ),
    Setting(
        "drop_attestations",
        _boolean,
        "leave buildx attestation manifests out of indexes (rewritten, new digest) for targets that refuse them",
        scope=T,
        in_env=False,
        default=False,
        default_text="`false`",
    ),
    Setting("username_secret", _text, "Key Vault secret name of the target user name", scope=T),
    Setting("password_secret", _text, "Key Vault secret name of the target password", scope=T),
    Setting(
        "username",
        _text,
        "target user name (environment: local runs)",
        scope=T,
        local_only=True,
        default_text="anonymous",
    ),
    Setting(
        "password",
        _text,
        "target password from the environment (local runs; never in the file)",
        scope=T,
        local_only=True,
        in_file=False,
        default_text="anonymous",
    ),
    Setting(
        "username_env", _text, "environment variable holding the target user name", scope=T, in_env=False
    ),
    Setting("password_env", _text, "environment variable holding the target password", scope=T, in_env=False),
    # filters: global, and per target in the file
    Setting(
        "repository_include",
        _regex,
        "regular expression, full match on the source repository",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "repository_exclude",
        _regex,
        "regular expression, full match on the source repository",
        scope=GT,
        default_text="none",
    ),
    Setting("tag_include", _regex, "regular expression, full match on the tag", scope=GT, default_text="all"),
    Setting(
        "tag_exclude", _regex, "regular expression, full match on the tag", scope=GT, default_text="none"
    ),
    Setting(
        "tag_min_age_days",
        _number(),
        "only tags last pushed at least this many days ago (ACR sources)",
        scope=GT,
    ),
    Setting(
        "tag_max_age_days",
        _number(),
        "only tags last pushed at most this many days ago (ACR sources)",
        scope=GT,
    ),
    Setting(
        "tag_keep_latest",
        _number(integer=True, minimum=1),
        "only the N most recently pushed tags per repository (after the other filters; ACR sources); "
        "signature, attestation and referrers tags follow their image instead",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "tag_semver",
        _semver,
        "only tags inside this version range, e.g. `>=1.2.0 <2` (`v` prefix optional; pre-releases only "
        "when the range names one)",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "mappings",
        _mappings,
        "file only: `[{match: REGEX, replace: TEMPLATE}]`, full match on the source repository without the "
        "source namespace; the template is the whole target repository (`\\1` refers to groups), `null` "
        "skips; a target's own list is tried first; no match: target namespace + repository",
        scope=GT,
        in_env=False,
        default=(),
    ),
    # the run
    Setting(
        "sync_compare",
        _choice(Compare),
        "which tags the target has are compared with the source (one HEAD each): `name` none, "
        "`recent` those the source changed within `SYNC_RECHECK_HOURS` plus all once per "
        "`SYNC_FULL_CHECK_HOURS`, `digest` all on every run",
        default=Compare.RECENT,
        default_text="`recent`",
    ),
    Setting(
        "sync_recheck_hours",
        _number(minimum=0),
        "`recent`: tags and referrers the source changed this recently are rechecked at the target",
        default=6.0,
    ),
    Setting(
        "sync_full_check_hours",
        _number(minimum=1),
        "`recent`: each repository is fully rechecked (moved tags, referrers) once per this period",
        default=24.0,
    ),
    Setting(
        "sync_referrers",
        _referrers,
        "referrers (signatures, SBOMs, attestations) mirrored with their images: `all`, `none`, or "
        "a list of artifact types",
        default=ReferrerPolicy(),
        default_text="`all`",
    ),
    Setting(
        "sync_concurrency",
        _number(integer=True, minimum=1, maximum=64),
        "repositories and tags processed in parallel (each copy also runs 4 blob transfers)",
        default=8,
    ),
    Setting(
        "key_vault_url", _https_url, "vault holding the credentials (the app's managed identity reads it)"
    ),
    Setting(
        "sync_config", _text, "YAML/JSON file with these settings and a list of `targets`", in_file=False
    ),
    # the Functions app
    Setting(
        "sync_schedule",
        _schedule,
        "timer CRON (six fields), read by the Functions host",
        default="0 */15 * * * *",
    ),
    Setting("sync_queue", _queue_name, "work queue name", default=DEFAULT_QUEUE),
    Setting(
        "sync_time_budget_seconds",
        _number(minimum=10),
        "a worker starts no new copy after this; the rest is re-enqueued",
        default=1500.0,
    ),
)

GLOBAL_SETTINGS = tuple(s for s in SETTINGS if s.scope & G)
TARGET_SETTINGS = tuple(s for s in SETTINGS if s.scope & T)
_GLOBAL_BY_KEY = {s.key: s for s in GLOBAL_SETTINGS}
_TARGET_BY_KEY = {s.key: s for s in TARGET_SETTINGS}
_ENV_TARGET_KEYS = {s.key for s in SETTINGS if s.scope is T and s.in_env}

#: Every app setting the Functions app reads (infra/main.bicep and local.settings.json.example
#: must provide each; tests check both).
APP_SETTINGS = tuple(s.env_name for s in SETTINGS if s.in_env and not s.local_only)
#: Direct credentials for local runs only (in Azure they come from Key Vault).
LOCAL_ONLY_SETTINGS = tuple(s.env_name for s in SETTINGS if s.local_only)


def _documented_default(setting: Setting) -> str:
    if setting.default_text:
        return setting.default_text
    if setting.default in (None, "", (), frozenset()):
        return "none"
    value = setting.default.value if isinstance(setting.default, enum.Enum) else setting.default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_markdown() -> str:
    """The README's configuration tables (a test keeps the README equal to this)."""
    lines = ["| setting | meaning | default |", "| --- | --- | --- |"]
    for s in SETTINGS:
        if s.in_env:
            lines.append(f"| `{s.env_name}` | {s.help} | {_documented_default(s)} |")
    lines += [
        "",
        "Keys of each entry of `targets` in the file:",
        "",
        "| key | meaning | default |",
        "| --- | --- | --- |",
    ]
    for s in TARGET_SETTINGS:
        if s.in_file:
            lines.append(f"| `{s.key}` | {s.help} | {_documented_default(s)} |")
    return "\n".join(lines)


def settings_help() -> str:
    """The CLI's epilog: every environment variable with its meaning."""
    lines = ["configuration comes from environment variables (app settings) or a YAML/JSON file:"]
    width = max(len(s.env_name) for s in SETTINGS)
    for s in SETTINGS:
        if s.in_env:
            text = s.help.replace("`", "")
            lines.append(f"  {s.env_name.ljust(width)}  {text}")
    lines.append("a file's `targets` entries take: " + ", ".join(s.key for s in TARGET_SETTINGS if s.in_file))
    return "\n".join(lines) + "\n"


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
        setting = _GLOBAL_BY_KEY[key]
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
        setting = _GLOBAL_BY_KEY[key]
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
        time_budget_seconds=float(read("sync_time_budget_seconds")),
        mappings=read("mappings"),
    )
    read("sync_schedule")  # validated here; the Functions host is what reads it
    if problems.items:
        raise ConfigError(list(dict.fromkeys(problems.items)))
    return config


def _check_file_keys(data: dict[str, Any], problems: Problems) -> None:
    """Top-level keys of the file: global settings, or ``target_*`` for one target without a list."""
    for key in sorted(data):
        setting = _GLOBAL_BY_KEY.get(key)
        if setting is not None and setting.in_file:
            continue
        if key.startswith("target_") and key[len("target_") :] in _ENV_TARGET_KEYS:
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


def _default_depth(registry: str) -> int | None:
    host = urlsplit(registry).hostname or ""
    return 2 if any(p.fullmatch(host) for p in _TWO_LEVEL_HOSTS) else None


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
        setting = _TARGET_BY_KEY[key]
        return _read(values, setting, setting_name(key), problems)

    registry = read("registry")
    depth = read("max_path_depth") if file_mode else None
    return TargetConfig(
        name=name,
        registry=registry or "",
        namespace=read("namespace"),
        credentials=_credentials(values, setting_name, problems, env, file_mode=file_mode),
        filters=_read_filters(values, setting_name(""), problems) if file_mode else Filters(),
        max_path_depth=int(depth) if depth is not None else (_default_depth(registry) if registry else None),
        skip_artifact_types=read("skip_artifact_types"),
        mappings=read("mappings") if file_mode else (),
        platforms=read("platforms") if file_mode else None,
        drop_attestations=bool(read("drop_attestations")) if file_mode else False,
    )


def _env_target(
    settings: Mapping[str, Any], problems: Problems, env: Mapping[str, str]
) -> TargetConfig | None:
    values = {k: v for k, v in _strip_prefix(settings, "target_").items() if k in _ENV_TARGET_KEYS}
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
        _target_name(name, f"{where}.name", problems) if name is not None else None
    ) or f"target{index + 1}"
    where = f"targets[{name}]"
    known = {s.key for s in TARGET_SETTINGS}
    for key in sorted(set(item) - known):
        problems.add(f"{where}.{key}", "unknown setting")
    return _target(item, name, lambda k: f"{where}.{k}", problems, env, file_mode=True)
