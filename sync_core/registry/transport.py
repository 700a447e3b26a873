"""HTTP transport: connection pooling, bounded retries with backoff, safe redirects.

Every request the core makes goes through :class:`Transport.send`. It retries connection
errors, 429 (honouring ``Retry-After``) and 5xx through :func:`~sync_core.registry.retry.retrying`, a
bounded number of times. Redirects are followed by hand so that an ``Authorization`` header is
never sent to a host other than the one it was meant for, and never downgraded to plain http;
and so that a registry cannot point the app at an address inside its own network (the cloud's
instance metadata endpoint, a private service): see :func:`address_kind` and
:meth:`Transport._check_redirect`. Authentication is not done here:
:class:`~sync_core.registry.auth.Authenticator` sends through a transport.

With a :class:`~sync_core.registry.budget.Budget` (a registry client always has one), every
request the transport starts for its registry, the token endpoint's included, waits for a permit,
and every answer is shown to the budget: a 429 pauses and slows every thread's requests to that
registry, so the retry of a throttled request waits for the budget instead of its own backoff. A
redirect hop to another host (blob storage, a CDN) is not charged: that host's limits are not the
registry's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from sync_core.errors import (
    ForeignHostError,
    ProtocolError,
    RegistryError,
    SyncError,
    is_transient,
    transient_status,
)
from sync_core.registry.budget import Budget, Permit
from sync_core.registry.retry import RetryLater, RetryPolicy, retry_after_seconds, retrying

log = logging.getLogger(__name__)


class Readable(Protocol):
    """A request body streamed by ``requests``: read in blocks, with a known length."""

    def read(self, n: int = -1) -> bytes: ...

    def __len__(self) -> int: ...


Body = bytes | Readable | None

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "registry-sync/0.1 (+python-requests)"

# What address_kind() calls an address that is not on the public internet.
ADDRESS_KINDS = frozenset(
    {"loopback", "link-local", "private", "unspecified", "multicast", "non-global", "azure-platform"}
)
# Azure's virtual public IP of the host platform (DNS, health probes, the WireServer): global by
# its number, reachable only from inside Azure.
AZURE_PLATFORM_ADDRESS = ipaddress.ip_address("168.63.129.16")
# The NAT64 prefix (RFC 6052): its IPv6 addresses carry an IPv4 one (ipaddress has properties
# for the IPv4-mapped and 6to4 forms, not for this one).
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to, as the connection would (``socket.getaddrinfo``)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]


def address_kind(address: str) -> str | None:
    """None for a global (public internet) address, else which kind of non-global address it is:
    ``loopback``, ``link-local`` (169.254.0.0/16 with the instance metadata endpoint, fe80::/10),
    ``private`` (10/8, 172.16/12, 192.168/16, fc00::/7, ...), ``unspecified`` (0.0.0.0, ::),
    ``multicast``, ``azure-platform`` (168.63.129.16) or ``non-global`` (shared, reserved,
    documentation ranges). An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64) is
    judged by the IPv4 address too."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of it
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(ip.packed[-4:])
        if embedded is not None:
            inner = address_kind(str(embedded))
            if inner is not None:
                return inner
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip == AZURE_PLATFORM_ADDRESS:
        return "azure-platform"
    if not ip.is_global:
        return "non-global"
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (``host`` may carry a port)."""
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL without query string or credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def same_origin(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def resolve_on_host(base_url: str, link: str, what: str) -> str:
    """Resolve ``link`` (relative or absolute) against ``base_url``; refuse another host."""
    url = urljoin(base_url, link)
    if not same_origin(url, base_url):
        raise ForeignHostError(
            f"{what} points at {redact_url(url)}, not at the registry {redact_url(base_url)}; refusing to follow"
        )
    return url


class Transport:
    """A pooled ``requests`` session with retries. One per registry host."""

    def __init__(
        self,
        *,
        pool_size: int = 16,
        timeout: tuple[float, float] = (15.0, 300.0),
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        verify_tls: bool = True,
        allow_redirects_to: Iterable[str] = (),
        resolve: Resolver = resolve_host,
        budget: Budget | None = None,
    ):
        """``budget``: the registry's request budget (None: requests go as they come).
        ``allow_redirects_to``: kinds of non-global address (:data:`ADDRESS_KINDS`) any
        registry may redirect to; by default a redirect may reach a non-global address only of a
        kind the registry's own address has (a registry on 127.0.0.1 may redirect to 127.0.0.1).
        ``resolve``: host name to addresses, for that check."""
        unknown = set(allow_redirects_to) - ADDRESS_KINDS
        if unknown:
            raise ValueError(f"allow_redirects_to: unknown address kinds {sorted(unknown)}")
        self.allow_redirects_to = frozenset(allow_redirects_to)
        self.resolve = resolve
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or netrc credentials from the environment
        self.session.verify = verify_tls
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.budget = budget
        self._prepaid = threading.local()  # .permit: taken by the caller for the next request
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.retries = 0

    def close(self) -> None:
        self.session.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        data: Body = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = False,
        permit: Permit | None = None,
    ) -> requests.Response:
        """Send one request, retrying transient failures (only with a replayable body).

        Returns the final response whatever its status (a retryable status is returned too once
        the retries are exhausted, so the caller can report the registry's answer). Raises
        :class:`RegistryError` when the host cannot be reached after all retries. ``permit``: a
        permit of the budget the caller already holds, used by the first try (and released).
        """
        previous = getattr(self._prepaid, "permit", None)
        self._prepaid.permit = permit
        try:
            return self._send(method, url, headers, data, stream, retry, follow_redirects)
        finally:
            if permit is not None:
                permit.release()  # unused when the first try failed before sending: given back
            self._prepaid.permit = previous

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        data: Body,
        stream: bool,
        retry: bool,
        follow_redirects: bool,
    ) -> requests.Response:
        policy = self.retry if retry else RetryPolicy(attempts=1)
        where = f"{method} {redact_url(url)}"

        def attempt(number: int) -> requests.Response:
            last = number + 1 >= policy.attempts
            try:
                response = self._send_following(method, url, headers or {}, data, stream, follow_redirects)
            except Exception as exc:
                if isinstance(exc, SyncError) or not is_transient(exc):
                    raise  # ours (a source stream feeding the body) speak for themselves
                raise RegistryError(
                    f"{where} failed after {number + 1} attempt(s): {type(exc).__name__}",
                    exhausted=last and number > 0,
                ) from None
            if transient_status(response.status_code):
                if not last:
                    hinted = None
                    if response.status_code == 429:
                        # a budget that saw it pauses every request to the registry: wait there
                        budgeted = getattr(response, "budgeted", False)
                        hinted = 0.0 if budgeted else retry_after_seconds(response.headers.get("Retry-After"))
                    response.close()
                    raise RetryLater(f"HTTP {response.status_code}", delay=hinted)
                response.retries_exhausted = number > 0  # type: ignore[attr-defined]
            return response

        return retrying(attempt, policy, what=where, on_retry=self._count_retry, sleep=self.sleep)

    def _count_retry(self, error: BaseException, attempt: int, delay: float) -> None:
        with self._lock:
            self.retries += 1

    def _send_charged(
        self, method: str, url: str, headers: dict[str, str], data: Body, stream: bool, charged: bool
    ) -> requests.Response:
        """One exchange; ``charged``: under a permit of the budget, which then sees the answer."""
        prepaid: Permit | None = getattr(self._prepaid, "permit", None)
        self._prepaid.permit = None  # the first try's only
        if self.budget is None or not charged:
            if prepaid is not None:
                prepaid.release()
            return self._send_once(method, url, headers, data, stream)
        permit = prepaid or self.budget.acquire()
        try:
            response = self._send_once(method, url, headers, data, stream)
            permit.answered(response.status_code, response.headers)
            response.budgeted = True  # type: ignore[attr-defined]
            return response
        finally:
            permit.release()

    def _send_once(
        self, method: str, url: str, headers: dict[str, str], data: Body, stream: bool
    ) -> requests.Response:
        with self._lock:
            self.requests_sent += 1
        return self.session.request(
            method,
            url,
            headers=headers,
            data=data,
            stream=stream,
            timeout=self.timeout,
            allow_redirects=False,
        )

    def _send_following(
        self, method: str, url: str, headers: dict[str, str], data: Body, stream: bool, follow_redirects: bool
    ) -> requests.Response:
        origin = url
        response = self._send_charged(method, url, headers, data, stream, True)
        hops = 0
        while (
            follow_redirects and response.status_code in REDIRECT_STATUSES and "Location" in response.headers
        ):
            hops += 1
            if hops > 5:
                response.close()
                raise ProtocolError(f"{method} {redact_url(url)}: too many redirects")
            target = urljoin(url, response.headers["Location"])
            response.close()
            if urlsplit(target).scheme not in ("http", "https"):
                raise ForeignHostError(f"{method} {redact_url(url)} redirected to an unsupported URL scheme")
            if (
                urlsplit(url).scheme == "https"
                and urlsplit(target).scheme != "https"
                and not is_loopback(urlsplit(target).netloc)
            ):
                raise ForeignHostError(
                    f"{method} {redact_url(url)} redirected from https to plain http; refusing"
                )
            self._check_redirect(method, origin, target)
            if not same_origin(target, url):
                # Blob downloads are redirected to storage (ACR, Alibaba OSS, S3): the registry's
                # credentials stay with the registry.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            charged = same_origin(url, origin)  # a hop to storage is not the registry's request
            response = self._send_charged(method, url, headers, None, stream, charged)
        return response

    def _check_redirect(self, method: str, origin: str, target: str) -> None:
        """Refuse a redirect to an address inside the network the app runs in.

        A registry (or whoever controls its answers) must not make the app send requests to
        the instance metadata endpoint, the platform's endpoints or private services. The
        target's host, a literal address or every address its name resolves to, may be
        non-global only of a kind the first request's host (the registry) itself has, or of a
        kind in ``allow_redirects_to``. Raises :class:`ForeignHostError` naming the host and
        the address, never the query string. The connection resolves the name again: a DNS
        answer that changes in between (rebinding) is not caught here.
        """
        host = urlsplit(target).hostname or ""
        origin_host = urlsplit(origin).hostname or ""
        if not host:
            raise ForeignHostError(
                f"{method} {redact_url(origin)} redirected to a URL without a host; refusing"
            )
        if host == origin_host:
            return  # the registry's own host: nothing it could not reach directly
        inside = self._non_global(host, method, origin)
        if not inside:
            return
        allowed = set(self.allow_redirects_to)
        try:
            allowed.update(self._non_global(origin_host, method, origin).values())
        except RegistryError:
            pass  # the registry's own name no longer resolves: nothing is allowed because of it
        for address, kind in inside.items():
            if kind not in allowed:
                shown = host if host == address else f"{host} ({address})"
                raise ForeignHostError(
                    f"{method} {redact_url(origin)} redirected to {shown}, a {kind} address; "
                    "refusing: a registry may not send the app into the network it runs in"
                )

    def _non_global(self, host: str, method: str, origin: str) -> dict[str, str]:
        """address -> kind for each non-global address of ``host`` (a literal or a name)."""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]  # a literal address, named as the Location gave it
        except ValueError:
            try:
                addresses = self.resolve(host)
            except OSError:
                # transient (a name that does not resolve now may later): retried by send()
                raise RegistryError(
                    f"{method} {redact_url(origin)} redirected to {host}, which does not resolve"
                ) from None
        kinds = {address: address_kind(address) for address in addresses}
        return {address: kind for address, kind in kinds.items() if kind is not None}


def exhausted(response: requests.Response) -> bool:
    """True when :meth:`Transport.send` already retried this answer's status as often as it may:
    an error made of it must say so (``exhausted``), or loops around would retry it again."""
    return bool(getattr(response, "retries_exhausted", False))
