"""What the three functions do (``function_app.py`` only parses the trigger input and calls these).

* timer: list the catalog, one repository message per repository and target; copies nothing;
* Event Grid: validate the event, one tag message per target; copies nothing;
* queue worker: run one message within a time budget; re-enqueue what is left; raise on failure
  so that the host retries the message and finally moves it to the poison queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import logs
from .config import SyncConfig
from .errors import InvalidContent, NameRejected, SyncError
from .events import decide, load_events, log_decision
from .messages import MessageKind, WorkMessage, parse_message
from .plan import Reason, TagWork, repository_wanted, target_repository
from .report import Recorder, Summary
from .sync import Syncer

log = logging.getLogger("sync_core.work")


def schedule_messages(syncer: Syncer) -> list[str]:
    """Timer: one message per repository and target that the filters let through."""
    config = syncer.config
    messages = []
    for repository in syncer.repositories():
        for target in config.targets:
            if not repository_wanted(config, target, repository):
                continue
            try:
                target_repository(repository, config.source.namespace, target)
            except NameRejected as exc:
                logs.decision(log, "ignored", f"not enqueued {repository} for {target.name}: {exc}",
                              repository=repository, target=target.name)  # fmt: skip
                continue
            messages.append(WorkMessage(MessageKind.REPOSITORY, repository, target.name).dumps())
    logs.decision(log, "enqueued", f"enqueued {len(messages)} repository messages", count=len(messages))
    return messages


def event_messages(event: dict[str, Any], config: SyncConfig) -> list[str]:
    """Event Grid: one tag message per target for a pushed tag; [] for anything ignored."""
    decision = decide(event, config)
    log_decision(decision)
    messages = [_tag_message(w) for w in decision.work]
    for work in decision.work:
        logs.decision(log, "enqueued", f"enqueued {work.source_repository}:{work.tag} for {work.target}",
                      repository=work.source_repository, tag=work.tag, digest=work.digest, target=work.target)  # fmt: skip
    return messages


def events_messages(payload: object, config: SyncConfig) -> list[str]:
    """Like :func:`event_messages` for a payload with one event or an array; never raises on bad input."""
    try:
        events = load_events(payload)
    except InvalidContent as exc:
        logs.decision(log, "error", f"dropped event payload: {exc}", level=logging.ERROR)
        return []
    return [m for event in events for m in event_messages(event, config)]


def _tag_message(work: TagWork) -> str:
    return WorkMessage(MessageKind.TAG, work.source_repository, work.target, work.tag, work.digest).dumps()


def process_message(
    text: str | bytes, syncer: Syncer, *, budget_seconds: float | None = None
) -> tuple[Summary, list[str]]:
    """Worker: run one message. Returns the summary and messages for work left over.

    Raises :class:`SyncError` when anything failed, so the host retries the message and, after
    ``maxDequeueCount`` tries, moves it to the poison queue. An invalid message raises too.
    """
    config = syncer.config
    message = parse_message(text, config)
    budget = config.time_budget_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    started = time.monotonic()
    summary = Summary(repositories=1)
    target = config.target(message.target)
    if message.kind is MessageKind.REPOSITORY:
        work = syncer.plan_repository(message.repository, summary, [target.name])
    else:
        assert message.tag is not None
        work = syncer.planner.image(
            message.repository, message.tag, message.digest, Reason.QUEUED, Recorder(summary), [target.name]
        )
    left = syncer.execute(work, summary, deadline=deadline)
    summary.duration_seconds = time.monotonic() - started
    leftover = [_tag_message(w) for w in left]
    if leftover:
        logs.decision(log, "enqueued", f"time budget reached: re-enqueued {len(leftover)} tags of {message.repository}",
                      repository=message.repository, target=target.name, count=len(leftover))  # fmt: skip
    if not summary.ok:
        reasons = "; ".join(f"{f['item']}: {f['reason']}" for f in summary.failures[:5])
        raise SyncError(
            f"{len(summary.failures)} failure(s) syncing {message.repository} to {target.name}: {reasons}"
        )
    return summary, leftover
