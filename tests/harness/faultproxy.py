"""An HTTP/1.1 fault-injection reverse proxy for reliability tests.

    with FaultProxy(registry.url, rules=["reset", FaultRule("status", path=r"/blobs/")],
                    rate=0.2, seed=7) as fp:
        client = SomeClient(fp.url)                 # talk to the proxy instead of the registry
        fp.fail_next(2, "throttle", method="GET", path=r"/manifests/", retry_after=1)
        ...
        assert {r.method for r in fp.log if r.forwarded} <= {"GET", "HEAD"}

The proxy listens on ``127.0.0.1`` (ephemeral port), starts in the constructor, and forwards
each request (method, target, headers, streamed body: Content-Length or chunked) to the upstream
over a fresh ``http.client`` connection, then streams the response back (keep-alive towards the
client). The upstream sees ``Host: <upstream host:port>`` (``preserve_host=True`` keeps the
client's), so absolute URLs it generates point at itself; the proxy rewrites them in
``Location``, ``Content-Location``, the ``WWW-Authenticate`` ``realm`` and absolute ``Link``
targets (relative ``Link`` headers pass through untouched). Extra origin mappings
(``rewrite={"http://127.0.0.1:7000": token_proxy.url}`` or ``add_rewrite``) let a token realm on
another server be sent through a second ``FaultProxy``.

Fault kinds (``FAULT_KINDS``):

``reset``           close the connection with a TCP RST instead of answering (request not
                    forwarded unless ``forward=True``): ``requests.ConnectionError``.
``reset_mid_body``  forward, send the status, headers and ``fraction`` of the body, then RST:
                    ``ChunkedEncodingError`` (or ``ConnectionError`` if the reset wins the race).
``truncate``        forward, declare the full ``Content-Length``, send ``fraction`` of the body,
                    then close cleanly (FIN): ``ChunkedEncodingError`` (IncompleteRead).
``status``          answer ``status`` (default 503; a sequence means a seeded choice) with a
                    registry-style JSON error body, without forwarding (unless ``forward=True``).
``throttle``        answer 429 with ``Retry-After: retry_after`` (no header when ``None``),
                    without forwarding (unless ``forward=True``).
``slow``            wait ``delay_ms`` before forwarding; the answer is otherwise normal.
``corrupt_body``    forward and stream the body with ``corrupt_bytes`` byte(s) XOR-ed at seeded
                    positions; headers (Content-Length, Docker-Content-Digest) are untouched.

Selection, per request, under a lock: deterministic rules (``count`` set) are checked first, in
order; the first that matches and is due fires ("fail the next N requests matching X with Y";
``skip`` lets the first matching requests through). Otherwise, with probability ``rate`` the
request gets a fault drawn (by ``weight``) from the random rules (``count=None``) that match it;
a request no random rule matches is never faulted at random. The seeded RNG is advanced by the
same amount for every request, so a sequential client sees the same faults for the same seed.
Response bodies whose length must be known (partial and corrupt faults on chunked responses)
are buffered.

Overlap, proven rather than hoped for: ``fp.rendezvous(2, method="PUT", path=r"/manifests/")``
returns a :class:`Rendezvous` that holds each matching request (before it is forwarded) until two
of them are in flight at once, then lets every one through; ``met`` says whether that happened.
A request that waits ``timeout`` seconds in vain goes on, and so do all after it (``timed_out``):
a client that never overlaps two such requests is slowed once, and its test fails on ``met``.

A rate limit in front of the upstream: ``FaultProxy(url, limit=WindowLimit(15))`` answers a
bare 429 (no ``Retry-After``, as Docker Hub's abuse limit does) to a request beyond the limit and
puts the limit's headers (``RateLimit-Limit`` / ``RateLimit-Remaining``) on every answer; rules
that fire take precedence, a request they fault does not count (:mod:`.ratelimit`).

Every request is logged (``log``: ``RequestRecord`` copies in arrival order): method, path,
status sent to the client (``None`` for a reset before the answer), fault, whether it was
forwarded, the upstream's status, and an error text if the upstream or the client failed.
"""

from __future__ import annotations

import collections
import http.client
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit, urlunsplit

from .ratelimit import Limit
from .servers import LoopbackHTTPServer

__all__ = ["FAULT_KINDS", "FaultProxy", "FaultRule", "Rendezvous", "RequestRecord"]

FAULT_KINDS = ("reset", "reset_mid_body", "truncate", "status", "throttle", "slow", "corrupt_body")
_NO_FORWARD_KINDS = ("reset", "status", "throttle")
_BODY_KINDS = ("reset_mid_body", "truncate", "corrupt_body")

_CHUNK = 64 * 1024
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_ERROR_CODES = {
    429: "TOOMANYREQUESTS",
    500: "UNKNOWN",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}


@dataclass
class FaultRule:
    """One kind of fault and the requests it applies to (see the module docstring).

    ``method``: regex full-matched against the method, case-insensitive (``"GET|HEAD"``).
    ``path``: regex searched in the request target (path and query), e.g. ``r"/blobs/sha256:"``.
    ``count``: ``None`` for a random rule (used at the proxy's ``rate``, chosen by ``weight``);
    an int for a deterministic rule that fires on the next ``count`` matching requests after
    letting ``skip`` matching requests through. ``fired`` counts how often it fired.
    """

    kind: str
    method: str | None = None
    path: str | None = None
    count: int | None = None
    skip: int = 0
    weight: float = 1.0
    status: int | Sequence[int] = 503
    retry_after: int | str | None = None
    delay_ms: float = 1000.0
    fraction: float = 0.5
    body_bytes: int | None = None
    corrupt_bytes: int = 1
    forward: bool = False
    name: str | None = None
    fired: int = field(default=0, compare=False)
    seen: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.forward and self.kind not in _NO_FORWARD_KINDS:
            raise ValueError(f"forward=True only applies to {_NO_FORWARD_KINDS}")
        self._method_re = re.compile(self.method, re.IGNORECASE) if self.method else None
        self._path_re = re.compile(self.path) if self.path else None

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def deterministic(self) -> bool:
        return self.count is not None

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def matches(self, method: str, path: str) -> bool:
        if self._method_re is not None and not self._method_re.fullmatch(method):
            return False
        return self._path_re is None or self._path_re.search(path) is not None


class Rendezvous:
    """Holds the requests that match until ``parties`` of them are in flight at once.

    ``method``/``path``: regexes as in :class:`FaultRule`. A matching request counts as in flight
    from its arrival until its answer is sent. ``met``: ``parties`` were in flight at once (from
    then on nothing waits). ``timed_out``: a request waited ``timeout`` seconds in vain (from then
    on nothing waits either). ``max_in_flight``: the most matching requests in flight at once.
    """

    def __init__(
        self, parties: int, method: str | None = None, path: str | None = None, timeout: float = 30.0
    ):
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self.parties, self.timeout = parties, timeout
        self._method_re = re.compile(method, re.IGNORECASE) if method else None
        self._path_re = re.compile(path) if path else None
        self._cond = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0
        self.met = False
        self.timed_out = False

    def matches(self, method: str, path: str) -> bool:
        if self._method_re is not None and not self._method_re.fullmatch(method):
            return False
        return self._path_re is None or self._path_re.search(path) is not None

    @contextmanager
    def held(self) -> Iterator[None]:
        """One matching request: wait for the others (see the class docstring), then go on."""
        with self._cond:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.in_flight >= self.parties:
                self.met = True
                self._cond.notify_all()
            elif not self._cond.wait_for(lambda: self.met or self.timed_out, self.timeout):
                self.timed_out = True
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1

    def release(self) -> None:
        """Let every waiting and later request through (the proxy stops)."""
        with self._cond:
            self.timed_out = True
            self._cond.notify_all()

    def __repr__(self) -> str:
        return (
            f"Rendezvous(parties={self.parties}, met={self.met}, timed_out={self.timed_out}, "
            f"max_in_flight={self.max_in_flight})"
        )


@dataclass
class RequestRecord:
    """One request seen by the proxy (``FaultProxy.log`` returns copies)."""

    seq: int
    method: str
    path: str
    fault: str | None = None
    rule: str | None = None
    forwarded: bool = False
    upstream_status: int | None = None
    status: int | None = None
    error: str | None = None
    started: float = 0.0
    elapsed: float | None = None
    answer_headers: dict[str, str] = field(default_factory=dict)  # added to the answer (the limit's)


class _ClientGone(Exception):
    """The client connection failed while we were reading its request body."""


class _RequestBody:
    """The request body on the client connection, readable once, drainable afterwards."""

    def __init__(self, rfile, headers) -> None:
        self._rfile = rfile
        te = headers.get("Transfer-Encoding", "")
        cl = headers.get("Content-Length")
        self.length: int | None = None
        if "chunked" in te.lower():
            self.framing: str | None = "chunked"
        elif cl is not None:
            try:
                self.length = int(cl)
            except ValueError as exc:
                raise _ClientGone(f"bad Content-Length {cl!r}") from exc
            self.framing = "length"
        else:
            self.framing = None
        self._iter = self._chunked() if self.framing == "chunked" else self._sized()

    def _read(self, n: int) -> bytes:
        try:
            data = self._rfile.read1(n)
        except OSError as exc:
            raise _ClientGone(f"client: {exc!r}") from exc
        if not data:
            raise _ClientGone("client closed the connection mid-body")
        return data

    def _readline(self) -> bytes:
        try:
            line = self._rfile.readline(65537)
        except OSError as exc:
            raise _ClientGone(f"client: {exc!r}") from exc
        if not line:
            raise _ClientGone("client closed the connection mid-body")
        return line

    def _sized(self) -> Iterator[bytes]:
        remaining = self.length or 0
        while remaining > 0:
            data = self._read(min(remaining, _CHUNK))
            remaining -= len(data)
            yield data

    def _chunked(self) -> Iterator[bytes]:
        while True:
            line = self._readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _ClientGone(f"bad chunk size line {line[:40]!r}") from exc
            if size == 0:
                while self._readline() not in (b"\r\n", b"\n"):
                    pass
                return
            remaining = size
            while remaining > 0:
                data = self._read(min(remaining, _CHUNK))
                remaining -= len(data)
                yield data
            self._readline()

    def chunks(self) -> Iterator[bytes]:
        return self._iter

    def drain(self) -> None:
        for _ in self._iter:
            pass


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class FaultProxy:
    """HTTP/1.1 fault-injecting reverse proxy in front of ``upstream_url``; starts at once.

    ``FaultProxy(upstream_url, rules=(), seed=0, *, rate=0.0, rewrite=None, preserve_host=False,
    upstream_timeout=30.0, client_timeout=30.0, listen_port=0)``

    ``rules``: ``FaultRule`` objects, kind names (``"reset"`` = ``FaultRule("reset")``) or dicts
    of ``FaultRule`` arguments. ``limit``: a rate limit (``admit()`` -> allowed, headers). ``rate``: probability that a request matching some random rule
    is faulted (0 = only deterministic rules fire). ``rewrite``: extra ``{origin: origin}`` URL
    mappings applied to response headers (the upstream's origin -> ``url`` is always included).
    """

    def __init__(
        self,
        upstream_url: str,
        rules: Iterable[FaultRule | str | Mapping] = (),
        seed: int = 0,
        *,
        rate: float = 0.0,
        rewrite: Mapping[str, str] | None = None,
        preserve_host: bool = False,
        upstream_timeout: float = 30.0,
        client_timeout: float = 30.0,
        listen_port: int = 0,
        limit: Limit | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream_url must be http://host[:port], got {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self._up_netloc = parts.netloc
        self.preserve_host = preserve_host
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.seed = seed
        self._rate = 0.0
        self.rate = rate
        self._rules: list[FaultRule] = [self._coerce_rule(r) for r in rules]
        self.limit = limit
        self._limited = FaultRule("throttle", name="rate-limit")  # what the limit answers beyond it
        self._log: list[RequestRecord] = []
        self._rendezvous: list[Rendezvous] = []
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._stopped = False

        self._server = LoopbackHTTPServer(("127.0.0.1", listen_port), _make_handler(self))
        self.port: int = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

        self._rewrites: dict[str, str] = {}
        self.add_rewrite(self.upstream_url, self.url)
        for src, dst in (rewrite or {}).items():
            self.add_rewrite(src, dst)

        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fault-proxy:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- configuration --------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._rate = float(value)

    @staticmethod
    def _coerce_rule(rule: FaultRule | str | Mapping) -> FaultRule:
        if isinstance(rule, FaultRule):
            return rule
        if isinstance(rule, str):
            return FaultRule(rule)
        return FaultRule(**rule)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def add_rule(self, rule: FaultRule | str | Mapping, **params) -> FaultRule:
        """Append a rule (``add_rule("slow", delay_ms=200, path="/blobs/")`` works too)."""
        if params:
            if not isinstance(rule, str):
                raise TypeError("keyword parameters need a kind name as first argument")
            rule = FaultRule(rule, **params)
        rule = self._coerce_rule(rule)
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail_next(
        self, count: int, kind: str, *, method: str | None = None, path: str | None = None, **params
    ) -> FaultRule:
        """Deterministic: the next ``count`` requests matching ``method``/``path`` get ``kind``."""
        return self.add_rule(FaultRule(kind, method=method, path=path, count=count, **params))

    def remove_rule(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules = []

    def rendezvous(
        self, parties: int, *, method: str | None = None, path: str | None = None, timeout: float = 30.0
    ) -> Rendezvous:
        """Hold the matching requests until ``parties`` are in flight at once (see :class:`Rendezvous`)."""
        rendezvous = Rendezvous(parties, method, path, timeout)
        with self._lock:
            self._rendezvous.append(rendezvous)
        return rendezvous

    def add_rewrite(self, src_origin: str, dst_origin: str) -> None:
        """Rewrite absolute URLs on ``src_origin`` (scheme://host[:port]) to ``dst_origin``."""
        key = _origin(src_origin)
        target = urlsplit(dst_origin)
        if key is None or not target.scheme or not target.netloc:
            raise ValueError(f"rewrite needs absolute origins, got {src_origin!r} -> {dst_origin!r}")
        with self._lock:
            self._rewrites[key] = f"{target.scheme}://{target.netloc}"

    def rewrite_url(self, url: str) -> str:
        """``url`` with its origin mapped through the rewrite table (unchanged if no match)."""
        key = _origin(url)
        with self._lock:
            dst = self._rewrites.get(key) if key else None
        if dst is None:
            return url
        parts = urlsplit(url)
        dst_parts = urlsplit(dst)
        return urlunsplit((dst_parts.scheme, dst_parts.netloc, parts.path, parts.query, parts.fragment))

    # -- observation ----------------------------------------------------------------------------

    @property
    def log(self) -> list[RequestRecord]:
        """Copies of the request records, in arrival order."""
        with self._lock:
            return [replace(r) for r in self._log]

    def stats(self) -> dict:
        """``{"requests", "forwarded", "faulted", "errors", "faults": {kind: n},
        "by_method": {method: n}, "by_status": {status: n}, "no_response": n}`` since the last
        ``reset()``; ``no_response`` counts requests answered with no status line (resets)."""
        with self._lock:
            records = list(self._log)
        faults = collections.Counter(r.fault for r in records if r.fault)
        return {
            "requests": len(records),
            "forwarded": sum(r.forwarded for r in records),
            "faulted": sum(faults.values()),
            "errors": sum(r.error is not None for r in records),
            "faults": dict(faults),
            "by_method": dict(collections.Counter(r.method for r in records)),
            "by_status": dict(collections.Counter(r.status for r in records if r.status is not None)),
            "no_response": sum(r.status is None for r in records),
        }

    def reset(self, seed: int | None = None) -> None:
        """Clear the log and counters (rules are kept); re-seed the RNG when ``seed`` is given."""
        with self._lock:
            self._log = []
            if seed is not None:
                self.seed = seed
                self._rng = random.Random(seed)

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop listening and close every client connection. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        with self._lock:
            held = list(self._rendezvous)
        for rendezvous in held:
            rendezvous.release()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.upstream_url}, rate={self._rate}, rules={len(self._rules)})"

    # -- request handling -----------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _choose(self, method: str, path: str) -> tuple[FaultRule | None, int]:
        """Pick the fault for a request (call with the lock held)."""
        r_rate, r_pick, sub_seed = self._rng.random(), self._rng.random(), self._rng.getrandbits(64)
        chosen: FaultRule | None = None
        for rule in self._rules:
            if rule.count is None or not rule.matches(method, path):
                continue
            rule.seen += 1
            if chosen is None and rule.seen > rule.skip and rule.fired < rule.count:
                chosen = rule
        if chosen is None and r_rate < self._rate:
            candidates = [
                r for r in self._rules if r.count is None and r.weight > 0 and r.matches(method, path)
            ]
            if candidates:
                x = r_pick * sum(r.weight for r in candidates)
                for rule in candidates:
                    x -= rule.weight
                    if x < 0:
                        break
                chosen = rule
        if chosen is not None:
            chosen.fired += 1
        return chosen, sub_seed

    def _update(self, rec: RequestRecord, **fields) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(rec, key, value)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        started = time.monotonic()
        with self._lock:
            rule, sub_seed = self._choose(method, path)
            answer_headers: dict[str, str] = {}
            if self.limit is not None and rule is None:
                allowed, answer_headers = self.limit.admit()
                if not allowed:
                    rule = self._limited
                    rule.fired += 1
            rec = RequestRecord(
                seq=len(self._log),
                method=method,
                path=path,
                started=time.time(),
                fault=rule.kind if rule else None,
                rule=rule.label if rule else None,
                answer_headers=answer_headers,
            )
            self._log.append(rec)
            meeting = [r for r in self._rendezvous if r.matches(method, path)]
        rng = random.Random(sub_seed)
        try:
            with ExitStack() as stack:
                for rendezvous in meeting:
                    stack.enter_context(rendezvous.held())
                body = _RequestBody(h.rfile, h.headers)
                self._serve(h, rec, rule, rng, body)
        except _ClientGone as exc:
            self._update(rec, error=str(exc))
            h.close_connection = True
        except OSError as exc:  # writing to the client failed
            self._update(rec, error=f"client: {exc!r}")
            h.close_connection = True
        finally:
            self._update(rec, elapsed=time.monotonic() - started)

    def _serve(
        self,
        h: BaseHTTPRequestHandler,
        rec: RequestRecord,
        rule: FaultRule | None,
        rng: random.Random,
        body: _RequestBody,
    ) -> None:
        kind = rule.kind if rule else None
        if kind == "slow" and self._stopping.wait(rule.delay_ms / 1000.0):
            self._reset(h)
            return
        if rule is not None and kind in _NO_FORWARD_KINDS and not rule.forward:
            if kind == "reset":
                self._reset(h)
                return
            body.drain()
            self._answer_fault(h, rec, rule, rng)
            return

        try:
            conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self.upstream_timeout)
            resp = self._forward(h, rec, conn, body)
        except (OSError, http.client.HTTPException) as exc:
            body.drain()
            status = 504 if isinstance(exc, TimeoutError) else 502
            self._update(rec, error=f"upstream: {exc!r}")
            self._send_simple(
                h, rec, status, {"errors": [{"code": "UNAVAILABLE", "message": f"upstream: {exc!r}"}]}
            )
            return
        try:
            self._update(rec, upstream_status=resp.status)
            if rule is not None and kind in _NO_FORWARD_KINDS:  # forward=True: the upstream did it
                try:
                    resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._update(rec, error=f"upstream: {exc!r}")
                if kind == "reset":
                    self._reset(h)
                else:
                    self._answer_fault(h, rec, rule, rng)
                return
            self._relay(h, rec, resp, rule, rng)
        finally:
            conn.close()

    def _forward(
        self,
        h: BaseHTTPRequestHandler,
        rec: RequestRecord,
        conn: http.client.HTTPConnection,
        body: _RequestBody,
    ) -> http.client.HTTPResponse:
        conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
        listed = {t.strip().lower() for v in h.headers.get_all("Connection", []) for t in v.split(",")}
        drop = _HOP_BY_HOP | listed | {"host", "expect", "content-length"}
        for name, value in h.headers.items():
            if name.lower() not in drop:
                conn.putheader(name, value)
        host = h.headers.get("Host") if self.preserve_host else None
        conn.putheader("Host", host or self._up_netloc)
        if body.framing == "chunked":
            conn.putheader("Transfer-Encoding", "chunked")
        elif body.framing == "length":
            conn.putheader("Content-Length", str(body.length))
        conn.putheader("Connection", "close")
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.endheaders()
        self._update(rec, forwarded=True)
        upstream_ok = True
        for chunk in body.chunks():  # _ClientGone propagates: the client is gone
            if not upstream_ok:
                continue  # the upstream stopped reading (it may have answered early): drain
            try:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if body.framing == "chunked" else chunk)
            except OSError:
                upstream_ok = False
        if body.framing == "chunked" and upstream_ok:
            try:
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass
        return conn.getresponse()

    def _response_headers(self, resp: http.client.HTTPResponse) -> list[tuple[str, str]]:
        listed = {t.strip().lower() for v in resp.headers.get_all("Connection", []) for t in v.split(",")}
        out = []
        for name, value in resp.getheaders():
            lname = name.lower()
            if lname in _HOP_BY_HOP or lname in listed or lname == "content-length":
                continue
            if lname in ("location", "content-location"):
                value = self.rewrite_url(value.strip())
            elif lname == "www-authenticate":
                value = re.sub(
                    r'(?i)(realm=")([^"]*)(")',
                    lambda m: m.group(1) + self.rewrite_url(m.group(2)) + m.group(3),
                    value,
                )
            elif lname == "link":
                value = re.sub(r"<([^>]*)>", lambda m: "<" + self.rewrite_url(m.group(1)) + ">", value)
            out.append((name, value))
        return out

    def _relay(
        self,
        h: BaseHTTPRequestHandler,
        rec: RequestRecord,
        resp: http.client.HTTPResponse,
        rule: FaultRule | None,
        rng: random.Random,
    ) -> None:
        kind = rule.kind if rule else None
        status = resp.status
        headers = self._response_headers(resp)
        declared = resp.getheader("Content-Length")
        no_body = h.command == "HEAD" or status in (204, 304) or 100 <= status < 200

        headers += list(rec.answer_headers.items())
        if no_body:
            h.send_response_only(status, resp.reason)
            for name, value in headers:
                h.send_header(name, value)
            if declared is not None:
                h.send_header("Content-Length", declared)
            self._update(rec, status=status)  # before the client can see the answer
            h.end_headers()
            if kind == "reset_mid_body":
                self._reset(h)
            elif kind == "truncate":
                self._close(h)
            return

        length: int | None = resp.length if not resp.chunked else None
        source: Iterable[bytes] = _stream(resp)
        if kind in _BODY_KINDS and length is None:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._update(rec, error=f"upstream: {exc!r}")
                self._send_simple(h, rec, 502, {"errors": [{"code": "UNAVAILABLE", "message": repr(exc)}]})
                return
            length, source = len(data), [data]

        limit: int | None = None
        flips: set[int] = set()
        if kind in ("reset_mid_body", "truncate"):
            assert rule is not None and length is not None
            limit = rule.body_bytes if rule.body_bytes is not None else int(length * rule.fraction)
            limit = max(0, min(limit, length - 1)) if length else 0
        elif kind == "corrupt_body" and length:
            assert rule is not None
            flips = set(rng.sample(range(length), min(max(rule.corrupt_bytes, 1), length)))

        chunked_out = length is None and h.request_version == "HTTP/1.1"
        h.send_response_only(status, resp.reason)
        for name, value in headers:
            h.send_header(name, value)
        if length is not None:
            h.send_header("Content-Length", str(length))
        elif chunked_out:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")  # close-delimited body for HTTP/1.0 clients
        self._update(rec, status=status)
        h.end_headers()

        sent = 0
        try:
            for chunk in source:
                if limit is not None and sent + len(chunk) >= limit:
                    chunk = chunk[: limit - sent]
                if flips:
                    hit = [p - sent for p in flips if sent <= p < sent + len(chunk)]
                    if hit:
                        buf = bytearray(chunk)
                        for i in hit:
                            buf[i] ^= 0xFF
                        chunk = bytes(buf)
                if chunk:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked_out else chunk)
                sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
        except http.client.HTTPException as exc:  # (_stream) OSErrors are the client's: propagate
            # the upstream broke mid-body: the client cannot get a complete answer either
            self._update(rec, error=f"upstream: {exc!r}")
            self._reset(h)
            return
        if kind == "reset_mid_body":
            self._reset(h)
        elif kind == "truncate":
            self._close(h)
        elif chunked_out:
            h.wfile.write(b"0\r\n\r\n")

    def _answer_fault(
        self, h: BaseHTTPRequestHandler, rec: RequestRecord, rule: FaultRule, rng: random.Random
    ) -> None:
        headers: dict[str, str] = {}
        if rule.kind == "throttle":
            status = 429
            if rule.retry_after is not None:
                headers["Retry-After"] = str(rule.retry_after)
        elif isinstance(rule.status, int):
            status = rule.status
        else:
            status = rng.choice(list(rule.status))
        code = _ERROR_CODES.get(status, "UNKNOWN")
        payload = {"errors": [{"code": code, "message": f"injected fault: {rule.label} ({status})"}]}
        self._send_simple(h, rec, status, payload, headers)

    def _send_simple(
        self,
        h: BaseHTTPRequestHandler,
        rec: RequestRecord,
        status: int,
        payload: dict,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        h.send_response_only(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for name, value in {**(headers or {}), **rec.answer_headers}.items():
            h.send_header(name, value)
        self._update(rec, status=status)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    @staticmethod
    def _reset(h: BaseHTTPRequestHandler) -> None:
        """Abort the client connection with a TCP RST."""
        h.close_connection = True
        sock = h.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        h.rfile.close()  # drop the makefile reference so close() really closes (and sends RST)
        sock.close()

    @staticmethod
    def _close(h: BaseHTTPRequestHandler) -> None:
        """Close the client connection cleanly (FIN) after what was sent."""
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _stream(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        try:
            data = resp.read1(_CHUNK)
        except OSError as exc:
            raise http.client.HTTPException(f"upstream read failed: {exc!r}") from exc
        if not data:
            if resp.length:  # Content-Length not reached
                raise http.client.IncompleteRead(b"", resp.length)
            return
        yield data


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FaultProxy"
        timeout = proxy.client_timeout
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            proxy._track(self.connection, True)

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass
            finally:
                proxy._track(self.connection, False)

        def handle_one_request(self) -> None:
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if len(self.raw_requestline) > 65536:
                    self.requestline = self.request_version = self.command = ""
                    self.send_error(414)
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                proxy._handle(self)
            except (OSError, ValueError, http.client.HTTPException):
                self.close_connection = True

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
            pass

    return Handler
