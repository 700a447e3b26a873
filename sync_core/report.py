"""What a run did: counts per run and per target, skips and failures (:class:`Summary`).

:class:`Summary` only counts. :class:`Recorder` is what the planner and the executor report to:
it counts in the summary, writes the decision log line (``logs``) and gives the figures to the
metrics (``metrics.RunMeter``: the run's figures and the OpenTelemetry instruments), so that no
outcome is counted without being logged and measured, or logged without being counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import logs
from .copy import CopyResult, CopyStatus, add_work
from .errors import describe, refused, worth_redelivering
from .metrics import Figures, Metrics, Outcome, RunMeter

if TYPE_CHECKING:
    from .plan import TagWork

log = logging.getLogger("sync_core.sync")


@dataclass
class TargetCounts:
    considered: int = 0
    missing: int = 0
    copied: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0


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
    manifests_pushed: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0
    referrers_copied: int = 0
    duration_seconds: float = 0.0
    targets: dict[str, TargetCounts] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    planned: list[TagWork] = field(default_factory=list)
    rewritten: list[dict[str, Any]] = field(default_factory=list)  # indexes narrowed for a target
    mapped: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # target: {source: target repository} by rules
    figures: Figures = field(default_factory=Figures)  # per target, as given to the metrics

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return not self.failures

    def target(self, name: str) -> TargetCounts:
        return self.targets.setdefault(name, TargetCounts())

    def considered(self, target: str, tags: int) -> None:
        with self._lock:
            self.tags_considered += tags
            self.target(target).considered += tags

    def missing(self, target: str, tags: int) -> None:
        with self._lock:
            self.tags_missing += tags
            self.target(target).missing += tags

    @property
    def retryable(self) -> bool:
        """Some failure is worth trying the same work again (see ``errors.worth_redelivering``)."""
        return any(f["retry"] for f in self.failures)

    def fail(
        self, where: str, reason: str, target: str | None = None, tags: int = 1, retry: bool = True
    ) -> None:
        with self._lock:
            self.failures.append({"target": target, "item": where, "reason": reason, "retry": retry})
            if target:
                self.target(target).failed += tags
            self.tags_failed += tags

    def warn(self, where: str, warning: str, target: str) -> None:
        with self._lock:
            entry = {"target": target, "item": where, "warning": warning}
            if entry not in self.warnings:
                self.warnings.append(entry)

    def rewrite(self, where: str, target: str, source_digest: str, target_digest: str | None) -> None:
        with self._lock:
            self.rewritten.append(
                {
                    "target": target,
                    "item": where,
                    "source_digest": source_digest,
                    "target_digest": target_digest,
                }
            )

    def skip(self, where: str, reason: str, target: str, tags: int = 1) -> None:
        with self._lock:
            self.skipped.append({"target": target, "item": where, "reason": reason})
            self.target(target).skipped += tags
            self.tags_skipped += tags

    def add_copy(self, target: str, result: CopyResult, tag: bool = True, referrer: bool = False) -> None:
        """Count a finished copy (a skipped one is counted by :meth:`skip`).

        ``tag``: the copy was of a tag (else by digest: only its work counts); ``referrer``: it
        was of a referrer (counted itself; the referrers *of* a digest count only as its work).
        """
        with self._lock:
            counts = self.target(target)
            if tag and result.status is CopyStatus.COPIED:
                self.tags_copied += 1
                counts.copied += 1
            elif tag and result.status is CopyStatus.UNCHANGED:
                self.tags_unchanged += 1
                counts.unchanged += 1
            elif referrer and result.status is CopyStatus.COPIED:
                self.referrers_copied += 1
            self._add_work(result)

    def add_partial(self, result: CopyResult) -> None:
        """Count the work a failed copy did before it failed (bytes sent are bytes sent)."""
        with self._lock:
            self._add_work(result)

    def _add_work(self, result: CopyResult) -> None:
        self.referrers_copied += result.referrers_copied
        add_work(self, result)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "repositories": self.repositories,
            "tags": {
                "considered": self.tags_considered,
                "missing": self.tags_missing,
                "copied": self.tags_copied,
                "unchanged": self.tags_unchanged,
                "skipped": self.tags_skipped,
                "failed": self.tags_failed,
            },
            "manifests_pushed": self.manifests_pushed,
            "blobs": {
                "uploaded": self.blobs_uploaded,
                "mounted": self.blobs_mounted,
                "skipped": self.blobs_skipped,
            },
            "bytes_uploaded": self.bytes_uploaded,
            "referrers": {"copied": self.referrers_copied},
            "duration_seconds": round(self.duration_seconds, 3),
            "targets": {name: vars(c) for name, c in sorted(self.targets.items())},
            "skipped": self.skipped,
            "failures": self.failures,
            "warnings": self.warnings,
            "planned": [_planned(w) for w in self.planned] if self.dry_run else [],
            "rewritten": self.rewritten,
            "mapped": self.mapped,
            "metrics": self.figures.to_dict(self.targets),
        }


def _planned(work: TagWork) -> dict[str, Any]:
    return {
        "target": work.target,
        "source_repository": work.source_repository,
        "target_repository": work.target_repository,
        "tag": work.tag,
        "kind": work.kind.value,
        "digest": work.digest,
        "reason": work.reason.value,
    }


class Recorder:
    """Where a run reports each outcome: counted in ``summary``, logged as a decision, measured.

    ``metrics``: the process's instruments (default: none); ``clock``: now, for the mirror lag.
    """

    def __init__(
        self,
        summary: Summary,
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.summary = summary
        self.meter = RunMeter(summary.figures, metrics or Metrics())
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    def failed(
        self, where: str, reason: str, target: str | None = None, tags: int = 1, retry: bool = True
    ) -> None:
        self.summary.fail(where, reason, target, tags, retry)
        self.meter.tags(target, Outcome.FAILED, tags)
        logs.decision(
            log,
            "failed",
            f"failed {where}: {reason}",
            level=logging.ERROR,
            item=where,
            target=target,
            retry=retry,
        )

    def skipped(self, where: str, reason: str, target: str, tags: int = 1) -> None:
        self.summary.skip(where, reason, target, tags)
        self.meter.tags(target, Outcome.SKIPPED, tags)
        logs.decision(log, "skipped", f"skipped {where}: {reason}", item=where, target=target)

    def warned(self, where: str, warning: str, target: str) -> None:
        """Unusual content that was copied anyway (exactly as the source serves it)."""
        self.summary.warn(where, warning, target)
        logs.decision(log, "warning", f"{where}: {warning}", level=logging.WARNING, item=where, target=target)

    def outcome(self, work: TagWork, result: CopyResult) -> None:
        """Everything one copy of ``work`` came to: warnings, failures (and their partial work)."""
        for warning in result.warnings:
            self.warned(work.item, warning, work.target)
        for problem in result.referrer_errors:
            if refused(problem.error):  # a damaged referrer, or a referrers tag that is not ours
                self.skipped(
                    f"{work.item} (referrer {problem.digest})",
                    f"refused: {describe(problem.error)}",
                    work.target,
                    tags=0,
                )
            else:
                self.failed(
                    f"{work.item} -> {work.target}",
                    str(problem),
                    work.target,
                    tags=0,
                    retry=worth_redelivering(problem.error),
                )
        error = result.error
        if error is not None:
            self.summary.add_partial(result)
            self.meter.work(work.target, result)
            if refused(error):
                # content that cannot be copied exactly: refused for good, reported, not retried
                self.skipped(work.item, f"refused: {describe(error)}", work.target, tags=int(work.is_tag))
                return
            self.failed(
                f"{work.item} -> {work.target}",
                describe(error),
                work.target,
                tags=int(work.is_tag),
                retry=worth_redelivering(error),
            )
            return
        self.finished(work, result)

    def finished(self, work: TagWork, result: CopyResult) -> None:
        """A copy that ended without an error: copied, unchanged, skipped by a rule, or ignored."""
        if result.status is CopyStatus.SKIPPED:
            self.skipped(work.item, result.reason or "skipped", work.target, tags=int(work.is_tag))
            return
        if result.status is CopyStatus.IGNORED:
            log.debug("ignored %s for %s: %s", work.item, work.target, result.reason)
            return
        referrer = work.kind.value == "referrer"  # WorkKind.REFERRER (plan.py imports this module)
        self.summary.add_copy(work.target, result, tag=work.is_tag, referrer=referrer)
        self._measure(work, result, referrer)
        if result.rewritten_from and result.status is CopyStatus.COPIED:
            self.summary.rewrite(work.item, work.target, result.rewritten_from, result.digest)
        if not work.is_tag and result.status is CopyStatus.UNCHANGED:
            return  # a referrer candidate the target holds: not a decision worth a line
        status = result.status.value
        referrers = f", {result.referrers_copied} referrers" if result.referrers_copied else ""
        logs.decision(
            log,
            status,
            f"{status} {work.item} -> {work.target} {work.target_repository}{work.item[len(work.source_repository) :]} "
            f"({result.bytes_uploaded} bytes uploaded, {result.blobs_mounted} blobs mounted{referrers}, {result.seconds:.2f}s)",
            repository=work.source_repository,
            tag=work.tag,
            digest=result.digest,
            target=work.target,
            target_repository=work.target_repository,
            bytes_uploaded=result.bytes_uploaded,
            referrers=result.referrers_copied or None,
        )

    def _measure(self, work: TagWork, result: CopyResult, referrer: bool) -> None:
        """The figures of a copy that ended without an error (copied or unchanged)."""
        copied = result.status is CopyStatus.COPIED
        if work.is_tag:
            self.meter.tags(work.target, Outcome.COPIED if copied else Outcome.UNCHANGED)
        self.meter.work(work.target, result, referrers=int(referrer and copied))
        if copied and work.pushed is not None:  # now at the target: pushed at the source -> here
            pushed = work.pushed if work.pushed.tzinfo else work.pushed.replace(tzinfo=dt.timezone.utc)
            self.meter.lag(work.target, (self.clock() - pushed).total_seconds())
