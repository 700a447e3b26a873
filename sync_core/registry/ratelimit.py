"""Rate limit headers: what a registry says is left of its allowance, and when it comes back.

Read by :class:`~sync_core.registry.budget.Budget` from every answer:

* Docker Hub: ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600`` (its pull
  limit: pulls per window of ``w`` seconds) on manifest requests; no reset header. Its abuse
  limit answers a bare 429 with none of them.
* ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (the IETF httpapi draft's
  first form; the reset is a delay in seconds).
* ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``: a delay in seconds or, as GitHub sends it, a
  time in epoch seconds (a value above ``EPOCH_THRESHOLD`` is taken as one).

A value may carry parameters (``76;w=21600``) or list several policies (``10, 10;w=1``): the first
number counts. Malformed values are ignored, never raised on: they come from the registry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sync_core.registry.retry import retry_after_seconds

EPOCH_THRESHOLD = 1e9  # a reset this large is a point in time (epoch seconds), not a delay
_NUMBER = re.compile(r"\s*(\d{1,15}(?:\.\d{1,6})?)")
_WINDOW = re.compile(r";\s*w\s*=\s*(\d{1,15}(?:\.\d{1,6})?)", re.IGNORECASE)
_PREFIXES = ("ratelimit-", "x-ratelimit-")


@dataclass(frozen=True)
class RateLimitInfo:
    """One answer's rate limit headers (each None when absent or unreadable)."""

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None  # seconds from now until the allowance is back
    window: float | None = None  # ``w=``: the period the limit is counted over, in seconds

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.limit, self.remaining, self.reset))

    @property
    def exhausted_for(self) -> float | None:
        """Nothing is left: seconds until it comes back (the reset, else the window); else None."""
        if self.remaining is None or self.remaining > 0:
            return None
        return self.reset if self.reset is not None else self.window


def _first_number(value: str | None) -> float | None:
    match = _NUMBER.match(value or "")
    return float(match.group(1)) if match else None


def rate_limit_info(headers: Mapping[str, str], now: float) -> RateLimitInfo:
    """The rate limit headers of an answer; ``now``: epoch seconds, for a reset given as a time."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    for prefix in _PREFIXES:
        values = [lowered.get(prefix + name) for name in ("limit", "remaining", "reset")]
        if not any(v is not None for v in values):
            continue
        limit, remaining, reset = (_first_number(v) for v in values)
        if reset is not None and reset > EPOCH_THRESHOLD:
            reset = max(0.0, reset - now)
        window = None
        for value in values[:2]:
            found = _WINDOW.search(value or "")
            if found:
                window = float(found.group(1))
                break
        return RateLimitInfo(limit, remaining, reset, window)
    return RateLimitInfo()


def pause_hint(headers: Mapping[str, str], info: RateLimitInfo, now: float) -> float | None:
    """Seconds a 429 asks for: its ``Retry-After``, else its reset; None for a bare 429."""
    retry_after = None
    for name, value in headers.items():
        if str(name).lower() == "retry-after":
            retry_after = retry_after_seconds(str(value), now=lambda: now)
            break
    return retry_after if retry_after is not None else info.reset
