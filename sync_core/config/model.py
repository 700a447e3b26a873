"""The configuration as the rest of the core sees it: plain, frozen values.

Nothing here parses or reads: :mod:`sync_core.config.settings` declares every setting and its
parser, :mod:`sync_core.config.load` builds these values from the environment and a file. May
import only :mod:`sync_core.errors` and the registry names grammar.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sync_core.errors import ConfigError

DEFAULT_QUEUE = "sync-work"
DEFAULT_EVENT_QUEUE = "sync-events"


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
    requests_per_second: float | None = None  # one process's request budget (None: no limit)
    concurrent_requests: int | None = None


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
class TargetRules:
    """What a target must not receive, and how its indexes may be narrowed (opt-in)."""

    skip_types: frozenset[str] = frozenset()  # skip_artifact_types
    platforms: frozenset[str] | None = None  # None: every platform (an exact copy)
    drop_attestations: bool = False

    @property
    def rewrites(self) -> bool:
        """Whether this target may get indexes rewritten to fewer entries (never by default)."""
        return self.platforms is not None or self.drop_attestations

    @property
    def narrowing(self) -> str:
        """The narrowing rules as a narrowed index records them (``io.registry-sync.narrowed``)."""
        platforms = ",".join(sorted(self.platforms)) if self.platforms is not None else "all"
        return f"platforms={platforms};attestations={'dropped' if self.drop_attestations else 'kept'}"


@dataclass(frozen=True)
class TargetConfig:
    name: str
    registry: str
    namespace: str = ""
    credentials: CredentialSpec = CredentialSpec()
    filters: Filters = Filters()
    max_path_depth: int | None = None
    mappings: tuple[MappingRule, ...] = ()
    rules: TargetRules = TargetRules()  # what it must not receive, how its indexes may be narrowed
    requests_per_second: float | None = None  # one process's request budget (None: no limit)
    concurrent_requests: int | None = None

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
    event_queue: str = DEFAULT_EVENT_QUEUE
    time_budget_seconds: float = 1500.0
    daily_check: bool = True
    mappings: tuple[MappingRule, ...] = ()

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        raise ConfigError(
            f"target {name!r} is not configured (known: {', '.join(t.name for t in self.targets)})"
        )
