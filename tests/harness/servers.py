"""What the local test servers share: the HTTP server class, and running a server process."""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO


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


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args: Sequence[str], log: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server process writing to ``log``; on Linux it gets SIGTERM when this process dies."""
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits: main thread only
        preexec_fn=_pdeathsig
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
        else None,
    )


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a server's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
