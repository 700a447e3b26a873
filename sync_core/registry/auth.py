"""Registry authentication, driven by the registry's ``WWW-Authenticate`` challenges.

* Bearer (Docker token spec / OAuth2 as ACR, Docker Hub and Alibaba use it): tokens are
  fetched from the challenge's realm for a set of scopes, cached per scope set, refreshed ahead
  of expiry (``expires_in`` or the JWT ``exp``) and once more when the registry answers 401.
* Basic: credentials on every request to the registry's own host.
* Anonymous: nothing is sent until a registry asks.

Credentials never go over plain http except to loopback, and never to another host than the
registry or the realm its challenge named.

:meth:`Authenticator.send` is how the registry client sends every request: it adds the
``Authorization`` header, learns the challenge from the first 401 (holding other requests back
until the registry has answered once), and retries a 401 with a new token, then with re-read
credentials.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
import requests

from sync_core.errors import AuthError, CredentialsRefused, InvalidContent, RegistryError, TokenExpired
from sync_core.registry.jsondoc import parse_json
from sync_core.registry.transport import Body, Transport, exhausted, is_loopback, redact_url

log = logging.getLogger(__name__)

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')
DEFAULT_TOKEN_LIFETIME = 60.0
REFRESH_MARGIN_CAP = 60.0
FIRST_ANSWER_WAIT = 30.0  # seconds other requests wait for the first answer of a registry
MAX_401_ROUNDS = 4  # 401s one request may meet: challenge, new token, re-read credentials


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:  # never show the password, even in a traceback's locals
        return f"Credentials(username={self.username!r}, password=<redacted>)"


class CredentialSource:
    """Supplies credentials; ``refresh`` re-reads them (e.g. from Key Vault) after a rejection."""

    def get(self) -> Credentials | None:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Re-read the credentials; True if a re-read happened (worth retrying)."""
        return False


class StaticCredentials(CredentialSource):
    def __init__(self, credentials: Credentials | None):
        self._credentials = credentials

    def get(self) -> Credentials | None:
        return self._credentials


ANONYMOUS = StaticCredentials(None)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str]

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` header."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {}
    end = 0
    for match in _PARAM_RE.finditer(rest):
        if rest[end : match.start()].strip(" \t,"):
            break  # the next challenge ("..., Basic realm=...") starts here: not ours
        end = match.end()
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes with one entry per resource and its actions united, in a stable order.

    ``repository:a:pull,push`` and ``repository:a:push,pull`` (registries list actions in any
    order) are the same scope. Names may contain ``host:port``, so split on the last colon;
    a scope is ``type:name:actions``, so with one colon (``repository:a``), or a last part that
    is a path (``repository:localhost:5000/a``), it has no actions.
    """
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        if ":" not in resource or "/" in actions:
            merged.setdefault(scope, [])
            continue
        known = merged.setdefault(resource, [])
        known.extend(a for a in actions.split(",") if a and a not in known)
    return tuple(f"{r}:{','.join(a)}" if a else r for r, a in merged.items())


def basic_authorization(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class Token:
    value: str = field(repr=False)
    expires_at: float
    fetched_at: float
    after_rejection: bool = False  # fetched because a request could not be replayed after a 401

    def fresh(self, now: float) -> bool:
        margin = min(REFRESH_MARGIN_CAP, (self.expires_at - self.fetched_at) * 0.2)
        return now < self.expires_at - margin


def token_expiry(answer: dict[str, Any], token: str, now: float) -> float:
    """When a token expires: the JWT ``exp`` if the token is a JWT, else ``expires_in``."""
    exp = (token_claims(token) or {}).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        return now + float(expires_in)
    return now + DEFAULT_TOKEN_LIFETIME


def token_claims(token: str) -> dict[str, Any] | None:
    """The claims of a token that is a JWT, read without verifying its signature; None otherwise.

    Only for reading what a registry says it granted (``access``) or when a token expires: the
    registry, not this process, verifies its tokens.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def granted_actions(claims: dict[str, Any], resource_type: str, name: str) -> frozenset[str] | None:
    """The actions a token's ``access`` claim grants on one resource (Docker token spec).

    None when the claims have no ``access`` list (a JWT that does not say what it grants);
    an empty set when the list names nothing for that resource.
    """
    access = claims.get("access")
    if not isinstance(access, list):
        return None
    actions: set[str] = set()
    for entry in access:
        if isinstance(entry, dict) and entry.get("type") == resource_type and entry.get("name") == name:
            listed = entry.get("actions")
            if isinstance(listed, list):
                actions.update(a for a in listed if isinstance(a, str))
    return frozenset(actions)


class Authenticator:
    """Authenticates every request to one registry (see the module docstring)."""

    def __init__(
        self,
        registry_url: str,
        transport: Transport,
        credentials: CredentialSource = ANONYMOUS,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.registry_url = registry_url.rstrip("/")
        self.host = urlsplit(self.registry_url).netloc
        self.transport = transport
        self.credentials = credentials
        self.clock = clock
        self.challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], Token] = {}
        self._locks: dict[frozenset[str], threading.Lock] = {}
        self._rejected: set[frozenset[str]] = set()
        self._lock = threading.Lock()
        self._first_answer = threading.Event()
        self._first_claimed = False
        self.tokens_fetched = 0

    # -- public --------------------------------------------------------------------------
    def send(
        self,
        method: str,
        url: str,
        *,
        scopes: Iterable[str],
        headers: dict[str, str] | None = None,
        data: Body = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> requests.Response:
        """Send an authenticated request and return the registry's answer (never a 401).

        Raises :class:`AuthError` when the registry keeps refusing, and :class:`TokenExpired`
        when a body that cannot be sent twice (a blob stream) met a 401 with a cached token.
        """
        scopes = tuple(scopes)
        replayable = data is None or isinstance(data, bytes)
        first = self._goes_first()
        try:
            for attempt in range(MAX_401_ROUNDS):
                sent = dict(headers or {})
                # The budget's permit first, the token second: a token chosen before a wait in
                # the budget's line could expire in it (a token fetched now goes ahead).
                budget = self.transport.budget
                permit = budget.acquire() if budget is not None else None
                try:
                    authorization, token = self._authorization(scopes)
                except BaseException:
                    if permit is not None:
                        permit.release()
                    raise
                if authorization:
                    sent["Authorization"] = authorization
                response = self.transport.send(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    stream=stream,
                    retry=replayable,
                    follow_redirects=follow_redirects,
                    permit=permit,
                )
                if response.status_code != 401:
                    return response
                www_authenticate = response.headers.get("WWW-Authenticate", "")
                response.close()
                retry_scopes = self.unauthorized(www_authenticate, scopes, attempt)
                self._first_answer.set()  # the challenge is known: the others may go
                refused = f"{self.host} refused {method} {redact_url(url)} (HTTP 401)"
                if retry_scopes is None:
                    raise AuthError(refused, status=401)
                if not replayable:
                    self._rejected_mid_body(scopes, token, refused)
                scopes = retry_scopes
            raise AuthError(f"{self.host} kept answering 401 to {method} {redact_url(url)}", status=401)
        finally:
            if first:
                self._first_answer.set()

    @property
    def scheme(self) -> str | None:
        """The scheme the registry asked for (``bearer``, ``basic``); None: it has asked for none yet."""
        challenge = self.challenge
        return challenge.scheme if challenge is not None else None

    def new_token_claims(self, scopes: Iterable[str]) -> dict[str, Any] | None:
        """Fetch a new token for ``scopes`` (never a cached one) and return its JWT claims.

        For ``check``: a right lost since a cached token was issued shows at once, and the
        token's ``access`` claim says what the registry grants (:func:`granted_actions`).
        Needs a Bearer challenge (send a request first); None when there is none, or when the
        token is not a readable JWT. Raises as a token fetch does (:class:`CredentialsRefused`).
        The new token replaces the cached one for the same scopes.
        """
        if self.scheme != "bearer":
            return None
        key = frozenset(merge_scopes(scopes))
        token = self._fetch_token(key)
        with self._lock:
            self._tokens[key] = token
        return token_claims(token.value)

    def unauthorized(
        self, www_authenticate: str, scopes: Iterable[str], attempt: int
    ) -> tuple[str, ...] | None:
        """Handle a 401. Returns the scopes to retry with, or None when a retry is pointless.

        ``attempt`` counts the 401s already seen for this request: the first invalidates the
        cached token (it may have expired early), the second re-reads the credentials.
        """
        challenge = parse_challenge(www_authenticate or "")
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            if challenge is None and self.challenge is None:
                raise AuthError(
                    f"{redact_url(self.registry_url)} answered 401 without an authentication challenge"
                )
            if challenge is not None:
                raise AuthError(
                    f"{redact_url(self.registry_url)} asks for unsupported authentication {challenge.scheme!r}"
                )
        if challenge is not None:
            self._check_challenge(challenge)
        first_time = self.challenge is None or (
            challenge is not None and challenge.scheme != self.challenge.scheme
        )
        if challenge is not None:
            self.challenge = challenge
        wanted = merge_scopes([*scopes, *(challenge.scopes if challenge else ())])
        if first_time:
            return wanted
        with self._lock:
            self._tokens.pop(frozenset(scopes), None)
            self._tokens.pop(frozenset(wanted), None)
        if attempt == 0:
            return wanted
        if attempt == 1 and self.credentials.refresh():
            with self._lock:
                self._tokens.clear()
            return wanted
        return None

    # -- internals -----------------------------------------------------------------------
    def _goes_first(self) -> bool:
        """True for the very first request to this registry; the others wait for its answer.

        Until a registry has answered once, its authentication is unknown: requests sent at once
        by many threads would each collect a 401 just to learn the same challenge (one wasted
        round trip each). The wait is bounded, and over as soon as the first answer is handled.
        """
        if self._first_answer.is_set():
            return False
        with self._lock:
            if not self._first_claimed:
                self._first_claimed = True
                return True
        self._first_answer.wait(FIRST_ANSWER_WAIT)
        return False

    def _rejected_mid_body(self, scopes: tuple[str, ...], token: Token | None, refused: str) -> None:
        """A 401 to a body that cannot be sent again: worth one restart, not one per refusal.

        A cached token that the registry stops accepting has expired early (or the registry
        rotated its keys): :class:`TokenExpired`, and the next token for these scopes is marked.
        A refusal of that next token is a refusal, not an expiry.
        """
        if token is not None and token.after_rejection:
            raise AuthError(f"{refused}; refused again with a new token", status=401)
        with self._lock:
            self._rejected.add(frozenset(scopes))
        raise TokenExpired(f"{refused}; the upload will be restarted", status=401)

    def _authorization(self, scopes: tuple[str, ...]) -> tuple[str | None, Token | None]:
        challenge = self.challenge
        if challenge is None:
            return None, None
        if challenge.scheme == "basic":
            return self._basic_header(), None
        if challenge.scheme == "bearer":
            if self.credentials.get() is not None:
                # the token stands for the credentials: it must not travel in clear either
                self._require_safe_destination(self.registry_url, "a token obtained with credentials")
            token = self._token(frozenset(scopes))
            return (f"Bearer {token.value}" if token else None), token
        return None, None

    def _check_challenge(self, challenge: Challenge) -> None:
        if challenge.scheme == "basic":
            self._require_safe_destination(self.registry_url, "basic credentials")
            return
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{redact_url(self.registry_url)} sent a Bearer challenge without a realm")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"{redact_url(self.registry_url)} sent an invalid token realm")
        same_host = parts.netloc.lower() == urlsplit(self.registry_url).netloc.lower()
        if parts.scheme != "https" and not is_loopback(parts.netloc) and not same_host:
            raise AuthError(
                f"token realm {redact_url(realm)} of {redact_url(self.registry_url)} is plain http on another host; refusing"
            )

    def _require_safe_destination(self, url: str, what: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" and not is_loopback(parts.netloc):
            raise AuthError(f"refusing to send {what} over plain http to {redact_url(url)}")

    def _basic_header(self) -> str | None:
        creds = self.credentials.get()
        if creds is None:
            return None
        self._require_safe_destination(self.registry_url, "basic credentials")
        return basic_authorization(creds)

    def _token(self, key: frozenset[str]) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
            if token and token.fresh(self.clock()):
                return token
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one fetch per scope set at a time; others wait and reuse it
            with self._lock:
                token = self._tokens.get(key)
            if token and token.fresh(self.clock()):
                return token
            token = self._fetch_token(key)
            with self._lock:
                if key in self._rejected:
                    self._rejected.discard(key)
                    token.after_rejection = True
                self._tokens[key] = token
            return token

    def _fetch_token(self, scopes: frozenset[str]) -> Token:
        assert self.challenge is not None
        realm = self.challenge.params["realm"]
        params: list[tuple[str, str]] = []
        if self.challenge.params.get("service"):
            params.append(("service", self.challenge.params["service"]))
        params.extend(("scope", s) for s in sorted(scopes))
        query = "&".join(f"{k}={quote(v, safe=':*/,')}" for k, v in params)
        url = realm + ("&" if "?" in realm else "?") + query if query else realm
        headers = {"Accept": "application/json"}
        for attempt in range(2):
            creds = self.credentials.get()
            if creds is not None:
                self._require_safe_destination(realm, "credentials to the token service")
                headers["Authorization"] = basic_authorization(creds)
            now = self.clock()
            response = self.transport.send("GET", url, headers=headers)
            with response:
                if response.status_code in (401, 403):
                    if attempt == 0 and self.credentials.refresh():
                        continue
                    who = f"user {creds.username!r}" if creds else "anonymous access"
                    raise (CredentialsRefused if creds else AuthError)(
                        f"token service {redact_url(realm)} refused {who} (HTTP {response.status_code})",
                        status=response.status_code,
                    )
                if response.status_code != 200:
                    raise RegistryError(
                        f"token service {redact_url(realm)} answered HTTP {response.status_code}",
                        status=response.status_code,
                        exhausted=exhausted(response),
                    )
                try:
                    answer = parse_json(response.content, f"token service {redact_url(realm)}", dict)
                except InvalidContent:
                    raise AuthError(
                        f"token service {redact_url(realm)} answered something that is not a JSON object"
                    ) from None
            value = answer.get("token") or answer.get("access_token")
            if not isinstance(value, str) or not value:
                raise AuthError(f"token service {redact_url(realm)} answered without a token")
            with self._lock:
                self.tokens_fetched += 1
            return Token(value, token_expiry(answer, value, now), now)
        raise AuthError(f"token service {redact_url(realm)} refused the credentials")  # pragma: no cover
