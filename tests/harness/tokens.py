"""A Docker-token-auth issuer (https://distribution.github.io/distribution/spec/auth/token/).

`TokenIssuer` runs a small threaded HTTP server on 127.0.0.1 that answers
``GET /token?service=...&scope=...`` with RS256 JWTs that the real ``docker-registry`` 2.8
accepts: the JWT header carries ``kid`` = the libtrust key id of the signing key, and the
registry trusts the self-signed certificate at :attr:`TokenIssuer.cert_path`
(``auth.token.rootcertbundle``).

Permissions are per user: ``{"alice": ("pw", {"team/*": ["pull", "push"], CATALOG: ["*"]})}``.
Keys are repository globs (fnmatch); a key starting with ``registry:`` (see :data:`CATALOG`)
applies to ``registry``-type resources instead. Allowed actions are ``pull``, ``push``,
``delete``, any other string, or ``*`` (everything). A request is granted the intersection of
what it asks for and what the user may do.

Note on expiry: distribution 2.8 accepts a token up to 60 s after its ``exp`` (clock-skew
leeway, see :data:`REGISTRY_LEEWAY`). Use :attr:`TokenIssuer.exp_skew` (e.g. ``-60``) or mint
with a negative lifetime when a test needs the registry itself to refuse a token quickly.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import fnmatch
import hashlib
import secrets
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .servers import LoopbackHTTPServer, send_json

#: Permission key granting ``registry:catalog:*`` (listing ``/v2/_catalog``).
CATALOG = "registry:catalog"

#: Seconds distribution 2.8 still accepts a token after ``exp`` (and before ``nbf``).
REGISTRY_LEEWAY = 60

#: Answer fields the issuer can emit.
ALL_FIELDS = ("token", "access_token", "expires_in", "issued_at")
DEFAULT_FIELDS = ("token", "access_token", "expires_in")

Perms = Mapping[str, Iterable[str]]

_live: set[TokenIssuer] = set()
_live_lock = threading.Lock()


class TokenGrant(NamedTuple):
    """One answered token request (``user`` is ``None`` for anonymous)."""

    user: str | None
    requested: list[str]
    granted: list[str]


class Scope(NamedTuple):
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scope(text: str) -> Scope | None:
    """Parse ``type:name:actions``; the name may itself contain ``:`` (``host:port/repo``)."""
    first = text.find(":")
    last = text.rfind(":")
    if first <= 0 or last == first:
        return None
    rtype = text[:first]
    name = text[first + 1 : last]
    actions = tuple(a for a in text[last + 1 :].split(",") if a)
    if not name:
        return None
    return Scope(rtype, name, actions)


def libtrust_key_id(public_key) -> str:
    """The libtrust key id distribution uses to match a JWT ``kid`` to a trusted key."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def _allowed_actions(perms: Perms | None, rtype: str, name: str) -> set[str]:
    allowed: set[str] = set()
    for key, actions in (perms or {}).items():
        if key.startswith("registry:"):
            ktype, glob = "registry", key[len("registry:") :]
        elif key.startswith("repository:"):
            ktype, glob = "repository", key[len("repository:") :]
        else:
            ktype, glob = "repository", key
        base_type = rtype.split("(", 1)[0]
        if ktype == base_type and fnmatch.fnmatchcase(name, glob):
            allowed.update(actions)
    return allowed


def grant(perms: Perms | None, requested: Iterable[Scope]) -> list[Scope]:
    """Intersect requested scopes with permissions; merges repeated resources, keeps order."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in requested:
        allowed = _allowed_actions(perms, scope.type, scope.name)
        acts = merged.setdefault((scope.type, scope.name), [])
        for action in scope.actions:
            if action == "*":
                picks = ["*"] if "*" in allowed else sorted(allowed)
            elif action in allowed or "*" in allowed:
                picks = [action]
            else:
                picks = []
            for p in picks:
                if p not in acts:
                    acts.append(p)
    return [Scope(t, n, tuple(a)) for (t, n), a in merged.items() if a]


class TokenIssuer:
    """Docker token server for tests. Starts on construction; use ``stop()`` or ``with``.

    Mutable at runtime: ``lifetime`` (JWT lifetime, seconds), ``advertised_expires_in``
    (``expires_in`` to claim instead of the real lifetime; lets a test make a client trust a
    token longer than it lives), ``fields`` (which answer fields to emit), ``exp_skew``
    (seconds added to the JWT ``exp`` only, e.g. ``-REGISTRY_LEEWAY``), ``users`` and
    ``anonymous`` (permissions of requests without credentials; ``None`` = nothing).
    """

    def __init__(
        self,
        users: Mapping[str, tuple[str, Perms]] | None = None,
        *,
        service: str = "registry-sync-test",
        issuer: str = "registry-sync-test-issuer",
        lifetime: int = 300,
        fields: Iterable[str] = DEFAULT_FIELDS,
        advertised_expires_in: int | None = None,
        anonymous: Perms | None = None,
        exp_skew: int = 0,
    ):
        self.users: dict[str, tuple[str, Perms]] = dict(users or {})
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.fields = tuple(fields)
        unknown = set(self.fields) - set(ALL_FIELDS)
        if unknown:
            raise ValueError(f"unknown answer fields: {sorted(unknown)}")
        self.advertised_expires_in = advertised_expires_in
        self.anonymous = anonymous
        self.exp_skew = exp_skew

        self._lock = threading.Lock()
        self._requests = 0
        self._grants: list[TokenGrant] = []
        self._failures: list[tuple[int, str | None]] = []

        self._tmp = Path(tempfile.mkdtemp(prefix="token-issuer-"))
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = libtrust_key_id(self._key.public_key())
        self._signer = (self._key, self.kid)
        self._cert_path = self._tmp / "issuer.crt"
        self._cert_path.write_bytes(self._make_cert().public_bytes(serialization.Encoding.PEM))

        self._server = LoopbackHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"token-issuer:{self.port}",
            daemon=True,
        )
        self._stopped = False
        self._thread.start()
        with _live_lock:
            _live.add(self)

    # -- public API ------------------------------------------------------------------------

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_path(self) -> str:
        return str(self._cert_path)

    @property
    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def token_requests(self) -> int:
        """How many ``/token`` requests were received (including refused ones)."""
        with self._lock:
            return self._requests

    @property
    def grants(self) -> list[TokenGrant]:
        """A copy of the ``(user, requested, granted)`` log of successful token answers."""
        with self._lock:
            return list(self._grants)

    def reset_counters(self) -> None:
        with self._lock:
            self._requests = 0
            self._grants.clear()

    def fail_next(self, count: int = 1, status: int = 429, retry_after: str | None = None) -> None:
        """Answer the next ``count`` token requests with ``status`` (and ``Retry-After``)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def mint(
        self,
        scopes: Iterable[str] | str,
        lifetime: int | None = None,
        *,
        subject: str = "harness",
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """Sign a token for exactly ``scopes`` (no permission check, not logged).

        ``lifetime`` may be negative for an already expired token (the registry only refuses it
        once ``exp`` is more than :data:`REGISTRY_LEEWAY` seconds in the past).
        """
        if isinstance(scopes, str):
            scopes = scopes.split()
        exact: dict[tuple[str, str], list[str]] = {}
        for s in (parse_scope(x) for x in scopes):
            if s is not None:
                acts = exact.setdefault((s.type, s.name), [])
                acts.extend(a for a in s.actions if a not in acts)
        access = [Scope(t, n, tuple(a)) for (t, n), a in exact.items()]
        return self._sign(
            subject,
            access,
            self.lifetime if lifetime is None else lifetime,
            audience=audience,
            issuer=issuer,
        )

    def rotate_key(self) -> None:
        """Sign with a new key from now on and rewrite :attr:`cert_path` with its certificate.

        Registries read the bundle at start: after ``registry.restart()`` every token issued
        before the rotation is refused (401) -- a quick way to test refresh-on-401 without
        waiting for expiry. Registries not restarted keep trusting only the old key.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = key
        self.kid = libtrust_key_id(key.public_key())
        self._signer = (key, self.kid)
        self._cert_path.write_bytes(self._make_cert().public_bytes(serialization.Encoding.PEM))

    def decode(self, token: str, verify_exp: bool = True) -> dict:
        """Verify and decode a token issued here."""
        return jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            audience=self.service,
            issuer=self.issuer,
            options={"verify_exp": verify_exp},
        )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TokenIssuer(realm={self.realm!r}, service={self.service!r})"

    # -- internals ---------------------------------------------------------------------------

    def _make_cert(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = dt.datetime.now(dt.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def _sign(
        self,
        subject: str,
        access: list[Scope],
        lifetime: int,
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + int(lifetime) + int(self.exp_skew),
            "nbf": min(now, now + int(lifetime)),
            "iat": min(now, now + int(lifetime)),
            "jti": secrets.token_hex(16),
            "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)} for s in access],
        }
        key, kid = self._signer
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def _authenticate(self, header: str | None) -> tuple[bool, str | None, Perms | None]:
        """Returns (ok, user, perms). No header = anonymous."""
        if not header:
            return True, None, self.anonymous
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None, None
        entry = self.users.get(user)
        if entry is None or not secrets.compare_digest(entry[0], password):
            return False, user, None
        return True, user, entry[1]

    def _handle_token(self, handler: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        with self._lock:
            self._requests += 1
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            send_json(
                handler,
                status,
                {
                    "errors": [
                        {"code": "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE", "message": "injected"}
                    ]
                },
                headers,
            )
            return
        if url.path not in ("/token", "/oauth2/token"):  # /oauth2/token: the ACR spelling
            send_json(handler, 404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        service = (query.get("service") or [""])[0]
        if service and service != self.service:
            send_json(
                handler, 400, {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]}
            )
            return
        requested = [s for value in query.get("scope", []) for s in value.split()]
        ok, user, perms = self._authenticate(handler.headers.get("Authorization"))
        if not ok:
            send_json(
                handler,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication failed"}]},
                {"WWW-Authenticate": f'Basic realm="{self.realm}"'},
            )
            return
        parsed = [s for s in (parse_scope(x) for x in requested) if s is not None]
        granted = grant(perms, parsed)
        lifetime = int(self.lifetime)
        token = self._sign(user or "", granted, lifetime)
        with self._lock:
            self._grants.append(TokenGrant(user, requested, [str(s) for s in granted]))
        body: dict = {}
        fields = set(self.fields)
        if "token" in fields:
            body["token"] = token
        if "access_token" in fields:
            body["access_token"] = token
        if "expires_in" in fields:
            adv = self.advertised_expires_in
            body["expires_in"] = int(adv if adv is not None else lifetime)
        if "issued_at" in fields:
            body["issued_at"] = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        send_json(handler, 200, body)


def _make_handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            issuer._handle_token(self)

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


def stop_all_issuers() -> None:
    """Stop every issuer this process started and has not stopped yet."""
    with _live_lock:
        issuers = list(_live)
    for issuer in issuers:
        issuer.stop()


atexit.register(stop_all_issuers)
