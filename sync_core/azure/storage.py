"""The app's storage account (``AzureWebJobsStorage``), as the tools outside the Functions host reach it.

:class:`StorageAccess` says how: Entra ID for an account name (``az login``, the managed identity),
or a connection string (Azurite locally); the same access the host's own binding uses.
Errors from the Storage SDK become :class:`~sync_core.errors.SyncError` values naming the queue
and the way in, never a key or a SAS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sync_core.errors import ConfigError, SetupError, SyncError

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

#: Environment variables the CLI reads for storage access (besides the app's own settings).
ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"


ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"


#: The Functions host's storage settings (identity-based in Azure, a connection string locally).
HOST_STORAGE = "AzureWebJobsStorage"


# -- storage access -------------------------------------------------------------------------------


def connection_fields(connection_string: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


@dataclass(frozen=True)
class StorageAccess:
    """How to reach the storage account: a connection string, or an account URL (Entra ID)."""

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None  # the queue service endpoint
    client_id: str | None = None  # a user-assigned managed identity (AzureWebJobsStorage__clientId)
    table_url: str | None = None  # the table service endpoint (default: the queue endpoint's account)

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
    def for_account(cls, name: str) -> StorageAccess:
        if not re.fullmatch(r"[a-z0-9]{3,24}", name):
            raise ConfigError(f"storage account name {name!r} is not 3-24 lower-case letters and digits")
        return cls(account_url=f"https://{name}.queue.core.windows.net")

    def where(self) -> str:
        """The account, for messages: its name or endpoint, never a key."""
        if self.account_url is not None:
            return self.account_url.rstrip("/")
        fields = connection_fields(self.connection_string or "")
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
        assert self.account_url is not None
        return QueueClient(self.account_url, queue, credential=self._credential(), **options)

    def table_client(self, table: str, *, timeout: float = 20.0) -> TableClient:
        """A ``TableClient`` for ``table`` in the same account (Azurite: the connection string's
        ``TableEndpoint``, or the emulator's default one for ``UseDevelopmentStorage=true``)."""
        from azure.data.tables import TableClient

        options: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": timeout}
        if self.connection_string is not None:
            try:
                return TableClient.from_connection_string(self.connection_string, table, **options)
            except ValueError:
                raise ConfigError(
                    "storage connection string: malformed (expected AccountName=...;AccountKey=...;"
                    "TableEndpoint=... or UseDevelopmentStorage=true)"
                ) from None
        url = self.table_url
        if url is None:
            assert self.account_url is not None
            url = re.sub(r"\.queue\.", ".table.", self.account_url, count=1)
        return TableClient(url, table, credential=self._credential(), **options)

    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(
            exclude_interactive_browser_credential=True, managed_identity_client_id=self.client_id
        )


def access_from_env(env: Mapping[str, str]) -> StorageAccess | None:
    """Storage access named by the environment, or None.

    ``AZURE_STORAGE_CONNECTION_STRING``, then ``AZURE_STORAGE_ACCOUNT`` (as the Azure CLI reads
    them), then the Functions host's own settings: ``AzureWebJobsStorage`` (a connection string),
    ``AzureWebJobsStorage__queueServiceUri`` or ``AzureWebJobsStorage__accountName`` (identity).
    """
    if env.get(ENV_CONNECTION_STRING, "").strip():
        return StorageAccess(connection_string=env[ENV_CONNECTION_STRING].strip())
    if env.get(ENV_ACCOUNT, "").strip():
        return StorageAccess.for_account(env[ENV_ACCOUNT].strip())
    client_id = env.get(f"{HOST_STORAGE}__clientId", "").strip() or None
    if env.get(HOST_STORAGE, "").strip():
        return StorageAccess(connection_string=env[HOST_STORAGE].strip())
    table_url = env.get(f"{HOST_STORAGE}__tableServiceUri", "").strip() or None
    if env.get(f"{HOST_STORAGE}__queueServiceUri", "").strip():
        queues = env[f"{HOST_STORAGE}__queueServiceUri"].strip()
        return StorageAccess(account_url=queues, client_id=client_id, table_url=table_url)
    if env.get(f"{HOST_STORAGE}__accountName", "").strip():
        account = StorageAccess.for_account(env[f"{HOST_STORAGE}__accountName"].strip())
        return StorageAccess(account_url=account.account_url, client_id=client_id, table_url=table_url)
    return None


def storage_error(exc: BaseException, what: str, queue: str, access: StorageAccess) -> SyncError:
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
