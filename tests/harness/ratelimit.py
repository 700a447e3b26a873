"""A registry's rate limit, as :class:`~.faultproxy.FaultProxy` plays it in front of a real registry.

:class:`WindowLimit` admits at most ``per_second`` requests in any one-second window (a sliding
window over the requests it admitted) and refuses the rest; every answer, admitted or refused,
carries ``RateLimit-Limit: N;w=1`` and ``RateLimit-Remaining: n;w=1`` (Docker Hub's header form,
with its window in seconds). A refused request is answered with a bare 429 by the proxy, as
Docker Hub's abuse limit does: no ``Retry-After``, no reset.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Limit(Protocol):
    """What :class:`~.faultproxy.FaultProxy` asks of a rate limit for each request."""

    def admit(self) -> tuple[bool, dict[str, str]]:
        """(whether the request goes through, the headers every answer carries)."""
        ...


class WindowLimit:
    """At most ``per_second`` admitted requests in any one-second window."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic):
        if per_second < 1:
            raise ValueError("per_second must be >= 1")
        self.per_second = per_second
        self.clock = clock
        self._admitted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.refused = 0

    def admit(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            now = self.clock()
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            allowed = len(self._admitted) < self.per_second
            if allowed:
                self._admitted.append(now)
            else:
                self.refused += 1
            remaining = self.per_second - len(self._admitted)
        return allowed, {
            "RateLimit-Limit": f"{self.per_second};w=1",
            "RateLimit-Remaining": f"{remaining};w=1",
        }
