"""Transport: bounded retries with backoff, Retry-After, connection resets, safe redirects, size limits.

The servers here are real sockets on 127.0.0.1 (``LocalServer``: a scripted HTTP/1.1 server that
records every request, can reset connections and can speak TLS), so ``requests``/``urllib3``
behave exactly as they do against a registry. Waits are recorded through ``Transport(sleep=...)``
instead of being slept. ``LocalServer``, ``Reply`` and ``RecordingTransport`` are also used by
the other client test modules.
"""

from __future__ import annotations

import email.utils
import io
import json
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sync_core.errors import ForeignHostError, InvalidContent, NotFound, RegistryError
from sync_core.manifest import MAX_MANIFEST_BYTES
from sync_core.registry import RegistryClient
from sync_core.retry import RetryPolicy
from sync_core.transport import (
    Transport,
    is_loopback,
    redact_url,
    resolve_on_host,
    same_origin,
)
from tests.harness.keyvault import self_signed_certificate

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# -- a scripted local HTTP server ------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: bool = False  # answer nothing: close the connection with a TCP RST
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


Handler = Callable[[Seen], Reply]


class LocalServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``handler(seen)``.

    ``seen`` lists every request received, in order. ``tls=True`` serves https with a fresh
    self-signed certificate for 127.0.0.1 (``cert_path`` to trust it).
    """

    def __init__(self, handler: Handler, *, tls: bool = False):
        self.handler = handler
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.cert_path: str | None = None
        self._tmp = None
        if tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="local-tls-")
            cert, key = map(str, self_signed_certificate(Path(self._tmp.name)))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.cert_path = cert
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and s.path.startswith(path_prefix)
            ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            seen = Seen(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self._read_body(),
            )
            server.record(seen)
            reply = server.handler(seen)
            if reply.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(reply.status)
            headers = dict(reply.headers)
            if reply.chunked:
                headers["Transfer-Encoding"] = "chunked"
            elif not any(k.lower() == "content-length" for k in headers):
                headers["Content-Length"] = str(len(reply.body))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            if reply.chunked:
                for start in range(0, len(reply.body), 65536):
                    piece = reply.body[start : start + 65536]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(reply.body)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    return _Handler


def sequence(*replies: Reply) -> Handler:
    """A handler answering with ``replies`` in turn, then repeating the last one."""
    lock = threading.Lock()
    pending = list(replies)

    def handler(seen: Seen) -> Reply:
        with lock:
            return pending.pop(0) if len(pending) > 1 else pending[0]

    return handler


class RecordingTransport(Transport):
    """A real :class:`Transport` that records ``(method, url, status)`` of every ``send``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log: list[tuple[str, str, int | None]] = []
        self._log_lock = threading.Lock()

    def send(self, method, url, **kwargs):
        try:
            response = super().send(method, url, **kwargs)
        except Exception:
            with self._log_lock:
                self.log.append((method, url, None))
            raise
        with self._log_lock:
            self.log.append((method, url, response.status_code))
        return response

    def sent(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, int | None]]:
        with self._log_lock:
            return [e for e in self.log if (method is None or e[0] == method) and contains in e[1]]


class Waits(list):
    """``Transport(sleep=waits)``: records the delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# -- retries ---------------------------------------------------------------------------------------


def test_503_then_200_is_retried_with_bounded_backoff():
    waits = Waits()
    with LocalServer(sequence(Reply(503), Reply(503), Reply(200, body=b"ok"))) as srv:
        transport = Transport(retry=RetryPolicy(attempts=5, backoff_base=0.5, backoff_cap=20), sleep=waits)
        response = transport.send("GET", f"{srv.url}/v2/")
        assert response.status_code == 200 and response.content == b"ok"
        assert len(srv.seen) == 3
    assert transport.retries == 2 and transport.requests_sent == 3
    assert len(waits) == 2
    # full jitter: attempt n waits in [0, base * 2**n]
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0


def test_429_honours_retry_after_seconds_and_http_date_and_cap():
    waits = Waits()
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    replies = sequence(
        Reply(429, {"Retry-After": "1"}),
        Reply(429, {"Retry-After": later}),
        Reply(429, {"Retry-After": "3600"}),
        Reply(200),
    )
    with LocalServer(replies) as srv:
        transport = Transport(retry=RetryPolicy(attempts=5, retry_after_cap=60), sleep=waits)
        assert transport.send("GET", f"{srv.url}/v2/").status_code == 200
        assert len(srv.seen) == 4
    assert waits[0] == 1.0
    assert 25 <= waits[1] <= 30  # an HTTP-date counts from now
    assert waits[2] == 60  # never longer than the cap, whatever the registry asks


def test_connection_reset_then_success():
    waits = Waits()
    with LocalServer(sequence(Reply(reset=True), Reply(200, body=b"fine"))) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        response = transport.send("GET", f"{srv.url}/v2/x")
        assert response.status_code == 200 and response.content == b"fine"
        assert len(srv.seen) == 2
    assert len(waits) == 1


def test_bounded_attempts_end_in_registry_error_without_query_or_credentials():
    waits = Waits()
    with LocalServer(lambda seen: Reply(reset=True)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        with pytest.raises(RegistryError) as info:
            transport.send("GET", f"{srv.url}/v2/r/blobs/uploads/x?_state=SECRETSTATE&digest=sha256:1")
        assert len(srv.seen) == 3  # exactly `attempts` tries, no more
    assert len(waits) == 2
    message = str(info.value)
    assert "3 attempt" in message and "/v2/r/blobs/uploads/x" in message
    assert "SECRETSTATE" not in message and "_state" not in message


def test_unreachable_host_ends_in_registry_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = Transport(retry=RetryPolicy(attempts=2, backoff_base=0.01), sleep=Waits())
    with pytest.raises(RegistryError, match="2 attempt"):
        transport.send("GET", f"http://127.0.0.1:{port}/v2/")


def test_persistent_503_is_returned_and_the_client_raises_with_the_status():
    waits = Waits()
    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "maintenance"}]}).encode()
    with LocalServer(lambda seen: Reply(503, {"Content-Type": "application/json"}, body)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        client = RegistryClient(srv.url, transport=transport)
        with pytest.raises(RegistryError) as info:
            client.get_manifest("team/app", "1.0")
        assert len(srv.seen) == 3
    assert info.value.status == 503 and info.value.code == "UNAVAILABLE"
    assert not isinstance(info.value, NotFound)


def test_retry_false_and_streamed_bodies_are_sent_once():
    waits = Waits()
    with LocalServer(lambda seen: Reply(503)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=4, backoff_base=0.01), sleep=waits)
        assert transport.send("PUT", f"{srv.url}/a", data=b"x", retry=False).status_code == 503
        assert len(srv.seen) == 1
        client = RegistryClient(srv.url, transport=transport)
        # a file-like body cannot be replayed: one try, whatever the answer
        response = client.request("PUT", "/v2/r/blobs/uploads/u", scopes=(), data=io.BytesIO(b"payload"))
        assert response.status_code == 503
        assert len(srv.seen) == 2 and srv.seen[1].body == b"payload"
        # bytes can be replayed
        client.request("PUT", "/v2/r/manifests/t", scopes=(), data=b"{}")
        assert len(srv.seen) == 6
    assert len(waits) == 3


# -- redirects ------------------------------------------------------------------------------------


def test_cross_host_redirect_drops_authorization_same_host_keeps_it():
    with LocalServer(lambda seen: Reply(200, body=b"storage")) as storage:

        def registry(seen: Seen) -> Reply:
            if seen.path.startswith("/v2/r/blobs/"):
                return Reply(307, {"Location": f"{storage.url}/blob?sig=abc"})
            if seen.path == "/v2/r/moved":
                return Reply(302, {"Location": "/v2/r/here"})
            return Reply(200, body=b"here")

        with LocalServer(registry) as reg:
            transport = Transport(sleep=Waits())
            headers = {"Authorization": "Bearer registry-token", "Accept": "*/*"}
            response = transport.send(
                "GET", f"{reg.url}/v2/r/blobs/sha256:00", headers=headers, follow_redirects=True
            )
            assert response.status_code == 200 and response.content == b"storage"
            assert reg.seen[0].headers["authorization"] == "Bearer registry-token"
            assert storage.seen[0].path == "/blob?sig=abc"
            assert "authorization" not in storage.seen[0].headers
            assert storage.seen[0].headers["accept"] == "*/*"  # other headers go along
            assert headers["Authorization"] == "Bearer registry-token"  # caller's dict untouched

            response = transport.send("GET", f"{reg.url}/v2/r/moved", headers=headers, follow_redirects=True)
            assert response.content == b"here"
            assert [s.path for s in reg.seen[1:]] == ["/v2/r/moved", "/v2/r/here"]
            assert reg.seen[2].headers["authorization"] == "Bearer registry-token"

            # without follow_redirects the redirect itself is the answer
            response = transport.send("GET", f"{reg.url}/v2/r/blobs/sha256:00", follow_redirects=False)
            assert response.status_code == 307
            assert len(storage.seen) == 1


def test_https_to_plain_http_redirect_refused_except_loopback():
    target = {"location": ""}
    with LocalServer(lambda seen: Reply(200, body=b"plain")) as plain:
        with LocalServer(lambda seen: Reply(307, {"Location": target["location"]}), tls=True) as tls:
            transport = Transport(sleep=Waits())
            transport.session.verify = tls.cert_path  # trust the self-signed certificate
            url = f"{tls.url}/v2/r/blobs/sha256:00"

            target["location"] = "http://storage.example.invalid/blob"  # never contacted
            with pytest.raises(ForeignHostError, match="plain http"):
                transport.send("GET", url, headers={"Authorization": "Bearer t"}, follow_redirects=True)

            target["location"] = "ftp://storage.example.invalid/blob"
            with pytest.raises(ForeignHostError, match="scheme"):
                transport.send("GET", url, follow_redirects=True)

            # loopback http is allowed by design (local test registries), without the credentials
            target["location"] = f"{plain.url}/blob"
            response = transport.send(
                "GET", url, headers={"Authorization": "Bearer t"}, follow_redirects=True
            )
            assert response.content == b"plain"
            assert "authorization" not in plain.seen[0].headers
            assert len(plain.seen) == 1


def test_redirect_loop_is_bounded():
    with LocalServer(lambda seen: Reply(302, {"Location": "/again"})) as srv:
        transport = Transport(sleep=Waits())
        with pytest.raises(RegistryError, match="too many redirects"):
            transport.send("GET", f"{srv.url}/start", follow_redirects=True)
        assert len(srv.seen) <= 7


def test_origin_helpers():
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:443")
    assert is_loopback("127.8.9.10")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")
    assert not is_loopback("127.0.0.1.example.com")
    assert same_origin("https://Reg.io/v2/a", "https://reg.io/v2/b?x=1")
    assert not same_origin("https://reg.io/a", "http://reg.io/a")  # scheme counts
    assert not same_origin("https://reg.io/a", "https://reg.io:8443/a")  # port counts
    assert not same_origin("https://reg.io/a", "https://oss.reg.io/a")
    base = "https://reg.io/v2/_catalog?n=2"
    assert resolve_on_host(base, "/v2/_catalog?last=b&n=2", "Link") == "https://reg.io/v2/_catalog?last=b&n=2"
    with pytest.raises(ForeignHostError):
        resolve_on_host(base, "https://evil.io/v2/_catalog", "Link")
    with pytest.raises(ForeignHostError):
        resolve_on_host(base, "//evil.io/v2/_catalog", "Link")
    assert redact_url("https://user:pw@reg.io:5000/v2/x?token=abc#f") == "https://reg.io:5000/v2/x"


# -- size limits ------------------------------------------------------------------------------------


def _manifest_of_size(size: int) -> bytes:
    head = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'",'
    cfg = (
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'
        + b"a" * 64
        + b'","size":2},"layers":[],"annotations":{"pad":"'
    )
    tail = b'"}}'
    pad = size - len(head) - len(cfg) - len(tail)
    raw = head + cfg + b"x" * pad + tail
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_manifest_over_4_mib_is_refused_naming_the_limit(chunked):
    big = _manifest_of_size(MAX_MANIFEST_BYTES + 1)
    fits = _manifest_of_size(MAX_MANIFEST_BYTES)

    def handler(seen: Seen) -> Reply:
        raw = big if seen.path.endswith("/big") else fits
        return Reply(200, {"Content-Type": OCI_MANIFEST}, raw, chunked=chunked)

    with LocalServer(handler) as srv:
        client = RegistryClient(srv.url, transport=Transport(sleep=Waits()))
        with pytest.raises(InvalidContent, match=str(MAX_MANIFEST_BYTES)) as info:
            client.get_manifest("team/app", "big")
        assert "team/app" in str(info.value)
        manifest = client.get_manifest("team/app", "fits")  # exactly at the limit is fine
        assert manifest.raw == fits and len(manifest.raw) == MAX_MANIFEST_BYTES
