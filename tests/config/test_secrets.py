"""Key Vault credentials through the real azure-keyvault-secrets SDK against a local HTTPS stub."""

from __future__ import annotations

import pytest

from sync_core.config.model import CredentialSpec
from sync_core.config.secrets import KeyVaultSecrets, SecretStore
from sync_core.errors import SecretUnavailable
from sync_core.registry.client import RegistryClient
from tests.harness.keyvault import FakeAzureCredential, KeyVaultStub


@pytest.fixture
def vault():
    with KeyVaultStub({"reg-user": "basic", "reg-pass": "basic-pass"}) as stub:
        yield stub


def _store(stub: KeyVaultStub) -> SecretStore:
    return SecretStore(
        stub.url, vault=KeyVaultSecrets(stub.url, credential=FakeAzureCredential(), **stub.client_kwargs())
    )


def test_secrets_are_read_once_and_reach_the_registry(vault, basic_registry):
    store = _store(vault)
    creds = store.credentials(CredentialSpec(username_secret="reg-user", password_secret="reg-pass"))
    client = RegistryClient(basic_registry.url, creds)
    assert client.list_repositories() is not None
    client.list_tags("library/nothing")
    assert vault.secret_reads("reg-user") == 1 and vault.secret_reads("reg-pass") == 1
    # the SDK really did the Key Vault challenge dance
    assert any(not ok for _, _, ok in vault.requests)


def test_rotated_password_is_reread_once_after_401(vault, fresh_registry, monkeypatch):
    monkeypatch.setattr("sync_core.config.secrets.REREAD_INTERVAL", 0.0)
    registry = fresh_registry(auth="htpasswd", htpasswd_users={"basic": "new-pass"})
    vault.secrets["reg-pass"] = "old-pass"
    store = _store(vault)
    creds = store.credentials(CredentialSpec(username_secret="reg-user", password_secret="reg-pass"))
    client = RegistryClient(registry.url, creds)
    creds.get()  # cached: the old password
    vault.secrets["reg-pass"] = "new-pass"  # rotation reaches Key Vault
    assert client.list_tags("a/b") is None  # no such repository: the point is that the call was authorized
    assert vault.secret_reads("reg-pass") == 2


def test_missing_secret_is_a_clear_error(vault):
    store = _store(vault)
    creds = store.credentials(CredentialSpec(username_secret="reg-user", password_secret="nope"))
    with pytest.raises(SecretUnavailable, match="secret 'nope': not found"):
        creds.get()
