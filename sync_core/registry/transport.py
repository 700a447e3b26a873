"""HTTP transport: connection pooling, bounded retries with backoff, safe redirects.

Every request the core makes goes through :class:`Transport.send`. It retries connection
errors, 429 (honouring ``Retry-After``) and 5xx through :func:`~sync_core.registry.retry.retrying`, a
bounded number of times. Redirects are followed by hand so that an ``Authorization`` header is
never sent to a host other than the one it was meant for, and never downgraded to plain http.
Authentication is not done here: :class:`~sync_core.registry.auth.Authenticator` sends through a
transport.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
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
from sync_core.registry.retry import RetryLater, RetryPolicy, retry_after_seconds, retrying

log = logging.getLogger(__name__)


class Readable(Protocol):
    """A request body streamed by ``requests``: read in blocks, with a known length."""

    def read(self, n: int = -1) -> bytes: ...

    def __len__(self) -> int: ...


Body = bytes | Readable | None

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "registry-sync/0.1 (+python-requests)"


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
    ):
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
    ) -> requests.Response:
        """Send one request, retrying transient failures (only with a replayable body).

        Returns the final response whatever its status (a retryable status is returned too once
        the retries are exhausted, so the caller can report the registry's answer). Raises
        :class:`RegistryError` when the host cannot be reached after all retries.
        """
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
                        hinted = retry_after_seconds(response.headers.get("Retry-After"))
                    response.close()
                    raise RetryLater(f"HTTP {response.status_code}", delay=hinted)
                response.retries_exhausted = number > 0  # type: ignore[attr-defined]
            return response

        return retrying(attempt, policy, what=where, on_retry=self._count_retry, sleep=self.sleep)

    def _count_retry(self, error: BaseException, attempt: int, delay: float) -> None:
        with self._lock:
            self.retries += 1

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
        response = self._send_once(method, url, headers, data, stream)
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
            if not same_origin(target, url):
                # Blob downloads are redirected to storage (ACR, Alibaba OSS, S3): the registry's
                # credentials stay with the registry.
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            response = self._send_once(method, url, headers, None, stream)
        return response


def exhausted(response: requests.Response) -> bool:
    """True when :meth:`Transport.send` already retried this answer's status as often as it may:
    an error made of it must say so (``exhausted``), or loops around would retry it again."""
    return bool(getattr(response, "retries_exhausted", False))
