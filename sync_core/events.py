"""Event Grid events from ACR: validation and the decision what to do with each.

Accepts EventGridSchema and CloudEvents 1.0, one event or an array. Only
``Microsoft.ContainerRegistry.ImagePushed`` with a tag, from the configured source host, in the
source namespace and passing the filters, leads to work; everything else is ignored with the
reason. Nothing here trusts the event for where to pull from: the image is always pulled from
the configured source registry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import logs
from .catalog import TagInfo, parse_time
from .config import SyncConfig
from .errors import ConfigError, InvalidContent
from .logs import clean
from .names import is_digest, is_repository, is_tag
from .plan import NameRejected, TagWork, target_repository, wanted_tags

log = logging.getLogger("sync_core.events")

IMAGE_PUSHED = "Microsoft.ContainerRegistry.ImagePushed"
MAX_EVENT_BYTES = 1024 * 1024
MAX_EVENTS = 1000


@dataclass(frozen=True)
class Decision:
    """What to do with one event: ``work`` per target, or ``ignored`` with a reason."""

    event_id: str
    action: str  # "copy" | "ignore" | "error"
    reason: str
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    work: tuple[TagWork, ...] = ()


def load_events(payload: object) -> list[dict]:
    """The events in a JSON document (bytes, text or already parsed), one or an array."""
    if isinstance(payload, (bytes, bytearray)):
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidContent(f"event payload is {len(payload)} bytes, over {MAX_EVENT_BYTES}")
        try:
            payload = bytes(payload).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise InvalidContent(f"event payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if isinstance(payload, str):
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidContent(f"event payload is over {MAX_EVENT_BYTES} bytes")
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidContent(f"event payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidContent("event payload is JSON nested too deeply") from None
    events = payload if isinstance(payload, list) else [payload]
    if len(events) > MAX_EVENTS:
        raise InvalidContent(f"{len(events)} events in one payload, over {MAX_EVENTS}")
    return events


def decide(event: object, config: SyncConfig, now: dt.datetime | None = None) -> Decision:
    """Validate one event (either schema) and decide. Never raises for bad input."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if not isinstance(event, dict):
        return Decision("?", "error", "event is not a JSON object")
    event_id = clean(event.get("id", "?"), 100)
    event_type = event.get("eventType", event.get("type"))
    if not isinstance(event_type, str):
        return Decision(event_id, "error", "event has no eventType/type string")
    if event_type != IMAGE_PUSHED:
        return Decision(event_id, "ignore", f"event type {clean(event_type)} is not propagated")
    data = event.get("data")
    if not isinstance(data, dict):
        return Decision(event_id, "error", "event has no data object")
    target = data.get("target")
    request = data.get("request")
    if not isinstance(target, dict):
        return Decision(event_id, "error", "event data has no target object")
    repository, tag, digest = target.get("repository"), target.get("tag"), target.get("digest")
    if not isinstance(repository, str) or not is_repository(repository):
        return Decision(event_id, "error", f"invalid repository {clean(repository)}")
    if tag is None or tag == "":
        return Decision(event_id, "ignore", "untagged push (a child manifest); the tagged index event carries it",
                        repository)  # fmt: skip
    if not isinstance(tag, str) or not is_tag(tag):
        return Decision(event_id, "error", f"invalid tag {clean(tag)}", repository)
    if digest is not None and (not isinstance(digest, str) or not is_digest(digest)):
        return Decision(event_id, "error", f"invalid digest {clean(digest)}", repository, tag)
    host = request.get("host") if isinstance(request, dict) else None
    source_host = urlsplit(config.source.registry).netloc
    if not isinstance(host, str) or host.lower() != source_host:
        return Decision(event_id, "ignore", f"event names registry {clean(host)}, not the source {source_host}",
                        repository, tag, digest)  # fmt: skip
    namespace = config.source.namespace
    if namespace and not repository.startswith(namespace + "/"):
        return Decision(event_id, "ignore", f"{repository} is outside the source namespace {namespace}",
                        repository, tag, digest)  # fmt: skip
    if config.source.repositories and repository not in config.source.repositories:
        return Decision(
            event_id, "ignore", f"{repository} is not in SOURCE_REPOSITORIES", repository, tag, digest
        )
    pushed = parse_time(data.get("timestamp")) or parse_time(event.get("eventTime", event.get("time"))) or now
    info = TagInfo(tag, digest, pushed)
    work: list[TagWork] = []
    reasons: list[str] = []
    for t in config.targets:
        if not wanted_tags(config, t, repository, [info], now):
            reasons.append(f"{t.name}: filtered out")
            continue
        try:
            dst_repo = target_repository(repository, namespace, t)
        except NameRejected as exc:
            reasons.append(f"{t.name}: {exc}")
            continue
        work.append(TagWork(t.name, repository, dst_repo, tag, digest, "pushed"))
    if not work:
        return Decision(event_id, "ignore", "; ".join(reasons) or "no target", repository, tag, digest)
    return Decision(event_id, "copy", "pushed", repository, tag, digest, tuple(work))


def log_decision(decision: Decision) -> None:
    what = f"{decision.repository}:{decision.tag}" if decision.repository else "-"
    logs.decision(
        log, decision.action, f"event {decision.event_id} {decision.action}: {what} ({decision.reason})",
        level=logging.ERROR if decision.action == "error" else logging.INFO,
        event_id=decision.event_id, repository=decision.repository, tag=decision.tag, digest=decision.digest,
        reason=decision.reason,
    )  # fmt: skip


def handle_event_file(path: str, syncer, summary, targets=None) -> list[Decision]:
    """``python -m sync_core event FILE``: validate like the function does, then copy inline."""
    try:
        raw = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1) if path == "-" else Path(path).read_bytes()
        events = load_events(raw)
    except (OSError, InvalidContent, UnicodeDecodeError) as exc:
        raise ConfigError(f"FILE: cannot use {path}: {exc}") from None
    decisions = []
    for event in events:
        decision = decide(event, syncer.config)
        log_decision(decision)
        decisions.append(decision)
        if decision.action == "error":
            summary.fail(f"event {decision.event_id}", decision.reason)
        for work in decision.work:
            if targets and work.target not in targets:
                continue
            syncer.copy_work(work, summary)
    summary.repositories = len({d.repository for d in decisions if d.work})
    return decisions
