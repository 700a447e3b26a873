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

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from sync_core import logs
from sync_core.azure.poison_messages import (
    PAGE,
    Action,
    Listing,
    Outcome,
    PoisonMessage,
    Result,
    Selector,
    Status,
    from_sdk,
    poison_queue_name,
)
from sync_core.azure.storage import HOST_STORAGE, StorageAccess, access_from_env, storage_error
from sync_core.config.model import SyncConfig
from sync_core.errors import ConfigError, SyncError

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage


log = logging.getLogger("sync_core.poison")


DEFAULT_VISIBILITY_SECONDS = 300  # a scan hides each message this long at most


class _Stopped(Exception):
    """An operation failed: the run stops, what is left stays in the poison queue."""


def _approximate_count(client: QueueClient, access: StorageAccess) -> int:
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
        access: StorageAccess,
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
        return Listing(self.queue, count, [from_sdk(m, self.config) for m in peeked], complete=False)

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
                    if handle(raw, from_sdk(raw, self.config)):
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
