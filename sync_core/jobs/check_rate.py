"""``check``: the rate-limit headers a registry sends, and what they imply against a request budget.

Read forms (header names are case-insensitive):

* ``RateLimit-Limit: 100`` / ``RateLimit-Remaining: 76`` / ``RateLimit-Reset: 30``, each value
  optionally with a policy ``;w=<window seconds>`` (the IETF draft before version 07, and Docker
  Hub's lower-case ``ratelimit-limit: 100;w=21600``), and ``RateLimit-Policy: 100;w=60``;
* ``RateLimit-Policy: "default";q=100;w=60`` with ``RateLimit: "default";r=50;t=30`` (the draft
  from version 07 on).

The budget is the target's configured request budget in requests per second (None: none
configured); it is compared with the average rate the limit allows (limit / window).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sync_core.jobs.check_findings import Finding, fail, ok, warn

LOW_REMAINING = 0.1  # below this share of the limit left, say so


@dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int | None = None
    window: float | None = None  # seconds
    reset: float | None = None  # seconds until the window resets

    @property
    def per_second(self) -> float | None:
        """The average rate the limit allows (None: the window is not stated)."""
        return self.limit / self.window if self.window else None

    def describe(self) -> str:
        window = f" per {_duration(self.window)}" if self.window else " (window not stated)"
        rate = f" (about {self.per_second:.3g} requests/s on average)" if self.per_second else ""
        left = f", {self.remaining} left" if self.remaining is not None else ""
        reset = f", resets in {_duration(self.reset)}" if self.reset is not None else ""
        return f"{self.limit}{window}{rate}{left}{reset}"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _item(value: str) -> tuple[str, dict[str, str]]:
    """The first item of a list header: ``'100;w=60, 50;w=1'`` -> ``('100', {'w': '60'})``."""
    first = value.split(",")[0]
    head, *params = (p.strip() for p in first.split(";"))
    found = {}
    for param in params:
        key, _, raw = param.partition("=")
        found[key.strip().lower()] = raw.strip().strip('"')
    return head.strip('"'), found


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The limit stated by ``headers`` (a case-insensitive mapping, as ``requests`` gives it), or None."""
    limit_header = headers.get("RateLimit-Limit")
    policy_header = headers.get("RateLimit-Policy")
    if limit_header is not None:
        head, params = _item(limit_header)
        limit = _number(head)
        window = _number(params.get("w"))
        if window is None and policy_header is not None:
            window = _number(_item(policy_header)[1].get("w"))
        remaining_header = headers.get("RateLimit-Remaining")
        remaining = _number(_item(remaining_header)[0]) if remaining_header is not None else None
        reset = _number(headers.get("RateLimit-Reset"))
    elif policy_header is not None:  # draft 07+: the limit is the policy's quota
        _, params = _item(policy_header)
        limit, window = _number(params.get("q")), _number(params.get("w"))
        current = _item(headers.get("RateLimit", ""))[1]
        remaining, reset = _number(current.get("r")), _number(current.get("t"))
    else:
        return None
    if limit is None:
        return None
    return RateLimit(int(limit), None if remaining is None else int(remaining), window or None, reset)


def rate_limit_finding(
    subject: str,
    asked: str,
    answers: Iterable[Mapping[str, str]],
    requests_per_second: float | None,
    *,
    pulls_only: bool = False,
    source: str = "",
) -> Finding:
    """The ``rate-limit`` finding from the headers of ``answers`` (the first that states a limit).

    ``requests_per_second``: the configured request budget of this target (None: none).
    ``pulls_only``: the limit counts manifest GETs only (Docker Hub), not every request, so the
    budget is not compared with it. ``source``: the documentation of the registry's limit.
    """
    found = next((r for r in map(parse_rate_limit, answers) if r is not None), None)
    doc = f" ({source})" if source else ""
    if found is None:
        return ok(
            subject,
            "rate-limit",
            asked,
            "no rate-limit headers in its answers",
            "429 answers are retried, honouring Retry-After",
        )
    answered = f"rate limit {found.describe()}" + (" (counts manifest GETs only)" if pulls_only else "")
    if found.remaining == 0:
        wait = (
            f"wait {_duration(found.reset)} for the window to reset, or " if found.reset is not None else ""
        )
        return fail(
            subject,
            "rate-limit",
            asked,
            answered,
            f"{wait}raise the limit (a plan or an account with more){doc}",
        )
    allowed = found.per_second
    if (
        requests_per_second is not None
        and allowed is not None
        and not pulls_only
        and requests_per_second > allowed
    ):
        return warn(
            subject,
            "rate-limit",
            asked,
            f"{answered}; the configured budget is {requests_per_second:g} requests/s",
            f"requests_per_second of this target: at most {allowed:.3g} to stay within the limit on average{doc}",
        )
    if found.remaining is not None and found.remaining < found.limit * LOW_REMAINING:
        return warn(
            subject,
            "rate-limit",
            asked,
            answered,
            f"little is left in this window: a sync now may meet 429 answers (retried){doc}",
        )
    if requests_per_second is None:
        budget = "no request budget configured"
    elif pulls_only or allowed is None:
        budget = f"configured budget {requests_per_second:g} requests/s"
    else:
        budget = f"within it at the configured {requests_per_second:g} requests/s"
    return ok(subject, "rate-limit", asked, f"{answered}; {budget}")
