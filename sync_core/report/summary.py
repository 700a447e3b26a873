"""What a run did: counts per run and per target, skips, failures and warnings (:class:`Summary`).

Only counts and lists; :class:`~sync_core.report.recorder.Recorder` is what fills it. Work done
is counted in :class:`~sync_core.engine.results.Work` values (the results' own type), per target
and in total; the figures ``--json`` prints under ``metrics`` are read from the same counts.
Skips, failures, warnings and rewritten indexes are typed records.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from sync_core.engine.results import Work
from sync_core.plan.work import WorkItem


@dataclass(frozen=True)
class Failure:
    """Something that failed; ``retry``: worth trying the same work again (``errors.worth_redelivering``)."""

    target: str | None
    item: str
    reason: str
    retry: bool = True


@dataclass(frozen=True)
class Skip:
    """Something a rule, the target or the content left out, and why."""

    target: str
    item: str
    reason: str


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the summary's own kind of warning, never raised
    """Unusual content that was copied anyway (exactly as the source serves it)."""

    target: str
    item: str
    warning: str


@dataclass(frozen=True)
class Rewrite:
    """An index narrowed for a target (``platforms``, ``drop_attestations``): a new digest there."""

    target: str
    item: str
    source_digest: str
    target_digest: str | None


@dataclass
class Lag:
    """Mirror lag samples of one target: count, min, max, sum (seconds)."""

    count: int = 0
    total: float = 0.0
    min: float | None = None
    max: float | None = None

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.min = seconds if self.min is None else min(self.min, seconds)
        self.max = seconds if self.max is None else max(self.max, seconds)

    def merge(self, other: Lag) -> None:
        self.count += other.count
        self.total += other.total
        for value in (other.min, other.max):
            if value is not None:
                self.min = value if self.min is None else min(self.min, value)
                self.max = value if self.max is None else max(self.max, value)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        avg = self.total / self.count if self.count else None
        return {"count": self.count, "min": r(self.min), "max": r(self.max), "avg": r(avg)}


TAG_COUNTS = (
    "considered",
    "missing",
    "copied",
    "unchanged",
    "skipped",
    "failed",
)  # tags, by what became of them


@dataclass
class TargetCounts:
    """One target's tags by outcome, the work done there and the mirror lag of its copies."""

    considered: int = 0
    missing: int = 0
    copied: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    backfilled: int = 0  # of the copied tags: not new pushes (onboarding, repairs, a full check's finds)
    work: Work = field(default_factory=Work)
    lag: Lag = field(default_factory=Lag)

    def tags(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TAG_COUNTS}

    def figures(self) -> dict[str, Any]:
        """What the metrics were given for this target (``registry_sync.*``, docs/metrics.md)."""
        return {
            "tags": {k: self.tags()[k] for k in ("copied", "unchanged", "skipped", "failed")},
            "bytes_uploaded": self.work.bytes_uploaded,
            "blobs": {
                "uploaded": self.work.blobs_uploaded,
                "mounted": self.work.blobs_mounted,
                "present": self.work.blobs_skipped,
            },
            "referrers": self.work.referrers_copied,
            "backfill": self.backfilled,
            "lag_seconds": self.lag.to_dict(),
        }


NO_TARGET = ""  # the counts of failures that are no target's (a bad event, a catalog listing)


@dataclass
class Summary:
    dry_run: bool = False
    repositories: int = 0
    tags_considered: int = 0
    tags_missing: int = 0
    tags_copied: int = 0
    tags_unchanged: int = 0
    tags_skipped: int = 0
    tags_failed: int = 0
    work: Work = field(default_factory=Work)
    duration_seconds: float = 0.0
    targets: dict[str, TargetCounts] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)
    planned: list[WorkItem] = field(default_factory=list)
    rewritten: list[Rewrite] = field(default_factory=list)  # indexes narrowed for a target
    mapped: dict[str, dict[str, str]] = field(default_factory=dict)  # target: {source: target repository}
    _unattributed: TargetCounts = field(default_factory=TargetCounts, repr=False)  # NO_TARGET's figures

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def retryable(self) -> bool:
        """Some failure is worth trying the same work again (see ``errors.worth_redelivering``)."""
        return any(f.retry for f in self.failures)

    def target(self, name: str) -> TargetCounts:
        return self.targets.setdefault(name, TargetCounts())

    def catalog(self, repositories: int, mapped: dict[str, dict[str, str]]) -> None:
        """The repositories a run planned, and where mapping rules put them."""
        self.repositories, self.mapped = repositories, mapped

    def considered(self, target: str, tags: int) -> None:
        with self._lock:
            self.tags_considered += tags
            self.target(target).considered += tags

    def missing(self, target: str, tags: int) -> None:
        with self._lock:
            self.tags_missing += tags
            self.target(target).missing += tags

    def fail(self, failure: Failure, tags: int = 1) -> None:
        with self._lock:
            self.failures.append(failure)
            (self.target(failure.target) if failure.target else self._unattributed).failed += tags
            self.tags_failed += tags

    def warn(self, warning: Warning) -> None:
        with self._lock:
            if warning not in self.warnings:
                self.warnings.append(warning)

    def rewrite(self, rewrite: Rewrite) -> None:
        with self._lock:
            self.rewritten.append(rewrite)

    def skip(self, skip: Skip, tags: int = 1) -> None:
        with self._lock:
            self.skipped.append(skip)
            self.target(skip.target).skipped += tags
            self.tags_skipped += tags

    def tag(self, target: str, copied: bool) -> None:
        """A tag copied, or found unchanged (a skipped or failed one is counted by :meth:`skip`, :meth:`fail`)."""
        with self._lock:
            counts = self.target(target)
            if copied:
                self.tags_copied += 1
                counts.copied += 1
            else:
                self.tags_unchanged += 1
                counts.unchanged += 1

    def add_work(self, target: str, work: Work) -> None:
        """Work a copy did at ``target`` (finished or not: bytes sent are bytes sent)."""
        with self._lock:
            self.work.add(work)
            self.target(target).work.add(work)

    def lag(self, target: str, seconds: float) -> None:
        with self._lock:
            self.target(target).lag.add(seconds)

    def backfill(self, target: str) -> None:
        with self._lock:
            self.target(target).backfilled += 1

    def absorb(self, other: Summary) -> None:
        """Add ``other`` (the summary of one repository of a batch) to this one."""
        with self._lock:
            for name in TAG_COUNTS:
                setattr(self, f"tags_{name}", getattr(self, f"tags_{name}") + getattr(other, f"tags_{name}"))
            self.work.add(other.work)
            for target, counts in other.targets.items():
                mine = self.target(target)
                for name in (*TAG_COUNTS, "backfilled"):
                    setattr(mine, name, getattr(mine, name) + getattr(counts, name))
                mine.work.add(counts.work)
                mine.lag.merge(counts.lag)
            self._unattributed.failed += other._unattributed.failed
            self.skipped += other.skipped
            self.failures += other.failures
            self.warnings += [w for w in other.warnings if w not in self.warnings]
            self.rewritten += other.rewritten
            self.planned += other.planned

    def to_dict(self) -> dict[str, Any]:
        figures = {name: counts.figures() for name, counts in sorted(self.targets.items())}
        if self._unattributed.failed:
            figures[NO_TARGET] = self._unattributed.figures()
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "repositories": self.repositories,
            "tags": {name: getattr(self, f"tags_{name}") for name in TAG_COUNTS},
            "manifests_pushed": self.work.manifests_pushed,
            "blobs": {
                "uploaded": self.work.blobs_uploaded,
                "mounted": self.work.blobs_mounted,
                "skipped": self.work.blobs_skipped,
            },
            "bytes_uploaded": self.work.bytes_uploaded,
            "referrers": {"copied": self.work.referrers_copied},
            "duration_seconds": round(self.duration_seconds, 3),
            "targets": {name: c.tags() for name, c in sorted(self.targets.items())},
            "skipped": [asdict(s) for s in self.skipped],
            "failures": [asdict(f) for f in self.failures],
            "warnings": [asdict(w) for w in self.warnings],
            "planned": [_planned(w) for w in self.planned] if self.dry_run else [],
            "rewritten": [asdict(r) for r in self.rewritten],
            "mapped": self.mapped,
            "metrics": figures,
        }


def _planned(work: WorkItem) -> dict[str, Any]:
    return {
        "target": work.target,
        "source_repository": work.source_repository,
        "target_repository": work.target_repository,
        "tag": work.tag,
        "kind": work.kind.value,
        "digest": work.digest,
        "reason": work.reason.value,
    }
