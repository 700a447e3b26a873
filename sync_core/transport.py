"""HTTP transport: connection pooling, bounded retries with backoff, safe redirects.

Every request the core makes goes through :class:`Transport.send`. It retries connection
errors, 429 (honouring ``Retry-After``) and 5xx with exponential backoff and full jitter, a
bounded number of times. Redirects are followed by hand so that an ``Authorization`` header is
never sent to a host other than the one it was meant for, and never downgraded to plain http.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .errors import ForeignHostError, RegistryError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
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


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries of one request
    backoff_base: float = 0.5  # seconds, doubled every retry
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0  # never wait longer than this on a Retry-After

    def delay(self, attempt: int, response: requests.Response | None = None) -> float:
        if response is not None and response.status_code == 429:
            hinted = retry_after_seconds(response)
            if hinted is not None:
                return min(hinted, self.retry_after_cap)
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


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
        data: bytes | None = None,
        stream: bool = False,
        retry: bool = True,
        follow_redirects: bool = False,
    ) -> requests.Response:
        """Send one request, retrying transient failures (only with a replayable body).

        Returns the final response whatever its status (except retryable statuses when the
        retries are exhausted, which are returned as well so the caller can report them).
        Raises :class:`RegistryError` when the host cannot be reached after all retries.
        """
        attempts = self.retry.attempts if retry else 1
        last_error: Exception | None = None
        for attempt in range(attempts):
            try:
                response = self._send_following(method, url, headers or {}, data, stream, follow_redirects)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                last_error = exc
                if attempt + 1 >= attempts:
                    break
                delay = self.retry.delay(attempt)
                log.debug(
                    "retrying %s %s after %s (%.2fs)", method, redact_url(url), type(exc).__name__, delay
                )
            else:
                if response.status_code not in RETRY_STATUSES or attempt + 1 >= attempts:
                    return response
                delay = self.retry.delay(attempt, response)
                log.debug(
                    "retrying %s %s after HTTP %s (%.2fs)",
                    method,
                    redact_url(url),
                    response.status_code,
                    delay,
                )
                response.close()
            with self._lock:
                self.retries += 1
            self.sleep(delay)
        raise RegistryError(
            f"{method} {redact_url(url)} failed after {attempts} attempt(s): {type(last_error).__name__}"
        ) from None

    def _send_once(self, method, url, headers, data, stream) -> requests.Response:
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

    def _send_following(self, method, url, headers, data, stream, follow_redirects) -> requests.Response:
        response = self._send_once(method, url, headers, data, stream)
        hops = 0
        while (
            follow_redirects and response.status_code in REDIRECT_STATUSES and "Location" in response.headers
        ):
            hops += 1
            if hops > 5:
                response.close()
                raise RegistryError(f"{method} {redact_url(url)}: too many redirects")
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
