"""Tests for tests.harness.faultproxy against a small local HTTP server and a real docker-registry."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.harness.faultproxy import FAULT_KINDS, FaultProxy, FaultRule
from tests.harness.ratelimit import WindowLimit


def payload(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class Upstream:
    """HTTP/1.1 keep-alive test server recording (method, path) of what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.token_port = 0  # where /auth-external points its realm
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format, *args):  # noqa: A002
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status, body=b"", headers=(), declared=None):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if declared is None else declared))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                upstream.seen.append((self.command, self.path))
                host = self.headers["Host"]
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "data":
                    n = int(parts[1])
                    self._send(
                        200,
                        payload(n),
                        [("Docker-Content-Digest", "sha256:" + hashlib.sha256(payload(n)).hexdigest())],
                    )
                elif parts[0] == "chunked":
                    data = payload(int(parts[1]))
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if self.command != "HEAD":
                        for i in range(0, len(data), 1000):
                            piece = data[i : i + 1000]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.write(b"0\r\n\r\n")
                elif parts[0] == "redirect":
                    self._send(307, b"", [("Location", f"http://{host}/data/10")])
                elif parts[0] == "relative-redirect":
                    self._send(307, b"", [("Location", "/data/10")])
                elif parts[0] == "auth":
                    self._send(
                        401,
                        b"{}",
                        [("WWW-Authenticate", f'Bearer realm="http://{host}/token",service="svc"')],
                    )
                elif parts[0] == "auth-external":
                    realm = f"http://127.0.0.1:{upstream.token_port}/token"
                    self._send(
                        401, b"{}", [("WWW-Authenticate", f'Bearer realm="{realm}",service="svc",scope="x"')]
                    )
                elif parts[0] == "token":
                    self._send(
                        200,
                        json.dumps({"token": "t", "host": host}).encode(),
                        [("Content-Type", "application/json")],
                    )
                elif parts[0] == "link":
                    self._send(200, b"[]", [("Link", '</v2/_catalog?last=a&n=1>; rel="next"')])
                else:
                    self._send(200, f"ok {self.path}".encode())

            do_HEAD = do_GET

            def do_POST(self):
                upstream.seen.append((self.command, self.path))
                body = self._body()
                out = {
                    "received": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "te": self.headers.get("Transfer-Encoding"),
                    "host": self.headers["Host"],
                }
                self._send(201, json.dumps(out).encode(), [("Content-Type", "application/json")])

            do_PUT = do_PATCH = do_DELETE = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    yield up
    up.stop()


@pytest.fixture
def fp(upstream):
    upstream.seen.clear()
    with FaultProxy(upstream.url, seed=0) as proxy:
        yield proxy


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


def test_passthrough_methods_bodies_and_log(fp, upstream, session):
    r = session.get(f"{fp.url}/data/100000", timeout=5)
    assert r.status_code == 200 and r.content == payload(100000)
    assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(payload(100000)).hexdigest()
    r = session.head(f"{fp.url}/data/12345", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Length"] == "12345" and r.content == b""
    r = session.get(f"{fp.url}/chunked/5500", timeout=5)
    assert r.content == payload(5500)
    r = session.post(f"{fp.url}/upload?x=1", data=payload(70000), timeout=5)
    assert r.status_code == 201
    assert r.json()["received"] == 70000 and r.json()["host"] == f"127.0.0.1:{upstream.port}"

    def gen():
        yield b"a" * 1000
        yield b"b" * 3

    r = session.put(f"{fp.url}/chunked-upload", data=gen(), timeout=5)
    assert r.json()["received"] == 1003 and r.json()["te"] == "chunked"
    r = session.delete(f"{fp.url}/thing", timeout=5)
    assert r.status_code == 201

    log = fp.log
    assert [(e.method, e.path, e.status, e.fault, e.forwarded) for e in log] == [
        ("GET", "/data/100000", 200, None, True),
        ("HEAD", "/data/12345", 200, None, True),
        ("GET", "/chunked/5500", 200, None, True),
        ("POST", "/upload?x=1", 201, None, True),
        ("PUT", "/chunked-upload", 201, None, True),
        ("DELETE", "/thing", 201, None, True),
    ]
    assert upstream.seen == [(e.method, e.path) for e in log]
    st = fp.stats()
    assert st["requests"] == 6 and st["forwarded"] == 6 and st["faulted"] == 0 and st["errors"] == 0
    assert st["by_method"] == {"GET": 2, "HEAD": 1, "POST": 1, "PUT": 1, "DELETE": 1}
    assert st["by_status"] == {200: 3, 201: 3}
    fp.reset()
    assert fp.log == [] and fp.stats()["requests"] == 0


def test_reset_before_answer(fp, upstream, session):
    fp.fail_next(1, "reset", method="GET")
    with pytest.raises(requests.ConnectionError):
        session.get(f"{fp.url}/data/10", timeout=5)
    assert upstream.seen == []
    # the proxy keeps serving; a new connection works
    assert session.get(f"{fp.url}/data/10", timeout=5).content == payload(10)
    first, second = fp.log
    assert (first.fault, first.status, first.forwarded) == ("reset", None, False)
    assert (second.fault, second.status) == (None, 200)
    assert fp.stats()["no_response"] == 1


def test_reset_after_forwarding_reaches_upstream(fp, upstream, session):
    fp.fail_next(1, "reset", method="PUT", forward=True)
    with pytest.raises(requests.ConnectionError):
        session.put(f"{fp.url}/manifest", data=b"{}", timeout=5)
    assert upstream.seen == [("PUT", "/manifest")]
    rec = fp.log[0]
    assert rec.forwarded and rec.upstream_status == 201 and rec.status is None


@pytest.mark.parametrize("path", ["/data/200000", "/chunked/200000"])
def test_reset_mid_body(fp, session, path):
    fp.fail_next(1, "reset_mid_body")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        session.get(f"{fp.url}{path}", timeout=5).content  # noqa: B018
    rec = fp.log[0]
    assert rec.fault == "reset_mid_body" and rec.forwarded and rec.status == 200


def test_reset_mid_body_headers_arrive_first(fp):
    fp.fail_next(1, "reset_mid_body", fraction=0.25)
    r = requests.get(f"{fp.url}/data/100000", timeout=5, stream=True)
    assert r.status_code == 200 and r.headers["Content-Length"] == "100000"
    got = bytearray()
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        for chunk in r.iter_content(4096):
            got += chunk
    assert len(got) <= 25000
    assert bytes(got) == payload(100000)[: len(got)]


@pytest.mark.parametrize("path", ["/data/50000", "/chunked/50000"])
def test_truncate_declares_full_length(fp, session, path):
    fp.fail_next(1, "truncate", body_bytes=1234)
    r = session.get(f"{fp.url}{path}", timeout=5, stream=True)
    assert r.headers["Content-Length"] == "50000"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        r.content  # noqa: B018
    assert fp.log[0].fault == "truncate"
    # the next request (new connection) is fine
    assert session.get(f"{fp.url}{path}", timeout=5).content == payload(50000)


def test_status_fault_is_not_forwarded(fp, upstream, session):
    fp.fail_next(1, "status", path=r"^/blobs/")
    fp.fail_next(3, "status", path=r"^/multi", status=(500, 502, 503))
    r = session.post(f"{fp.url}/blobs/x", data=b"z" * 5000, timeout=5)  # body drained, keep-alive kept
    assert r.status_code == 503
    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
    codes = {session.get(f"{fp.url}/multi/{i}", timeout=5).status_code for i in range(3)}
    assert codes <= {500, 502, 503}
    assert session.post(f"{fp.url}/blobs/x", data=b"ok", timeout=5).status_code == 201
    assert upstream.seen == [("POST", "/blobs/x")]
    assert [e.forwarded for e in fp.log] == [False, False, False, False, True]


def test_throttle_with_and_without_retry_after(fp, upstream, session):
    fp.fail_next(1, "throttle", retry_after=2)
    fp.fail_next(1, "throttle")
    r = session.get(f"{fp.url}/a", timeout=5)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    r = session.get(f"{fp.url}/b", timeout=5)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert session.get(f"{fp.url}/c", timeout=5).status_code == 200
    assert upstream.seen == [("GET", "/c")]
    assert fp.stats()["faults"] == {"throttle": 2}


def test_a_rate_limit_answers_bare_429s_beyond_it_and_its_headers_on_every_answer(upstream, session):
    now = [0.0]
    limit = WindowLimit(3, clock=lambda: now[0])
    upstream.seen.clear()
    with FaultProxy(upstream.url, limit=limit) as proxy:
        proxy.fail_next(1, "status", status=503)  # a rule that fires first: not counted
        answers = [session.get(f"{proxy.url}/r/{i}", timeout=5) for i in range(6)]
        now[0] = 1.0  # one second later the window has room again
        answers.append(session.head(f"{proxy.url}/r/6", timeout=5))
        log = proxy.log
    assert [a.status_code for a in answers] == [503, 200, 200, 200, 429, 429, 200]
    assert [a.headers.get("RateLimit-Remaining") for a in answers] == [
        None,
        "2;w=1",
        "1;w=1",
        "0;w=1",
        "0;w=1",
        "0;w=1",
        "2;w=1",
    ]
    assert all(a.headers["RateLimit-Limit"] == "3;w=1" for a in answers[1:])
    assert all("Retry-After" not in a.headers for a in answers)
    assert answers[4].json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert [e.rule for e in log if e.status == 429] == ["rate-limit", "rate-limit"]
    assert limit.refused == 2 and len(upstream.seen) == 4, "refused requests never reach the registry"


def test_slow(fp, session):
    fp.fail_next(1, "slow", delay_ms=300)
    t0 = time.monotonic()
    assert session.get(f"{fp.url}/data/10", timeout=5).content == payload(10)
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    session.get(f"{fp.url}/data/10", timeout=5)
    assert time.monotonic() - t0 < 0.2


def test_rendezvous_holds_matching_requests_until_two_are_in_flight(fp, upstream):
    meeting = fp.rendezvous(2, method="GET", path=r"^/data/")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.get, f"{fp.url}/data/10", timeout=10)
        # the first is held: other requests pass, and it is still waiting
        assert requests.get(f"{fp.url}/other", timeout=5).status_code == 200
        assert not first.done() and not meeting.met
        second = pool.submit(requests.get, f"{fp.url}/data/20", timeout=10)
        assert first.result().content == payload(10) and second.result().content == payload(20)
    assert (meeting.met, meeting.timed_out, meeting.max_in_flight) == (True, False, 2), meeting
    assert requests.get(f"{fp.url}/data/30", timeout=5).content == payload(30)  # met: nothing waits


def test_rendezvous_never_met_times_out_once(fp):
    meeting = fp.rendezvous(2, path=r"^/data/", timeout=0.3)
    for n in (10, 20):  # one after the other: never two in flight
        assert requests.get(f"{fp.url}/data/{n}", timeout=5).content == payload(n)
    assert (meeting.met, meeting.timed_out, meeting.max_in_flight) == (False, True, 1), meeting


@pytest.mark.parametrize("path", ["/data/4096", "/chunked/4096"])
def test_corrupt_body(fp, session, path):
    fp.fail_next(1, "corrupt_body", corrupt_bytes=1)
    r = session.get(f"{fp.url}{path}", timeout=5)
    assert r.status_code == 200 and len(r.content) == 4096
    diff = [i for i, (a, b) in enumerate(zip(r.content, payload(4096), strict=True)) if a != b]
    assert len(diff) == 1
    assert session.get(f"{fp.url}{path}", timeout=5).content == payload(4096)


def test_rate_is_roughly_honoured_and_reproducible(upstream):
    rules = [FaultRule("status", weight=3), FaultRule("throttle", retry_after=0, weight=1)]

    def run(proxy: FaultProxy) -> list[str | None]:
        with requests.Session() as s:
            for i in range(200):
                s.get(f"{proxy.url}/r/{i}", timeout=5)
        return [e.fault for e in proxy.log]

    with FaultProxy(upstream.url, rules=rules, seed=1234, rate=0.3) as proxy:
        first = run(proxy)
        proxy.reset(seed=1234)
        second = run(proxy)
        proxy.reset(seed=99)
        third = run(proxy)
    faulted = [f for f in first if f]
    assert 40 <= len(faulted) <= 80, len(faulted)  # 60 expected
    assert faulted.count("status") > faulted.count("throttle") > 0  # 3:1 weights
    assert first == second
    assert first != third


def test_random_rules_filtered_by_method_and_path(upstream):
    rules = [FaultRule("status", method="PUT|POST", path=r"/blobs/")]
    with FaultProxy(upstream.url, rules=rules, rate=1.0) as proxy, requests.Session() as s:
        assert s.get(f"{proxy.url}/blobs/1", timeout=5).status_code == 200
        assert s.put(f"{proxy.url}/blobs/1", data=b"x", timeout=5).status_code == 503
        assert s.put(f"{proxy.url}/manifests/1", data=b"x", timeout=5).status_code == 201
        assert s.post(f"{proxy.url}/v2/x/blobs/uploads/", timeout=5).status_code == 503
        assert proxy.rules[0].fired == 2


def test_fail_next_skip_and_exhaustion(fp, session):
    rule = fp.fail_next(2, "status", method="GET", path="/manifests/", skip=1, status=500)
    statuses = [session.get(f"{fp.url}/v2/r/manifests/{i}", timeout=5).status_code for i in range(4)]
    assert statuses == [200, 500, 500, 200]
    assert session.get(f"{fp.url}/v2/r/blobs/x", timeout=5).status_code == 200
    assert rule.exhausted and rule.fired == 2
    assert [e.rule for e in fp.log] == [None, "status", "status", None, None]


def test_only_safe_methods_reached_upstream(fp, upstream, session):
    fp.add_rule(FaultRule("status", method="PUT|POST|PATCH|DELETE", count=100, status=503))
    session.get(f"{fp.url}/a", timeout=5)
    session.head(f"{fp.url}/b", timeout=5)
    session.put(f"{fp.url}/c", data=b"x", timeout=5)
    session.post(f"{fp.url}/d", data=b"y", timeout=5)
    assert {e.method for e in fp.log if e.forwarded} == {"GET", "HEAD"}
    assert {e.method for e in fp.log} == {"GET", "HEAD", "PUT", "POST"}
    assert {m for m, _ in upstream.seen} == {"GET", "HEAD"}


def test_location_realm_and_link_rewriting(upstream, session):
    token_up = Upstream()
    try:
        upstream.token_port = token_up.port
        with (
            FaultProxy(token_up.url) as token_proxy,
            FaultProxy(upstream.url, rewrite={token_up.url: token_proxy.url}) as fp,
        ):
            r = session.get(f"{fp.url}/redirect", allow_redirects=False, timeout=5)
            assert r.status_code == 307 and r.headers["Location"] == f"{fp.url}/data/10"
            r = session.get(f"{fp.url}/redirect", timeout=5)  # followed through the proxy
            assert r.content == payload(10) and r.url == f"{fp.url}/data/10"
            r = session.get(f"{fp.url}/relative-redirect", allow_redirects=False, timeout=5)
            assert r.headers["Location"] == "/data/10"
            r = session.get(f"{fp.url}/auth", timeout=5)
            assert r.headers["WWW-Authenticate"] == f'Bearer realm="{fp.url}/token",service="svc"'
            r = session.get(f"{fp.url}/auth-external", timeout=5)
            assert (
                r.headers["WWW-Authenticate"]
                == f'Bearer realm="{token_proxy.url}/token",service="svc",scope="x"'
            )
            realm = r.headers["WWW-Authenticate"].split('"')[1]
            assert session.get(realm, timeout=5).json()["host"] == f"127.0.0.1:{token_up.port}"
            assert [e.path for e in token_proxy.log] == ["/token"]
            r = session.get(f"{fp.url}/link", timeout=5)
            assert r.headers["Link"] == '</v2/_catalog?last=a&n=1>; rel="next"'
            assert fp.rewrite_url(f"{upstream.url}/x?y=1") == f"{fp.url}/x?y=1"
            assert fp.rewrite_url("http://example.invalid/x") == "http://example.invalid/x"
    finally:
        token_up.stop()


def test_upstream_down_gives_502(session):
    with FaultProxy("http://127.0.0.1:9") as fp:  # discard port: nothing listens
        r = session.get(f"{fp.url}/v2/", timeout=5)
        assert r.status_code == 502
        assert fp.log[0].error.startswith("upstream:")


def test_stop_closes_keep_alive_connections(upstream):
    fp = FaultProxy(upstream.url)
    s = requests.Session()
    assert s.get(f"{fp.url}/x", timeout=5).status_code == 200
    t0 = time.monotonic()
    fp.stop()
    fp.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(requests.ConnectionError):
        s.get(f"{fp.url}/x", timeout=2)
    s.close()


def test_rule_validation():
    assert set(FAULT_KINDS) == {
        "reset",
        "reset_mid_body",
        "truncate",
        "status",
        "throttle",
        "slow",
        "corrupt_body",
    }
    with pytest.raises(ValueError):
        FaultRule("explode")
    with pytest.raises(ValueError):
        FaultRule("slow", forward=True)
    with pytest.raises(ValueError):
        FaultProxy("ftp://x")


# -- against a real docker-registry (tests.harness fixtures) ------------------------------------


def test_real_registry_push_pull_through_proxy_with_faults(anon_registry):
    from tests.harness import Pusher
    from tests.harness.images import layer

    blob = layer("faultproxy-test", 300_000)
    with FaultProxy(anon_registry.url, seed=3) as fp:
        pusher = Pusher(fp.url)
        try:
            # POST answers an absolute Location on the registry: it must come back via the proxy
            assert pusher.push_blob("fp/test", blob) in (True, False)
            puts = [e for e in fp.log if e.method == "PUT"]
            assert puts and puts[0].status == 201 and puts[0].path.startswith("/v2/fp/test/blobs/uploads/")
            assert pusher.fetch_blob("fp/test", blob.digest) == blob.data

            fp.fail_next(1, "corrupt_body", method="GET", path="/blobs/sha256:")
            r = requests.get(f"{fp.url}/v2/fp/test/blobs/{blob.digest}", timeout=10)
            assert r.status_code == 200 and len(r.content) == blob.size
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() != blob.digest

            fp.fail_next(1, "truncate", path="/blobs/sha256:")
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                requests.get(f"{fp.url}/v2/fp/test/blobs/{blob.digest}", timeout=10).content  # noqa: B018

            fp.fail_next(1, "throttle", retry_after=1, method="HEAD")
            r = requests.head(f"{fp.url}/v2/fp/test/blobs/{blob.digest}", timeout=10)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            r = requests.head(f"{fp.url}/v2/fp/test/blobs/{blob.digest}", timeout=10)
            assert r.status_code == 200 and int(r.headers["Content-Length"]) == blob.size
        finally:
            pusher.close()


def test_real_registry_token_realm_through_second_proxy(fresh_registry, token_issuer):
    reg = fresh_registry(auth="token")
    realm = urlparse_origin(token_issuer.realm)
    with FaultProxy(realm) as token_proxy, FaultProxy(reg.url, rewrite={realm: token_proxy.url}) as fp:
        r = requests.get(f"{fp.url}/v2/", timeout=10)
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert f'realm="{token_proxy.url}/token"' in challenge
        token_proxy.fail_next(1, "throttle", retry_after=3)
        r = requests.get(f"{token_proxy.url}/token", params={"service": token_issuer.service}, timeout=10)
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        r = requests.get(
            f"{token_proxy.url}/token",
            params={"service": token_issuer.service},
            auth=("admin", "admin-pass"),
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["token"]
        r = requests.get(
            f"{fp.url}/v2/", headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=10
        )
        assert r.status_code == 200


def urlparse_origin(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"
