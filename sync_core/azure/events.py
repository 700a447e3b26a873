"""Event Grid events from ACR: validation and the decision what to do with each.

Accepts EventGridSchema and CloudEvents 1.0, one event or an array. Only
``Microsoft.ContainerRegistry.ImagePushed`` from the configured source host, in the source
namespace and passing the filters, leads to work: a tag is copied; an untagged push may be a
referrer (the worker fetches the manifest and mirrors it if it has a ``subject``). A tag named
like a referrers tag (``sha256-<hex>``) is a tag too: the copier decides by its content whether it
lists referrers (then mirrored as them) or is an image like any other. Everything else is
ignored with the reason. Nothing here trusts the event for where to pull from: the image is always pulled from
the configured source registry.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sync_core import logs
from sync_core.config.model import SyncConfig
from sync_core.errors import InvalidContent, NameRejected
from sync_core.logs import clean
from sync_core.plan.catalog import TagInfo, parse_time
from sync_core.plan.mapping import map_repository
from sync_core.plan.selection import repository_wanted, wanted_tags
from sync_core.plan.work import Reason, WorkItem, WorkKind
from sync_core.registry.jsondoc import parse_json
from sync_core.registry.names import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    attached_subject,
    in_namespace,
    is_digest,
    is_fallback_tag,
    is_repository,
    is_tag,
)

log = logging.getLogger("sync_core.events")

IMAGE_PUSHED = "Microsoft.ContainerRegistry.ImagePushed"
MAX_EVENT_BYTES = 1024 * 1024
MAX_EVENTS = 1000


class Action(str, enum.Enum):
    COPY = "copy"  # work for at least one target
    IGNORE = "ignore"  # a valid event with nothing to mirror (reason says why)
    ERROR = "error"  # an event that is not what ACR sends


@dataclass(frozen=True)
class Decision:
    """What to do with one event: ``work`` per target, or ``ignore`` with a reason."""

    event_id: str
    action: Action
    reason: str
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    work: tuple[WorkItem, ...] = ()


def load_events(payload: object) -> list[Any]:
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
        payload = parse_json(payload, "event payload")
    events = payload if isinstance(payload, list) else [payload]
    if len(events) > MAX_EVENTS:
        raise InvalidContent(f"{len(events)} events in one payload, over {MAX_EVENTS}")
    return events


def decide(event: object, config: SyncConfig, now: dt.datetime | None = None) -> Decision:
    """Validate one event (either schema) and decide. Never raises for bad input."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if not isinstance(event, dict):
        return Decision("?", Action.ERROR, "event is not a JSON object")
    event_id = clean(event.get("id", "?"), 100)
    event_type = event.get("eventType", event.get("type"))
    if not isinstance(event_type, str):
        return Decision(event_id, Action.ERROR, "event has no eventType/type string")
    if event_type != IMAGE_PUSHED:
        return Decision(event_id, Action.IGNORE, f"event type {clean(event_type)} is not propagated")
    data = event.get("data")
    if not isinstance(data, dict):
        return Decision(event_id, Action.ERROR, "event has no data object")
    target = data.get("target")
    request = data.get("request")
    if not isinstance(target, dict):
        return Decision(event_id, Action.ERROR, "event data has no target object")
    repository, tag, digest = target.get("repository"), target.get("tag"), target.get("digest")
    if not isinstance(repository, str) or not is_repository(repository):
        return Decision(event_id, Action.ERROR, f"invalid repository {clean(repository)}")
    untagged = tag is None or tag == ""
    if not untagged and (not isinstance(tag, str) or not is_tag(tag)):
        return Decision(event_id, Action.ERROR, f"invalid tag {clean(tag)}", repository)
    if digest is not None and (not isinstance(digest, str) or not is_digest(digest)):
        return Decision(event_id, Action.ERROR, f"invalid digest {clean(digest)}", repository, tag)
    if untagged:
        why = _untagged_ignored(target, digest, config)
        if why:
            return Decision(event_id, Action.IGNORE, why, repository, None, digest)
        tag = None
    host = request.get("host") if isinstance(request, dict) else None
    source_host = urlsplit(config.source.registry).netloc
    if not isinstance(host, str) or host.lower() != source_host:
        return Decision(
            event_id,
            Action.IGNORE,
            f"event names registry {clean(host)}, not the source {source_host}",
            repository,
            tag,
            digest,
        )
    namespace = config.source.namespace
    if not in_namespace(repository, namespace):
        return Decision(
            event_id,
            Action.IGNORE,
            f"{repository} is outside the source namespace {namespace}",
            repository,
            tag,
            digest,
        )
    if config.source.repositories and repository not in config.source.repositories:
        return Decision(
            event_id, Action.IGNORE, f"{repository} is not in SOURCE_REPOSITORIES", repository, tag, digest
        )
    pushed = parse_time(data.get("timestamp")) or parse_time(event.get("eventTime", event.get("time"))) or now
    work: list[WorkItem] = []
    reasons: list[str] = []
    for t in config.targets:
        if tag is None or is_fallback_tag(tag) or attached_subject(tag):
            # a manifest by digest, a cosign tag (``sha256-<hex>.sig``) or one named like a
            # referrers tag: these follow an image, not a release, so the repository filters
            # alone decide (the copier decides by content what a ``sha256-<hex>`` tag is)
            wanted = repository_wanted(config, t, repository)
        else:
            wanted = bool(wanted_tags(config, t, repository, [TagInfo(tag, digest, pushed)], now))
        if not wanted:
            reasons.append(f"{t.name}: filtered out")
            continue
        try:
            dst_repo = map_repository(config, t, repository)
        except NameRejected as exc:
            reasons.append(f"{t.name}: {exc}")
            continue
        if tag is None:  # an untagged push: the worker looks at it (a referrer?)
            kind, item_tag, expected = WorkKind.REFERRER, None, digest
        else:
            kind, item_tag, expected = WorkKind.TAG, tag, digest
        work.append(
            WorkItem(t.name, repository, dst_repo, kind, item_tag, expected, Reason.PUSHED, pushed=pushed)
        )
    if not work:
        return Decision(event_id, Action.IGNORE, "; ".join(reasons) or "no target", repository, tag, digest)
    return Decision(event_id, Action.COPY, "pushed", repository, tag, digest, tuple(work))


def _untagged_ignored(target: dict[str, Any], digest: object, config: SyncConfig) -> str | None:
    """Why an untagged push leads to nothing; None when the worker must look at the manifest.

    An untagged push is a child of an index (its tagged index event carries it) or a referrer
    (a signature, SBOM or attestation pushed by digest). Only the manifest's ``subject`` tells
    them apart: the worker fetches it once. Docker media types cannot carry a subject.
    """
    if not config.referrers.enabled:
        return "untagged push (a child manifest or a referrer); SYNC_REFERRERS is none"
    if digest is None:
        return "untagged push without a digest"
    if target.get("mediaType") in (DOCKER_MANIFEST, DOCKER_LIST):
        return "untagged push (a child manifest); the tagged index event carries it"
    return None


def log_decision(decision: Decision) -> None:
    what = f"{decision.repository}:{decision.tag}" if decision.repository else "-"
    logs.decision(
        log,
        decision.action.value,
        f"event {decision.event_id} {decision.action.value}: {what} ({decision.reason})",
        level=logging.ERROR if decision.action is Action.ERROR else logging.INFO,
        event_id=decision.event_id,
        repository=decision.repository,
        tag=decision.tag,
        digest=decision.digest,
        reason=decision.reason,
    )
