"""Transport: bounded retries with backoff, Retry-After, connection resets, safe redirects, size limits.

The servers here are real sockets on 127.0.0.1 (the harness ``ScriptedServer``: a scripted
HTTP/1.1 server that records every request, can reset connections and can speak TLS), so
``requests``/``urllib3`` behave exactly as they do against a registry. Waits are recorded
through ``Transport(sleep=...)`` instead of being slept.
"""

from __future__ import annotations

import email.utils
import io
import json
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from sync_core.errors import ForeignHostError, InvalidContent, NotFound, RegistryError
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import MAX_MANIFEST_BYTES
from sync_core.registry.retry import RetryPolicy
from sync_core.registry.transport import (
    Transport,
    address_kind,
    is_loopback,
    redact_url,
    resolve_on_host,
    same_origin,
)
from tests.harness.recording import Waits
from tests.harness.scripted import Reply, Request, ScriptedServer, sequence

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# -- retries ---------------------------------------------------------------------------------------


def test_503_then_200_is_retried_with_bounded_backoff():
    waits = Waits()
    with ScriptedServer(sequence(Reply(503), Reply(503), Reply(200, body=b"ok"))) as srv:
        transport = Transport(retry=RetryPolicy(attempts=5, backoff_base=0.5, backoff_cap=20), sleep=waits)
        response = transport.send("GET", f"{srv.url}/v2/")
        assert response.status_code == 200 and response.content == b"ok"
        assert len(srv.requests) == 3
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
    with ScriptedServer(replies) as srv:
        transport = Transport(retry=RetryPolicy(attempts=5, retry_after_cap=60), sleep=waits)
        assert transport.send("GET", f"{srv.url}/v2/").status_code == 200
        assert len(srv.requests) == 4
    assert waits[0] == 1.0
    assert 25 <= waits[1] <= 30  # an HTTP-date counts from now
    assert waits[2] == 60  # never longer than the cap, whatever the registry asks


def test_connection_reset_then_success():
    waits = Waits()
    with ScriptedServer(sequence(Reply(reset=True), Reply(200, body=b"fine"))) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        response = transport.send("GET", f"{srv.url}/v2/x")
        assert response.status_code == 200 and response.content == b"fine"
        assert len(srv.requests) == 2
    assert len(waits) == 1


def test_bounded_attempts_end_in_registry_error_without_query_or_credentials():
    waits = Waits()
    with ScriptedServer(lambda request: Reply(reset=True)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        with pytest.raises(RegistryError) as info:
            transport.send("GET", f"{srv.url}/v2/r/blobs/uploads/x?_state=SECRETSTATE&digest=sha256:1")
        assert len(srv.requests) == 3  # exactly `attempts` tries, no more
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
    with ScriptedServer(lambda request: Reply(503, {"Content-Type": "application/json"}, body)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=waits)
        client = RegistryClient(srv.url, transport=transport)
        with pytest.raises(RegistryError) as info:
            client.get_manifest("team/app", "1.0")
        assert len(srv.requests) == 3
    assert info.value.status == 503 and info.value.code == "UNAVAILABLE"
    assert not isinstance(info.value, NotFound)


def test_retry_false_and_streamed_bodies_are_sent_once():
    waits = Waits()
    with ScriptedServer(lambda request: Reply(503)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=4, backoff_base=0.01), sleep=waits)
        assert transport.send("PUT", f"{srv.url}/a", data=b"x", retry=False).status_code == 503
        assert len(srv.requests) == 1
        client = RegistryClient(srv.url, transport=transport)
        # a file-like body cannot be replayed: one try, whatever the answer
        response = client.request("PUT", "/v2/r/blobs/uploads/u", scopes=(), data=io.BytesIO(b"payload"))
        assert response.status_code == 503
        assert len(srv.requests) == 2 and srv.requests[1].body == b"payload"
        # bytes can be replayed
        client.request("PUT", "/v2/r/manifests/t", scopes=(), data=b"{}")
        assert len(srv.requests) == 6
    assert len(waits) == 3


# -- redirects ------------------------------------------------------------------------------------


def test_cross_host_redirect_drops_authorization_same_host_keeps_it():
    with ScriptedServer(lambda request: Reply(200, body=b"storage")) as storage:

        def registry(request: Request) -> Reply:
            if request.path.startswith("/v2/r/blobs/"):
                return Reply(307, {"Location": f"{storage.url}/blob?sig=abc"})
            if request.path == "/v2/r/moved":
                return Reply(302, {"Location": "/v2/r/here"})
            return Reply(200, body=b"here")

        with ScriptedServer(registry) as reg:
            transport = Transport(sleep=Waits())
            headers = {"Authorization": "Bearer registry-token", "Accept": "*/*"}
            response = transport.send(
                "GET", f"{reg.url}/v2/r/blobs/sha256:00", headers=headers, follow_redirects=True
            )
            assert response.status_code == 200 and response.content == b"storage"
            assert reg.requests[0].headers["authorization"] == "Bearer registry-token"
            assert storage.requests[0].path == "/blob?sig=abc"
            assert "authorization" not in storage.requests[0].headers
            assert storage.requests[0].headers["accept"] == "*/*"  # other headers go along
            assert headers["Authorization"] == "Bearer registry-token"  # caller's dict untouched

            response = transport.send("GET", f"{reg.url}/v2/r/moved", headers=headers, follow_redirects=True)
            assert response.content == b"here"
            assert [s.path for s in reg.requests[1:]] == ["/v2/r/moved", "/v2/r/here"]
            assert reg.requests[2].headers["authorization"] == "Bearer registry-token"

            # without follow_redirects the redirect itself is the answer
            response = transport.send("GET", f"{reg.url}/v2/r/blobs/sha256:00", follow_redirects=False)
            assert response.status_code == 307
            assert len(storage.requests) == 1


def test_https_to_plain_http_redirect_refused_except_loopback():
    target = {"location": ""}
    with ScriptedServer(lambda request: Reply(200, body=b"plain")) as plain:
        with ScriptedServer(lambda request: Reply(307, {"Location": target["location"]}), tls=True) as tls:
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
            assert "authorization" not in plain.requests[0].headers
            assert len(plain.requests) == 1


def test_redirect_loop_is_bounded():
    with ScriptedServer(lambda request: Reply(302, {"Location": "/again"})) as srv:
        transport = Transport(sleep=Waits())
        with pytest.raises(RegistryError, match="too many redirects"):
            transport.send("GET", f"{srv.url}/start", follow_redirects=True)
        assert len(srv.requests) <= 7


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


# -- redirects into the app's own network ---------------------------------------------------------


class RoutedTransport(Transport):
    """A real :class:`Transport` whose names resolve through ``dns`` (made-up host -> addresses)
    and whose connections go to local servers (``routes``: host or host:port -> server URL).

    The redirect rule sees the made-up names and addresses; a request to any other host fails
    the test before anything is sent (nothing here touches the network)."""

    def __init__(self, dns: dict[str, list[str]], routes: dict[str, str], **kwargs):
        super().__init__(sleep=Waits(), resolve=self.lookup, **kwargs)
        self.dns = dns
        self.routes = routes
        self.resolved: list[str] = []

    def lookup(self, host: str) -> list[str]:
        self.resolved.append(host)
        if host in self.dns:
            return self.dns[host]
        # numeric forms (2852039166, 0xa9fea9fe) as the system parses them; never a DNS query
        return [i[4][0] for i in socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)]

    def _send_once(self, method, url, headers, data, stream):
        parts = urlsplit(url)
        route = self.routes.get(parts.netloc) or self.routes.get(parts.hostname)
        assert route, f"would have sent {method} to {parts.netloc}"
        local = urlsplit(route)
        routed = urlunsplit((local.scheme, local.netloc, parts.path, parts.query, ""))
        return super()._send_once(method, routed, headers, data, stream)


PUBLIC_REGISTRY = "registry.example.test"
DNS = {
    PUBLIC_REGISTRY: ["20.60.0.1"],
    "blobs.example.test": ["20.60.0.2", "2603:1020::2"],
    "metadata.example.test": ["169.254.169.254"],
    "intranet.example.test": ["10.1.2.3"],
    "split.example.test": ["20.60.0.3", "192.168.1.5"],  # one public, one private answer
    "sneaky.example.test": ["::ffff:169.254.169.254"],
    "registry.private.test": ["10.0.0.5"],
    "blobs.private.test": ["10.0.0.9"],
}


def redirecting_to(location: dict[str, str]):
    return lambda request: Reply(307, {"Location": location["to"]})


@pytest.mark.parametrize(
    ("location", "named", "kind"),
    [
        (
            "http://169.254.169.254/metadata/instance?api-version=2021-02-01&token=SECRET",
            "169.254.169.254",
            "link-local",
        ),
        ("http://10.0.0.1/v2/blobs?sig=SECRET", "10.0.0.1", "private"),
        ("http://172.16.4.2/x?sig=SECRET", "172.16.4.2", "private"),
        ("http://192.168.0.10/x?sig=SECRET", "192.168.0.10", "private"),
        ("http://[fd00::7]/x?sig=SECRET", "fd00::7", "private"),
        ("http://[fe80::1]/x?sig=SECRET", "fe80::1", "link-local"),
        ("http://127.0.0.1:9/x?sig=SECRET", "127.0.0.1", "loopback"),
        ("http://[::1]:9/x?sig=SECRET", "::1", "loopback"),
        ("http://0.0.0.0/x?sig=SECRET", "0.0.0.0", "unspecified"),
        ("http://[::ffff:169.254.169.254]/x?sig=SECRET", "::ffff:169.254.169.254", "link-local"),
        ("http://2852039166/latest/meta-data?sig=SECRET", "2852039166 (169.254.169.254)", "link-local"),
        ("http://168.63.129.16/machine?comp=goalstate&sig=SECRET", "168.63.129.16", "azure-platform"),
        ("http://100.64.0.1/x?sig=SECRET", "100.64.0.1", "non-global"),
        (
            "http://metadata.example.test/x?sig=SECRET",
            "metadata.example.test (169.254.169.254)",
            "link-local",
        ),
        ("http://intranet.example.test/x?sig=SECRET", "intranet.example.test (10.1.2.3)", "private"),
        ("http://split.example.test/x?sig=SECRET", "split.example.test (192.168.1.5)", "private"),
        (
            "http://sneaky.example.test/x?sig=SECRET",
            "sneaky.example.test (::ffff:169.254.169.254)",
            "link-local",
        ),
    ],
)
def test_a_public_registry_cannot_redirect_into_the_network_the_app_runs_in(location, named, kind):
    target = {"to": location}
    with ScriptedServer(redirecting_to(target)) as registry:
        transport = RoutedTransport(DNS, {PUBLIC_REGISTRY: registry.url})
        with pytest.raises(ForeignHostError) as info:
            transport.send(
                "GET",
                f"http://{PUBLIC_REGISTRY}/v2/team/app/blobs/sha256:00",
                headers={"Authorization": "Bearer registry-token"},
                follow_redirects=True,
            )
        assert len(registry.requests) == 1, "tried once: a refusal is not retried"
    message = str(info.value)
    assert f"redirected to {named}, a {kind} address" in message
    assert PUBLIC_REGISTRY in message
    assert "SECRET" not in message and "sig=" not in message and "token" not in message
    assert not info.value.transient


def test_a_public_registry_may_redirect_to_public_storage():
    with ScriptedServer(lambda request: Reply(200, body=b"layer")) as storage:
        location = "http://blobs.example.test/container/blob?sig=abc"
        with ScriptedServer(redirecting_to({"to": location})) as registry:
            transport = RoutedTransport(
                DNS, {PUBLIC_REGISTRY: registry.url, "blobs.example.test": storage.url}
            )
            response = transport.send(
                "GET", f"http://{PUBLIC_REGISTRY}/v2/r/blobs/sha256:00", follow_redirects=True
            )
            assert response.status_code == 200 and response.content == b"layer"
            assert storage.requests[0].path == "/container/blob?sig=abc"
    assert transport.resolved == ["blobs.example.test"], "the target's name is resolved, once"


def test_a_registry_in_a_private_network_may_redirect_within_it_but_not_to_link_local():
    """ACR behind a private endpoint answers from 10.x and redirects to its data endpoint, 10.x too."""
    with ScriptedServer(lambda request: Reply(200, body=b"layer")) as storage:
        target = {"to": "http://blobs.private.test/blob"}
        with ScriptedServer(redirecting_to(target)) as registry:
            routes = {"registry.private.test": registry.url, "blobs.private.test": storage.url}
            transport = RoutedTransport(DNS, routes)
            url = "http://registry.private.test/v2/r/blobs/sha256:00"
            assert transport.send("GET", url, follow_redirects=True).content == b"layer"

            for location in ("http://169.254.169.254/metadata", "http://127.0.0.1:9/x"):
                target["to"] = location
                with pytest.raises(ForeignHostError, match="link-local|loopback"):
                    transport.send("GET", url, follow_redirects=True)
    assert len(storage.requests) == 1


def test_a_loopback_registry_may_redirect_to_loopback_but_not_elsewhere_inside():
    with ScriptedServer(lambda request: Reply(200, body=b"layer")) as storage:
        target = {"to": f"{storage.url}/blob"}
        with ScriptedServer(redirecting_to(target)) as registry:
            netlocs = {urlsplit(server.url).netloc: server.url for server in (registry, storage)}
            transport = RoutedTransport({}, netlocs)
            url = f"{registry.url}/v2/r/blobs/sha256:00"
            assert transport.send("GET", url, follow_redirects=True).content == b"layer"
            for location, kind in (
                ("http://169.254.169.254/latest/meta-data/", "link-local"),
                ("http://10.0.0.1/x", "private"),
            ):
                target["to"] = location
                with pytest.raises(ForeignHostError, match=f"a {kind} address"):
                    transport.send("GET", url, follow_redirects=True)


def test_non_global_redirects_only_where_explicitly_allowed():
    with ScriptedServer(lambda request: Reply(200, body=b"local")) as storage:
        location = {"to": f"http://127.0.0.1:{storage.port}/blob"}
        with ScriptedServer(redirecting_to(location)) as registry:
            routes = {PUBLIC_REGISTRY: registry.url, "127.0.0.1": storage.url}
            url = f"http://{PUBLIC_REGISTRY}/v2/r/blobs/sha256:00"
            with pytest.raises(ForeignHostError, match="loopback"):
                RoutedTransport(DNS, routes).send("GET", url, follow_redirects=True)
            allowed = RoutedTransport(DNS, routes, allow_redirects_to=["loopback"])
            assert allowed.send("GET", url, follow_redirects=True).content == b"local"
            location["to"] = "http://169.254.169.254/latest/meta-data/"
            with pytest.raises(ForeignHostError, match="link-local"):
                allowed.send("GET", url, follow_redirects=True)
    with pytest.raises(ValueError, match="unknown address kinds"):
        Transport(allow_redirects_to=["loopbak"])


def test_a_redirect_target_that_does_not_resolve_is_retried_as_a_transient_failure():
    def lookup_fails(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with ScriptedServer(redirecting_to({"to": "http://gone.example.test/blob?sig=SECRET"})) as registry:
        transport = RoutedTransport(DNS, {PUBLIC_REGISTRY: registry.url}, retry=RetryPolicy(attempts=3))
        transport.resolve = lookup_fails
        with pytest.raises(RegistryError) as info:
            transport.send("GET", f"http://{PUBLIC_REGISTRY}/v2/r/blobs/sha256:00", follow_redirects=True)
        assert len(registry.requests) == 3
    assert info.value.transient and not isinstance(info.value, ForeignHostError)
    assert "gone.example.test" in str(info.value) and "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("20.60.1.1", None),
        ("2603:1020::1", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("168.63.129.16", "azure-platform"),
        ("100.64.0.1", "non-global"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around 169.254.169.254
        ("64:ff9b::808:808", None),  # NAT64 around 8.8.8.8
    ],
)
def test_address_kind(address, kind):
    assert address_kind(address) == kind


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

    def handler(request: Request) -> Reply:
        raw = big if request.path.endswith("/big") else fits
        return Reply(200, {"Content-Type": OCI_MANIFEST}, raw, chunked=chunked)

    with ScriptedServer(handler) as srv:
        client = RegistryClient(srv.url, transport=Transport(sleep=Waits()))
        with pytest.raises(InvalidContent, match=str(MAX_MANIFEST_BYTES)) as info:
            client.get_manifest("team/app", "big")
        assert "team/app" in str(info.value)
        manifest = client.get_manifest("team/app", "fits")  # exactly at the limit is fine
        assert manifest.raw == fits and len(manifest.raw) == MAX_MANIFEST_BYTES


def test_a_failing_token_service_is_retried_by_the_transport_only():
    # the transport retries the token service's 503; the error it ends in says so (exhausted),
    # so the manifest fetch around it does not send the whole exchange again
    def answer(request: Request) -> Reply:
        if request.path.startswith("/token"):
            return Reply(503)
        realm = f'Bearer realm="{srv.url}/token",service="svc"'
        return Reply(401, {"WWW-Authenticate": realm})

    with ScriptedServer(answer) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=Waits())
        client = RegistryClient(srv.url, transport=transport)
        with pytest.raises(RegistryError) as info:
            client.get_manifest("team/app", "1.0")
        token_requests = [r for r in srv.requests if r.path.startswith("/token")]
    assert info.value.status == 503 and info.value.transient and info.value.exhausted
    assert len(token_requests) == 3, [r.path for r in srv.requests]


@pytest.mark.parametrize("status", [501, 505])
def test_what_a_server_cannot_do_is_neither_retried_nor_transient(status):
    with ScriptedServer(lambda request: Reply(status)) as srv:
        transport = Transport(retry=RetryPolicy(attempts=3, backoff_base=0.01), sleep=Waits())
        client = RegistryClient(srv.url, transport=transport)
        with pytest.raises(RegistryError) as info:
            client.get_manifest("team/app", "1.0")
        assert len(srv.requests) == 1
    assert info.value.status == status and not info.value.transient
