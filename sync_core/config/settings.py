"""Every setting declared once (:data:`SETTINGS`): its parser, where it may appear, its default, help.

Parsing (:mod:`sync_core.config.load`), the list of app settings the infrastructure must provide
(:data:`APP_SETTINGS`), the CLI's help text, the README's configuration tables and the JSON
Schema of the configuration file (:mod:`sync_core.config.schema`) all come from this declaration. A
parser takes (value, setting name, problems) and returns the parsed value, or None after adding a
problem that names the setting; its ``schema`` is the JSON Schema of the values a file may give.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sync_core.config.model import (
    DEFAULT_EVENT_QUEUE,
    DEFAULT_QUEUE,
    Compare,
    ReferrerPolicy,
    SourceKind,
)
from sync_core.config.parsers import (
    Parser,
    boolean,
    choice,
    https_url,
    mappings,
    namespace,
    number,
    parse_target_name,
    platforms,
    queue_name,
    referrers,
    regex,
    registry,
    repositories,
    requests_per_second,
    schedule,
    semver,
    text,
    types,
)
from sync_core.config.registries import DOCKER_HUB_DEFAULTS, GENERIC_DEFAULTS

# -- the declaration ------------------------------------------------------------------------------


class Scope(enum.Flag):
    GLOBAL = enum.auto()  # an app setting (environment variable) and a top-level key of the file
    TARGET = enum.auto()  # a key of each target in the file; TARGET_<KEY> for the environment's target


@dataclass(frozen=True)
class Setting:
    key: str  # lower case: the file key (the environment variable is derived from it)
    parse: Parser[Any]
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
        registry,
        "source host (`gsoci.azurecr.io`, https) or URL (`http://127.0.0.1:5000`)",
        required=_REGISTRY_REQUIRED,
        default_text="required",
    ),
    Setting(
        "source_kind",
        choice(SourceKind),
        "`acr` (tag digests and times from `/acr/v1/<repo>/_tags`) or `oci`",
        default_text="`acr` for `*.azurecr.io`, else `oci`",
    ),
    Setting(
        "source_namespace",
        namespace,
        "only repositories below this path; the prefix is removed when mapping",
        default="",
    ),
    Setting(
        "source_repositories",
        repositories,
        "explicit repository list (comma-separated), for tokens that may not list the catalog",
        default=(),
        default_text="catalog",
    ),
    Setting(
        "source_allow_empty",
        boolean,
        "an empty catalog is not an error (by default it is: ACR answers a token that may see nothing "
        "with an empty list)",
        default=False,
        default_text="`false`",
    ),
    Setting("source_username_secret", text, "Key Vault secret name of the source (ACR token) user name"),
    Setting("source_password_secret", text, "Key Vault secret name of the source (ACR token) password"),
    Setting(
        "source_username",
        text,
        "source user name from the environment (local runs)",
        local_only=True,
        default_text="anonymous",
    ),
    Setting(
        "source_password",
        text,
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
        registry,
        "the mirror; `docker.io` means Docker Hub",
        scope=T,
        required=_REGISTRY_REQUIRED,
        default_text="required",
    ),
    Setting("namespace", namespace, "path prefix at the target", scope=T, default=""),
    Setting(
        "max_path_depth",
        number(integer=True, minimum=1),
        "path levels the target accepts",
        scope=T,
        in_env=False,
        default_text="2 for Docker Hub and Alibaba personal edition, else unlimited",
    ),
    Setting(
        "skip_artifact_types",
        types,
        "media/artifact types the target must not receive (comma-separated)",
        scope=T,
        default=frozenset(),
    ),
    Setting(
        "platforms",
        platforms,
        "only these platforms (`linux/amd64`, ...): an index with others is rewritten (new digest) for this target",
        scope=T,
        in_env=False,
        default_text="all (exact copies)",
    ),
    Setting(
        "drop_attestations",
        boolean,
        "leave buildx attestation manifests out of indexes (rewritten, new digest) for targets that refuse them",
        scope=T,
        in_env=False,
        default=False,
        default_text="`false`",
    ),
    Setting("username_secret", text, "Key Vault secret name of the target user name", scope=T),
    Setting("password_secret", text, "Key Vault secret name of the target password", scope=T),
    Setting(
        "username",
        text,
        "target user name (environment: local runs)",
        scope=T,
        local_only=True,
        default_text="anonymous",
    ),
    Setting(
        "password",
        text,
        "target password from the environment (local runs; never in the file)",
        scope=T,
        local_only=True,
        in_file=False,
        default_text="anonymous",
    ),
    Setting("username_env", text, "environment variable holding the target user name", scope=T, in_env=False),
    Setting("password_env", text, "environment variable holding the target password", scope=T, in_env=False),
    # filters: global, and per target in the file
    Setting(
        "repository_include",
        regex,
        "regular expression, full match on the source repository",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "repository_exclude",
        regex,
        "regular expression, full match on the source repository",
        scope=GT,
        default_text="none",
    ),
    Setting("tag_include", regex, "regular expression, full match on the tag", scope=GT, default_text="all"),
    Setting("tag_exclude", regex, "regular expression, full match on the tag", scope=GT, default_text="none"),
    Setting(
        "tag_min_age_days",
        number(),
        "only tags last pushed at least this many days ago (ACR sources)",
        scope=GT,
    ),
    Setting(
        "tag_max_age_days",
        number(),
        "only tags last pushed at most this many days ago (ACR sources)",
        scope=GT,
    ),
    Setting(
        "tag_keep_latest",
        number(integer=True, minimum=1),
        "only the N most recently pushed tags per repository (after the other filters; ACR sources); "
        "signature, attestation and referrers tags follow their image instead",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "tag_semver",
        semver,
        "only tags inside this version range, e.g. `>=1.2.0 <2` (`v` prefix optional; pre-releases only "
        "when the range names one)",
        scope=GT,
        default_text="all",
    ),
    Setting(
        "mappings",
        mappings,
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
        choice(Compare),
        "which tags the target has are compared with the source (one HEAD each): `name` none, "
        "`recent` those the source changed within `SYNC_RECHECK_HOURS` plus all once per "
        "`SYNC_FULL_CHECK_HOURS`, `digest` all on every run",
        default=Compare.RECENT,
        default_text="`recent`",
    ),
    Setting(
        "sync_recheck_hours",
        number(minimum=0),
        "`recent`: tags and referrers the source changed this recently are rechecked at the target",
        default=6.0,
    ),
    Setting(
        "sync_full_check_hours",
        number(minimum=1),
        "`recent`: each repository is fully rechecked (moved tags, referrers) once per this period",
        default=24.0,
    ),
    Setting(
        "sync_referrers",
        referrers,
        "referrers (signatures, SBOMs, attestations) mirrored with their images: `all`, `none`, or "
        "a list of artifact types",
        default=ReferrerPolicy(),
        default_text="`all`",
    ),
    Setting(
        "sync_concurrency",
        number(integer=True, minimum=1, maximum=64),
        "repositories and tags processed in parallel (each copy also runs 4 blob transfers)",
        default=8,
    ),
    # the request budget (docs/rate-limits.md): per process, shared by all its threads
    Setting(
        "requests_per_second",
        requests_per_second,
        "requests per second one process sends to the target, all its threads together (a "
        "fleet: the registry's budget divided by the instances; docs/rate-limits.md)",
        scope=T,
        default_text=f"{DOCKER_HUB_DEFAULTS.requests_per_second:g} for Docker Hub and Alibaba, "
        "else unlimited",
    ),
    Setting(
        "concurrent_requests",
        number(integer=True, minimum=1, maximum=1024),
        "requests one process has in flight at the target, all its threads together",
        scope=T,
        default_text=f"{DOCKER_HUB_DEFAULTS.concurrent_requests} for Docker Hub and Alibaba, "
        f"else {GENERIC_DEFAULTS.concurrent_requests}",
    ),
    Setting(
        "source_requests_per_second",
        requests_per_second,
        "requests per second one process sends to the source (an ACR: its ReadOps per minute / 60, "
        "divided by the instances)",
        default_text="unlimited",
    ),
    Setting(
        "source_concurrent_requests",
        number(integer=True, minimum=1, maximum=1024),
        "requests one process has in flight at the source",
        default_text="unlimited",
    ),
    Setting(
        "key_vault_url", https_url, "vault holding the credentials (the app's managed identity reads it)"
    ),
    Setting("sync_config", text, "YAML/JSON file with these settings and a list of `targets`", in_file=False),
    # the Functions app
    Setting(
        "sync_schedule",
        schedule,
        "timer CRON (six fields), read by the Functions host",
        default="0 */15 * * * *",
    ),
    Setting("sync_queue", queue_name, "the timer's work queue", default=DEFAULT_QUEUE),
    Setting(
        "sync_event_queue",
        queue_name,
        "the work queue of Event Grid events (a worker function of its own: a push never waits behind "
        "the timer's backfill)",
        default=DEFAULT_EVENT_QUEUE,
    ),
    Setting(
        "sync_time_budget_seconds",
        number(minimum=10),
        "a worker starts no new copy after this; the rest is re-enqueued",
        default=1500.0,
    ),
    Setting(
        "sync_daily_check",
        boolean,
        "the timer's first run of each UTC day runs `check` and logs every finding (docs/check.md); "
        "it costs each registry a few requests a day",
        default=True,
        default_text="`true`",
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


def documented_default(setting: Setting) -> str:
    """The default as the README and the schema's descriptions show it."""
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
            lines.append(f"| `{s.env_name}` | {s.help} | {documented_default(s)} |")
    lines += [
        "",
        "Keys of each entry of `targets` in the file:",
        "",
        "| key | meaning | default |",
        "| --- | --- | --- |",
    ]
    for s in TARGET_SETTINGS:
        if s.in_file:
            lines.append(f"| `{s.key}` | {s.help} | {documented_default(s)} |")
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
