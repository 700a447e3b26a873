"""The HTTP server class every local test server uses."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded server for 127.0.0.1 with a real listen backlog.

    socketserver's default backlog is 5: a burst of new connections (dozens of planning threads
    fetching tokens at once) overflows it and the dropped SYNs are retried only after a second.
    Real registries and token services do not behave like that.
    """

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
