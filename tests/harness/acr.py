"""A local stand-in for Azure Container Registry (ACR) in front of a real ``docker-registry``.

    with AcrStandIn(users={"root": ("pw", {"*": ["pull", "push", "metadata_read"]}),
                           "scoped": ("pw", {"team/*": ["pull", "metadata_read"]})}) as acr:
        acr.pusher().push("team/app", images.oci_image("x"), "1.0")
        requests.get(f"{acr.url}/acr/v1/team/app/_tags", headers=...)

One threaded HTTP server on 127.0.0.1 (ephemeral port) that behaves like ACR where registry-sync
cares (the ACR data-plane behaviour documented by Microsoft, summarised per endpoint below):

``GET /oauth2/token?service=<host>&scope=<scope>`` (scope repeatable, comma lists of actions)
    HTTP Basic auth with an ACR "token" user; answers exactly ``{"access_token": "<JWT>"}``.
    Grants are the intersection of the request and the user's scope map (repository glob ->
    actions among ``pull push delete metadata_read metadata_write``). ``registry:catalog:*`` is
    granted only to users whose scope map has the root wildcard key ``*``; others get a token
    without it (the token request itself does not fail). Requested repository names containing
    ``*`` are not granted unless :attr:`AcrStandIn.grant_wildcard_requests` is set (ACR behaviour
    unconfirmed: a client must ask per repository). Wrong or missing credentials: 401.
``/v2/...``
    Reverse-proxied (streamed, any method) to the backend ``docker-registry``, whose token
    ``realm`` is this server's ``/oauth2/token`` and whose ``service`` is this server's host, so
    its challenges already point here. ``Location``/``Link`` headers naming the backend origin
    are rewritten to this origin. Manifest PUTs by tag that succeed record tag times.
``GET /acr/v1/_catalog?n=&last=``
    Needs ``registry:catalog:*``. ``{"repositories": [...]}`` + relative ``Link`` paging.
``GET /acr/v1/<repo>`` (scope ``metadata_read``)
    The repository's attributes: ``createdTime``, ``lastUpdateTime``, ``manifestCount``,
    ``tagCount``, ``changeableAttributes`` (Repository_GetAttributes).
``GET /acr/v1/<repo>/_tags?n=100&last=<tag>&orderby=timedesc|timeasc``
    Needs ``repository:<repo>:metadata_read`` (JWT signature, audience, issuer and ``exp``
    checked, no leeway). ACR schema, 7-digit fractional timestamps, relative ``Link`` paging,
    404 ``NAME_UNKNOWN`` for unknown repositories. Without orderby: name order.

Differences from the backend worth knowing: the backend registry (distribution 2.8) accepts a
token up to 60 s after ``exp``; the ``/acr/v1`` endpoints here do not.

Tag times: ``createdTime`` = first manifest PUT of (repo, tag) seen through the proxy,
``lastUpdateTime`` = latest; :meth:`AcrStandIn.set_tag_times` overrides them; tags never seen
(pushed straight to the backend) get the time they were first listed. ``orderby`` sorts by
``lastUpdateTime`` (ties by name). Every time recorded (pushes, listings, deletions) is read
from :attr:`AcrStandIn.clock`, so a test can replay a simulated day.

Tags are read where the backend keeps them (its filesystem storage), as the backend itself
reads them: a timer run asks for the metadata of every repository of a catalog of thousands.

Request log: every request answered here is a :class:`LogEntry`; see :meth:`AcrStandIn.count`
and the shortcuts (``manifest_gets`` ...). :meth:`AcrStandIn.fail_next` injects errors (e.g. 429
throttling with ``Retry-After``) for chosen request kinds.

Session use: pass the session ``TokenIssuer`` as ``issuer=`` to skip RSA key generation; the
stand-in mints tokens with that issuer's key but its own audience (its host), so the issuer's
own registries and this one do not accept each other's tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import hashlib
import http.client
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import NamedTuple

import jwt
import requests

from .images import ACCEPT, Pusher
from .registry import Registry
from .servers import LoopbackHTTPServer, send_json
from .tokens import Scope, TokenGrant, TokenIssuer, grant, parse_scope

#: Actions an ACR scope map may hold.
ACR_ACTIONS = ("pull", "push", "delete", "metadata_read", "metadata_write")
#: The scope listing the catalog needs.
CATALOG_SCOPE = "registry:catalog:*"
#: Largest ``n`` honoured on ``/acr/v1`` listings (larger values are clamped).
MAX_PAGE = 1000
DEFAULT_PAGE = 100

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
}
_CHUNK = 64 * 1024
_V2_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs|tags|referrers)/(?P<rest>.*)$")
_ACR_TAGS_PATH = re.compile(r"^/acr/v1/(?P<repo>.+)/_tags$")
_ACR_MANIFESTS_PATH = re.compile(r"^/acr/v1/(?P<repo>.+)/_manifests$")
_ACR_REPOSITORY_PATH = re.compile(r"^/acr/v1/(?P<repo>[^_].*)$")
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_INDEX_TYPES = (_OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
_MAX_MANIFEST = 4 * 1024 * 1024
_UNAUTHORIZED_MSG = "authentication required, visit https://aka.ms/acr/authorization for more information."

ScopeMap = Mapping[str, Iterable[str]]


class StoredManifest(NamedTuple):
    """A manifest pushed through the stand-in (what ``_manifests`` and the referrers API list)."""

    raw: bytes
    media_type: str
    digest: str
    created: int  # ticks
    updated: int

    @property
    def document(self) -> dict:
        try:
            value = json.loads(self.raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def subject(self) -> str | None:
        subject = self.document.get("subject")
        return subject.get("digest") if isinstance(subject, dict) else None

    def referrer_descriptor(self) -> dict:
        doc = self.document
        entry: dict = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.raw)}
        artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        if artifact_type:
            entry["artifactType"] = artifact_type
        if doc.get("annotations"):
            entry["annotations"] = doc["annotations"]
        return entry


class LogEntry(NamedTuple):
    """One request answered by the stand-in.

    ``kind``: ``token``, ``base`` (``/v2/``), ``catalog`` (``/v2/_catalog``), ``manifest``,
    ``blob``, ``upload`` (``/blobs/uploads/...``), ``tags_list`` (``/v2/<repo>/tags/list``),
    ``referrers``, ``acr_tags``, ``acr_manifests``, ``acr_catalog`` or ``other``. ``user``: Basic user name, or the
    ``sub`` of a Bearer JWT (``None`` when anonymous). ``ref``: manifest reference or blob digest.
    """

    method: str
    path: str
    query: str
    status: int
    user: str | None
    kind: str
    repo: str | None
    ref: str | None


def classify(path: str) -> tuple[str, str | None, str | None]:
    """``(kind, repo, ref)`` of a request path (without query)."""
    if path == "/oauth2/token":
        return "token", None, None
    if path in ("/v2", "/v2/"):
        return "base", None, None
    if path == "/v2/_catalog":
        return "catalog", None, None
    if path == "/acr/v1/_catalog":
        return "acr_catalog", None, None
    m = _ACR_TAGS_PATH.match(path)
    if m:
        return "acr_tags", m["repo"], None
    m = _ACR_MANIFESTS_PATH.match(path)
    if m:
        return "acr_manifests", m["repo"], None
    m = _ACR_REPOSITORY_PATH.match(path)
    if m:
        return "acr_repository", m["repo"], None
    m = _V2_PATH.match(path)
    if m:
        kind, rest = m["kind"], m["rest"]
        if kind == "manifests":
            return "manifest", m["repo"], rest or None
        if kind == "blobs":
            if rest == "uploads" or rest.startswith("uploads/"):
                return "upload", m["repo"], None
            return "blob", m["repo"], rest or None
        if kind == "tags":
            return "tags_list", m["repo"], None
        return "referrers", m["repo"], rest or None
    return "other", None, None


def format_ticks(ticks: int) -> str:
    """ACR timestamp from 100 ns ticks since the epoch: ``2026-11-20T09:41:16.9126488Z``."""
    seconds, frac = divmod(int(ticks), 10_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:07d}Z"


def to_ticks(when: dt.datetime) -> int:
    """100 ns ticks since the epoch (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def from_ticks(ticks: int) -> dt.datetime:
    seconds, frac = divmod(int(ticks), 10_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc) + dt.timedelta(microseconds=frac // 10)


def _validate_scope_map(user: str, scope_map: ScopeMap) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for glob, actions in scope_map.items():
        acts = list(actions)
        bad = set(acts) - set(ACR_ACTIONS)
        if bad:
            raise ValueError(f"user {user!r}: unknown ACR actions {sorted(bad)} for {glob!r}")
        out[glob] = acts
    return out


class _BackendRegistry(Registry):
    """The backend registry; :meth:`pusher` mints tokens for the stand-in's audience."""

    standin: AcrStandIn

    def pusher(self, user: str | None = None) -> Pusher:
        return Pusher(self.url, lambda scopes: self.standin.mint(scopes, lifetime=3600))


class AcrStandIn:
    """ACR stand-in; starts on construction (``stop()`` or ``with``).

    ``users``: ``{name: (password, {repository glob: [actions]})}``; the glob ``*`` is the root
    wildcard (grants ``registry:catalog:*``). ``issuer``: a :class:`TokenIssuer` whose key signs
    the JWTs (default: a private one, stopped with the stand-in). ``token_lifetime``: seconds,
    mutable at runtime like :attr:`users` (use :meth:`set_user`) and
    :attr:`grant_wildcard_requests`. ``backend_config``: more ``docker-registry`` configuration for
    the backend (e.g. ``{"compatibility": {"schema1": {"enabled": True}}}`` to hold schema 1, or
    ``registry.FOREIGN_URLS_ALLOWED``). :attr:`clock`: the stand-in's time (``time.time``), from
    which the tokens it issues get their ``exp`` and against which ``/acr/v1`` checks it, and at
    which pushes, first listings and deletions are recorded; set it ahead to expire the tokens a
    client holds without waiting, or to a simulated clock shared with the client.
    """

    def __init__(
        self,
        users: Mapping[str, tuple[str, ScopeMap]] | None = None,
        issuer: TokenIssuer | None = None,
        token_lifetime: int = 600,
        *,
        grant_wildcard_requests: bool = False,
        name: str = "acr",
        backend_config: Mapping | None = None,
    ):
        self.users: dict[str, tuple[str, dict[str, list[str]]]] = {}
        for user, (password, scope_map) in (users or {}).items():
            self.set_user(user, password, scope_map)
        self.token_lifetime = token_lifetime
        self.clock: Callable[[], float] = time.time
        self.grant_wildcard_requests = grant_wildcard_requests

        self._lock = threading.Lock()
        self._log: list[LogEntry] = []
        self._token_requests = 0
        self._grants: list[TokenGrant] = []
        self._failures: list[tuple[frozenset[str] | None, int, str | None]] = []
        self._tag_times: dict[tuple[str, str], list[int]] = {}
        self._manifests: dict[str, dict[str, StoredManifest]] = {}
        self._deleted_at: dict[str, int] = {}  # repository -> last manifest DELETE (ticks)
        self._unreadable: set[tuple[str, str]] = set()
        #: serve the OCI 1.1 referrers API and answer ``OCI-Subject`` (ACR does; False: like 2.8)
        self.referrers_api = True
        #: page size of the referrers API (ACR pages long lists with a ``Link`` header)
        self.referrers_page_size = 100
        #: every user may list the catalog, and sees only the repositories its scope map covers
        #: (HTTP 200 with an empty list for a map such as ``{"repo/*": ...}``), as the issue reports
        #: of ACR; False (default): only root-wildcard users get ``registry:catalog:*``
        self.catalog_filtered = False
        self._admin_tokens: dict[str, tuple[str, float, str]] = {}
        self._local = threading.local()
        self._stopped = False
        #: free for fixtures to attach what they pushed
        self.seeded = None

        self._server = LoopbackHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.port: int = self._server.server_address[1]
        self._own_issuer = issuer is None
        self._backend: _BackendRegistry | None = None
        self._thread: threading.Thread | None = None
        try:
            self._issuer = (
                issuer
                if issuer is not None
                else TokenIssuer(service=self.host, issuer="registry-sync-acr-standin")
            )
            self._backend = _BackendRegistry(
                token_issuer=self._issuer,
                name=f"{name}-backend",
                extra_config={
                    **(backend_config or {}),
                    "auth": {"token": {"realm": self.realm, "service": self.host}},
                },
            )
            self._backend.standin = self
            self._thread = threading.Thread(
                target=self._server.serve_forever, name=f"acr-standin:{self.port}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry host, also the token ``service`` and JWT audience."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def realm(self) -> str:
        return f"{self.url}/oauth2/token"

    @property
    def backend(self) -> Registry:
        assert self._backend is not None
        return self._backend

    @property
    def issuer(self) -> TokenIssuer:
        return self._issuer

    # -- users and tokens ------------------------------------------------------------------------

    def set_user(self, name: str, password: str, scope_map: ScopeMap) -> None:
        """Add or replace a token user (e.g. to rotate its password)."""
        self.users[name] = (password, _validate_scope_map(name, scope_map))

    def remove_user(self, name: str) -> None:
        self.users.pop(name, None)

    def grant_for(self, user: str, requested: Iterable[str]) -> list[str]:
        """The scopes ``user`` would be granted for ``requested`` (``[]`` for unknown users)."""
        entry = self.users.get(user)
        return [str(s) for s in self._grant(entry[1] if entry else {}, self._parse_scopes(requested))]

    def mint(
        self, scopes: Iterable[str] | str, lifetime: int | None = None, *, subject: str = "harness"
    ) -> str:
        """A JWT for exactly ``scopes`` that the backend and ``/acr/v1`` accept (no checks, not
        logged). ``lifetime`` defaults to :attr:`token_lifetime`; negative = already expired."""
        return self._issuer.mint(
            scopes,
            self._by_clock(self.token_lifetime if lifetime is None else lifetime),
            subject=subject,
            audience=self.host,
        )

    def _by_clock(self, lifetime: float) -> int:
        """The lifetime to ask the issuer (whose ``exp`` is its time plus it) for ``exp`` to be
        :attr:`clock` plus ``lifetime``."""
        return int(lifetime) + round(self.clock() - time.time())

    def decode(self, token: str, verify_exp: bool = True) -> dict:
        """Verify (signature, audience, issuer, optionally ``exp`` by :attr:`clock`) and decode a JWT."""
        claims = jwt.decode(
            token,
            self._issuer.public_key_pem,
            algorithms=["RS256"],
            audience=self.host,
            issuer=self._issuer.issuer,
            options={"verify_exp": False},
        )
        if verify_exp and "exp" in claims and claims["exp"] <= self.clock():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    @property
    def token_requests(self) -> int:
        """``/oauth2/token`` requests received (including refused ones) since the last reset."""
        with self._lock:
            return self._token_requests

    @property
    def grants(self) -> list[TokenGrant]:
        """``(user, requested, granted)`` of each answered token request since the last reset."""
        with self._lock:
            return list(self._grants)

    # -- tag times -------------------------------------------------------------------------------

    def set_tag_times(
        self, repo: str, tag: str, created: dt.datetime, updated: dt.datetime | None = None
    ) -> None:
        """Set ``createdTime``/``lastUpdateTime`` of ``repo:tag`` (``updated`` defaults to
        ``created``; naive datetimes are UTC). A later push through the proxy still updates
        ``lastUpdateTime``."""
        c = to_ticks(created)
        u = to_ticks(updated) if updated is not None else c
        with self._lock:
            self._tag_times[(repo, tag)] = [c, u]

    def tag_times(self, repo: str, tag: str) -> tuple[dt.datetime, dt.datetime] | None:
        """``(created, last_updated)`` as recorded, or ``None`` if never seen."""
        with self._lock:
            rec = self._tag_times.get((repo, tag))
        return (from_ticks(rec[0]), from_ticks(rec[1])) if rec else None

    def set_manifest_times(
        self, repo: str, digest: str, created: dt.datetime, updated: dt.datetime | None = None
    ) -> None:
        """Set ``createdTime``/``lastUpdateTime`` of a manifest pushed through the stand-in."""
        with self._lock:
            stored = self._manifests[repo][digest]
            c = to_ticks(created)
            self._manifests[repo][digest] = stored._replace(
                created=c, updated=to_ticks(updated) if updated is not None else c
            )

    def manifests_of(self, repo: str) -> dict[str, StoredManifest]:
        """Every manifest pushed through the stand-in to ``repo`` (by digest)."""
        with self._lock:
            return dict(self._manifests.get(repo, {}))

    def set_read_enabled(self, repo: str, tag: str, enabled: bool) -> None:
        """``changeableAttributes.readEnabled`` of a tag: ACR refuses pulls of an unreadable one."""
        with self._lock:
            (self._unreadable.discard if enabled else self._unreadable.add)((repo, tag))

    def _now_ticks(self) -> int:
        """:attr:`clock` in 100 ns ticks: the time pushes, listings and deletions are recorded at."""
        return round(self.clock() * 10_000_000)

    def _record_manifest(
        self, repo: str, raw: bytes, media_type: str, digest: str | None = None
    ) -> StoredManifest:
        digest = digest or "sha256:" + hashlib.sha256(raw).hexdigest()  # schema 1: the registry's digest
        now = self._now_ticks()
        with self._lock:
            known = self._manifests.setdefault(repo, {})
            old = known.get(digest)
            stored = StoredManifest(raw, media_type, digest, old.created if old else now, now)
            known[digest] = stored
        return stored

    def _record_push(self, repo: str, tag: str) -> None:
        now = self._now_ticks()
        with self._lock:
            rec = self._tag_times.get((repo, tag))
            if rec is None:
                self._tag_times[(repo, tag)] = [now, now]
            else:
                rec[1] = max(now, rec[1] + 1)

    def _times_for(self, repo: str, tags: Iterable[str]) -> dict[str, tuple[int, int]]:
        now = self._now_ticks()
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for tag in tags:
                rec = self._tag_times.setdefault((repo, tag), [now, now])
                out[tag] = (rec[0], rec[1])
        return out

    # -- request log -------------------------------------------------------------------------------

    @property
    def log(self) -> list[LogEntry]:
        """A copy of the request log."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        """Clear the request log, the token request counter and :attr:`grants`."""
        with self._lock:
            self._log.clear()
            self._token_requests = 0
            self._grants.clear()

    def count(
        self,
        kind: str | Iterable[str] | None = None,
        method: str | None = None,
        repo: str | None = None,
        status: int | None = None,
        user: str | None = None,
    ) -> int:
        """How many logged requests match every given filter."""
        kinds = {kind} if isinstance(kind, str) else set(kind) if kind is not None else None
        with self._lock:
            entries = list(self._log)
        return sum(
            1
            for e in entries
            if (kinds is None or e.kind in kinds)
            and (method is None or e.method == method.upper())
            and (repo is None or e.repo == repo)
            and (status is None or e.status == status)
            and (user is None or e.user == user)
        )

    def manifest_gets(self, repo: str | None = None) -> int:
        return self.count("manifest", "GET", repo)

    def manifest_heads(self, repo: str | None = None) -> int:
        return self.count("manifest", "HEAD", repo)

    def manifest_puts(self, repo: str | None = None) -> int:
        return self.count("manifest", "PUT", repo)

    def blob_gets(self, repo: str | None = None) -> int:
        return self.count("blob", "GET", repo)

    def tags_calls(self, repo: str | None = None) -> int:
        """``/acr/v1/<repo>/_tags`` requests."""
        return self.count("acr_tags", repo=repo)

    def token_calls(self, user: str | None = None) -> int:
        """``/oauth2/token`` requests (logged; refused ones included)."""
        return self.count("token", user=user)

    def catalog_calls(self) -> int:
        """``/v2/_catalog`` plus ``/acr/v1/_catalog`` requests."""
        return self.count(("catalog", "acr_catalog"))

    # -- fault injection --------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 429,
        *,
        kinds: str | Iterable[str] | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``kinds`` (any when ``None``; see
        :class:`LogEntry`) with ``status`` and an ACR-style error body (``TOOMANYREQUESTS`` for
        429), plus ``Retry-After`` when given. Such requests are logged, not forwarded."""
        ks = frozenset({kinds} if isinstance(kinds, str) else kinds) if kinds is not None else None
        with self._lock:
            self._failures.extend([(ks, status, retry_after)] * count)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def _take_failure(self, kind: str) -> tuple[int, str | None] | None:
        with self._lock:
            for i, (ks, status, retry_after) in enumerate(self._failures):
                if ks is None or kind in ks:
                    del self._failures[i]
                    return status, retry_after
        return None

    # -- clients ---------------------------------------------------------------------------------------

    def pusher(self, direct: bool = False) -> Pusher:
        """A :class:`Pusher` with full access. Through the stand-in (default), so manifest PUTs by
        tag record tag times; ``direct=True`` talks to the backend (no times recorded)."""
        base = self.backend.url if direct else self.url
        return Pusher(base, lambda scopes: self.mint(scopes, lifetime=3600, subject="harness-pusher"))

    # -- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server and the backend (and the issuer if created here). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._backend is not None:
            self._backend.stop()
        if self._own_issuer and getattr(self, "_issuer", None) is not None:
            self._issuer.stop()

    def __enter__(self) -> AcrStandIn:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        backend = self._backend.url if self._backend is not None else None
        return f"AcrStandIn({self.url}, backend={backend})"

    # -- internals: grants ----------------------------------------------------------------------

    @staticmethod
    def _parse_scopes(requested: Iterable[str]) -> list[Scope]:
        return [s for s in (parse_scope(x) for r in requested for x in r.split()) if s is not None]

    def _grant(self, scope_map: Mapping[str, list[str]], requested: list[Scope]) -> list[Scope]:
        out: list[Scope] = []
        repo_requests: list[Scope] = []
        for s in requested:
            if s.type == "registry":
                if s.name == "catalog" and ("*" in scope_map or self.catalog_filtered) and "*" in s.actions:
                    if not any(g.type == "registry" and g.name == "catalog" for g in out):
                        out.append(Scope("registry", "catalog", ("*",)))
            elif s.type == "repository":
                if "*" in s.name and not self.grant_wildcard_requests:
                    continue
                # ACR scope maps list explicit actions; a requested "*" is not an action there
                repo_requests.append(Scope(s.type, s.name, tuple(a for a in s.actions if a != "*")))
        perms = {glob: acts for glob, acts in scope_map.items()}
        return grant(perms, repo_requests) + out

    def _authenticate_basic(self, header: str | None) -> tuple[bool, str | None]:
        if not header:
            return False, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        entry = self.users.get(user)
        if entry is None or not secrets.compare_digest(entry[0].encode(), password.encode()):
            return False, user
        return True, user

    def _bearer_claims(self, header: str | None) -> dict | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return self.decode(token.strip())
        except jwt.PyJWTError:
            return None

    @staticmethod
    def _allows(claims: dict | None, rtype: str, name: str, action: str) -> bool:
        if not claims:
            return False
        for entry in claims.get("access") or []:
            if entry.get("type") != rtype:
                continue
            ename = entry.get("name", "")
            if ename != name and not ("*" in ename and fnmatch.fnmatchcase(name, ename)):
                continue
            acts = entry.get("actions") or []
            if action in acts or "*" in acts:
                return True
        return False

    # -- internals: backend calls (admin tokens minted here) -------------------------------------

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _admin_token(self, scope: str, fresh: bool = False) -> str:
        now = time.time()
        with self._lock:
            cached = self._admin_tokens.get(scope)
        if cached and not fresh and cached[1] > now + 60 and cached[2] == self._issuer.kid:
            return cached[0]
        token = self.mint([scope], lifetime=3600, subject="acr-standin-internal")
        with self._lock:
            self._admin_tokens[scope] = (token, now + 3600, self._issuer.kid)
        return token

    def _backend_get(
        self, method: str, path: str, scope: str, headers: dict | None = None
    ) -> requests.Response:
        url = urllib.parse.urljoin(self.backend.url, path)
        r = None
        for fresh in (False, True):
            h = {**(headers or {}), "Authorization": f"Bearer {self._admin_token(scope, fresh)}"}
            r = self._session().request(method, url, headers=h, timeout=30)
            if r.status_code != 401:
                break
        assert r is not None
        return r

    def _tags_dir(self, repo: str) -> Path:
        return self.backend.storage_dir / "docker/registry/v2/repositories" / repo / "_manifests/tags"

    def _backend_tags(self, repo: str) -> list[str] | None:
        """All tags of ``repo`` on the backend, ``None`` if the repository is unknown.

        Read where the backend keeps them, as it does to answer ``/v2/<repo>/tags/list`` (a
        directory per tag under ``_manifests/tags``; no such directory: ``NAME_UNKNOWN``): the
        metadata endpoints read them once or twice per request, and a timer run asks for every
        repository of a catalog of thousands.
        """
        try:
            return sorted(entry.name for entry in os.scandir(self._tags_dir(repo)) if entry.is_dir())
        except FileNotFoundError:
            return None

    def _backend_digest(self, repo: str, tag: str) -> str | None:
        """The digest ``repo:tag`` points at, read where the backend keeps it (its filesystem
        storage: the tag's ``current/link``, exactly what the backend reads to answer); a HEAD
        when that file is not there. Listings of 1,500 tags need that many lookups per page."""
        link = self._tags_dir(repo) / tag / "current/link"
        try:
            digest = link.read_text().strip()
        except OSError:
            digest = ""
        if re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return digest
        r = self._backend_get(
            "HEAD", f"/v2/{repo}/manifests/{tag}", f"repository:{repo}:pull", {"Accept": ACCEPT}
        )
        if r.status_code != 200:
            return None
        return r.headers.get("Docker-Content-Digest")

    def _backend_catalog(self) -> list[str]:
        repos: list[str] = []
        path = "/v2/_catalog?n=1000"
        while path:
            r = self._backend_get("GET", path, CATALOG_SCOPE)
            r.raise_for_status()
            repos += r.json().get("repositories") or []
            nxt = r.links.get("next", {}).get("url")
            path = urllib.parse.urljoin(r.url, nxt) if nxt else ""
        return sorted(set(repos))

    # -- internals: request handling ---------------------------------------------------------------

    def _challenge(self, scope: str, error: str) -> str:
        return f'Bearer realm="{self.realm}",service="{self.host}",scope="{scope}",error="{error}"'

    def _handle(self, h: _Handler) -> None:
        split = urllib.parse.urlsplit(h.path)
        path, query = split.path, split.query
        kind, repo, ref = classify(path)
        h.log_user = None
        h.log_status = 0
        # logged when the status line is sent (before the client can see the answer)
        h.pending_log = (h.command, path, query, kind, repo, ref)
        try:
            failure = self._take_failure(kind)
            if failure is not None:
                h.drain_body()
                status, retry_after = failure
                code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE" if status >= 500 else "DENIED"
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                h.send_json(
                    status, {"errors": [{"code": code, "message": "injected by AcrStandIn"}]}, headers
                )
            elif kind == "token":
                self._handle_token(h, query)
            elif kind == "catalog" and self.catalog_filtered:
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_filtered_catalog(h)
            elif kind == "referrers" and self.referrers_api and h.command in ("GET", "HEAD"):
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_referrers(h, repo or "", ref or "", query)
            elif path == "/v2" or path.startswith("/v2/"):
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._proxy(h, kind, repo, ref)
            elif kind == "acr_tags":
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_acr_tags(h, repo or "", query)
            elif kind == "acr_manifests":
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_acr_manifests(h, repo or "", query)
            elif kind == "acr_repository":
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_acr_repository(h, repo or "")
            elif kind == "acr_catalog":
                h.log_user = _jwt_subject(h.headers.get("Authorization"))
                self._handle_acr_catalog(h, query)
            else:
                h.drain_body()
                h.send_json(404, {"errors": [{"code": "NOT_FOUND", "message": f"no route for {path}"}]})
        finally:
            h.write_log()  # no-op when already logged

    def _handle_token(self, h: _Handler, query: str) -> None:
        h.drain_body()
        with self._lock:
            self._token_requests += 1
        if h.command not in ("GET", "HEAD"):
            h.send_json(405, {"errors": [{"code": "UNSUPPORTED", "message": "use GET with Basic auth"}]})
            return
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        service = (params.get("service") or [""])[0]
        if service and service != self.host:
            h.send_json(400, {"errors": [{"code": "BAD_REQUEST", "message": f"invalid service {service!r}"}]})
            return
        ok, user = self._authenticate_basic(h.headers.get("Authorization"))
        h.log_user = user
        if not ok or user is None:
            h.send_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": _UNAUTHORIZED_MSG}]})
            return
        requested = [s for value in params.get("scope", []) for s in value.split()]
        granted = self._grant(self.users[user][1], self._parse_scopes(requested))
        token = self._issuer.mint(
            [str(s) for s in granted], self._by_clock(self.token_lifetime), subject=user, audience=self.host
        )
        with self._lock:
            self._grants.append(TokenGrant(user, requested, [str(s) for s in granted]))
        h.send_json(200, {"access_token": token})

    def _page_params(self, h: _Handler, query: str) -> tuple[int, str, str] | None:
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        raw_n = (params.get("n") or [""])[0]
        try:
            n = int(raw_n) if raw_n else DEFAULT_PAGE
        except ValueError:
            n = 0
        if n <= 0:
            h.send_json(
                400,
                {
                    "errors": [
                        {
                            "code": "PAGINATION_NUMBER_INVALID",
                            "message": "invalid number of results requested",
                            "detail": {"n": raw_n},
                        }
                    ]
                },
            )
            return None
        return min(n, MAX_PAGE), (params.get("last") or [""])[0], (params.get("orderby") or [""])[0]

    def _require(self, h: _Handler, repo: str, action: str) -> bool:
        """True if the request's Bearer token allows ``action`` on ``repo``; else answer 401."""
        if self._allows(self._bearer_claims(h.headers.get("Authorization")), "repository", repo, action):
            return True
        h.send_json(
            401,
            {
                "errors": [
                    {
                        "code": "UNAUTHORIZED",
                        "message": _UNAUTHORIZED_MSG,
                        "detail": [{"Type": "repository", "Name": repo, "Action": action}],
                    }
                ]
            },
            {"WWW-Authenticate": self._challenge(f"repository:{repo}:{action}", "invalid_token")},
        )
        return False

    def _handle_filtered_catalog(self, h: _Handler) -> None:
        """``/v2/_catalog`` as the user's scope map sees it (one page: enough for tests)."""
        h.drain_body()
        claims = self._bearer_claims(h.headers.get("Authorization"))
        if not self._allows(claims, "registry", "catalog", "*"):
            h.send_json(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": _UNAUTHORIZED_MSG}]},
                {"WWW-Authenticate": self._challenge(CATALOG_SCOPE, "invalid_token")},
            )
            return
        scope_map = self.users.get(claims.get("sub", "") if claims else "", ("", {}))[1]
        visible = [r for r in self._backend_catalog() if any(fnmatch.fnmatchcase(r, g) for g in scope_map)]
        h.send_json(200, {"repositories": visible})

    def _handle_referrers(self, h: _Handler, repo: str, digest: str, query: str) -> None:
        """``GET /v2/<repo>/referrers/<digest>[?artifactType=]``: an OCI index of the referrers."""
        h.drain_body()
        if not self._require(h, repo, "pull"):
            return
        if not re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
            h.send_json(400, {"errors": [{"code": "DIGEST_INVALID", "message": "invalid digest"}]})
            return
        params = urllib.parse.parse_qs(query)
        wanted = (params.get("artifactType") or [None])[0]
        last = (params.get("last") or [""])[0]
        with self._lock:
            known = repo in self._manifests
            stored = sorted(self._manifests.get(repo, {}).values(), key=lambda m: m.digest)
        if not known:  # as every ACR route answers for a repository it does not have
            h.send_json(
                404,
                {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]},
            )
            return
        entries = [m.referrer_descriptor() for m in stored if m.subject == digest]
        headers = {"Content-Type": _OCI_INDEX}
        if wanted is not None:
            entries = [e for e in entries if e.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        if last:
            entries = [e for e in entries if e["digest"] > last]
        page = entries[: self.referrers_page_size]
        if len(entries) > len(page):
            q = urllib.parse.urlencode(
                {**({"artifactType": wanted} if wanted else {}), "last": page[-1]["digest"]}
            )
            headers["Link"] = f'</v2/{repo}/referrers/{digest}?{q}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": _OCI_INDEX, "manifests": page}).encode()
        h.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _name_unknown(self, h: _Handler, repo: str) -> None:
        h.send_json(
            404,
            {
                "errors": [
                    {
                        "code": "NAME_UNKNOWN",
                        "message": "repository name not known to registry",
                        "detail": {"name": repo},
                    }
                ]
            },
        )

    def _handle_acr_repository(self, h: _Handler, repo: str) -> None:
        """``GET /acr/v1/<repo>``: the repository's attributes (data-plane Repository_GetAttributes).

        ``manifestCount`` and ``tagCount`` count what ``_manifests`` and ``_tags`` list;
        ``createdTime``/``lastUpdateTime`` are the earliest and latest times of those entries:
        a push, a moved tag, a deleted tag or manifest changes at least one of the four (ACR does
        not document which writes bump ``lastUpdateTime``; here every push does).
        """
        h.drain_body()
        if h.command not in ("GET", "HEAD"):
            h.send_json(405, {"errors": [{"code": "UNSUPPORTED", "message": "method not allowed"}]})
            return
        if not self._require(h, repo, "metadata_read"):
            return
        entries = self._manifest_entries(repo)
        if entries is None:
            self._name_unknown(h, repo)
            return
        tags = self._backend_tags(repo) or []
        times = self._times_for(repo, tags)
        with self._lock:
            deleted = self._deleted_at.get(repo, 0)
        moments = [t for pair in times.values() for t in pair] + [u for u, _ in entries] + [deleted]
        moments = [m for m in moments if m] or [0]
        h.send_json(
            200,
            {
                "registry": self.host,
                "imageName": repo,
                "createdTime": format_ticks(min(moments)),
                "lastUpdateTime": format_ticks(max(moments)),
                "manifestCount": len(entries),
                "tagCount": len(tags),
                "changeableAttributes": {
                    "deleteEnabled": True,
                    "writeEnabled": True,
                    "readEnabled": True,
                    "listEnabled": True,
                },
            },
        )

    def _handle_acr_manifests(self, h: _Handler, repo: str, query: str) -> None:
        """``/acr/v1/<repo>/_manifests``: every manifest, untagged ones included (ACR schema)."""
        h.drain_body()
        if not self._require(h, repo, "metadata_read"):
            return
        page = self._page_params(h, query)
        if page is None:
            return
        n, last, orderby = page
        entries = self._manifest_entries(repo)
        if entries is None:
            self._name_unknown(h, repo)
            return
        if orderby == "timedesc":
            entries.sort(key=lambda e: (e[0], e[1]["digest"]), reverse=True)
        elif orderby == "timeasc":
            entries.sort(key=lambda e: (e[0], e[1]["digest"]))
        listed = [e for _, e in entries]
        start = next((i + 1 for i, e in enumerate(listed) if e["digest"] == last), 0) if last else 0
        page_entries = listed[start : start + n]
        headers = {}
        if start + n < len(listed) and page_entries:
            q = urllib.parse.urlencode({"last": page_entries[-1]["digest"], "n": n, "orderby": orderby})
            headers["Link"] = f'</acr/v1/{repo}/_manifests?{q}>; rel="next"'
        h.send_json(200, {"registry": self.host, "imageName": repo, "manifests": page_entries}, headers)

    def _manifest_entries(self, repo: str) -> list[tuple[int, dict]] | None:
        """``(lastUpdateTime ticks, _manifests entry)`` of every manifest of ``repo``; None: unknown."""
        tags = self._backend_tags(repo)
        with self._lock:
            stored = dict(self._manifests.get(repo, {}))
        if tags is None and not stored:
            return None
        times = self._times_for(repo, tags or [])
        tags_of: dict[str, list[str]] = {}
        for tag in tags or []:
            digest = self._backend_digest(repo, tag)
            if digest is not None:
                tags_of.setdefault(digest, []).append(tag)
        entries = []
        for digest in sorted(set(stored) | set(tags_of)):
            item = stored.get(digest)
            tagged = sorted(tags_of.get(digest, []))
            if item is not None:
                created, updated, doc, media_type = item.created, item.updated, item.document, item.media_type
                size = len(item.raw)
            else:  # pushed straight to the backend: known by its tags only
                created = min(times[t][0] for t in tagged)
                updated = max(times[t][1] for t in tagged)
                doc, media_type, size = {}, None, 0
            entry: dict = {
                "digest": digest,
                "imageSize": size,
                "createdTime": format_ticks(created),
                "lastUpdateTime": format_ticks(updated),
                "changeableAttributes": {
                    "deleteEnabled": True,
                    "writeEnabled": True,
                    "readEnabled": True,
                    "listEnabled": True,
                },
            }
            if media_type:
                entry["mediaType"] = media_type
            config = doc.get("config")
            if isinstance(config, dict) and config.get("mediaType"):
                entry["configMediaType"] = config["mediaType"]
            if tagged:
                entry["tags"] = tagged
            if media_type in _INDEX_TYPES:
                entry["references"] = [
                    {
                        "digest": c.get("digest"),
                        **{k: (c.get("platform") or {}).get(k) for k in ("architecture", "os")},
                    }
                    for c in doc.get("manifests") or []
                    if isinstance(c, dict)
                ]
            entries.append((updated, entry))
        return entries

    def _handle_acr_tags(self, h: _Handler, repo: str, query: str) -> None:
        h.drain_body()
        if h.command not in ("GET", "HEAD"):
            h.send_json(405, {"errors": [{"code": "UNSUPPORTED", "message": "method not allowed"}]})
            return
        if not self._require(h, repo, "metadata_read"):
            return
        page = self._page_params(h, query)
        if page is None:
            return
        n, last, orderby = page
        if orderby not in ("", "timedesc", "timeasc"):
            h.send_json(
                400,
                {
                    "errors": [
                        {
                            "code": "UNSUPPORTED",
                            "message": f"orderby must be timedesc or timeasc, not {orderby!r}",
                        }
                    ]
                },
            )
            return
        tags = self._backend_tags(repo)
        if tags is None:
            h.send_json(
                404,
                {
                    "errors": [
                        {
                            "code": "NAME_UNKNOWN",
                            "message": "repository name not known to registry",
                            "detail": {"name": repo},
                        }
                    ]
                },
            )
            return
        times = self._times_for(repo, tags)
        if orderby:
            ordered = sorted(tags, key=lambda t: (times[t][1], t), reverse=orderby == "timedesc")
        else:
            ordered = sorted(tags)
        if last:
            if last in times:
                start = ordered.index(last) + 1
            elif not orderby:
                start = next((i for i, t in enumerate(ordered) if t > last), len(ordered))
            else:
                rec = self.tag_times(repo, last)
                if rec is None:
                    start = len(ordered)
                else:
                    key = (to_ticks(rec[1]), last)
                    keys = [(times[t][1], t) for t in ordered]
                    start = next(
                        (i for i, k in enumerate(keys) if (k < key if orderby == "timedesc" else k > key)),
                        len(ordered),
                    )
        else:
            start = 0
        page_tags = ordered[start : start + n]
        entries = []
        for tag in page_tags:
            digest = self._backend_digest(repo, tag)
            if digest is None:  # deleted meanwhile
                continue
            created, updated = times[tag]
            entries.append(
                {
                    "name": tag,
                    "digest": digest,
                    "createdTime": format_ticks(created),
                    "lastUpdateTime": format_ticks(updated),
                    "signed": False,
                    "changeableAttributes": {
                        "deleteEnabled": True,
                        "writeEnabled": True,
                        "readEnabled": (repo, tag) not in self._unreadable,
                        "listEnabled": True,
                    },
                }
            )
        headers = {}
        if start + n < len(ordered) and page_tags:
            q = urllib.parse.urlencode({"last": page_tags[-1], "n": n, "orderby": orderby})
            headers["Link"] = f'</acr/v1/{repo}/_tags?{q}>; rel="next"'
        h.send_json(200, {"registry": self.host, "imageName": repo, "tags": entries}, headers)

    def _handle_acr_catalog(self, h: _Handler, query: str) -> None:
        h.drain_body()
        if not self._allows(self._bearer_claims(h.headers.get("Authorization")), "registry", "catalog", "*"):
            h.send_json(
                401,
                {
                    "errors": [
                        {
                            "code": "UNAUTHORIZED",
                            "message": _UNAUTHORIZED_MSG,
                            "detail": [{"Type": "registry", "Name": "catalog", "Action": "*"}],
                        }
                    ]
                },
                {"WWW-Authenticate": self._challenge(CATALOG_SCOPE, "invalid_token")},
            )
            return
        page = self._page_params(h, query)
        if page is None:
            return
        n, last, _ = page
        repos = [r for r in self._backend_catalog() if r > last] if last else self._backend_catalog()
        headers = {}
        if len(repos) > n:
            q = urllib.parse.urlencode({"last": repos[n - 1], "n": n, "orderby": ""})
            headers["Link"] = f'</acr/v1/_catalog?{q}>; rel="next"'
        h.send_json(200, {"repositories": repos[:n]}, headers)

    def _rewrite(self, value: str) -> str:
        backend = self.backend
        for origin in (backend.url, f"http://localhost:{backend.port}"):
            value = value.replace(origin, self.url)
        return value

    def _proxy(self, h: _Handler, kind: str, repo: str | None, ref: str | None) -> None:
        if (
            kind == "manifest"
            and repo
            and ref
            and h.command in ("GET", "HEAD")
            and (repo, ref) in self._unreadable
        ):
            h.drain_body()
            h.send_json(
                403,
                {
                    "errors": [
                        {
                            "code": "DENIED",
                            "message": "The operation is disallowed on this "
                            "image: read is disabled (changeableAttributes.readEnabled=false)",
                        }
                    ]
                },
            )
            return
        body: bytes | None = None  # a manifest PUT's body, kept to list it (_manifests, referrers)
        if kind == "manifest" and h.command == "PUT":
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if 0 < length <= _MAX_MANIFEST else None
            if body is None:
                h.drain_body()
                h.send_json(400, {"errors": [{"code": "MANIFEST_INVALID", "message": "manifest size"}]})
                return
        backend = self.backend
        conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=120)
        try:
            try:
                conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", backend.host)
                for key, value in h.headers.items():
                    low = key.lower()
                    if (
                        low in _HOP_BY_HOP
                        or low in ("host", "expect", "content-length")
                        or low.startswith("x-forwarded")
                    ):
                        continue
                    conn.putheader(key, value)
                chunked = body is None and "chunked" in (h.headers.get("Transfer-Encoding") or "").lower()
                length = int(h.headers.get("Content-Length") or 0) if not chunked else 0
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                elif h.headers.get("Content-Length") is not None or h.command in ("PUT", "POST", "PATCH"):
                    conn.putheader("Content-Length", str(length))
                conn.endheaders()
                if body is not None:
                    conn.send(body)
                elif chunked:
                    for piece in h.iter_chunked_body():
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.send(b"0\r\n\r\n")
                else:
                    remaining = length
                    while remaining > 0:
                        piece = h.rfile.read(min(_CHUNK, remaining))
                        if not piece:
                            raise ConnectionError("client closed the request body early")
                        conn.send(piece)
                        remaining -= len(piece)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                h.close_connection = True
                h.send_json(502, {"errors": [{"code": "UNAVAILABLE", "message": f"backend: {exc}"}]})
                return

            extra: dict[str, str] = {}
            if kind == "manifest" and h.command == "PUT" and resp.status == 201 and repo and ref and body:
                media_type = (h.headers.get("Content-Type") or "").split(";")[0].strip()
                stored = self._record_manifest(  # before the client sees the 201
                    repo, body, media_type, resp.getheader("Docker-Content-Digest")
                )
                if ":" not in ref:
                    self._record_push(repo, ref)
                if stored.subject and self.referrers_api:
                    extra["OCI-Subject"] = stored.subject
            if kind == "manifest" and h.command == "DELETE" and resp.status == 202 and repo and ref:
                with self._lock:
                    self._manifests.get(repo, {}).pop(ref, None)
                    self._deleted_at[repo] = self._now_ticks()
            h.send_response(resp.status, resp.reason)
            for key, value in extra.items():
                h.send_header(key, value)
            has_length = False
            for key, value in resp.getheaders():
                low = key.lower()
                if low in _HOP_BY_HOP or low in ("date", "server"):  # send_response adds both
                    continue
                if low in ("location", "link"):
                    value = self._rewrite(value)
                if low == "content-length":
                    has_length = True
                h.send_header(key, value)
            no_body = h.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
            use_chunked = not no_body and not has_length
            if use_chunked:
                if h.request_version == "HTTP/1.1":
                    h.send_header("Transfer-Encoding", "chunked")
                else:
                    h.close_connection = True
            h.end_headers()
            if no_body:
                return
            try:
                while True:
                    piece = resp.read(_CHUNK)
                    if not piece:
                        break
                    if use_chunked and h.request_version == "HTTP/1.1":
                        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    else:
                        h.wfile.write(piece)
                if use_chunked and h.request_version == "HTTP/1.1":
                    h.wfile.write(b"0\r\n\r\n")
            except OSError:
                h.close_connection = True
                return
        finally:
            conn.close()


def _jwt_subject(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        try:
            return jwt.decode(value.strip(), options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            return None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small writes would otherwise stall ~40 ms on delayed ACKs
    standin: AcrStandIn
    log_user: str | None = None
    log_status: int = 0
    pending_log: tuple | None = None

    def write_log(self) -> None:
        pending, self.pending_log = self.pending_log, None
        if pending is not None:
            method, path, query, kind, repo, ref = pending
            entry = LogEntry(method, path, query, self.log_status, self.log_user, kind, repo, ref)
            with self.standin._lock:
                self.standin._log.append(entry)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.log_status = code
        self.write_log()
        super().send_response(code, message)

    def send_json(self, status: int, body: dict, headers: Mapping[str, str] | None = None) -> None:
        send_json(self, status, body, {"Docker-Distribution-Api-Version": "registry/2.0", **(headers or {})})

    def iter_chunked_body(self):
        while True:
            line = self.rfile.readline(65537)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining > 0:
                piece = self.rfile.read(min(_CHUNK, remaining))
                if not piece:
                    raise ConnectionError("client closed the request body early")
                remaining -= len(piece)
                yield piece
            self.rfile.readline(3)  # CRLF after the chunk

    def drain_body(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            for _ in self.iter_chunked_body():
                pass
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = self.rfile.read(min(_CHUNK, remaining))
            if not piece:
                break
            remaining -= len(piece)

    def _dispatch(self) -> None:
        self.standin._handle(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_OPTIONS = _dispatch  # noqa: N815

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass


def _make_handler(standin: AcrStandIn) -> type[_Handler]:
    return type("AcrStandInHandler", (_Handler,), {"standin": standin})
