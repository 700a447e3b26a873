"""What the Event Grid trigger and the queue worker do (``function_app.py`` only parses the trigger
input and calls these; the timer's run is ``azure/timer.py``).

* Event Grid: validate the event, one work message per target; copies nothing;
* queue worker: run one message within a time budget; re-enqueue what is left; record each
  repository's outcome in the timer's state; raise on failure so that the host retries the
  message and finally moves it to the poison queue.

Each invocation records its duration (``registry_sync.run.duration``, trigger timer|event|worker).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sync_core import logs
from sync_core.azure.events import Action, decide, load_events, log_decision
from sync_core.azure.messages import MessageKind, WorkMessage, parse_message
from sync_core.azure.state import StateStore
from sync_core.config.model import SyncConfig
from sync_core.errors import InvalidContent, SyncError
from sync_core.jobs.syncer import Syncer
from sync_core.plan.work import Check, Reason, WorkItem, WorkKind
from sync_core.report import metrics
from sync_core.report.metrics import Trigger
from sync_core.report.summary import Summary

log = logging.getLogger("sync_core.work")


def event_messages(event: dict[str, Any], config: SyncConfig) -> list[str]:
    """Event Grid: one tag message per target for a pushed tag; [] for anything ignored."""
    with metrics.current().timed(Trigger.EVENT) as run:
        decision = decide(event, config)
        run.ok = decision.action is not Action.ERROR
    log_decision(decision)
    messages = [work_message(w) for w in decision.work]
    for work in decision.work:
        logs.decision(
            log,
            "enqueued",
            f"enqueued {work.source_repository}:{work.tag} for {work.target}",
            repository=work.source_repository,
            tag=work.tag,
            digest=work.digest,
            target=work.target,
        )
    return messages


def events_messages(payload: object, config: SyncConfig) -> list[str]:
    """Like :func:`event_messages` for a payload with one event or an array; never raises on bad input."""
    try:
        events = load_events(payload)
    except InvalidContent as exc:
        logs.decision(log, "error", f"dropped event payload: {exc}", level=logging.ERROR)
        return []
    return [m for event in events for m in event_messages(event, config)]


def work_message(work: WorkItem) -> str:
    """The queue message for one work item: its kind is the message's kind."""
    return WorkMessage(
        MessageKind(work.kind.value),
        work.source_repository,
        work.target,
        work.tag,
        work.digest,
        pushed=work.pushed,
        reason=work.reason,
    ).dumps()


def process_message(
    text: str | bytes,
    syncer: Syncer,
    *,
    state: StateStore | None = None,
    budget_seconds: float | None = None,
) -> tuple[Summary, list[str]]:
    """Worker: run one message. Returns the summary and messages for work left over.

    A repository's outcome goes into ``state`` (the timer's memory): success with the source's
    fingerprint the timer enqueued it for, or the failure; the next timer run decides from it.
    Raises :class:`SyncError` when a failure is worth a redelivery (transient, or refused
    credentials), so the host retries the message and, after ``maxDequeueCount`` tries, moves it
    to the poison queue; an invalid message raises too. The run is measured as failed when
    anything failed, raised or not.
    """
    with syncer.metrics.timed(Trigger.WORKER) as timer:
        summary, leftover = _process(text, syncer, state, budget_seconds)
        timer.ok = summary.ok
        return summary, leftover


def _process(
    text: str | bytes, syncer: Syncer, state: StateStore | None, budget_seconds: float | None
) -> tuple[Summary, list[str]]:
    config = syncer.config
    message = parse_message(text, config)
    budget = config.time_budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    started = time.monotonic()
    target = config.target(message.target)
    if message.work:
        summary, leftover = _repositories(message, syncer, state, deadline)
    else:
        summary = Summary(repositories=1)
        work = syncer.planner.image(
            message.repository,
            WorkKind(message.kind.value),
            message.tag,
            message.digest,
            message.reason or Reason.QUEUED,
            syncer.recorder(summary),
            [target.name],
            message.pushed,
        )
        leftover = [work_message(w) for w in syncer.execute(work, summary, deadline=deadline)]
    summary.duration_seconds = time.monotonic() - started
    what = message.repository if len(message.work) <= 1 else f"{len(message.work)} repositories"
    if leftover:
        logs.decision(
            log,
            "enqueued",
            f"time budget reached: re-enqueued {len(leftover)} messages of {what}",
            repository=message.repository,
            target=target.name,
            count=len(leftover),
        )
    if summary.retryable:
        reasons = "; ".join(f"{f.item}: {f.reason}" for f in summary.failures[:5])
        raise SyncError(f"{len(summary.failures)} failure(s) syncing {what} to {target.name}: {reasons}")
    if not summary.ok:
        # nothing a redelivery could change (a refusal, a permission): reported, never poisoned
        logs.decision(
            log,
            "not-retried",
            f"{len(summary.failures)} permanent failure(s) syncing {what} to {target.name}: not retried "
            "by the queue (the timer enqueues it again until it succeeds)",
            level=logging.ERROR,
            repository=message.repository,
            target=target.name,
        )
    return summary, leftover


def _repositories(
    message: WorkMessage, syncer: Syncer, state: StateStore | None, deadline: float
) -> tuple[Summary, list[str]]:
    """Each repository of a repository(ies) message in turn: plan, copy, record its outcome.

    Repositories not started by the deadline go back to the queue as one message; a repository
    whose copies the deadline cut short has its remaining items re-enqueued and no outcome
    recorded (the next timer run looks at it again).
    """
    target = message.target
    summary = Summary()
    leftover: list[str] = []
    for index, entry in enumerate(message.work):
        if time.monotonic() >= deadline:
            rest = list(message.work[index:])
            leftover.append(WorkMessage.repositories(target, rest).dumps())
            break
        part = Summary(repositories=1)
        check = Check.FULL if entry.full_check else None
        work = syncer.plan_repository(entry.name, part, [target], check, since=entry.since)
        left = syncer.execute(work, part, deadline=deadline)
        leftover += [work_message(w) for w in left]
        summary.absorb(part)
        summary.repositories += 1
        if state is None or left:
            continue
        now = syncer.clock()
        try:
            if part.failures:
                reasons = "; ".join(f"{f.item}: {f.reason}" for f in part.failures[:3])
                state.failed(target, entry.name, reasons, now)
            else:
                state.succeeded(target, entry.name, entry.source, now, full_check=entry.full_check)
        except SyncError as exc:  # the copies are done; the next run only looks again
            logs.decision(
                log,
                "warning",
                f"{entry.name}: its outcome could not be recorded ({exc}); the next timer run looks again",
                level=logging.WARNING,
                repository=entry.name,
                target=target,
            )
    return summary, leftover
