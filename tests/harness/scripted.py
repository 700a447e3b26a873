"""A scripted HTTP/1.1 server: every answer is whatever the test's handler returns.

    with ScriptedServer(lambda request: Reply.json({"tags": ["1.0"]})) as server:
        client = SomeClient(server.url)
        ...
        assert server.requests[0].headers["authorization"] == "Bearer t"

The server listens on 127.0.0.1 (ephemeral port), starts in the constructor and records every
request it receives, in order, in ``requests`` (:class:`Request`: method, path and query as
sent, headers with lower-cased names, the body, chunked request bodies decoded). It answers
each with ``handler(request)``:

* a :class:`Reply` (status, headers, body; ``chunked=True`` sends the body with
  ``Transfer-Encoding: chunked``; ``reset=True`` answers nothing and closes the connection with
  a TCP RST);
* ``None``: 404 with a ``{}`` body (a handler scripts only what it cares about);
* an exception in the handler (a test bug): 599 with the exception's repr, and it keeps serving.

``Content-Length`` is added unless the reply sets it itself. ``handler`` may be replaced at any
time; ``reset()`` forgets the requests (and optionally sets a new handler). ``tls=True`` serves
https with a fresh self-signed certificate for 127.0.0.1 (``cert_path`` to trust it).

It plays the misbehaving registries, token services and storage hosts that a real registry
process cannot: see :mod:`.fakeregistry` for an in-memory registry built on it.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from .keyvault import self_signed_certificate
from .servers import LoopbackHTTPServer


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: bool = False  # answer nothing: close the connection with a TCP RST
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


Handler = Callable[[Request], "Reply | None"]


def sequence(*replies: Reply) -> Handler:
    """A handler answering with ``replies`` in turn, then repeating the last one."""
    lock = threading.Lock()
    pending = list(replies)

    def handler(request: Request) -> Reply:
        with lock:
            return pending.pop(0) if len(pending) > 1 else pending[0]

    return handler


class ScriptedServer:
    """``ScriptedServer(handler, tls=False)``: see the module docstring."""

    def __init__(self, handler: Handler | None = None, *, tls: bool = False):
        self.handler: Handler = handler or (lambda request: None)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.handle_error = lambda request, address: None  # clients that hang up: not news
        self.port: int = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://{self.host}"
        self.cert_path: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="scripted-tls-")
            cert, key = map(str, self_signed_certificate(Path(self._tmp.name)))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.cert_path = cert
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def answer(self, request: Request) -> Reply:
        try:
            reply = self.handler(request)
        except Exception as exc:  # noqa: BLE001 - a test bug: answer 599 and keep serving
            return Reply(599, body=repr(exc).encode())
        return Reply(404, body=b"{}") if reply is None else reply

    def reset(self, handler: Handler | None = None) -> None:
        """Forget the requests received so far (and answer with ``handler`` from now on)."""
        with self._lock:
            self.requests = []
        if handler is not None:
            self.handler = handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            request = Request(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self._read_body()
            )
            server.record(request)
            reply = server.answer(request)
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

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return _Handler
