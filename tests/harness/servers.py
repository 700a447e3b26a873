"""The HTTP server class every local test server uses."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded server for 127.0.0.1 with a real listen backlog.

    socketserver's default backlog is 5: a burst of new connections (dozens of planning threads
    fetching tokens at once) overflows it and the dropped SYNs are retried only after a second.
    Real registries and token services do not behave like that.
    """

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


def send_json(
    handler: BaseHTTPRequestHandler, status: int, body: object, headers: Mapping[str, str] | None = None
) -> None:
    """A complete JSON answer (no body for HEAD)."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)


def end_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Terminate a server process, kill it if it lingers past ``timeout`` (a no-op when it has ended)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
