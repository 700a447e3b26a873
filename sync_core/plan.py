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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .catalog import Source, TagInfo
from .config import Compare, Filters, SyncConfig, TargetConfig
from .copy import AtTarget
from .errors import NameRejected, describe
from .names import MAX_REPOSITORY_LENGTH, is_repository, relative_to_namespace
from .registry import RegistryClient
from .report import Recorder

PLAN_CONCURRENCY_FACTOR = 8  # listings are one small request each: plan wider than we copy
MAX_PLAN_CONCURRENCY = 64


class Reason(str, enum.Enum):
    """Why a tag is to be copied (shown by ``plan``)."""

    MISSING = "missing"  # the target's tag listing does not have it
    DIGEST_DIFFERS = "digest differs"  # SYNC_COMPARE=digest: the target's tag points elsewhere
    PUSHED = "pushed"  # an ImagePushed event
    QUEUED = "queued"  # a queue message for one tag
    REQUESTED = "requested"  # `copy REPOSITORY:TAG`


@dataclass(frozen=True)
class TagWork:
    """One tag to copy to one target."""

    target: str
    source_repository: str
    target_repository: str
    tag: str
    digest: str | None
    reason: Reason
    at_target: AtTarget = AtTarget.UNKNOWN


# -- selection ----------------------------------------------------------------------------------


def repository_selected(repository: str, filters: Filters) -> bool:
    if filters.repository_include and not filters.repository_include.fullmatch(repository):
        return False
    return not (filters.repository_exclude and filters.repository_exclude.fullmatch(repository))


def repository_wanted(config: SyncConfig, target: TargetConfig, repository: str) -> bool:
    """Both the global and the target's repository filters let ``repository`` through."""
    return repository_selected(repository, config.filters) and repository_selected(repository, target.filters)


def select_tags(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
    """The tags that pass ``filters``; keep-latest applies after the name and age filters."""
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


def target_repository(source_repo: str, source_namespace: str, target: TargetConfig) -> str:
    """Target namespace + source repository without the source namespace."""
    relative = relative_to_namespace(source_repo, source_namespace)
    if relative is None:
        raise NameRejected(f"{source_repo} is outside the source namespace {source_namespace}")
    name = f"{target.namespace}/{relative}" if target.namespace else relative
    if not is_repository(name) or len(name) > MAX_REPOSITORY_LENGTH:
        raise NameRejected(f"{name!r} is not a valid repository name at {target.host}")
    depth = name.count("/") + 1
    if target.max_path_depth is not None and depth > target.max_path_depth:
        raise NameRejected(
            f"{name} has {depth} path levels; {target.name} ({target.host}) accepts at most {target.max_path_depth}"
        )
    return name


def interleave(work: list[TagWork]) -> list[TagWork]:
    """Round-robin over destination repositories (order within each kept).

    Manifest pushes to one repository are serialized (see ``BlobLedger.manifest_writes``), so
    concurrent copies should be of tags in different repositories, not five tags of one.
    """
    groups: dict[tuple[str, str], list[TagWork]] = {}
    for item in work:
        groups.setdefault((item.target, item.target_repository), []).append(item)
    out: list[TagWork] = []
    queues = list(groups.values())
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
    ) -> list[TagWork]:
        """What every target lacks of ``repositories`` (default: the whole source catalog)."""
        repositories = self.source.repositories() if repositories is None else repositories
        recorder.summary.repositories = len(repositories)
        work: list[TagWork] = []
        workers = min(plan_concurrency(self.config.concurrency), max(1, len(repositories)))
        with ThreadPoolExecutor(workers, thread_name_prefix="plan") as pool:
            for found in pool.map(lambda r: self.plan_repository(r, recorder, targets), repositories):
                work.extend(found)
                if progress:
                    progress()
        return work

    def plan_repository(
        self, repository: str, recorder: Recorder, targets: Iterable[str] | None = None
    ) -> list[TagWork]:
        """What each target lacks of ``repository``."""
        chosen = [t for t in self.selected_targets(targets) if repository_wanted(self.config, t, repository)]
        if not chosen:
            return []  # excluded everywhere: not even listed (ACR read quota; may be unreadable)
        try:
            tags = self.source.tags(repository)
        except Exception as exc:  # noqa: BLE001 - one repository's failure must not stop the rest
            for target in chosen:
                recorder.failed(repository, f"listing source tags: {describe(exc)}", target.name)
            return []
        now = self.clock()
        work: list[TagWork] = []
        for target in chosen:
            work.extend(self._diff(repository, tags, target, recorder, now))
        return work

    def _diff(
        self, repository: str, tags: list[TagInfo], target: TargetConfig, recorder: Recorder, now: dt.datetime
    ) -> list[TagWork]:
        selected = wanted_tags(self.config, target, repository, tags, now)
        if not selected:
            return []
        recorder.summary.considered(target.name, len(selected))
        try:
            dst_repo = target_repository(repository, self.config.source.namespace, target)
        except NameRejected as exc:
            recorder.skipped(repository, str(exc), target.name, tags=len(selected))
            return []
        client = self.targets[target.name]
        try:
            listed = client.list_tags(dst_repo)
            absent = AtTarget.REPOSITORY_ABSENT if listed is None else AtTarget.TAG_ABSENT
            present = set(listed or ())
            work = []
            for tag in selected:
                if tag.name not in present:
                    work.append(
                        TagWork(target.name, repository, dst_repo, tag.name, tag.digest, Reason.MISSING, absent)
                    )
                elif self.config.compare is Compare.DIGEST:
                    source_digest = tag.digest or self._source_digest(repository, tag.name)
                    info = client.head_manifest(dst_repo, tag.name)
                    if info is None or info.digest != source_digest:
                        work.append(
                            TagWork(target.name, repository, dst_repo, tag.name, source_digest,
                                    Reason.DIGEST_DIFFERS, AtTarget.TAG_DIFFERS)
                        )  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            recorder.failed(
                f"{repository} -> {target.name}", f"diff: {describe(exc)}", target.name, tags=len(selected)
            )
            return []
        recorder.summary.missing(target.name, len(work))
        return work

    def _source_digest(self, repository: str, tag: str) -> str | None:
        info = self.source.client.head_manifest(repository, tag)
        return info.digest if info else None

    def image(self, repository: str, reference: str, digest: str | None, reason: Reason,
              recorder: Recorder, targets: Iterable[str] | None = None) -> list[TagWork]:  # fmt: skip
        """One image for each target by name mapping alone (tag filters do not apply)."""
        work = []
        for target in self.selected_targets(targets):
            try:
                dst_repo = target_repository(repository, self.config.source.namespace, target)
            except NameRejected as exc:
                sep = "@" if reference.startswith("sha256:") else ":"
                recorder.skipped(f"{repository}{sep}{reference}", str(exc), target.name)
                continue
            work.append(TagWork(target.name, repository, dst_repo, reference, digest, reason))
        return work
