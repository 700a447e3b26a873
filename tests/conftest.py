"""Shared fixtures: a token issuer, real docker-registry processes, the standard seeded catalog.

Session fixtures (shared, do not rely on them being empty or unchanged beyond the seed):
  token_issuer         TokenIssuer with users admin / reader / pusher (see tests.harness.STANDARD_USERS)
  token_registry_src   Registry (token auth via token_issuer) holding the standard catalog
  seeded               Seeded dict {(repo, tag): Manifest} of what token_registry_src holds
  token_registry_dst   Registry (token auth via token_issuer), empty at session start
  basic_registry       Registry with htpasswd auth, user basic / basic-pass
  anon_registry        Registry without auth
Function fixtures:
  fresh_registry       factory: fresh_registry(auth="token"|"htpasswd"|"none", **Registry kwargs)
                       -> a new empty Registry, stopped after the test
  fresh_issuer         factory: fresh_issuer(**TokenIssuer kwargs) -> a new TokenIssuer (default
                       users STANDARD_USERS), stopped after the test; for tests that change
                       lifetime / fields / failures without disturbing the session issuer

Everything else the tests share (scripted servers, the in-memory registry, deep verification,
the recording transport) is imported from ``tests.harness`` modules (see its docstring); no test
module imports another.
"""

from __future__ import annotations

import importlib.util
import secrets
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, _ROOT)

from sync_core.azure.state import TableState  # noqa: E402
from sync_core.azure.storage import StorageAccess  # noqa: E402
from tests.harness import (  # noqa: E402
    BASIC,
    STANDARD_USERS,
    Registry,
    TokenIssuer,
    seed_standard,
    stop_all,
)
from tests.harness.azurite import Azurite  # noqa: E402

# tests/worker is the worker-contract tier: it runs in .venv-worker (Python 3.13, the real Functions
# worker) through `make worker-test`, which `make test` runs too. The main run does not collect it.
collect_ignore = [] if importlib.util.find_spec("azure_functions_runtime") else ["worker"]


def pytest_sessionfinish(session, exitstatus):
    stop_all()


@pytest.fixture(scope="session")
def token_issuer():
    issuer = TokenIssuer(users=STANDARD_USERS)
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture(scope="session")
def token_registry_src(token_issuer):
    with Registry(token_issuer=token_issuer, name="src") as reg:
        reg.seeded = seed_standard(reg.pusher())
        yield reg


@pytest.fixture(scope="session")
def seeded(token_registry_src):
    return token_registry_src.seeded


@pytest.fixture(scope="session")
def token_registry_dst(token_issuer):
    with Registry(token_issuer=token_issuer, name="dst") as reg:
        yield reg


@pytest.fixture(scope="session")
def basic_registry():
    with Registry(htpasswd_users={BASIC[0]: BASIC[1]}, name="basic") as reg:
        yield reg


@pytest.fixture(scope="session")
def anon_registry():
    with Registry(name="anon") as reg:
        yield reg


@pytest.fixture
def fresh_registry(token_issuer):
    """``fresh_registry(auth="token", token_issuer=None, htpasswd_users=None, **kwargs)``."""
    started: list[Registry] = []

    def factory(auth: str = "token", **kwargs) -> Registry:
        if auth == "token":
            kwargs.setdefault("token_issuer", token_issuer)
        elif auth == "htpasswd":
            kwargs.setdefault("htpasswd_users", {BASIC[0]: BASIC[1]})
        elif auth != "none":
            raise ValueError(f"auth must be token, htpasswd or none, not {auth!r}")
        kwargs.setdefault("name", f"fresh-{auth}")
        reg = Registry(**kwargs)
        started.append(reg)
        return reg

    try:
        yield factory
    finally:
        for reg in started:
            reg.stop()


@pytest.fixture(scope="session")
def azurite_tables():
    """A real Azurite table service (the timer's state), for the session."""
    with Azurite("table") as server:
        yield server


@pytest.fixture
def state(azurite_tables):
    """The timer's state (:class:`TableState`) in a table of its own, in the session's Azurite."""
    access = StorageAccess(connection_string=azurite_tables.connection_string())
    return TableState.for_access(access, f"t{secrets.token_hex(6)}")


@pytest.fixture
def fresh_issuer():
    started: list[TokenIssuer] = []

    def factory(**kwargs) -> TokenIssuer:
        kwargs.setdefault("users", STANDARD_USERS)
        issuer = TokenIssuer(**kwargs)
        started.append(issuer)
        return issuer

    try:
        yield factory
    finally:
        for issuer in started:
            issuer.stop()
