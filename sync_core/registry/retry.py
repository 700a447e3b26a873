"""One retry loop for everything that retries: requests, manifest refetches, blob uploads.

:class:`RetryPolicy` says how often and how long to wait (exponential backoff with full jitter,
``Retry-After`` honoured up to a cap); :func:`retrying` runs an operation under a policy and
retries exactly the failures :func:`~sync_core.errors.is_transient` calls transient. Waits go
through the ``sleep`` its owner passes (a transport's, a copier's), so tests record them instead
of waiting.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sync_core.errors import DigestMismatch, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` header value asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class RetryLater(Exception):
    """Raised by an operation to ask for another attempt, after ``delay`` seconds if given.

    Only raised while attempts are left (the operation knows its attempt number): on the last
    one, an operation returns what it has (e.g. the 429 response, for the caller to report).
    """

    def __init__(self, reason: str, *, delay: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries of one operation
    backoff_base: float = 0.5  # seconds, doubled every retry
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0  # never wait longer than this on a Retry-After

    def delay(self, attempt: int, hinted: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 2`` (``hinted``: the server's Retry-After)."""
        if hinted is not None:
            return min(hinted, self.retry_after_cap)
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


def retrying(
    operation: Callable[[int], T],
    policy: RetryPolicy,
    *,
    what: str,
    transient: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation(attempt)`` until it succeeds, a failure is not transient, or attempts end.

    The last failure is raised as it is (our errors carry the registry's answer). A failure
    that an inner loop already retried to the end (``exhausted``) is raised at once.
    """
    attempts = max(1, policy.attempts)
    for attempt in range(attempts):
        try:
            return operation(attempt)
        except RetryLater as later:
            if attempt + 1 >= attempts:
                raise
            delay = policy.delay(attempt, later.delay)
            error: BaseException = later
        except Exception as exc:
            if attempt > 0 and attempt + 1 >= attempts and isinstance(exc, DigestMismatch):
                exc.exhausted = True  # the same mismatch every time: the content, not the wire
            if attempt + 1 >= attempts or not transient(exc) or getattr(exc, "exhausted", False):
                raise
            delay = policy.delay(attempt)
            error = exc
        if on_retry is not None:
            on_retry(error, attempt, delay)
        log.debug("retrying %s after %s (%.2fs)", what, _reason(error), delay)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _reason(error: BaseException) -> str:
    return error.reason if isinstance(error, RetryLater) else type(error).__name__
