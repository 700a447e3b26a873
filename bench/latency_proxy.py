"""A TCP proxy that makes a loopback registry feel like it is a continent away.

``LatencyProxy`` listens on ``127.0.0.1`` (ephemeral port by default) and forwards raw TCP to an
upstream ``host:port``. Every chunk of data is timestamped when it is read and delivered at
``read_time + delay`` on the other side, in each direction, so:

* a request/response exchange on an open connection costs ``2 x delay`` (one round trip);
* a fresh connection costs one more round trip for the TCP handshake: the client's ``connect()``
  returns at once (the listening socket accepts it locally), so instead no data, in either direction,
  leaves before ``accept_time + 2 x delay`` (pass ``connect_rtt=False`` to disable). A first
  request on a new connection therefore costs ``4 x delay``, as it does over a real network;
* the delay is pipelined, not serialised: a multi-megabyte stream still flows at full speed and
  only its first byte is late. Per direction and connection at most ``max_buffer_bytes`` are held
  in flight (default 16 MiB, i.e. >= 320 MB/s at 50 ms, like a TCP window); beyond that the proxy
  stops reading and the sender feels back-pressure;
* ordering, half-close (``shutdown(SHUT_WR)``) and resets are propagated, each after the delay.

``bandwidth_bytes_per_s`` optionally caps throughput with a token bucket (burst of one piece of
at most 64 KiB). By default there is one bucket per direction per connection (each connection
gets the full rate each way); with ``shared_bandwidth=True`` all connections share one bucket per
direction, like one access link.

The proxy also counts connections, exact byte counts in each direction, and HTTP/1.1 requests:
the client->upstream byte stream is parsed incrementally (request line, headers, Content-Length
or chunked bodies split anywhere across reads, keep-alive pipelining) so a benchmark can report
"N manifest GETs, M blob PUTs". See ``stats()`` for the format.

Implementation: one asyncio event loop in a background thread; per connection and direction a
reader task (timestamps chunks) and a writer task (delivers them when due). Counters are
thread-safe.

Manual use::

    python -m bench.latency_proxy --listen-port 5001 --upstream 127.0.0.1:5000 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import re
import socket
import sys
import threading
from collections.abc import Iterable

__all__ = ["LatencyProxy", "HTTPRequestStreamParser", "classify_path"]

READ_SIZE = 256 * 1024
DEFAULT_MAX_BUFFER = 16 * 1024 * 1024

_EOF = object()
_RESET = object()

# --------------------------------------------------------------------------------------------
# HTTP request counting
# --------------------------------------------------------------------------------------------

_PATH_CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog/?$")),
    ("manifest", re.compile(r"^/v2/.+/manifests/[^/]+$")),
    ("blob_upload", re.compile(r"^/v2/.+/blobs/uploads(/[^/]*)?$")),
    ("blob", re.compile(r"^/v2/.+/blobs/[^/]+$")),
    ("tags", re.compile(r"^/v2/.+/tags/list/?$")),
    ("referrers", re.compile(r"^/v2/.+/referrers/[^/]+$")),
    ("token", re.compile(r"(^|/)(oauth2/)?token/?$")),
]


def classify_path(path: str) -> str:
    """Classify a request target as an OCI distribution endpoint.

    Returns one of ``base``, ``catalog``, ``manifest``, ``blob_upload`` (POST/PATCH/PUT under
    ``/blobs/uploads/``), ``blob``, ``tags``, ``referrers``, ``token`` or ``other``. The query
    string is ignored.
    """
    bare = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in bare:  # absolute-form target (forward proxy style)
        bare = "/" + bare.split("://", 1)[1].partition("/")[2]
    for name, pattern in _PATH_CLASSES:
        if pattern.search(bare):
            return name
    return "other"


_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class HTTPRequestStreamParser:
    """Incremental parser for the client->server half of an HTTP/1.x connection.

    ``feed(data)`` accepts arbitrary slices of the byte stream and returns the ``(method, target)``
    of every request whose head completed in that slice. Bodies framed by Content-Length or chunked
    transfer coding are skipped (chunk sizes, extensions and trailers may be split anywhere).
    After a parse error, a CONNECT or an Upgrade request the parser stops (``active`` False),
    since the rest of the stream is not HTTP it can understand.
    """

    MAX_HEAD = 1024 * 1024  # request lines may be long (huge paths are kept)

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "head"
        self._remaining = 0
        self.active = True
        self.error: str | None = None

    def _scan(self, data: bytes, pos: int, term: bytes) -> tuple[bool, int]:
        """Move bytes from ``data[pos:]`` into the buffer up to and including ``term``."""
        k = len(term)
        tail_len = min(len(self._buf), k - 1)
        if tail_len:
            tail = bytes(self._buf[-tail_len:])
            probe = tail + data[pos : pos + k - 1]
            j = probe.find(term)
            if j != -1:
                used = j + k - tail_len
                self._buf += data[pos : pos + used]
                return True, pos + used
        idx = data.find(term, pos)
        if idx != -1:
            self._buf += data[pos : idx + k]
            return True, idx + k
        self._buf += data[pos:]
        return False, len(data)

    def _fail(self, why: str) -> None:
        self.active = False
        self.error = why
        self._buf.clear()

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        pos, end = 0, len(data)
        while self.active and pos < end:
            state = self._state
            if state in ("body", "chunk_data", "chunk_crlf"):
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if state == "body":
                        self._state = "head"
                    elif state == "chunk_data":
                        self._state, self._remaining = "chunk_crlf", 2
                    else:
                        self._state = "chunk_size"
                continue
            if state == "head":
                # Tolerate empty lines between requests (RFC 9112 section 2.2).
                if not self._buf:
                    while pos < end and data[pos] in (13, 10):
                        pos += 1
                    if pos == end:
                        break
                done, pos = self._scan(data, pos, b"\r\n\r\n")
                if not done:
                    if len(self._buf) > self.MAX_HEAD:
                        self._fail("request head too large")
                    continue
                head = bytes(self._buf)
                self._buf.clear()
                request = self._parse_head(head)
                if request is not None:
                    found.append(request)
                continue
            # chunk_size and trailer are line oriented
            done, pos = self._scan(data, pos, b"\r\n")
            if not done:
                if len(self._buf) > 64 * 1024:
                    self._fail("chunk line too long")
                continue
            line = bytes(self._buf[:-2])
            self._buf.clear()
            if state == "chunk_size":
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._fail(f"bad chunk size {size_text[:40]!r}")
                    continue
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._remaining = "chunk_data", size
            else:  # trailer: ends with an empty line
                if not line:
                    self._state = "head"
        return found

    def _parse_head(self, head: bytes) -> tuple[str, str] | None:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN_RE.match(parts[0]) or not parts[2].startswith(b"HTTP/1."):
            self._fail(f"bad request line {lines[0][:80]!r}")
            return None
        method = parts[0].decode("ascii")
        target = parts[1].decode("latin-1")
        content_length: int | None = None
        chunked = False
        upgrade = False
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep:
                continue
            lname = name.strip().lower()
            value = value.strip()
            if lname == b"content-length":
                try:
                    content_length = int(value.split(b",")[0])
                except ValueError:
                    self._fail("bad Content-Length")
                    return method, target
            elif lname == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
                chunked = bool(codings) and codings[-1] == b"chunked"
            elif lname == b"upgrade":
                upgrade = True
        if method == "CONNECT" or upgrade:
            self.active = False  # the rest of the stream is a tunnel
        elif chunked:
            self._state = "chunk_size"
        elif content_length:
            self._state, self._remaining = "body", content_length
        else:
            self._state = "head"
        return method, target


# --------------------------------------------------------------------------------------------
# Proxy
# --------------------------------------------------------------------------------------------


class _TokenBucket:
    """Token bucket as a virtual clock: ``reserve`` returns when ``n`` bytes have been sent."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.piece = int(max(1024, min(64 * 1024, self.rate / 100)))
        self.burst = self.piece
        self._free_at = -math.inf

    def reserve(self, nbytes: int, now: float) -> float:
        start = max(self._free_at, now - self.burst / self.rate)
        self._free_at = start + nbytes / self.rate
        return self._free_at


class LatencyProxy:
    """Delay-injecting TCP proxy; see the module docstring.

    ``LatencyProxy(upstream_host, upstream_port, delay_ms=50, bandwidth_bytes_per_s=None, *,
    shared_bandwidth=False, connect_rtt=True, listen_host="127.0.0.1", listen_port=0,
    max_buffer_bytes=16 MiB, connect_timeout=10.0)``

    The listening socket is bound in the constructor, so ``port`` and ``url`` are valid at once;
    connections are served after ``start()`` (or entering the ``with`` block).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        delay_ms: float = 50,
        bandwidth_bytes_per_s: float | None = None,
        *,
        shared_bandwidth: bool = False,
        connect_rtt: bool = True,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER,
        connect_timeout: float = 10.0,
    ) -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if bandwidth_bytes_per_s is not None and bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be > 0 (or None for unlimited)")
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be >= 1")
        self.upstream_host = upstream_host
        self.upstream_port = int(upstream_port)
        self.delay_ms = float(delay_ms)
        self.delay = self.delay_ms / 1000.0
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.shared_bandwidth = shared_bandwidth
        self.connect_rtt = connect_rtt
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.connect_timeout = connect_timeout

        self._sock: socket.socket | None = socket.create_server((listen_host, listen_port), backlog=512)
        self._sock.setblocking(False)
        self.host = listen_host
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{listen_host}:{self.port}"

        self._lock = threading.Lock()
        self._active = 0
        self._zero()
        self._shared_buckets: dict[str, _TokenBucket] | None = None
        if bandwidth_bytes_per_s is not None and shared_bandwidth:
            self._shared_buckets = {
                "up": _TokenBucket(bandwidth_bytes_per_s),
                "down": _TokenBucket(bandwidth_bytes_per_s),
            }

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._started = False
        self._stopped = False

    # ---- counters ---------------------------------------------------------------------------

    def _zero(self) -> None:
        self._connections = 0
        self._connect_failures = 0
        self._bytes = {"up": 0, "down": 0}
        self._requests: list[tuple[str, str]] = []
        self._by_method: collections.Counter[str] = collections.Counter()
        self._by_class: collections.Counter[str] = collections.Counter()
        self._by_kind: collections.Counter[str] = collections.Counter()
        self._parse_errors = 0

    def reset(self) -> None:
        """Zero all counters (``active_connections`` is a gauge and is kept)."""
        with self._lock:
            self._zero()

    def stats(self) -> dict:
        """Snapshot of the counters.

        ``{"connections": accepted, "active_connections": open now,
        "upstream_connect_failures": n, "bytes_client_to_upstream": n (delivered upstream),
        "bytes_upstream_to_client": n (delivered to clients), "requests": total,
        "requests_by_method": {"GET": n}, "requests_by_class": {"manifest": n},
        "requests_by_kind": {"GET manifest": n}, "request_log": [(method, path), ...] in arrival
        order, "http_parse_errors": connections whose stream stopped parsing as HTTP}``
        """
        with self._lock:
            return {
                "connections": self._connections,
                "active_connections": self._active,
                "upstream_connect_failures": self._connect_failures,
                "bytes_client_to_upstream": self._bytes["up"],
                "bytes_upstream_to_client": self._bytes["down"],
                "requests": len(self._requests),
                "requests_by_method": dict(self._by_method),
                "requests_by_class": dict(self._by_class),
                "requests_by_kind": dict(self._by_kind),
                "request_log": list(self._requests),
                "http_parse_errors": self._parse_errors,
            }

    def _record_requests(self, requests: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            for method, path in requests:
                cls = classify_path(path)
                self._requests.append((method, path))
                self._by_method[method] += 1
                self._by_class[cls] += 1
                self._by_kind[f"{method} {cls}"] += 1

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LatencyProxy:
        if self._started:
            return self
        if self._stopped:
            raise RuntimeError("LatencyProxy cannot be restarted after stop()")
        self._started = True
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle_client, sock=self._sock, limit=READ_SIZE)
                )
            except OSError as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"latency-proxy-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, reset every open connection, stop the loop thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):  # noqa: BLE001 - best effort on shutdown
                fut.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        bw = self.bandwidth_bytes_per_s
        return (
            f"LatencyProxy({self.url} -> {self.upstream_host}:{self.upstream_port}, "
            f"delay_ms={self.delay_ms:g}, bandwidth_bytes_per_s={bw})"
        )

    # ---- data path ----------------------------------------------------------------------------

    async def _handle_client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        # Connection root task: stop() cancels it. Swallow the cancellation so asyncio's stream
        # callback does not log it as an unhandled error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve_connection(creader, cwriter)

    async def _serve_connection(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        with self._lock:
            self._connections += 1
            self._active += 1
        uwriter: asyncio.StreamWriter | None = None
        clean = False
        try:
            try:
                ureader, uwriter = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port, limit=READ_SIZE),
                    self.connect_timeout,
                )
            except (OSError, asyncio.TimeoutError):
                with self._lock:
                    self._connect_failures += 1
                # A refused connection is noticed one round trip after the SYN.
                await asyncio.sleep(max(0.0, accepted + 2 * self.delay - loop.time()))
                return
            ready_at = accepted + 2 * self.delay if self.connect_rtt else accepted
            parser = HTTPRequestStreamParser()
            if self._shared_buckets is not None:
                up_bucket, down_bucket = self._shared_buckets["up"], self._shared_buckets["down"]
            elif self.bandwidth_bytes_per_s is not None:
                up_bucket = _TokenBucket(self.bandwidth_bytes_per_s)
                down_bucket = _TokenBucket(self.bandwidth_bytes_per_s)
            else:
                up_bucket = down_bucket = None
            pumps = {
                asyncio.create_task(self._pump(creader, uwriter, "up", ready_at, parser, up_bucket)),
                asyncio.create_task(self._pump(ureader, cwriter, "down", ready_at, None, down_bucket)),
            }
            try:
                ok = True
                pending = pumps
                while pending and ok:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    ok = all(t.result() for t in done)
                clean = ok
            finally:
                for t in pumps:
                    t.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (cwriter, uwriter):
                if writer is None:
                    continue
                if clean:
                    writer.close()
                else:
                    writer.transport.abort()
            with self._lock:
                self._active -= 1
            if task is not None:
                self._tasks.discard(task)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        direction: str,
        ready_at: float,
        parser: HTTPRequestStreamParser | None,
        bucket: _TokenBucket | None,
    ) -> bool:
        """Move one direction; True when EOF was delivered, False on reset/error."""
        loop = asyncio.get_running_loop()
        queue: collections.deque[tuple[float, object]] = collections.deque()
        have_item = asyncio.Event()
        have_space = asyncio.Event()
        buffered = [0]

        async def read_side() -> None:
            while True:
                while buffered[0] >= self.max_buffer_bytes:
                    have_space.clear()
                    await have_space.wait()
                try:
                    data = await src.read(READ_SIZE)
                except (ConnectionError, OSError):
                    queue.append((loop.time(), _RESET))
                    have_item.set()
                    return
                now = loop.time()
                if not data:
                    queue.append((now, _EOF))
                    have_item.set()
                    return
                if parser is not None and parser.active:
                    requests = parser.feed(data)
                    if requests:
                        self._record_requests(requests)
                    if parser.error is not None:
                        with self._lock:
                            self._parse_errors += 1
                        parser.error = None
                buffered[0] += len(data)
                queue.append((now, data))
                have_item.set()

        reader = asyncio.create_task(read_side())
        try:
            while True:
                while not queue:
                    have_item.clear()
                    await have_item.wait()
                stamp, item = queue.popleft()
                wait = max(stamp, ready_at) + self.delay - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if item is _RESET:
                    return False
                if item is _EOF:
                    try:
                        if dst.can_write_eof() and not dst.transport.is_closing():
                            dst.write_eof()
                    except (ConnectionError, OSError):
                        return False
                    return True
                assert isinstance(item, bytes)
                buffered[0] -= len(item)
                have_space.set()
                if not await self._send(dst, item, direction, bucket):
                    return False
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _send(
        self, dst: asyncio.StreamWriter, data: bytes, direction: str, bucket: _TokenBucket | None
    ) -> bool:
        loop = asyncio.get_running_loop()
        try:
            if bucket is None:
                pieces: Iterable[bytes | memoryview] = (data,)
            else:
                view = memoryview(data)
                pieces = (view[i : i + bucket.piece] for i in range(0, len(data), bucket.piece))
            for piece in pieces:
                if bucket is not None:
                    wait = bucket.reserve(len(piece), loop.time()) - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if dst.transport.is_closing():
                    return False
                dst.write(piece)
                with self._lock:
                    self._bytes[direction] += len(piece)
                await dst.drain()
        except (ConnectionError, OSError):
            return False
        return True


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)(i?)[bB]?\s*$")


def _parse_rate(text: str) -> float:
    """``10M`` -> 10_000_000 bytes/s, ``512KiB`` -> 524288, ``1e6`` accepted too."""
    try:
        return float(text)
    except ValueError:
        pass
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad rate {text!r} (use e.g. 10M, 512KiB, 1000000)")
    base = 1024 if m.group(3) else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3}[m.group(2).lower()]
    return float(m.group(1)) * base**power


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0 = ephemeral (printed at start)")
    parser.add_argument("--upstream", required=True, type=_parse_hostport, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay per direction")
    parser.add_argument(
        "--bandwidth", type=_parse_rate, default=None, help="cap in bytes/s per direction, e.g. 10M or 512KiB"
    )
    parser.add_argument(
        "--shared-bandwidth",
        action="store_true",
        help="one bucket per direction for all connections (default: per connection)",
    )
    parser.add_argument("--no-connect-rtt", action="store_true", help="new connections cost no extra RTT")
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=0.0,
        help="print a stats line every N seconds (0 = only at exit)",
    )
    args = parser.parse_args(argv)

    host, port = args.upstream
    proxy = LatencyProxy(
        host,
        port,
        args.delay_ms,
        args.bandwidth,
        shared_bandwidth=args.shared_bandwidth,
        connect_rtt=not args.no_connect_rtt,
        listen_host=args.listen_host,
        listen_port=args.listen_port,
    )

    def summary() -> str:
        st = proxy.stats()
        st.pop("request_log")
        return json.dumps(st, sort_keys=True)

    proxy.start()
    print(f"{proxy!r} listening", file=sys.stderr, flush=True)
    stop = threading.Event()
    try:
        while not stop.wait(args.stats_interval if args.stats_interval > 0 else 3600):
            if args.stats_interval > 0:
                print(summary(), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
        print(summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
