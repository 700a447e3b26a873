"""Every setting declared once (:data:`SETTINGS`): its parser, where it may appear, its default, help.

Parsing (:mod:`sync_core.config.load`), the list of app settings the infrastructure must provide
(:data:`APP_SETTINGS`), the CLI's help text, the README's configuration tables and the JSON
Schema of the configuration file all come from this declaration. A parser takes (value, setting
name, problems) and returns the parsed value, or None after adding a problem that names the setting.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync_core.config.model import (
    DEFAULT_QUEUE,
    Compare,
    MappingRule,
    ReferrerPolicy,
    SemverRange,
    SourceKind,
)
from sync_core.config.registries import canonical_registry
from sync_core.registry.names import is_repository, normalize_registry_url

# A platform as a target's `platforms` list names it: os/architecture[/variant].
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")


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
    return canonical_registry(url)


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
parse_target_name = _matching(
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
        parse_target_name,
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
GLOBAL_BY_KEY = {s.key: s for s in GLOBAL_SETTINGS}
TARGET_BY_KEY = {s.key: s for s in TARGET_SETTINGS}
ENV_TARGET_KEYS = {s.key for s in SETTINGS if s.scope is T and s.in_env}

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
