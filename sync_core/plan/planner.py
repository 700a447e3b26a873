"""Planning: which tags each target should have, which it lacks, and in what order to copy them.

Pure selection (filters, name mapping) comes first in this module; :class:`Planner` then lists
the source and each target repository and produces :class:`WorkItem` items, each carrying what
the listing of the destination said (:class:`~sync_core.engine.copier.AtTarget`) so that the copier does
not ask again. Failures and skips go into the run's :class:`Findings` (the run's recorder).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from sync_core.config.model import Compare, SyncConfig, TargetConfig
from sync_core.engine.destination import AtTarget
from sync_core.engine.narrowing import narrowed_from
from sync_core.errors import NameRejected, NotFound, describe, is_transient
from sync_core.logs import InvocationPool
from sync_core.plan.catalog import ManifestEntry, Source, TagInfo
from sync_core.plan.mapping import check_mappings, map_repository
from sync_core.plan.selection import repository_wanted, wanted_tags
from sync_core.plan.work import Check, Reason, WorkItem, WorkKind
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    relative_to_namespace,
)

_T = TypeVar("_T")


DOCKER_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_LIST})


UNREADABLE = "ACR refuses to serve it (changeableAttributes.readEnabled=false)"


PLAN_CONCURRENCY_FACTOR = 8  # listings are one small request each: plan wider than we copy


MAX_PLAN_CONCURRENCY = 64


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


def plan_concurrency(concurrency: int) -> int:
    """Repositories listed at once: planning is round trips of small answers, not transfers."""
    return max(concurrency, min(MAX_PLAN_CONCURRENCY, concurrency * PLAN_CONCURRENCY_FACTOR))


# -- the planner --------------------------------------------------------------------------------


class Findings(Protocol):
    """Where the planner reports what it finds besides work: what each target was asked to consider
    and lacks, skips and failures (the run's :class:`~sync_core.report.recorder.Recorder` is one)."""

    def catalog(self, repositories: int, mapped: dict[str, dict[str, str]]) -> None: ...

    def considered(self, target: str, tags: int) -> None: ...

    def missing(self, target: str, tags: int) -> None: ...

    def skipped(self, where: str, reason: str, target: str, tags: int = 1) -> None: ...

    def failed(
        self, where: str, reason: str, target: str | None = None, tags: int = 1, retry: bool = True
    ) -> None: ...


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
        findings: Findings,
        repositories: list[str] | None = None,
        targets: list[str] | None = None,
        progress: Callable[[], None] | None = None,
        check: Check | None = None,
    ) -> list[WorkItem]:
        """What every target lacks of ``repositories`` (default: the whole source catalog)."""
        repositories = self.source.repositories() if repositories is None else repositories
        mapped = check_mappings(self.config, repositories)
        findings.catalog(
            len(repositories),
            {
                target: {src: dst for src, dst in names.items() if dst != self._default_name(target, src)}
                for target, names in mapped.items()
            },
        )
        work: list[WorkItem] = []
        workers = min(plan_concurrency(self.config.concurrency), max(1, len(repositories)))
        with InvocationPool(workers, thread_name_prefix="plan") as pool:
            for found in pool.map(lambda r: self.plan_repository(r, findings, targets, check), repositories):
                work.extend(found)
                if progress:
                    progress()
        return work

    def plan_repository(
        self,
        repository: str,
        findings: Findings,
        targets: Iterable[str] | None = None,
        check: Check | None = None,
        since: dt.datetime | None = None,
    ) -> list[WorkItem]:
        """What each target lacks of ``repository``.

        ``check`` (default from ``SYNC_COMPARE``) says which tags the targets have are compared
        with the source, and which untagged manifests (candidate referrers) are looked at.
        ``since``: when the repository was last confirmed mirrored (the timer's state); what the
        source changed after it is a new push (its copy measures the mirror lag), the rest is
        backfill. None (the CLI, a first run): all of it is backfill.
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
                findings.failed(repository, f"listing source tags: {describe(exc)}", target.name)
            return []
        try:
            candidates = self._untagged(repository, check, now)
            if candidates:
                candidates = _unique(candidates, lambda e: e.digest)
        except Exception as exc:  # noqa: BLE001 - the tags are still planned; referrers asked per tag
            for target in chosen:
                reason = f"listing untagged manifests (referrers): {describe(exc)}"
                findings.failed(repository, reason, target.name, tags=0, retry=is_transient(exc))
            candidates = None
        work: list[WorkItem] = []
        digests: dict[str, str | None] = {}  # asked of the source once, whatever the number of targets
        for target in chosen:
            work.extend(
                self._diff(repository, tags, candidates, target, findings, now, check, digests, since)
            )
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
        findings: Findings,
        now: dt.datetime,
        check: Check,
        digests: dict[str, str | None],
        since: dt.datetime | None,
    ) -> list[WorkItem]:
        def pushed(when: dt.datetime | None) -> dt.datetime | None:
            """A change after ``since`` is a new push (it has a lag); anything else is backfill."""
            return when if when is not None and since is not None and when > since else None

        selected = wanted_tags(self.config, target, repository, tags, now)
        if not selected and not candidates:
            return []
        findings.considered(target.name, len(selected))
        try:
            dst_repo = map_repository(self.config, target, repository)
        except NameRejected as exc:
            findings.skipped(repository, str(exc), target.name, tags=len(selected))
            return []
        readable = []
        for tag in selected:
            if tag.readable:
                readable.append(tag)
            else:
                findings.skipped(f"{repository}:{tag.name}", UNREADABLE, target.name)
        client = self.targets[target.name]
        try:
            listed = client.list_tags(dst_repo) if readable else []
            absent = AtTarget.REPOSITORY_ABSENT if listed is None else AtTarget.TAG_ABSENT
            present = set(listed or ())
            work = []

            def copy(tag: TagInfo, digest: str | None, reason: Reason, at: AtTarget) -> None:
                when = pushed(tag.updated)
                work.append(
                    WorkItem(
                        target.name, repository, dst_repo, WorkKind.TAG, tag.name, digest, reason, at, when
                    )
                )

            for tag in readable:
                if tag.name not in present:
                    copy(tag, tag.digest, Reason.MISSING, absent)
                elif self._recheck(tag, check, now):
                    source_digest = tag.digest or self._source_digest(repository, tag.name, digests)
                    info = client.head_manifest(dst_repo, tag.name)
                    if info is None or not self._same(
                        client, target, dst_repo, tag.name, info.digest, source_digest
                    ):
                        copy(tag, source_digest, Reason.DIGEST_DIFFERS, AtTarget.TAG_DIFFERS)
                    elif (
                        check is Check.FULL
                        and source_digest
                        and candidates is None
                        and self.config.referrers.enabled
                    ):
                        # a source without an untagged listing: ask it for this image's referrers
                        work.append(
                            WorkItem(
                                target.name,
                                repository,
                                dst_repo,
                                WorkKind.REFERRERS,
                                None,
                                source_digest,
                                Reason.FULL_CHECK,
                                AtTarget.TAG_CURRENT,
                            )
                        )
        except Exception as exc:  # noqa: BLE001
            findings.failed(
                f"{repository} -> {target.name}", f"diff: {describe(exc)}", target.name, tags=len(readable)
            )
            return []
        findings.missing(target.name, sum(1 for w in work if w.kind is WorkKind.TAG))
        reason = Reason.FULL_CHECK if check is Check.FULL else Reason.RECENT
        work.extend(
            WorkItem(
                target.name,
                repository,
                dst_repo,
                WorkKind.REFERRER,
                None,
                e.digest,
                reason,
                pushed=pushed(e.updated),
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
        rules = target.rules
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
        kind: WorkKind,
        tag: str | None,
        digest: str | None,
        reason: Reason,
        findings: Findings,
        targets: Iterable[str] | None = None,
        pushed: dt.datetime | None = None,
    ) -> list[WorkItem]:
        """One item of ``kind`` for each target by name mapping alone (tag filters do not apply)."""
        work = []
        for target in self.selected_targets(targets):
            try:
                dst_repo = map_repository(self.config, target, repository)
            except NameRejected as exc:
                sep = ":" if tag is not None else "@"
                findings.skipped(f"{repository}{sep}{tag or digest}", str(exc), target.name)
                continue
            work.append(WorkItem(target.name, repository, dst_repo, kind, tag, digest, reason, pushed=pushed))
        return work
