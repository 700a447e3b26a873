"""Where a run reports what it finds and what its copies come to (:class:`Recorder`).

The planner (as its :class:`~sync_core.plan.planner.Findings`) and the job report here; each
report is counted in the run's :class:`~sync_core.report.summary.Summary`, written as a decision
log line (``logs``) and given to the OpenTelemetry instruments (``metrics``), in one call.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sync_core import logs
from sync_core.engine.results import CopyResult, CopyStatus, Work
from sync_core.errors import describe, refused, worth_redelivering
from sync_core.plan.work import Reason, WorkItem, WorkKind
from sync_core.report.metrics import Metrics, Outcome
from sync_core.report.summary import NO_TARGET, Failure, Rewrite, Skip, Summary, Warning

log = logging.getLogger("sync_core.sync")

# Work somebody asked for by name (an event, a queue message, ``copy``): when it comes to nothing
# (an untagged push that is no referrer of mirrored content), the reason is reported as a skip.
ASKED_FOR = frozenset({Reason.PUSHED, Reason.QUEUED, Reason.REQUESTED})


class Recorder:
    """Where a run reports each outcome: counted in ``summary``, logged as a decision, measured.

    Each method counts, logs and measures in the same call, so that no outcome is counted
    without being logged and measured, or logged without being counted. ``metrics``: the
    process's instruments (default: none); ``clock``: now, for the mirror lag.
    """

    def __init__(
        self,
        summary: Summary,
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.summary = summary
        self.metrics = metrics or Metrics()
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    # -- what the planner finds (plan.planner.Findings) ---------------------------------------
    def catalog(self, repositories: int, mapped: dict[str, dict[str, str]]) -> None:
        self.summary.catalog(repositories, mapped)

    def considered(self, target: str, tags: int) -> None:
        self.summary.considered(target, tags)

    def missing(self, target: str, tags: int) -> None:
        self.summary.missing(target, tags)

    def failed(
        self, where: str, reason: str, target: str | None = None, tags: int = 1, retry: bool = True
    ) -> None:
        self.summary.fail(Failure(target, where, reason, retry), tags)
        self.metrics.tags(target or NO_TARGET, Outcome.FAILED, tags)
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
        self.summary.skip(Skip(target, where, reason), tags)
        self.metrics.tags(target, Outcome.SKIPPED, tags)
        logs.decision(log, "skipped", f"skipped {where}: {reason}", item=where, target=target)

    def warned(self, where: str, warning: str, target: str) -> None:
        """Unusual content that was copied anyway (exactly as the source serves it)."""
        self.summary.warn(Warning(target, where, warning))
        logs.decision(log, "warning", f"{where}: {warning}", level=logging.WARNING, item=where, target=target)

    # -- what the copies come to --------------------------------------------------------------
    def outcome(self, work: WorkItem, result: CopyResult) -> None:
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
            self._work(work.target, result.work)
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
        self._finished(work, result)

    def _finished(self, work: WorkItem, result: CopyResult) -> None:
        """A copy that ended without an error: copied, unchanged, skipped by a rule, or ignored."""
        if result.status is CopyStatus.SKIPPED:
            self.skipped(work.item, result.reason or "skipped", work.target, tags=int(work.is_tag))
            return
        if result.status is CopyStatus.IGNORED:
            if work.reason in ASKED_FOR:  # an event, a queued message, `copy`: say why nothing came of it
                self.skipped(work.item, result.reason or "ignored", work.target, tags=int(work.is_tag))
            else:  # an untagged manifest the planner only suspected of being a referrer
                log.debug("ignored %s for %s: %s", work.item, work.target, result.reason)
            return
        copied = result.status is CopyStatus.COPIED
        if work.is_tag:
            self.summary.tag(work.target, copied)
            self.metrics.tags(work.target, Outcome.COPIED if copied else Outcome.UNCHANGED)
        done = result.work
        if work.kind is WorkKind.REFERRER and copied:  # the copy was itself of a referrer: it counts
            done = Work(**{**done.to_dict(), "referrers_copied": done.referrers_copied + 1})
        self._work(work.target, done)
        if copied and work.pushed is not None:  # a new push, now at the target: pushed -> here
            pushed = work.pushed if work.pushed.tzinfo else work.pushed.replace(tzinfo=dt.timezone.utc)
            seconds = max(0.0, (self.clock() - pushed).total_seconds())  # the two clocks may differ a little
            self.summary.lag(work.target, seconds)
            self.metrics.lag(work.target, seconds)
        elif copied and work.is_tag:  # onboarding, a repair, what a full check found: no lag of a push
            self.summary.backfill(work.target)
            self.metrics.backfill(work.target)
        if result.rewritten_from and copied:
            self.summary.rewrite(Rewrite(work.target, work.item, result.rewritten_from, result.digest))
        if not work.is_tag and not copied:
            return  # a referrer candidate the target holds: not a decision worth a line
        status = result.status.value
        referrers = f", {result.work.referrers_copied} referrers" if result.work.referrers_copied else ""
        logs.decision(
            log,
            status,
            f"{status} {work.item} -> {work.target} {work.target_repository}{work.item[len(work.source_repository) :]} "
            f"({result.work.bytes_uploaded} bytes uploaded, {result.work.blobs_mounted} blobs mounted{referrers}, "
            f"{result.seconds:.2f}s)",
            repository=work.source_repository,
            tag=work.tag,
            digest=result.digest,
            target=work.target,
            target_repository=work.target_repository,
            bytes_uploaded=result.work.bytes_uploaded,
            referrers=result.work.referrers_copied or None,
        )

    def _work(self, target: str, work: Work) -> None:
        self.summary.add_work(target, work)
        self.metrics.work(target, work)
