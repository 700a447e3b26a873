"""Tests for bench.latency_proxy: a local HTTP/1.1 keep-alive server behind the proxy."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from bench.latency_proxy import HTTPRequestStreamParser, LatencyProxy, classify_path
from tests.harness.paths import ROOT

MB = 1024 * 1024
PAYLOAD = os.urandom(MB) * 20  # 20 MiB, shared by the download handlers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - silence the test server
        pass

    def _drain_body(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                remaining = size
                while remaining:
                    remaining -= len(self.rfile.read(min(remaining, MB)))
                self.rfile.readline()
                total += size
        remaining = total = int(self.headers.get("Content-Length") or 0)
        while remaining:
            chunk = self.rfile.read(min(remaining, MB))
            if not chunk:
                break
            remaining -= len(chunk)
        return total

    def _reply(self, body: bytes, status: int = 200, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/big":
            n = int(query.partition("=")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            view = memoryview(PAYLOAD)[:n]
            for off in range(0, n, MB):
                self.wfile.write(view[off : off + MB])
            return
        self._reply(b"ok " + self.path.encode())

    do_HEAD = do_GET

    def do_POST(self):
        n = self._drain_body()
        self._reply(json.dumps({"received": n}).encode(), ctype="application/json")

    do_PUT = do_PATCH = do_POST


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream):
    with LatencyProxy("127.0.0.1", upstream, delay_ms=50) as p:
        yield p


def _timed_get(conn: http.client.HTTPConnection, path: str) -> float:
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body
    return time.perf_counter() - t0


def test_new_connection_costs_handshake_plus_request_round_trip(proxy):
    times = []
    for i in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        t0 = time.perf_counter()
        conn.connect()
        conn.request("GET", f"/fresh/{i}")
        resp = conn.getresponse()
        assert resp.read() == f"ok /fresh/{i}".encode()
        times.append(time.perf_counter() - t0)
        conn.close()
    # handshake RTT + request RTT = 4 x 50 ms
    assert min(times) >= 0.195, times
    assert statistics.median(times) < 0.25, times
    assert proxy.stats()["connections"] == 3


def test_keep_alive_requests_cost_one_round_trip_each(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    first = _timed_get(conn, "/ka/0")
    times = [_timed_get(conn, f"/ka/{i}") for i in range(1, 6)]
    conn.close()
    assert first >= 0.195
    assert min(times) >= 0.099, times
    assert statistics.median(times) < 0.15, times
    st = proxy.stats()
    assert st["connections"] == 1
    assert st["requests"] == 6
    assert st["request_log"] == [("GET", f"/ka/{i}") for i in range(6)]


def test_large_download_and_upload_stream_at_full_speed(proxy):
    session = requests.Session()
    t0 = time.perf_counter()
    resp = session.get(f"{proxy.url}/big?n={20 * MB}", timeout=10)
    elapsed = time.perf_counter() - t0
    assert resp.status_code == 200
    assert len(resp.content) == 20 * MB and resp.content == PAYLOAD
    assert elapsed < 1.2, f"20 MiB took {elapsed:.2f}s: delay is being serialised per chunk"

    t0 = time.perf_counter()
    resp = session.post(f"{proxy.url}/upload", data=PAYLOAD, timeout=10)
    elapsed = time.perf_counter() - t0
    assert resp.json() == {"received": 20 * MB}
    assert elapsed < 1.2, f"20 MiB upload took {elapsed:.2f}s"
    session.close()
    st = proxy.stats()
    assert st["bytes_upstream_to_client"] > 20 * MB
    assert st["bytes_client_to_upstream"] > 20 * MB
    assert st["requests_by_method"] == {"GET": 1, "POST": 1}


def test_byte_counts_are_exact_and_half_close_is_propagated(proxy):
    request = b"POST /exact HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # half-close: the response must still come back
        received = bytearray()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b'{"received": 11}')
    # counters are updated when bytes are handed to the far side, before the client sees them
    st = proxy.stats()
    assert st["bytes_client_to_upstream"] == len(request)
    assert st["bytes_upstream_to_client"] == len(received)
    assert st["request_log"] == [("POST", "/exact")]


def test_request_counting_keep_alive_post_chunked_put_head(proxy):
    session = requests.Session()
    long_path = "/v2/library/" + "x" * 5000 + "/manifests/latest"
    assert session.get(f"{proxy.url}/v2/", timeout=5).status_code == 200
    assert session.get(f"{proxy.url}{long_path}", timeout=5).status_code == 200
    assert session.head(f"{proxy.url}/v2/lib/blobs/sha256:abc", timeout=5).status_code == 200
    resp = session.post(f"{proxy.url}/v2/lib/blobs/uploads/", data=b"a" * 70000, timeout=5)
    assert resp.json() == {"received": 70000}

    def chunks():
        for i in range(5):
            yield bytes([65 + i]) * (10000 + i)

    resp = session.put(f"{proxy.url}/v2/lib/blobs/uploads/uuid-1?digest=sha256:abc", data=chunks(), timeout=5)
    assert resp.json() == {"received": sum(10000 + i for i in range(5))}
    assert session.get(f"{proxy.url}/v2/lib/tags/list", timeout=5).status_code == 200
    session.close()

    st = proxy.stats()
    assert st["connections"] == 1
    assert st["request_log"] == [
        ("GET", "/v2/"),
        ("GET", long_path),
        ("HEAD", "/v2/lib/blobs/sha256:abc"),
        ("POST", "/v2/lib/blobs/uploads/"),
        ("PUT", "/v2/lib/blobs/uploads/uuid-1?digest=sha256:abc"),
        ("GET", "/v2/lib/tags/list"),
    ]
    assert st["requests_by_method"] == {"GET": 3, "HEAD": 1, "POST": 1, "PUT": 1}
    assert st["requests_by_kind"] == {
        "GET base": 1,
        "GET manifest": 1,
        "HEAD blob": 1,
        "POST blob_upload": 1,
        "PUT blob_upload": 1,
        "GET tags": 1,
    }
    assert st["http_parse_errors"] == 0
    proxy.reset()
    st = proxy.stats()
    assert st["requests"] == 0 and st["bytes_client_to_upstream"] == 0 and st["request_log"] == []


def test_pipelined_requests_in_one_write(proxy):
    body = b"0123456789"
    pipeline = (
        b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /p/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
        + body
        + b"PUT /p/3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n"
        b"GET /p/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(pipeline)
        received = bytearray()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200") == 4
    assert b'{"received": 7}' in received
    st = proxy.stats()
    assert st["request_log"] == [("GET", "/p/1"), ("POST", "/p/2"), ("PUT", "/p/3"), ("GET", "/p/4")]
    assert st["bytes_client_to_upstream"] == len(pipeline)
    assert st["bytes_upstream_to_client"] == len(received)


def test_parser_handles_every_split_point():
    stream = (
        b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\ncontent-length: 5\r\n\r\n\r\n\r\n\r"
        b"PUT /c?x=1 HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"a;name=value\r\n0123456789\r\n0\r\nTrailer: yes\r\n\r\n"
        b"DELETE /d HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )
    expected = [("GET", "/a"), ("POST", "/b"), ("PUT", "/c?x=1"), ("DELETE", "/d")]
    for cut in range(len(stream) + 1):
        for cut2 in (cut, min(len(stream), cut + 7)):
            parser = HTTPRequestStreamParser()
            got = parser.feed(stream[:cut]) + parser.feed(stream[cut:cut2]) + parser.feed(stream[cut2:])
            assert got == expected, (cut, cut2)
            assert parser.active and parser.error is None
    # byte by byte
    parser = HTTPRequestStreamParser()
    got = [r for i in range(len(stream)) for r in parser.feed(stream[i : i + 1])]
    assert got == expected

    bad = HTTPRequestStreamParser()
    assert bad.feed(b"\x16\x03\x01 not http\r\n\r\n") == []
    assert not bad.active and bad.error


def test_classify_path():
    assert classify_path("/v2/") == "base"
    assert classify_path("/v2/_catalog?n=10") == "catalog"
    assert classify_path("/v2/a/b/manifests/sha256:00") == "manifest"
    assert classify_path("/v2/blobs/manifests/latest") == "manifest"
    assert classify_path("/v2/a/blobs/uploads/") == "blob_upload"
    assert classify_path("/v2/a/blobs/uploads/1234-5678?digest=sha256:1") == "blob_upload"
    assert classify_path("/v2/a/blobs/sha256:00") == "blob"
    assert classify_path("/v2/a/tags/list?n=100&last=x") == "tags"
    assert classify_path("/v2/a/referrers/sha256:00") == "referrers"
    assert classify_path("/oauth2/token?scope=x") == "token"
    assert classify_path("/token") == "token"
    assert classify_path("/healthz") == "other"


def test_bandwidth_cap_per_connection(upstream):
    with LatencyProxy("127.0.0.1", upstream, delay_ms=0, bandwidth_bytes_per_s=10_000_000) as p:
        t0 = time.perf_counter()
        resp = requests.get(f"{p.url}/big?n=5000000", timeout=10)
        elapsed = time.perf_counter() - t0
    assert len(resp.content) == 5_000_000
    assert 0.4 <= elapsed <= 1.0, elapsed


def test_bandwidth_cap_shared_between_connections(upstream):
    with LatencyProxy(
        "127.0.0.1", upstream, delay_ms=0, bandwidth_bytes_per_s=10_000_000, shared_bandwidth=True
    ) as p:
        sizes: list[int] = []

        def fetch():
            sizes.append(len(requests.get(f"{p.url}/big?n=2500000", timeout=10).content))

        threads = [threading.Thread(target=fetch) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.perf_counter() - t0
    assert sizes == [2_500_000, 2_500_000]
    assert 0.4 <= elapsed <= 1.0, elapsed  # 5 MB over one 10 MB/s link


def test_upstream_down_closes_client_and_counts_failure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens there
    with LatencyProxy("127.0.0.1", dead_port, delay_ms=10) as p:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{p.url}/x", timeout=5)
        st = p.stats()
    assert st["upstream_connect_failures"] == 1
    assert st["active_connections"] == 0


def test_stop_with_open_connections_is_prompt(upstream):
    p = LatencyProxy("127.0.0.1", upstream, delay_ms=20).start()
    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(5)]
    deadline = time.monotonic() + 2
    while p.stats()["active_connections"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.stats()["active_connections"] == 5
    t0 = time.perf_counter()
    p.stop()
    assert time.perf_counter() - t0 < 2
    for s in socks:
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    p.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


def test_script_mode(upstream):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.latency_proxy",
            "--listen-port",
            "0",
            "--upstream",
            f"127.0.0.1:{upstream}",
            "--delay-ms",
            "5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        resp = requests.get(f"http://127.0.0.1:{m.group(1)}/v2/a/manifests/latest", timeout=5)
        assert resp.status_code == 200
        proc.send_signal(2)  # SIGINT
        out, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["requests_by_kind"] == {"GET manifest": 1}
