"""The timer's memory: what is recorded of each (repository, target), in the app's storage account.

One Azure Table (``<SYNC_QUEUE>state`` without dashes, created when missing) in the account of
``AzureWebJobsStorage`` (Azurite locally): partition = target name, row = repository (``/`` as
``:``, which a row key may hold). An entity is small: the fingerprint last confirmed mirrored and
when, the last full check, the last enqueue (and for which fingerprint), the last failure, and
when the current source change began (:class:`~sync_core.plan.schedule.RepositoryState`).

Every write is a MERGE of the fields the writer owns, so concurrent writers lose nothing of each
other's: the timer writes what it enqueued, a worker the outcome of its work. Which write lands
last never hides a change: a worker records the fingerprint the timer read *before* the work
listed the source, so a stale record only makes the next run look again. A state that is lost or
reset makes every repository new: one full pass, never a missed change.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sync_core.azure.storage import StorageAccess, access_from_env
from sync_core.errors import ConfigError, SetupError, SyncError
from sync_core.plan.schedule import Decision, RepositoryState

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger(__name__)
# The Storage SDK logs every request and its headers at INFO: not worth a log line per entity.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

MAX_REASON = 500  # characters of a failure reason kept
BATCH = 100  # entities per table transaction (the service's limit)


class StateStore(Protocol):
    """What the timer and the workers record (``TableState``; tests may give another)."""

    def load(self, target: str) -> dict[str, RepositoryState]: ...

    def enqueued(self, target: str, decisions: list[Decision], now: dt.datetime) -> None: ...

    def pending(self, target: str, decisions: list[Decision]) -> None: ...

    def succeeded(
        self, target: str, repository: str, source: str | None, now: dt.datetime, *, full_check: bool
    ) -> None: ...

    def failed(self, target: str, repository: str, reason: str, now: dt.datetime) -> None: ...


def table_name(queue: str) -> str:
    """The state table of the app whose work queue is ``queue`` (letters and digits only)."""
    name = re.sub(r"[^A-Za-z0-9]", "", queue) + "state"
    return name if name[:1].isalpha() else f"t{name}"


def row_key(repository: str) -> str:
    return repository.replace("/", ":")


class TableState:
    """:class:`StateStore` on an Azure Table (``azure-data-tables``)."""

    def __init__(self, client: TableClient, *, where: str = "the storage account"):
        self.client = client
        self.where = where
        self._created = False

    @classmethod
    def from_env(cls, queue: str, env: Mapping[str, str]) -> TableState:
        """The state table next to the work queue, in ``AzureWebJobsStorage``'s account."""
        access = access_from_env(env)
        if access is None:
            raise ConfigError(
                "AzureWebJobsStorage: the timer keeps its state in the app's storage account; set "
                "AzureWebJobsStorage (a connection string, or __accountName with an identity)"
            )
        return cls.for_access(access, queue)

    @classmethod
    def for_access(cls, access: StorageAccess, queue: str) -> TableState:
        return cls(access.table_client(table_name(queue)), where=access.where())

    def load(self, target: str) -> dict[str, RepositoryState]:
        """Every repository recorded for ``target`` (one paged query)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        found: dict[str, RepositoryState] = {}
        escaped = target.replace("'", "''")
        try:
            for entity in self.client.query_entities(f"PartitionKey eq '{escaped}'"):
                state = _from_entity(entity)
                if state is not None:
                    found[state.repository] = state
        except ResourceNotFoundError:
            return {}  # no table yet: nothing recorded (the first run, or a reset state)
        except AzureError as exc:
            raise self._error(exc, f"reading the state of {target}") from None
        return found

    def enqueued(self, target: str, decisions: list[Decision], now: dt.datetime) -> None:
        """The timer enqueued work for these repositories (and saw their change begin)."""
        self._merge(
            target,
            [
                {
                    "repository": d.repository,
                    "enqueued": now,
                    "enqueued_source": d.source or "",
                    **_change(d),
                }
                for d in decisions
            ],
        )

    def pending(self, target: str, decisions: list[Decision]) -> None:
        """Changes the timer saw begin while work for an earlier one is still on its way."""
        self._merge(
            target, [{"repository": d.repository, **_change(d)} for d in decisions if d.changed_since]
        )

    def succeeded(
        self, target: str, repository: str, source: str | None, now: dt.datetime, *, full_check: bool
    ) -> None:
        fields: dict[str, Any] = {"repository": repository, "mirrored": now, "source": source or ""}
        if full_check:
            fields["full_checked"] = now
        self._merge(target, [fields])

    def failed(self, target: str, repository: str, reason: str, now: dt.datetime) -> None:
        self._merge(target, [{"repository": repository, "failed": now, "reason": reason[:MAX_REASON]}])

    # -- internals --------------------------------------------------------------------------------
    def _merge(self, target: str, rows: list[dict[str, Any]]) -> None:
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        if not rows:
            return
        entities = [{"PartitionKey": target, "RowKey": row_key(r["repository"]), **r} for r in rows]
        try:
            self._create()
            self._batches(entities, UpdateMode.MERGE)
        except AzureError as exc:
            raise self._error(exc, f"recording the state of {target}") from None

    def _batches(self, entities: list[dict[str, Any]], mode: Any) -> None:
        if len(entities) == 1:
            self.client.upsert_entity(entities[0], mode=mode)
            return
        for start in range(0, len(entities), BATCH):
            chunk = entities[start : start + BATCH]
            self.client.submit_transaction([("upsert", e, {"mode": mode}) for e in chunk])

    def _create(self) -> None:
        """The table exists (created once per process: a reset state starts empty)."""
        from azure.core.exceptions import ResourceExistsError

        if self._created:
            return
        try:
            self.client.create_table()
        except ResourceExistsError:
            pass  # created before, or by another writer meanwhile
        self._created = True

    def _error(self, exc: BaseException, what: str) -> SyncError:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        where = f"{what} in table {self.client.table_name} at {self.where}"
        if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
            return SetupError(f"{where}: no Azure credential ({type(exc).__name__})")
        if isinstance(exc, HttpResponseError) and exc.status_code in (401, 403):
            return SetupError(
                f"{where}: refused ({exc.status_code}); the app's identity needs the role "
                "Storage Table Data Contributor on the account"
            )
        status = getattr(exc, "status_code", None)
        return SyncError(f"{where}: {type(exc).__name__}" + (f" (HTTP {status})" if status else ""))


def _change(decision: Decision) -> dict[str, Any]:
    if decision.changed_since is None:
        return {}
    return {"changed_since": decision.changed_since, "changed_base": decision.changed_base or ""}


def _from_entity(entity: Mapping[str, Any]) -> RepositoryState | None:
    repository = entity.get("repository")
    if not isinstance(repository, str) or not repository:
        return None  # not ours: ignored

    def when(key: str) -> dt.datetime | None:
        value = entity.get(key)
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return None

    def text(key: str) -> str | None:
        value = entity.get(key)
        return value if isinstance(value, str) and value else None

    return RepositoryState(
        repository=repository,
        source=text("source"),
        mirrored=when("mirrored"),
        full_checked=when("full_checked"),
        enqueued=when("enqueued"),
        enqueued_source=text("enqueued_source"),
        failed=when("failed"),
        reason=text("reason"),
        changed_since=when("changed_since"),
        changed_base=text("changed_base"),
    )
