"""Credentials from Azure Key Vault (managed identity) or from the environment.

Key Vault secrets are read once per process and cached; when a registry rejects them (401), the
registry client asks for one re-read, which picks up a rotated ACR token password.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sync_core.config.model import CredentialSpec
from sync_core.errors import AuthError, ConfigError, SecretUnavailable
from sync_core.registry.auth import ANONYMOUS, Credentials, CredentialSource, StaticCredentials

log = logging.getLogger(__name__)

REREAD_INTERVAL = 30.0  # at most one re-read of a secret per this many seconds


class KeyVaultSecrets:
    """Reads secrets from one vault with ``SecretClient`` (``DefaultAzureCredential`` by default)."""

    def __init__(self, vault_url: str, *, credential: Any = None, **client_kwargs: Any):
        from azure.keyvault.secrets import SecretClient  # imported lazily: the CLI may not need it

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        self.vault_url = vault_url
        self.client = SecretClient(vault_url=vault_url, credential=credential, **client_kwargs)
        self._values: dict[str, str] = {}
        self._read_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, name: str, *, fresh: bool = False) -> str:
        with self._lock:
            if not fresh and name in self._values:
                return self._values[name]
            value = self._read(name)
            self._values[name] = value
            self._read_at[name] = time.monotonic()
            return value

    def reread(self, name: str) -> bool:
        """Read ``name`` again unless it was read moments ago; True if it was re-read."""
        with self._lock:
            if time.monotonic() - self._read_at.get(name, 0.0) < REREAD_INTERVAL:
                return False
        self.get(name, fresh=True)
        return True

    def _read(self, name: str) -> str:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            secret = self.client.get_secret(name)
        except ResourceNotFoundError:
            raise SecretUnavailable(f"Key Vault secret {name!r}: not found in {self.vault_url}") from None
        except AzureError as exc:
            status = getattr(exc, "status_code", None)
            status = status if isinstance(status, int) else None
            answered = f", HTTP {status}" if status else ""
            raise AuthError(
                f"Key Vault {self.vault_url}: reading secret {name!r} failed ({type(exc).__name__}{answered})",
                status=status,
            ) from None
        if not secret.value:
            raise SecretUnavailable(f"Key Vault secret {name!r} in {self.vault_url} is empty")
        return secret.value


class KeyVaultCredentials(CredentialSource):
    """A username/password pair stored as two Key Vault secrets."""

    def __init__(self, vault: KeyVaultSecrets, username_secret: str, password_secret: str):
        self.vault = vault
        self.username_secret = username_secret
        self.password_secret = password_secret

    def get(self) -> Credentials:
        return Credentials(self.vault.get(self.username_secret), self.vault.get(self.password_secret))

    def refresh(self) -> bool:
        reread = self.vault.reread(self.password_secret)
        if reread:
            self.vault.reread(self.username_secret)
            log.info(
                "re-read Key Vault secrets %s/%s after the registry refused them",
                self.username_secret,
                self.password_secret,
            )
        return reread


class SecretStore:
    """Turns :class:`CredentialSpec` into credential sources; one Key Vault client per process."""

    def __init__(self, key_vault_url: str | None = None, *, vault: KeyVaultSecrets | None = None):
        self.key_vault_url = key_vault_url
        self._vault = vault
        self._lock = threading.Lock()

    @property
    def vault(self) -> KeyVaultSecrets:
        with self._lock:
            if self._vault is None:
                if not self.key_vault_url:
                    raise ConfigError(
                        "KEY_VAULT_URL: is required when credentials are named as Key Vault secrets"
                    )
                self._vault = KeyVaultSecrets(self.key_vault_url)
            return self._vault

    def credentials(self, spec: CredentialSpec) -> CredentialSource:
        if spec.from_key_vault:
            assert spec.username_secret and spec.password_secret
            return KeyVaultCredentials(self.vault, spec.username_secret, spec.password_secret)
        if spec.username and spec.password:
            return StaticCredentials(Credentials(spec.username, spec.password))
        return ANONYMOUS
