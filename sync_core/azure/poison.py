"""The poison queue: list, replay and drop what the worker gave up on; its depth for the timer.

After ``maxDequeueCount`` failed tries (host.json) the Functions host moves a work message to
``<SYNC_QUEUE>-poison``, presumably stored as it was: base64 of the UTF-8 JSON (host.json
``messageEncoding: base64``); a valid message stored as plain text is accepted as well. Nothing
reads that queue. This module, used by
``python -m sync_core poison list|replay|drop`` and by the timer:

* **list** peeks (no side effect; the Storage API shows at most 32 messages that way) or, with
  ``--all``, scans the whole queue;
* **replay** sends each selected message back to the work queue unchanged, then deletes it from
  the poison queue: the delete happens only after the send succeeded, so a failure leaves the
  message where it was (at worst it is in both queues: the worker's copy is idempotent);
* **drop** deletes the selected messages;
* :func:`poison_depth` is what the timer logs every run (``decision=poison_depth``), the signal of
  the "poison queue not empty" alert (infra/README.md).

A scan receives the messages in pages of 32 with a visibility timeout (they are hidden from
other readers meanwhile and their dequeue count grows by one) and makes those it did not
replay or drop visible again at the end. Each message is decoded and validated with
:func:`sync_core.azure.messages.parse_message` against the configuration, exactly as the worker
would; an invalid message is never replayed (it would fail again): drop it.

Storage access: a connection string (Azurite, local runs) or an account URL with
``DefaultAzureCredential`` (Azure: the app's storage accepts Entra ID only). Errors name the
account and the queue, never a key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sync_core import logs
from sync_core.azure.messages import WorkMessage, parse_message
from sync_core.config.model import SyncConfig
from sync_core.errors import ConfigError, InvalidContent, SetupError, SyncError
from sync_core.registry.jsondoc import parse_json

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

log = logging.getLogger("sync_core.poison")

POISON_SUFFIX = "-poison"
PAGE = 32  # the most messages one peek or receive returns (Storage API limit)
DEFAULT_VISIBILITY_SECONDS = 300  # a scan hides each message this long at most
_BODY_LIMIT = 2000  # characters of a message body shown in --json

#: Environment variables the CLI reads for storage access (besides the app's own settings).
ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
#: The Functions host's storage settings (identity-based in Azure, a connection string locally).
HOST_STORAGE = "AzureWebJobsStorage"


def poison_queue_name(queue: str) -> str:
    return f"{queue}{POISON_SUFFIX}"


# -- storage access -------------------------------------------------------------------------------


def _connection_fields(connection_string: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


@dataclass(frozen=True)
class QueueAccess:
    """How to reach the storage account: a connection string, or an account URL (Entra ID)."""

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    client_id: str | None = None  # a user-assigned managed identity (AzureWebJobsStorage__clientId)

    def __post_init__(self) -> None:
        if bool(self.connection_string) == bool(self.account_url):
            raise ConfigError("storage: give a connection string or an account URL (one of them)")
        if self.account_url is not None and not re.fullmatch(
            r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9-]*)?/?", self.account_url
        ):
            raise ConfigError(
                "--account-url: expected https://<account>.queue.core.windows.net (no path, no SAS token)"
            )

    @classmethod
    def for_account(cls, name: str) -> QueueAccess:
        if not re.fullmatch(r"[a-z0-9]{3,24}", name):
            raise ConfigError(f"storage account name {name!r} is not 3-24 lower-case letters and digits")
        return cls(account_url=f"https://{name}.queue.core.windows.net")

    def where(self) -> str:
        """The account, for messages: its name or endpoint, never a key."""
        if self.account_url is not None:
            return self.account_url.rstrip("/")
        fields = _connection_fields(self.connection_string or "")
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            return "the local storage emulator (UseDevelopmentStorage=true)"
        endpoint = fields.get("queueendpoint")
        account = fields.get("accountname")
        if endpoint:
            return endpoint.split("?", 1)[0].rstrip("/")
        if account:
            return f"storage account {account}"
        return "the storage account of the connection string"

    def client(self, queue: str, *, retries: int = 3, timeout: float = 20.0) -> QueueClient:
        """A ``QueueClient`` that sends and returns message text as stored (no encoding policy)."""
        from azure.storage.queue import LinearRetry, QueueClient

        options: dict[str, Any] = {
            "retry_policy": LinearRetry(backoff=1, retry_total=retries, random_jitter_range=1),
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }
        if self.connection_string is not None:
            try:
                return QueueClient.from_connection_string(self.connection_string, queue, **options)
            except ValueError:
                raise ConfigError(
                    "storage connection string: malformed (expected AccountName=...;AccountKey=...;"
                    "QueueEndpoint=... or UseDevelopmentStorage=true)"
                ) from None
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(
            exclude_interactive_browser_credential=True, managed_identity_client_id=self.client_id
        )
        assert self.account_url is not None
        return QueueClient(self.account_url, queue, credential=credential, **options)


def access_from_env(env: Mapping[str, str]) -> QueueAccess | None:
    """Storage access named by the environment, or None.

    ``AZURE_STORAGE_CONNECTION_STRING``, then ``AZURE_STORAGE_ACCOUNT`` (as the Azure CLI reads
    them), then the Functions host's own settings: ``AzureWebJobsStorage`` (a connection string),
    ``AzureWebJobsStorage__queueServiceUri`` or ``AzureWebJobsStorage__accountName`` (identity).
    """
    if env.get(ENV_CONNECTION_STRING, "").strip():
        return QueueAccess(connection_string=env[ENV_CONNECTION_STRING].strip())
    if env.get(ENV_ACCOUNT, "").strip():
        return QueueAccess.for_account(env[ENV_ACCOUNT].strip())
    client_id = env.get(f"{HOST_STORAGE}__clientId", "").strip() or None
    if env.get(HOST_STORAGE, "").strip():
        return QueueAccess(connection_string=env[HOST_STORAGE].strip())
    if env.get(f"{HOST_STORAGE}__queueServiceUri", "").strip():
        return QueueAccess(account_url=env[f"{HOST_STORAGE}__queueServiceUri"].strip(), client_id=client_id)
    if env.get(f"{HOST_STORAGE}__accountName", "").strip():
        account = QueueAccess.for_account(env[f"{HOST_STORAGE}__accountName"].strip())
        return QueueAccess(account_url=account.account_url, client_id=client_id)
    return None


def storage_error(exc: BaseException, what: str, queue: str, access: QueueAccess) -> SyncError:
    """An Azure SDK exception as one of ours: the operation, queue and account; no key, no URL query."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    where = f"{what} on queue {queue} at {access.where()}"
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return SetupError(
            f"{where}: no Azure credential ({type(exc).__name__}); sign in with `az login`, "
            "or give a connection string"
        )
    if isinstance(exc, ResourceNotFoundError):
        code = getattr(exc, "error_code", None) or "not found"
        return SetupError(f"{where}: {code} (does the queue exist? SYNC_QUEUE names the work queue)")
    if isinstance(exc, HttpResponseError) and exc.status_code in (401, 403):
        code = getattr(exc, "error_code", None) or exc.status_code
        return SetupError(
            f"{where}: refused ({exc.status_code} {code}); the identity needs the role "
            "Storage Queue Data Contributor on the account"
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = getattr(exc, "error_code", None) or exc.reason or ""
        return SyncError(f"{where}: HTTP {exc.status_code} {code}".rstrip())
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        found = re.search(r"\[Errno -?\d+\] [^'\"\])>]+", str(exc))
        reason = found.group(0).strip() if found else type(exc).__name__
        return SyncError(f"{where}: cannot reach the storage account ({reason})")
    return SyncError(f"{where}: {type(exc).__name__}")


# -- messages -------------------------------------------------------------------------------------


class Status(str, enum.Enum):
    VALID = "valid"
    INVALID = "invalid"


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


def _from_sdk(message: QueueMessage, config: SyncConfig) -> PoisonMessage:
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


class _Stopped(Exception):
    """An operation failed: the run stops, what is left stays in the poison queue."""


def _approximate_count(client: QueueClient, access: QueueAccess) -> int:
    """The approximate message count of a queue (0 if it does not exist yet)."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        return int(client.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0
    except AzureError as exc:
        raise storage_error(exc, "reading the message count", client.queue_name, access) from None


class PoisonQueue:
    """The work queue and its poison queue in one storage account."""

    def __init__(
        self,
        access: QueueAccess,
        queue: str,
        config: SyncConfig,
        *,
        retries: int = 3,
        visibility_timeout: int = DEFAULT_VISIBILITY_SECONDS,
    ) -> None:
        self.access = access
        self.queue = queue
        self.poison_name = poison_queue_name(queue)
        self.config = config
        self.visibility_timeout = visibility_timeout
        self.work = access.client(queue, retries=retries)
        self.poison = access.client(self.poison_name, retries=retries)

    def close(self) -> None:
        for client in (self.work, self.poison):
            client.close()

    def __enter__(self) -> PoisonQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, exc: BaseException, what: str, queue: str | None = None) -> SyncError:
        return storage_error(exc, what, queue or self.poison_name, self.access)

    def depth(self) -> int:
        """The approximate message count of the poison queue (0 if it does not exist yet)."""
        return _approximate_count(self.poison, self.access)

    def listing(self, *, scan: bool = False) -> Listing:
        """The messages: a peek at the first 32 (no side effect), or (``scan``) all of them."""
        from azure.core.exceptions import AzureError

        count = self.depth()
        if scan:
            messages: list[PoisonMessage] = []

            def keep(_raw: QueueMessage, message: PoisonMessage) -> bool:
                messages.append(message)
                return False

            self._scan(keep)
            return Listing(self.queue, count, messages, complete=True)
        try:
            peeked = self.poison.peek_messages(max_messages=PAGE) if count else []
        except AzureError as exc:
            raise self._error(exc, "peeking at the messages") from None
        return Listing(self.queue, count, [_from_sdk(m, self.config) for m in peeked], complete=False)

    def replay(self, selector: Selector, *, dry_run: bool = False) -> Result:
        """Send each selected valid message back to the work queue, then delete it here."""
        result = Result("replay", self.queue, dry_run)
        if not dry_run:
            self._check_work_queue()
        self._run(selector, result, self._replay_one)
        return result

    def drop(self, selector: Selector, *, dry_run: bool = False) -> Result:
        """Delete each selected message from the poison queue."""
        result = Result("drop", self.queue, dry_run)
        self._run(selector, result, self._drop_one)
        return result

    # -- internals --

    def _check_work_queue(self) -> None:
        from azure.core.exceptions import AzureError

        try:
            self.work.get_queue_properties()
        except AzureError as exc:
            raise self._error(exc, "checking the work queue", self.queue) from None

    def _run(
        self,
        selector: Selector,
        result: Result,
        act: Callable[[QueueMessage, PoisonMessage, Result], Outcome],
    ) -> None:
        seen: set[str] = set()

        def handle(raw: QueueMessage, message: PoisonMessage) -> bool:
            seen.add(message.id)
            if not selector.matches(message):
                return False
            outcome = act(raw, message, result)
            result.outcomes.append(outcome)
            if result.error is not None:
                raise _Stopped
            return outcome.action in (Action.REPLAYED, Action.DROPPED)

        try:
            self._scan(handle)
        except _Stopped:
            return
        except SyncError as exc:
            result.error = str(exc)
            return
        for missing in sorted(selector.ids - seen):
            result.outcomes.append(Outcome(missing, Action.NOT_FOUND, "no such message in the poison queue"))

    def _replay_one(self, raw: QueueMessage, message: PoisonMessage, result: Result) -> Outcome:
        from azure.core.exceptions import AzureError

        if message.status is Status.INVALID:
            return Outcome(
                message.id, Action.SKIPPED, f"invalid, would fail again (drop it): {message.problem}", message
            )
        if result.dry_run:
            return Outcome(message.id, Action.WOULD_REPLAY, f"to {self.queue}", message)
        try:
            self.work.send_message(message.to_send)
        except AzureError as exc:
            result.error = str(self._error(exc, "sending", self.queue))
            return Outcome(message.id, Action.FAILED, "not sent; still in the poison queue", message)
        try:
            self.poison.delete_message(raw.id, raw.pop_receipt)
        except AzureError as exc:
            result.error = str(self._error(exc, "deleting a replayed message"))
            return Outcome(
                message.id,
                Action.FAILED,
                f"sent to {self.queue} but still in the poison queue too: drop it by id",
                message,
            )
        logs.decision(
            log,
            "replayed",
            f"replayed poison message {message.id} to {self.queue}",
            message_id=message.id,
            repository=message.repository,
            target=message.target,
        )
        return Outcome(message.id, Action.REPLAYED, f"to {self.queue}", message)

    def _drop_one(self, raw: QueueMessage, message: PoisonMessage, result: Result) -> Outcome:
        from azure.core.exceptions import AzureError

        if result.dry_run:
            return Outcome(message.id, Action.WOULD_DROP, message.problem or "", message)
        try:
            self.poison.delete_message(raw.id, raw.pop_receipt)
        except AzureError as exc:
            result.error = str(self._error(exc, "deleting"))
            return Outcome(message.id, Action.FAILED, "not deleted", message)
        logs.decision(
            log,
            "dropped",
            f"dropped poison message {message.id}",
            message_id=message.id,
            repository=message.repository,
            target=message.target,
        )
        return Outcome(message.id, Action.DROPPED, message.problem or "", message)

    def _scan(self, handle: Callable[[QueueMessage, PoisonMessage], bool]) -> None:
        """Receive every message once; ``handle`` returns True for one it removed from the queue.

        The others are made visible again at the end (also after an error), each with its latest
        pop receipt; one the scan could not release becomes visible by itself after the
        visibility timeout.
        """
        from azure.core.exceptions import AzureError

        kept: dict[str, QueueMessage] = {}
        handled: set[str] = set()
        try:
            for batch in self._batches():
                fresh = [m for m in batch if str(m.id) not in handled]
                for raw in batch:
                    kept[str(raw.id)] = raw  # newest pop receipt
                if not fresh:
                    break  # everything came round again: the scan outlived the visibility timeout
                for raw in fresh:
                    handled.add(str(raw.id))
                    if handle(raw, _from_sdk(raw, self.config)):
                        kept.pop(str(raw.id), None)
        finally:
            for raw in kept.values():
                try:
                    self.poison.update_message(str(raw.id), pop_receipt=raw.pop_receipt, visibility_timeout=0)
                except AzureError:
                    pass  # visible again after the visibility timeout anyway

    def _batches(self) -> Iterator[list[QueueMessage]]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        while True:
            try:
                batch = list(
                    self.poison.receive_messages(
                        messages_per_page=PAGE, max_messages=PAGE, visibility_timeout=self.visibility_timeout
                    )
                )
            except ResourceNotFoundError:
                return  # no poison queue yet: nothing to do
            except AzureError as exc:
                raise self._error(exc, "receiving the messages") from None
            if not batch:
                return
            yield batch


# -- the timer's signal ---------------------------------------------------------------------------


def poison_depth(queue: str, env: Mapping[str, str] | None = None) -> int | None:
    """Log the poison queue's approximate depth as a decision line; the count, or None if unknown.

    The timer calls this every run: ``decision=poison_depth queue=<name> count=<n>`` (a warning
    when n > 0) is what the "poison queue not empty" alert reads. Never raises: the timer's own
    work must not depend on it.
    """
    name = poison_queue_name(queue)
    try:
        access = access_from_env(os.environ if env is None else env)
        if access is None:
            raise ConfigError(f"no storage setting ({HOST_STORAGE} or {HOST_STORAGE}__accountName)")
        with access.client(name, retries=1) as client:
            count = _approximate_count(client, access)
    except SyncError as exc:
        logs.decision(
            log,
            "poison_depth",
            f"cannot read the depth of the poison queue {name}: {exc}",
            level=logging.WARNING,
            queue=name,
        )
        return None
    logs.decision(
        log,
        "poison_depth",
        f"poison queue {name} holds about {count} message(s)",
        level=logging.WARNING if count else logging.INFO,
        queue=name,
        count=count,
    )
    return count
