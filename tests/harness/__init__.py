"""Test harness: real ``docker-registry`` processes, a Docker token issuer, synthetic images.

Everything the test modules share lives here; a test module imports from ``tests.harness``
and its modules, never from another test module. Independent of ``sync_core`` (the code under
test), except :mod:`.recording`, which instruments it (not re-exported here). Modules:

* :mod:`.registry`, :mod:`.tokens`, :mod:`.images`, :mod:`.seed`: real registries, the token
  issuer, synthetic images and the independent client ``Pusher``, the standard catalog
* :mod:`.acr` (an ACR stand-in), :mod:`.keyvault` (a Key Vault stub over TLS),
  :mod:`.faultproxy` (a fault-injecting reverse proxy) and :mod:`.ratelimit` (the rate limit
  it can play: a bare 429 beyond N requests a second)
* :mod:`.scripted`: the one scripted HTTP server (``ScriptedServer``, ``Request``, ``Reply``)
  for answers a real registry never sends; :mod:`.fakeregistry`: an in-memory registry and a
  storage host built on it
* :mod:`.verify`: ``deep_verify`` / ``verify_present``, does a tag resolve fully
* :mod:`.layouts`: the real-content shapes of ``tests/fixtures/shapes`` (OCI layouts), pushed
  into a real registry; :mod:`.events`: Event Grid events as ACR sends them
* :mod:`.recording`: ``RecordingTransport`` and ``Waits`` (retries without sleeping)
* :mod:`.metric_points`: what OpenTelemetry instruments recorded (``points``, ``value``)
* :mod:`.secret_values`: what a committed setting value must not look like
* :mod:`.servers`: the HTTP server class every local server uses
"""

from .images import ACCEPT, Blob, Manifest, Pusher, RegistryHTTPError
from .registry import Registry, RegistryStartError, free_port, stop_all
from .seed import Seeded, seed_standard, standard_catalog
from .tokens import CATALOG, REGISTRY_LEEWAY, TokenGrant, TokenIssuer

#: (user, password) pairs of the session token issuer (see tests/conftest.py).
ADMIN = ("admin", "admin-pass")
READER = ("reader", "reader-pass")
PUSHER = ("pusher", "pusher-pass")
#: (user, password) of the htpasswd registry.
BASIC = ("basic", "basic-pass")


def oci_env(source: Registry, target: Registry, repositories: str = "gs/app") -> dict[str, str]:
    """The settings of a sync from a plain OCI ``source`` (namespace ``gs``) to ``target`` (``mirror``)."""
    return {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": "gs",
        "SOURCE_USERNAME": PUSHER[0],
        "SOURCE_PASSWORD": PUSHER[1],
        "SOURCE_REPOSITORIES": repositories,
        "TARGET_REGISTRY": target.url,
        "TARGET_NAMESPACE": "mirror",
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
    }


def plain_and_api_env(
    source_url: str, namespace: str, source_user: tuple[str, str], api_user: tuple[str, str]
) -> dict[str, str]:
    """The settings of a sync from an ACR(-like) source to :func:`plain_and_api_targets`."""
    return {
        "SOURCE_REGISTRY": source_url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": namespace,
        "SOURCE_USERNAME": source_user[0],
        "SOURCE_PASSWORD": source_user[1],
        "PLAIN_USER": PUSHER[0],
        "PLAIN_PASS": PUSHER[1],
        "API_USER": api_user[0],
        "API_PASS": api_user[1],
    }


def plain_and_api_targets(
    plain_url: str, api_url: str, plain: dict | None = None, api: dict | None = None
) -> list[dict]:
    """Two targets under ``mirror``: "plain" (a registry without the referrers API, as PUSHER)
    and "api" (one with it); ``plain``/``api``: more keys for each."""
    return [
        {
            "name": "plain",
            "registry": plain_url,
            "namespace": "mirror",
            "username_env": "PLAIN_USER",
            "password_env": "PLAIN_PASS",
            **(plain or {}),
        },
        {
            "name": "api",
            "registry": api_url,
            "namespace": "mirror",
            "username_env": "API_USER",
            "password_env": "API_PASS",
            **(api or {}),
        },
    ]


#: ``TokenIssuer(users=...)`` of the session issuer.
STANDARD_USERS = {
    ADMIN[0]: (ADMIN[1], {"*": ["*"], CATALOG: ["*"]}),
    READER[0]: (READER[1], {"*": ["pull"]}),
    PUSHER[0]: (PUSHER[1], {"*": ["pull", "push"]}),
}

__all__ = [
    "plain_and_api_env",
    "plain_and_api_targets",
    "ACCEPT",
    "ADMIN",
    "BASIC",
    "CATALOG",
    "PUSHER",
    "READER",
    "REGISTRY_LEEWAY",
    "STANDARD_USERS",
    "Blob",
    "Manifest",
    "Pusher",
    "Registry",
    "RegistryHTTPError",
    "RegistryStartError",
    "Seeded",
    "TokenGrant",
    "TokenIssuer",
    "free_port",
    "oci_env",
    "seed_standard",
    "standard_catalog",
    "stop_all",
]
