"""Test harness: real ``docker-registry`` processes, a Docker token issuer, synthetic images.

Independent of ``sync_core`` (the code under test). See the module docstrings of
:mod:`.tokens`, :mod:`.registry`, :mod:`.images` and :mod:`.seed`.
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

#: ``TokenIssuer(users=...)`` of the session issuer.
STANDARD_USERS = {
    ADMIN[0]: (ADMIN[1], {"*": ["*"], CATALOG: ["*"]}),
    READER[0]: (READER[1], {"*": ["pull"]}),
    PUSHER[0]: (PUSHER[1], {"*": ["pull", "push"]}),
}

__all__ = [
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
    "seed_standard",
    "standard_catalog",
    "stop_all",
]
