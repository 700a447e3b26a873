"""Queue work: versioned messages, and the three Functions handlers' logic.

The timer and the Event Grid handler only plan and enqueue; queue-triggered workers copy. A
message names one repository (diff and copy all it lacks) or one tag, for one target.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from . import logs
from .config import SyncConfig, load_config
from .errors import InvalidContent, SyncError
from .events import decide, load_events, log_decision
from .names import is_digest, is_repository, is_tag
from .plan import NameRejected, TagWork, repository_selected, target_repository
from .sync import Summary, Syncer

log = logging.getLogger("sync_core.work")

VERSION = 1
MAX_MESSAGE_BYTES = 48 * 1024  # Storage queue messages are at most 64 KiB (base64 adds a third)


@dataclass(frozen=True)
class WorkMessage:
    kind: str  # "repository" | "tag"
    repository: str
    target: str
    tag: str | None = None
    digest: str | None = None

    def dumps(self) -> str:
        body = {"v": VERSION, "kind": self.kind, "repository": self.repository, "target": self.target}
        if self.kind == "tag":
            body["tag"] = self.tag
            if self.digest:
                body["digest"] = self.digest
        return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_message(text: str | bytes, config: SyncConfig) -> WorkMessage:
    """Validate a queue message; raises :class:`InvalidContent` naming the bad field."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if len(text) > MAX_MESSAGE_BYTES:
        raise InvalidContent(f"message is {len(text)} characters, over {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise InvalidContent("message is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidContent("message is not a JSON object")
    if body.get("v") != VERSION:
        raise InvalidContent(f"message version {body.get('v')!r} is not supported (expected {VERSION})")
    kind = body.get("kind")
    if kind not in ("repository", "tag"):
        raise InvalidContent(f"message kind {kind!r} is not 'repository' or 'tag'")
    unknown = set(body) - {"v", "kind", "repository", "target", "tag", "digest"}
    if unknown:
        raise InvalidContent(f"message has unknown fields {sorted(unknown)}")
    repository, target = body.get("repository"), body.get("target")
    if not isinstance(repository, str) or not is_repository(repository):
        raise InvalidContent(f"message repository {repository!r} is not a valid repository name")
    if not isinstance(target, str) or target not in {t.name for t in config.targets}:
        raise InvalidContent(f"message target {target!r} is not a configured target")
    namespace = config.source.namespace
    if namespace and not repository.startswith(namespace + "/"):
        raise InvalidContent(f"message repository {repository} is outside the source namespace {namespace}")
    tag, digest = body.get("tag"), body.get("digest")
    if kind == "tag" and (not isinstance(tag, str) or not is_tag(tag)):
        raise InvalidContent(f"message tag {tag!r} is not a valid tag")
    if kind == "repository" and tag is not None:
        raise InvalidContent("a repository message carries no tag")
    if digest is not None and (not isinstance(digest, str) or not is_digest(digest)):
        raise InvalidContent(f"message digest {digest!r} is not a valid digest")
    return WorkMessage(kind, repository, target, tag, digest)


def schedule_messages(syncer: Syncer) -> list[str]:
    """Timer: one message per repository and target that the filters let through."""
    config = syncer.config
    messages = []
    for repository in syncer.repositories():
        if not repository_selected(repository, config.filters):
            continue
        for target in config.targets:
            if not repository_selected(repository, target.filters):
                continue
            try:
                target_repository(repository, config.source.namespace, target)
            except NameRejected as exc:
                logs.decision(log, "ignored", f"not enqueued {repository} for {target.name}: {exc}",
                              repository=repository, target=target.name)  # fmt: skip
                continue
            messages.append(WorkMessage("repository", repository, target.name).dumps())
    logs.decision(log, "enqueued", f"enqueued {len(messages)} repository messages", count=len(messages))
    return messages


def event_messages(event: dict, config: SyncConfig) -> list[str]:
    """Event Grid: one tag message per target for a pushed tag; [] for anything ignored."""
    decision = decide(event, config)
    log_decision(decision)
    messages = [
        WorkMessage("tag", w.source_repository, w.target, w.tag, w.digest).dumps() for w in decision.work
    ]
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
    if message.kind == "repository":
        work = syncer.plan_repository(message.repository, summary, [target.name])
    else:
        try:
            dst_repo = target_repository(message.repository, config.source.namespace, target)
        except NameRejected as exc:
            summary.skip(f"{message.repository}:{message.tag}", str(exc), target.name)
            return summary, []
        work = [TagWork(target.name, message.repository, dst_repo, message.tag, message.digest, "queued")]
    left = syncer.execute(work, summary, deadline=deadline)
    summary.duration_seconds = time.monotonic() - started
    leftover = [WorkMessage("tag", w.source_repository, w.target, w.tag, w.digest).dumps() for w in left]
    if leftover:
        logs.decision(log, "enqueued", f"time budget reached: re-enqueued {len(leftover)} tags of {message.repository}",
                      repository=message.repository, target=target.name, count=len(leftover))  # fmt: skip
    if not summary.ok:
        reasons = "; ".join(f"{f['item']}: {f['reason']}" for f in summary.failures[:5])
        raise SyncError(
            f"{len(summary.failures)} failure(s) syncing {message.repository} to {target.name}: {reasons}"
        )
    return summary, leftover


_shared: Syncer | None = None
_shared_lock = threading.Lock()


def shared_syncer() -> Syncer:
    """One :class:`Syncer` per process, built from the app settings (tokens and secrets reused)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Syncer(load_config(os.environ))
        return _shared


def reset_shared_syncer() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
        _shared = None
