"""Planning: which tags each target should have, which it lacks, and in what order to copy them.

Pure selection (filters, name mapping) comes first in this module; :class:`Planner` then lists
the source and each target repository and produces :class:`TagWork` items, each carrying what
the listing of the destination said (:class:`~sync_core.copy.AtTarget`) so that the copier does
not ask again. Failures and skips go into the run's :class:`~sync_core.report.Recorder`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .catalog import ManifestEntry, Source, TagInfo
from .config import Compare, Filters, MappingRule, SyncConfig, TargetConfig
from .copy import AtTarget, TargetRules, narrowed_from
from .errors import ConfigError, NameRejected, NotFound, describe, is_transient
from .logs import InvocationPool
from .names import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_REPOSITORY_LENGTH,
    attached_subject,
    is_digest,
    is_fallback_tag,
    is_repository,
    relative_to_namespace,
)
from .registry import RegistryClient
from .report import Recorder

_T = TypeVar("_T")

DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_LIST})
UNREADABLE = "ACR refuses to serve it (changeableAttributes.readEnabled=false)"
PLAN_CONCURRENCY_FACTOR = 8  # listings are one small request each: plan wider than we copy
MAX_PLAN_CONCURRENCY = 64


class WorkKind(str, enum.Enum):
    TAG = "tag"  # a tag (and the referrers of what it points at)
    REFERRER = "referrer"  # an untagged manifest: mirrored if it is a referrer of mirrored content
    REFERRERS_OF = "referrers"  # the referrers the source lists for a manifest (by digest)


class Reason(str, enum.Enum):
    """Why something is to be copied (shown by ``plan``)."""

    MISSING = "missing"  # the target's tag listing does not have it
    DIGEST_DIFFERS = "digest differs"  # the target's tag points elsewhere (a moved tag)
    PUSHED = "pushed"  # an ImagePushed event
    QUEUED = "queued"  # a queue message for one tag
    REQUESTED = "requested"  # `copy REPOSITORY:TAG`
    RECENT = "changed recently"  # an untagged manifest the source changed within the recheck window
    FULL_CHECK = "full check"  # the periodic full check looks at everything


class Check(str, enum.Enum):
    """How much of what a target already has a run looks at again (see ``SYNC_COMPARE``)."""

    NAME = "name"  # nothing: only what is missing by name
    RECENT = "recent"  # what the source changed within the recheck window
    FULL = "full"  # everything


@dataclass(frozen=True)
class TagWork:
    """One thing to copy to one target: a tag, or a manifest by digest (see :class:`WorkKind`)."""

    target: str
    source_repository: str
    target_repository: str
    tag: str  # the tag; the digest for REFERRER and REFERRERS_OF work
    digest: str | None
    reason: Reason
    at_target: AtTarget = AtTarget.UNKNOWN
    kind: WorkKind = WorkKind.TAG
    pushed: dt.datetime | None = None  # when the source got it (listing time or event time): mirror lag

    @property
    def is_tag(self) -> bool:
        return self.kind is WorkKind.TAG

    @property
    def item(self) -> str:
        """The source reference as summaries name it."""
        sep = ":" if self.is_tag else "@"
        return f"{self.source_repository}{sep}{self.tag}"


# -- selection ----------------------------------------------------------------------------------


def repository_selected(repository: str, filters: Filters) -> bool:
    if filters.repository_include and not filters.repository_include.fullmatch(repository):
        return False
    return not (filters.repository_exclude and filters.repository_exclude.fullmatch(repository))


def repository_wanted(config: SyncConfig, target: TargetConfig, repository: str) -> bool:
    """Both the global and the target's repository filters let ``repository`` through."""
    return repository_selected(repository, config.filters) and repository_selected(repository, target.filters)


def select_tags(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
    """The tags that pass ``filters``; keep-latest applies after the name, age and version filters.

    Referrers tags (``sha256-<hex>``, the referrers tag schema) are never selected: they are
    indexes of referrers, mirrored with their subject (``referrers.py``), not releases. Cosign
    tags (``sha256-<hex>.sig``, ``.att``, ``.sbom``) are not releases either: where the listing
    has digests (ACR) they follow the image they belong to, whatever the filters; elsewhere the
    name filters decide as for any tag.
    """
    releases = [t for t in tags if not is_fallback_tag(t.name)]
    digests_known = any(t.digest for t in releases)
    attached = [t for t in releases if digests_known and attached_subject(t.name)]
    chosen = _filtered([t for t in releases if t not in attached], filters, now)
    if attached:
        images = {t.digest for t in chosen if t.digest}
        chosen.extend(t for t in attached if attached_subject(t.name) in images)
    return chosen


def _filtered(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
    chosen = []
    for tag in tags:
        if filters.tag_include and not filters.tag_include.fullmatch(tag.name):
            continue
        if filters.tag_exclude and filters.tag_exclude.fullmatch(tag.name):
            continue
        if filters.min_age_days is not None or filters.max_age_days is not None:
            if tag.updated is None:
                continue  # age unknown: never guess
            age_days = (now - tag.updated).total_seconds() / 86400
            if filters.min_age_days is not None and age_days < filters.min_age_days:
                continue
            if filters.max_age_days is not None and age_days > filters.max_age_days:
                continue
        if filters.semver is not None and not filters.semver.matches(tag.name):
            continue
        chosen.append(tag)
    if filters.keep_latest is not None:
        dated = [t for t in chosen if t.updated is not None]
        dated.sort(key=lambda t: (t.updated, t.name), reverse=True)
        chosen = dated[: filters.keep_latest]
    return chosen


def wanted_tags(
    config: SyncConfig, target: TargetConfig, repository: str, tags: list[TagInfo], now: dt.datetime
) -> list[TagInfo]:
    """Tags of ``repository`` that ``target`` should have (global and target filters both apply)."""
    if not repository_wanted(config, target, repository):
        return []
    return select_tags(select_tags(tags, config.filters, now), target.filters, now)


def target_repository(
    source_repo: str, source_namespace: str, target: TargetConfig, mappings: tuple[MappingRule, ...] = ()
) -> str:
    """Where ``source_repo`` goes at ``target``.

    The source repository without the source namespace is matched (in full) against the target's
    mapping rules, then the global ones (``mappings``); the first match's template is the whole
    target repository (a ``null`` template: not mirrored there). Without a match: the target
    namespace + the source repository without the source namespace. Raises :class:`NameRejected`
    (a skip) when the target cannot hold the name or a rule says so.
    """
    relative = relative_to_namespace(source_repo, source_namespace)
    if relative is None:
        raise NameRejected(f"{source_repo} is outside the source namespace {source_namespace}")
    name = f"{target.namespace}/{relative}" if target.namespace else relative
    for rule in (*target.mappings, *mappings):
        match = rule.match.fullmatch(relative)
        if match is None:
            continue
        if rule.replace is None:
            raise NameRejected(
                f"{source_repo}: a mapping rule ({rule.match.pattern!r}: null) leaves it out of {target.name}"
            )
        name = match.expand(rule.replace)
        break
    if not is_repository(name) or len(name) > MAX_REPOSITORY_LENGTH:
        raise NameRejected(f"{name!r} is not a valid repository name at {target.host}")
    depth = name.count("/") + 1
    if target.max_path_depth is not None and depth > target.max_path_depth:
        raise NameRejected(
            f"{name} has {depth} path levels; {target.name} ({target.host}) accepts at most {target.max_path_depth}"
        )
    return name


def map_repository(config: SyncConfig, target: TargetConfig, repository: str) -> str:
    """:func:`target_repository` with the configuration's namespace and global mapping rules."""
    return target_repository(repository, config.source.namespace, target, config.mappings)


def check_mappings(
    config: SyncConfig,
    repositories: Iterable[str],
    rejected: Callable[[TargetConfig, str, NameRejected], None] | None = None,
) -> dict[str, dict[str, str]]:
    """``{target: {source repository: target repository}}`` for the repositories each target gets.

    Two source repositories mapped to one target repository would overwrite each other's tags:
    that is a configuration error (every such pair is listed), found before anything is copied.
    ``rejected`` hears of each wanted repository whose name a target cannot hold.
    """
    problems = []
    mapped: dict[str, dict[str, str]] = {}
    for target in config.targets:
        seen: dict[str, str] = {}
        for repository in repositories:
            if not repository_wanted(config, target, repository):
                continue
            try:
                name = map_repository(config, target, repository)
            except NameRejected as exc:
                if rejected is not None:
                    rejected(target, repository, exc)
                continue
            if name in seen:
                problems.append(
                    f"targets[{target.name}].mappings: {seen[name]} and {repository} both map to {name}"
                )
            seen.setdefault(name, repository)
            mapped.setdefault(target.name, {})[repository] = name
    if problems:
        raise ConfigError(problems)
    return mapped


def _unique(items: Iterable[_T], key: Callable[[_T], str]) -> list[_T]:
    """``items`` without repeats of a key (the first one stays). A listing paged while the source
    changes can name a tag or manifest twice; two works for one tag at one target would race."""
    seen: set[str] = set()
    out = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
    return out


def interleave(work: list[TagWork], round_robin: bool = True) -> list[list[TagWork]]:
    """Work grouped per source image; with ``round_robin``, the groups alternate repositories.

    A group is one source tag (or digest) with every target that needs it: copied together, its
    blobs are read from the source once. Manifest pushes to one repository are serialized (see
    ``BlobLedger.manifest_writes``), so concurrent copies should be of different repositories,
    not five tags of one. Order within a repository is kept; without ``round_robin`` (one copy
    at a time) the planned order is kept.
    """
    images: dict[tuple[WorkKind, str, str], list[TagWork]] = {}
    for item in work:
        images.setdefault((item.kind, item.source_repository, item.tag), []).append(item)
    if not round_robin:
        return list(images.values())
    repositories: dict[str, list[list[TagWork]]] = {}
    for (_, repository, _), group in images.items():
        repositories.setdefault(repository, []).append(group)
    out: list[list[TagWork]] = []
    queues = list(repositories.values())
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def plan_concurrency(concurrency: int) -> int:
    """Repositories listed at once: planning is round trips of small answers, not transfers."""
    return max(concurrency, min(MAX_PLAN_CONCURRENCY, concurrency * PLAN_CONCURRENCY_FACTOR))


# -- the planner --------------------------------------------------------------------------------


class Planner:
    """Lists the source and the targets and says what each target lacks."""

    def __init__(
        self,
        config: SyncConfig,
        source: Source,
        targets: dict[str, RegistryClient],
        clock: Callable[[], dt.datetime],
    ):
        self.config = config
        self.source = source
        self.targets = targets
        self.clock = clock

    @property
    def default_check(self) -> Check:
        return {Compare.NAME: Check.NAME, Compare.RECENT: Check.RECENT, Compare.DIGEST: Check.FULL}[
            self.config.compare
        ]

    def selected_targets(self, names: Iterable[str] | None) -> list[TargetConfig]:
        if names is None:
            return list(self.config.targets)
        return [self.config.target(n) for n in names]

    def plan(
        self,
        recorder: Recorder,
        repositories: list[str] | None = None,
        targets: list[str] | None = None,
        progress: Callable[[], None] | None = None,
        check: Check | None = None,
    ) -> list[TagWork]:
        """What every target lacks of ``repositories`` (default: the whole source catalog)."""
        repositories = self.source.repositories() if repositories is None else repositories
        recorder.summary.repositories = len(repositories)
        mapped = check_mappings(self.config, repositories)
        recorder.summary.mapped = {
            target: {src: dst for src, dst in names.items() if dst != self._default_name(target, src)}
            for target, names in mapped.items()
        }
        work: list[TagWork] = []
        workers = min(plan_concurrency(self.config.concurrency), max(1, len(repositories)))
        with InvocationPool(workers, thread_name_prefix="plan") as pool:
            for found in pool.map(lambda r: self.plan_repository(r, recorder, targets, check), repositories):
                work.extend(found)
                if progress:
                    progress()
        return work

    def plan_repository(
        self,
        repository: str,
        recorder: Recorder,
        targets: Iterable[str] | None = None,
        check: Check | None = None,
    ) -> list[TagWork]:
        """What each target lacks of ``repository``.

        ``check`` (default from ``SYNC_COMPARE``) says which tags the targets have are compared
        with the source, and which untagged manifests (candidate referrers) are looked at.
        """
        check = check or self.default_check
        chosen = [t for t in self.selected_targets(targets) if repository_wanted(self.config, t, repository)]
        if not chosen:
            return []  # excluded everywhere: not even listed (ACR read quota; may be unreadable)
        now = self.clock()
        try:
            tags = _unique(self.source.tags(repository), lambda t: t.name)
        except Exception as exc:  # noqa: BLE001 - one repository's failure must not stop the rest
            for target in chosen:
                recorder.failed(repository, f"listing source tags: {describe(exc)}", target.name)
            return []
        try:
            candidates = self._untagged(repository, check, now)
            if candidates:
                candidates = _unique(candidates, lambda e: e.digest)
        except Exception as exc:  # noqa: BLE001 - the tags are still planned; referrers asked per tag
            for target in chosen:
                reason = f"listing untagged manifests (referrers): {describe(exc)}"
                recorder.failed(repository, reason, target.name, tags=0, retry=is_transient(exc))
            candidates = None
        work: list[TagWork] = []
        digests: dict[str, str | None] = {}  # asked of the source once, whatever the number of targets
        for target in chosen:
            work.extend(self._diff(repository, tags, candidates, target, recorder, now, check, digests))
        return work

    def _untagged(self, repository: str, check: Check, now: dt.datetime) -> list[ManifestEntry] | None:
        """Untagged manifests that may be referrers added to content already mirrored.

        Only a source that lists untagged manifests (ACR ``_manifests``) has them: recently
        changed ones for a RECENT check, all for a FULL one; None from a source that cannot list
        them. Children of a listed index and Docker schema 2 manifests (which cannot carry a
        ``subject``) are not candidates.
        """
        if check is Check.NAME or not self.config.referrers.enabled:
            return []
        since = None if check is Check.FULL else now - dt.timedelta(hours=self.config.recheck_hours)
        entries = self.source.manifests(repository, since)
        if entries is None:
            return None
        children = {c for e in entries for c in e.references}
        return [
            e
            for e in entries
            if not e.tags and e.digest not in children and e.readable and e.media_type not in DOCKER_TYPES
        ]

    def _recheck(self, tag: TagInfo, check: Check, now: dt.datetime) -> bool:
        """Whether a tag the target has is compared with the source (one HEAD at the target)."""
        if check is Check.FULL:
            return True
        if check is Check.NAME or tag.updated is None:
            return False
        return now - tag.updated <= dt.timedelta(hours=self.config.recheck_hours)

    def _diff(
        self,
        repository: str,
        tags: list[TagInfo],
        candidates: list[ManifestEntry] | None,
        target: TargetConfig,
        recorder: Recorder,
        now: dt.datetime,
        check: Check,
        digests: dict[str, str | None],
    ) -> list[TagWork]:
        selected = wanted_tags(self.config, target, repository, tags, now)
        if not selected and not candidates:
            return []
        recorder.summary.considered(target.name, len(selected))
        try:
            dst_repo = map_repository(self.config, target, repository)
        except NameRejected as exc:
            recorder.skipped(repository, str(exc), target.name, tags=len(selected))
            return []
        readable = []
        for tag in selected:
            if tag.readable:
                readable.append(tag)
            else:
                recorder.skipped(f"{repository}:{tag.name}", UNREADABLE, target.name)
        client = self.targets[target.name]
        try:
            listed = client.list_tags(dst_repo) if readable else []
            absent = AtTarget.REPOSITORY_ABSENT if listed is None else AtTarget.TAG_ABSENT
            present = set(listed or ())
            work = []
            for tag in readable:
                if tag.name not in present:
                    work.append(
                        TagWork(
                            target.name,
                            repository,
                            dst_repo,
                            tag.name,
                            tag.digest,
                            Reason.MISSING,
                            absent,
                            pushed=tag.updated,
                        )
                    )
                elif self._recheck(tag, check, now):
                    source_digest = tag.digest or self._source_digest(repository, tag.name, digests)
                    info = client.head_manifest(dst_repo, tag.name)
                    if info is None or not self._same(
                        client, target, dst_repo, tag.name, info.digest, source_digest
                    ):
                        work.append(
                            TagWork(
                                target.name,
                                repository,
                                dst_repo,
                                tag.name,
                                source_digest,
                                Reason.DIGEST_DIFFERS,
                                AtTarget.TAG_DIFFERS,
                                pushed=tag.updated,
                            )
                        )
                    elif (
                        check is Check.FULL
                        and source_digest
                        and candidates is None
                        and self.config.referrers.enabled
                    ):
                        # a source without an untagged listing: ask it for this image's referrers
                        work.append(
                            TagWork(
                                target.name,
                                repository,
                                dst_repo,
                                source_digest,
                                source_digest,
                                Reason.FULL_CHECK,
                                AtTarget.TAG_CURRENT,
                                kind=WorkKind.REFERRERS_OF,
                            )
                        )
        except Exception as exc:  # noqa: BLE001
            recorder.failed(
                f"{repository} -> {target.name}", f"diff: {describe(exc)}", target.name, tags=len(readable)
            )
            return []
        recorder.summary.missing(target.name, sum(1 for w in work if w.kind is WorkKind.TAG))
        reason = Reason.FULL_CHECK if check is Check.FULL else Reason.RECENT
        work.extend(
            TagWork(
                target.name,
                repository,
                dst_repo,
                e.digest,
                e.digest,
                reason,
                kind=WorkKind.REFERRER,
                pushed=e.updated,
            )
            for e in candidates or ()
        )
        return work

    @staticmethod
    def _same(
        client: RegistryClient,
        target: TargetConfig,
        repository: str,
        tag: str,
        held: str | None,
        source: str | None,
    ) -> bool:
        """Whether the target's ``tag`` (digest ``held``) is the source's ``source``: the same digest,
        or, at a target that narrows indexes, an index narrowed from it by the current rules (one GET)."""
        if held is not None and held == source:
            return True
        rules = TargetRules.of(target)
        if not rules.rewrites or source is None:
            return False
        try:
            return narrowed_from(client.get_manifest(repository, tag), rules) == source
        except NotFound:
            return False  # deleted since the HEAD: missing

    def _default_name(self, target: str, repository: str) -> str:
        """Where ``repository`` would go without mapping rules (to show the rules' effect)."""
        relative = relative_to_namespace(repository, self.config.source.namespace) or repository
        namespace = self.config.target(target).namespace
        return f"{namespace}/{relative}" if namespace else relative

    def _source_digest(self, repository: str, tag: str, known: dict[str, str | None]) -> str | None:
        """The tag's digest at the source (a listing without digests): one HEAD, kept in ``known``."""
        if tag not in known:
            info = self.source.client.head_manifest(repository, tag)
            known[tag] = info.digest if info else None
        return known[tag]

    def image(
        self,
        repository: str,
        reference: str,
        digest: str | None,
        reason: Reason,
        recorder: Recorder,
        targets: Iterable[str] | None = None,
        kind: WorkKind = WorkKind.TAG,
        pushed: dt.datetime | None = None,
    ) -> list[TagWork]:
        """One image for each target by name mapping alone (tag filters do not apply)."""
        work = []
        for target in self.selected_targets(targets):
            try:
                dst_repo = map_repository(self.config, target, repository)
            except NameRejected as exc:
                sep = "@" if is_digest(reference) else ":"
                recorder.skipped(f"{repository}{sep}{reference}", str(exc), target.name)
                continue
            work.append(
                TagWork(
                    target.name, repository, dst_repo, reference, digest, reason, kind=kind, pushed=pushed
                )
            )
        return work
