"""What the three functions do (``function_app.py`` only parses the trigger input and calls these).

* timer: list the catalog, one repository message per repository and target; copies nothing;
* Event Grid: validate the event, one tag message per target; copies nothing;
* queue worker: run one message within a time budget; re-enqueue what is left; raise on failure
  so that the host retries the message and finally moves it to the poison queue.

Each invocation records its duration (``registry_sync.run.duration``, trigger timer|event|worker).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import time
from typing import Any

from sync_core import logs
from sync_core.azure.events import Action, decide, load_events, log_decision
from sync_core.azure.messages import MessageKind, WorkMessage, parse_message
from sync_core.config.model import Compare, SyncConfig, TargetConfig
from sync_core.errors import InvalidContent, NameRejected, SyncError
from sync_core.jobs.syncer import Syncer
from sync_core.plan.catalog import parse_time
from sync_core.plan.mapping import check_mappings
from sync_core.plan.work import Check, Reason, WorkItem, WorkKind
from sync_core.report import metrics
from sync_core.report.metrics import Trigger
from sync_core.report.summary import Summary

log = logging.getLogger("sync_core.work")


def full_check_due(repository: str, previous: dt.datetime | None, now: dt.datetime, hours: float) -> bool:
    """Whether the timer run at ``now`` (the one before it: ``previous``) fully checks ``repository``.

    Each repository has its own moment in every ``hours``-long period (from a hash of its name),
    so full checks are spread over the period instead of all falling on one run; the run whose
    interval (previous, now] holds that moment checks it. Without a previous run (the first one,
    or the host lost its schedule state), every repository is checked.
    """
    if previous is None:
        return True
    period = hours * 3600.0
    offset = int.from_bytes(hashlib.sha256(repository.encode()).digest()[:8], "big") % int(period)
    before = math.floor((previous.timestamp() - offset) / period)
    return math.floor((now.timestamp() - offset) / period) > before


def last_run(schedule_status: object) -> dt.datetime | None:
    """The previous timer run from the host's schedule status (``{"Last": "<ISO time>", ...}``)."""
    last = schedule_status.get("Last") if isinstance(schedule_status, dict) else None
    when = parse_time(last)
    # the host writes "0001-01-01T00:00:00" before the first run
    return when if when is not None and when.year > 2000 else None


def schedule_messages(
    syncer: Syncer, previous: dt.datetime | None = None, now: dt.datetime | None = None
) -> list[str]:
    """Timer: one message per repository and target that the filters let through.

    ``previous``: when the timer last ran (the host's schedule status), to spread the periodic
    full checks (``SYNC_COMPARE=recent``); see :func:`full_check_due`.
    """
    with syncer.metrics.timed(Trigger.TIMER):
        config = syncer.config
        now = now or syncer.clock()
        messages = []
        full = 0
        repositories = syncer.repositories()

        def not_enqueued(target: TargetConfig, repository: str, exc: NameRejected) -> None:
            message = f"not enqueued {repository} for {target.name}: {exc}"
            logs.decision(log, "ignored", message, repository=repository, target=target.name)

        # two repositories onto one target repository: stop here
        mapped = check_mappings(config, repositories, not_enqueued)
        for repository in repositories:
            due = config.compare is Compare.RECENT and full_check_due(
                repository, previous, now, config.full_check_hours
            )
            full += due
            for target in config.targets:
                if repository in mapped.get(target.name, {}):
                    message = WorkMessage(MessageKind.REPOSITORY, repository, target.name, full_check=due)
                    messages.append(message.dumps())
        logs.decision(
            log,
            "enqueued",
            f"enqueued {len(messages)} repository messages ({full} repositories fully checked)",
            count=len(messages),
            full_checks=full,
        )
        return messages


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
    ).dumps()


def process_message(
    text: str | bytes, syncer: Syncer, *, budget_seconds: float | None = None
) -> tuple[Summary, list[str]]:
    """Worker: run one message. Returns the summary and messages for work left over.

    Raises :class:`SyncError` when a failure is worth a redelivery (transient, or refused
    credentials), so the host retries the message and, after ``maxDequeueCount`` tries, moves it
    to the poison queue; an invalid message raises too. The run is measured as failed when
    anything failed, raised or not.
    """
    with syncer.metrics.timed(Trigger.WORKER) as timer:
        summary, leftover = _process(text, syncer, budget_seconds)
        timer.ok = summary.ok
        return summary, leftover


def _process(text: str | bytes, syncer: Syncer, budget_seconds: float | None) -> tuple[Summary, list[str]]:
    config = syncer.config
    message = parse_message(text, config)
    budget = config.time_budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    started = time.monotonic()
    summary = Summary(repositories=1)
    target = config.target(message.target)
    recorder = syncer.recorder(summary)
    if message.kind is MessageKind.REPOSITORY:
        check = Check.FULL if message.full_check else None
        work = syncer.plan_repository(message.repository, summary, [target.name], check)
    else:
        work = syncer.planner.image(
            message.repository,
            WorkKind(message.kind.value),
            message.tag,
            message.digest,
            Reason.QUEUED,
            recorder,
            [target.name],
            message.pushed,
        )
    left = syncer.execute(work, summary, deadline=deadline)
    summary.duration_seconds = time.monotonic() - started
    leftover = [work_message(w) for w in left]
    if leftover:
        logs.decision(
            log,
            "enqueued",
            f"time budget reached: re-enqueued {len(leftover)} tags of {message.repository}",
            repository=message.repository,
            target=target.name,
            count=len(leftover),
        )
    if summary.retryable:
        reasons = "; ".join(f"{f.item}: {f.reason}" for f in summary.failures[:5])
        raise SyncError(
            f"{len(summary.failures)} failure(s) syncing {message.repository} to {target.name}: {reasons}"
        )
    if not summary.ok:
        # nothing a redelivery could change (a refusal, a permission): reported, never poisoned
        logs.decision(
            log,
            "not-retried",
            f"{len(summary.failures)} permanent failure(s) syncing "
            f"{message.repository} to {target.name}: not retried by the queue",
            level=logging.ERROR,
            repository=message.repository,
            target=target.name,
        )
    return summary, leftover
