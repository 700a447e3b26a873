"""What the poison queue holds, decoded: each message validated as the worker would, selected by id,
repository or target, and the listings and results ``poison list|replay|drop`` print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.storage.queue import QueueMessage

import base64
import binascii
import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from sync_core import logs
from sync_core.azure.messages import WorkMessage, parse_message
from sync_core.config.model import SyncConfig
from sync_core.errors import ConfigError, InvalidContent
from sync_core.registry.jsondoc import parse_json

_BODY_LIMIT = 2000  # characters of a message body shown in --json


# -- messages -------------------------------------------------------------------------------------


class Status(str, enum.Enum):
    VALID = "valid"
    INVALID = "invalid"


POISON_SUFFIX = "-poison"
PAGE = 32  # the most messages one peek or receive returns (Storage API limit)


def poison_queue_name(queue: str) -> str:
    return f"{queue}{POISON_SUFFIX}"


@dataclass(frozen=True)
class PoisonMessage:
    """One message of the poison queue, decoded and validated as the worker would."""

    id: str
    content: str = field(repr=False)  # as stored (base64 text, or plain text: ``plain``)
    inserted_on: dt.datetime | None = None
    dequeue_count: int | None = None
    body: str | None = None  # the decoded text, when it decodes
    work: WorkMessage | None = None
    problem: str | None = None
    fields: dict[str, str] = field(default_factory=dict)  # kind/repository/target/tag/digest shown
    plain: bool = False  # stored as plain text, not base64

    @property
    def to_send(self) -> str:
        """What replay puts on the work queue: the stored base64 text unchanged, or the plain text encoded."""
        return base64.b64encode(self.content.encode("utf-8")).decode("ascii") if self.plain else self.content

    @property
    def status(self) -> Status:
        return Status.VALID if self.work is not None else Status.INVALID

    @property
    def repository(self) -> str | None:
        return self.fields.get("repository")

    @property
    def target(self) -> str | None:
        return self.fields.get("target")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "inserted_on": self.inserted_on.isoformat() if self.inserted_on else None,
            "dequeue_count": self.dequeue_count,
            "status": self.status.value,
            "stored_as": "text" if self.plain else "base64",
            "problem": self.problem,
            **{k: self.fields.get(k) for k in ("kind", "repository", "target", "tag", "digest")},
            "body": self.body[:_BODY_LIMIT] if self.body is not None else None,
        }


def inspect(
    message_id: str,
    content: str,
    config: SyncConfig,
    *,
    inserted_on: dt.datetime | None = None,
    dequeue_count: int | None = None,
) -> PoisonMessage:
    """Decode (base64, UTF-8) and validate one stored message.

    A message stored as plain text (not base64) that is otherwise valid is accepted too (``plain``):
    whether the host keeps the base64 text when it moves a message to the poison queue is not
    something this code relies on. Replay always sends base64, what the worker decodes.
    """
    common: dict[str, Any] = {"inserted_on": inserted_on, "dequeue_count": dequeue_count}
    try:
        body = base64.b64decode(content.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        fields = _shown_fields(content)
        try:
            work = parse_message(content, config)
        except InvalidContent as exc:
            return PoisonMessage(
                message_id,
                content,
                body=content,
                fields=fields,
                plain=True,
                problem=f"not base64, and as plain text: {exc}",
                **common,
            )
        return PoisonMessage(
            message_id, content, body=content, work=work, fields=fields, plain=True, **common
        )
    fields = _shown_fields(body)
    try:
        work = parse_message(body, config)
    except InvalidContent as exc:
        return PoisonMessage(message_id, content, body=body, fields=fields, problem=str(exc), **common)
    return PoisonMessage(message_id, content, body=body, work=work, fields=fields, **common)


def _shown_fields(text: str) -> dict[str, str]:
    """kind/repository/target/tag/digest of a message body, whatever else is wrong with it."""
    try:
        doc = parse_json(text, "message", dict)
    except InvalidContent:
        return {}
    return {
        k: v for k in ("kind", "repository", "target", "tag", "digest") if isinstance(v := doc.get(k), str)
    }


def from_sdk(message: QueueMessage, config: SyncConfig) -> PoisonMessage:
    content = message.content if isinstance(message.content, str) else str(message.content or "")
    return inspect(
        str(message.id), content, config, inserted_on=message.inserted_on, dequeue_count=message.dequeue_count
    )


# -- selection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """Which messages replay/drop act on: the conditions given must all hold (ids: any of them)."""

    ids: frozenset[str] = frozenset()
    everything: bool = False
    repositories: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()
    invalid_only: bool = False

    def __post_init__(self) -> None:
        if not (self.ids or self.everything or self.repositories or self.targets or self.invalid_only):
            raise ConfigError("name the messages: message ids, --all, --repository, --target or --invalid")

    def matches(self, message: PoisonMessage) -> bool:
        return (
            (not self.ids or message.id in self.ids)
            and (not self.repositories or message.repository in self.repositories)
            and (not self.targets or message.target in self.targets)
            and (not self.invalid_only or message.status is Status.INVALID)
        )


# -- operations -----------------------------------------------------------------------------------


class Action(str, enum.Enum):
    REPLAYED = "replayed"
    DROPPED = "dropped"
    WOULD_REPLAY = "would replay"
    WOULD_DROP = "would drop"
    SKIPPED = "skipped"  # invalid: not replayed
    FAILED = "failed"
    NOT_FOUND = "not found"


@dataclass(frozen=True)
class Outcome:
    id: str
    action: Action
    detail: str = ""
    message: PoisonMessage | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action.value,
            "detail": self.detail,
            "message": self.message.to_dict() if self.message else None,
        }


@dataclass
class Listing:
    """What ``poison list`` shows."""

    queue: str
    approximate_count: int
    messages: list[PoisonMessage]
    complete: bool  # False: a peek, limited to the first PAGE messages

    @property
    def poison_queue(self) -> str:
        return poison_queue_name(self.queue)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "poison_queue": self.poison_queue,
            "approximate_count": self.approximate_count,
            "complete": self.complete,
            "messages": [m.to_dict() for m in self.messages],
        }

    def render(self) -> str:
        lines = [
            f"poison queue {self.poison_queue}: about {self.approximate_count} message(s), "
            f"{len(self.messages)} shown"
        ]
        if not self.complete and self.approximate_count > len(self.messages):
            lines.append(f"  (a peek shows the first {PAGE} only; `poison list --all` scans them all)")
        if self.messages:
            rows = [
                _row(m) + [m.problem or ("ok (stored as plain text)" if m.plain else "ok")]
                for m in self.messages
            ]
            lines += _table(["ID", "INSERTED", "KIND", "REPOSITORY", "TARGET", "TAG", "STATUS"], rows)
        return "\n".join(lines)


@dataclass
class Result:
    """What ``poison replay`` / ``poison drop`` did (or would do, ``dry_run``)."""

    operation: str  # "replay" or "drop"
    queue: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None  # what stopped the run early

    @property
    def ok(self) -> bool:
        return self.error is None and not any(o.action is Action.FAILED for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for outcome in self.outcomes:
            found[outcome.action.value] = found.get(outcome.action.value, 0) + 1
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "queue": self.queue,
            "poison_queue": poison_queue_name(self.queue),
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts(),
            "error": self.error,
            "results": [o.to_dict() for o in self.outcomes],
        }

    def render(self) -> str:
        arrow = (
            f"{poison_queue_name(self.queue)} -> {self.queue}"
            if self.operation == "replay"
            else (poison_queue_name(self.queue))
        )
        head = f"{self.operation} {arrow}{' (dry run: nothing sent or deleted)' if self.dry_run else ''}"
        lines = [head]
        if self.outcomes:
            rows = []
            for o in self.outcomes:
                shown = _row(o.message) if o.message else [logs.clean(o.id), "", "", "", "", ""]
                rows.append([*shown[:1], o.action.value, *shown[2:], o.detail])
            lines += _table(["ID", "ACTION", "KIND", "REPOSITORY", "TARGET", "TAG", "DETAIL"], rows)
        else:
            lines.append("  no message matched")
        summary = ", ".join(f"{n} {action}" for action, n in self.counts().items()) or "nothing done"
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {summary}")
        if self.error:
            lines.append(f"stopped: {self.error}")
        return "\n".join(lines)


def _row(m: PoisonMessage) -> list[str]:
    when = m.inserted_on.strftime("%Y-%m-%d %H:%M") if m.inserted_on else ""
    tag = m.fields.get("tag") or m.fields.get("digest") or ""
    return [
        logs.clean(m.id, 64),
        when,
        logs.clean(m.fields.get("kind", ""), 12),
        logs.clean(m.repository or "", 80),
        logs.clean(m.target or "", 40),
        logs.clean(tag, 80),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  " + "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in [header, *rows]
    ]
