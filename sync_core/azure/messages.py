"""Queue messages: the versioned schema of the work the timer and events hand to the workers.

A message names one repository (the worker diffs it and copies all it lacks) or one work item (a
tag, an untagged manifest that may be a referrer, the referrers of a manifest), for one target. Messages are validated like any other outside input: a message that does not parse
names the field at fault and is never retried into success.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass
from typing import Any

from sync_core.config.model import SyncConfig
from sync_core.errors import InvalidContent
from sync_core.plan.catalog import parse_time
from sync_core.plan.work import Reason
from sync_core.registry.jsondoc import parse_json
from sync_core.registry.names import in_namespace, is_digest, is_repository, is_tag

VERSION = 1
MAX_MESSAGE_BYTES = 48 * 1024  # Storage queue messages are at most 64 KiB (base64 adds a third)
_FIELDS = frozenset(
    {"v", "kind", "repository", "target", "tag", "digest", "check", "pushed", "reason", "repositories"}
)
_ENTRY_FIELDS = frozenset({"name", "check", "source", "since"})
MAX_BATCH = 200  # repositories in one message (the timer sends at most BATCH_SIZE)
MAX_SOURCE = 400  # characters of a fingerprint


class MessageKind(str, enum.Enum):
    """A repository to diff, or one work item: the other kinds are :class:`~sync_core.plan.work.WorkKind`'s."""

    REPOSITORY = "repository"  # diff one repository, copy what the target lacks
    REPOSITORIES = "repositories"  # the timer's batch: diff each, record each outcome in the state
    TAG = "tag"  # copy one tag (``tag``; ``digest``: what the event said it is)
    REFERRER = "referrer"  # an untagged manifest (``digest``): mirrored if it is a referrer
    REFERRERS = "referrers"  # the referrers the source lists for the manifest ``digest``


@dataclass(frozen=True)
class RepositoryWork:
    """One repository of a ``repositories`` message: what the timer saw of it."""

    name: str
    full_check: bool = False  # compare everything the target has (the periodic full check)
    source: str | None = None  # the source's fingerprint when enqueued (recorded on success)
    since: dt.datetime | None = None  # last confirmed mirrored: changes after it are new pushes

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name}
        if self.full_check:
            entry["check"] = "full"
        if self.source:
            entry["source"] = self.source
        if self.since is not None:
            entry["since"] = self.since.isoformat()
        return entry


@dataclass(frozen=True)
class WorkMessage:
    kind: MessageKind
    repository: str
    target: str
    tag: str | None = None
    digest: str | None = None
    full_check: bool = False  # a repository message: compare everything the target has
    pushed: dt.datetime | None = None  # when the source got it (the event's time): mirror lag
    batch: tuple[RepositoryWork, ...] = ()  # a repositories message (``repository``: the first)
    # why the item is to be copied: an event's push, or what a repository's diff found (work left
    # over by a time budget keeps it, and with it its place behind event work in the budgets)
    reason: Reason | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MessageKind(self.kind))

    @classmethod
    def repositories(cls, target: str, batch: list[RepositoryWork]) -> WorkMessage:
        return cls(MessageKind.REPOSITORIES, batch[0].name, target, batch=tuple(batch))

    @property
    def work(self) -> tuple[RepositoryWork, ...]:
        """The repositories a repository or repositories message asks to diff."""
        if self.kind is MessageKind.REPOSITORIES:
            return self.batch
        return (
            (RepositoryWork(self.repository, self.full_check),) if self.kind is MessageKind.REPOSITORY else ()
        )

    def dumps(self) -> str:
        body: dict[str, Any] = {"v": VERSION, "kind": self.kind.value, "target": self.target}
        if self.kind is MessageKind.REPOSITORIES:
            body["repositories"] = [entry.to_dict() for entry in self.batch]
            return json.dumps(body, separators=(",", ":"), sort_keys=True)
        body["repository"] = self.repository
        if self.kind is MessageKind.TAG:
            body["tag"] = self.tag
        if self.kind is not MessageKind.REPOSITORY and self.digest:
            body["digest"] = self.digest
        if self.full_check:
            body["check"] = "full"
        if self.pushed is not None:
            body["pushed"] = self.pushed.isoformat()
        if self.reason is not None:
            body["reason"] = self.reason.value
        return json.dumps(body, separators=(",", ":"), sort_keys=True)


def parse_message(text: str | bytes, config: SyncConfig) -> WorkMessage:
    """Validate a queue message; raises :class:`InvalidContent` naming the bad field."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if len(text) > MAX_MESSAGE_BYTES:
        raise InvalidContent(f"message is {len(text)} characters, over {MAX_MESSAGE_BYTES}")
    body = parse_json(text, "message", dict)
    if body.get("v") != VERSION:
        raise InvalidContent(f"message version {body.get('v')!r} is not supported (expected {VERSION})")
    try:
        kind = MessageKind(body.get("kind"))
    except ValueError:
        raise InvalidContent(
            f"message kind {body.get('kind')!r} is not one of {', '.join(k.value for k in MessageKind)}"
        ) from None
    unknown = set(body) - _FIELDS
    if unknown:
        raise InvalidContent(f"message has unknown fields {sorted(unknown)}")
    target = body.get("target")
    if not isinstance(target, str) or target not in {t.name for t in config.targets}:
        raise InvalidContent(f"message target {target!r} is not a configured target")
    if kind is MessageKind.REPOSITORIES:
        extra = set(body) - {"v", "kind", "target", "repositories"}
        if extra:
            raise InvalidContent(f"a repositories message carries no {sorted(extra)}")
        return WorkMessage.repositories(target, _batch(body.get("repositories"), config))
    repository = body.get("repository")
    _check_repository(repository, "message repository", config)
    assert isinstance(repository, str)
    tag, digest = body.get("tag"), body.get("digest")
    if kind is MessageKind.TAG and (not isinstance(tag, str) or not is_tag(tag)):
        raise InvalidContent(f"message tag {tag!r} is not a valid tag")
    if kind is not MessageKind.TAG and tag is not None:
        raise InvalidContent(f"a {kind.value} message carries no tag")
    if digest is not None and (not isinstance(digest, str) or not is_digest(digest)):
        raise InvalidContent(f"message digest {digest!r} is not a valid digest")
    if kind in (MessageKind.REFERRER, MessageKind.REFERRERS) and digest is None:
        raise InvalidContent(f"a {kind.value} message needs the manifest's digest")
    check = body.get("check")
    if check is not None and (kind is not MessageKind.REPOSITORY or check != "full"):
        raise InvalidContent(f"message check {check!r} is not 'full' (repository messages only)")
    pushed = body.get("pushed")
    when = parse_time(pushed)
    if pushed is not None and when is None:
        raise InvalidContent(f"message pushed {pushed!r} is not an ISO 8601 time")
    reason = body.get("reason")
    if reason is not None and (kind is MessageKind.REPOSITORY or reason not in {r.value for r in Reason}):
        raise InvalidContent(
            f"message reason {reason!r} is not one of {', '.join(r.value for r in Reason)} (work items only)"
        )
    return WorkMessage(
        kind,
        repository,
        target,
        tag,
        digest,
        check == "full",
        when,
        reason=Reason(reason) if reason else None,
    )


def _check_repository(name: object, what: str, config: SyncConfig) -> None:
    if not isinstance(name, str) or not is_repository(name):
        raise InvalidContent(f"{what} {name!r} is not a valid repository name")
    namespace = config.source.namespace
    if not in_namespace(name, namespace):
        raise InvalidContent(f"{what} {name} is outside the source namespace {namespace}")


def _batch(entries: object, config: SyncConfig) -> list[RepositoryWork]:
    if not isinstance(entries, list) or not entries or len(entries) > MAX_BATCH:
        raise InvalidContent(f"message repositories must be a list of 1 to {MAX_BATCH} entries")
    batch: list[RepositoryWork] = []
    for index, entry in enumerate(entries):
        where = f"message repositories[{index}]"
        if not isinstance(entry, dict) or set(entry) - _ENTRY_FIELDS:
            raise InvalidContent(f"{where} must be an object with {sorted(_ENTRY_FIELDS)}")
        name, check, source, since = (entry.get(k) for k in ("name", "check", "source", "since"))
        _check_repository(name, f"{where}.name", config)
        assert isinstance(name, str)
        if check is not None and check != "full":
            raise InvalidContent(f"{where}.check {check!r} is not 'full'")
        if source is not None and (not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE):
            raise InvalidContent(f"{where}.source is not a fingerprint (a string of at most {MAX_SOURCE})")
        when = parse_time(since)
        if since is not None and when is None:
            raise InvalidContent(f"{where}.since {since!r} is not an ISO 8601 time")
        batch.append(RepositoryWork(name, check == "full", source, when))
    if len({w.name for w in batch}) != len(batch):
        raise InvalidContent("message repositories name a repository twice")
    return batch
