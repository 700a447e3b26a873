"""A request budget per registry, shared by every thread of the process.

Every request a :class:`~sync_core.registry.transport.Transport` sends for a registry first takes
a :class:`Permit` from that registry's :class:`Budget`: at most ``requests_per_second`` starts
(spaced at least ``1 / rate`` apart: no bursts) and at most ``concurrent_requests`` in flight. A
permit is held while the request is sent and its answer's headers arrive (a streamed body is
read after it was released: downloads come from the source, which has no limits by default).

A 429 slows the whole registry, not the one request: every later permit waits for a shared
pause (``Retry-After``, else a rate limit reset header, else 1 s, doubling while the 429s follow
each other with no success in between). When it is not a stray one (``cut_after`` 429s among
the last ``answers`` answers: :class:`BudgetPolicy`), the rate in force is halved too (with none
in force, the rate observed over the last ``observe_seconds``); after ``recovery_seconds``
without a cut the rate grows by ``recovery_factor``, step by step, back to the configured one
(or to no limit). A 429 answering a
request that was sent before the last slow-down does not slow again: eight threads throttled at
once are one slow-down, not eight. An answer that says nothing is left
(``RateLimit-Remaining: 0``) with a reset (or a window) of at most ``max_pause`` pauses the
registry until then, before any 429.

Waiters are served by :class:`Priority`, then in arrival order: work from events (a push someone
waits for) goes ahead of timer backfill. The job layer says which is which with
``with priority(Priority.BACKFILL): ...``; threads started through
:class:`~sync_core.logs.InvocationPool` inherit it (it is a context variable).

A thread that holds a permit and needs another request first (the token its request will
carry, fetched once the permit is granted so that it cannot go stale in the line) gets a nested
permit: it goes ahead of the line and needs no slot of its own, only its turn in the rate. Nested
requests cannot deadlock the cap: they never wait for a slot.

One budget per registry host in the process (:func:`shared_budget`): several targets on one
host, and every client of it, share one, under the strictest of their limits.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import enum
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from sync_core import logs
from sync_core.registry.ratelimit import RateLimitInfo, pause_hint, rate_limit_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetPolicy:
    """How a budget reacts to 429s (the defaults are production's; tests shorten the waits)."""

    base_pause: float = 1.0  # seconds: the first pause after a 429 that names no time
    max_pause: float = 60.0  # never pause a registry longer at once (as RetryPolicy.retry_after_cap)
    min_rate: float = 0.2  # requests per second: the slowest 429s slow a registry down to
    recovery_seconds: float = 2.0  # without a cut for this long, the rate grows by one step
    recovery_factor: float = 1.25
    observe_seconds: float = 2.0  # the window over which the rate of an unlimited budget is observed
    answers: int = 40  # the last answers a slow-down looks at:
    cut_after: int = 2  # this many 429s among them halve the rate (one alone only pauses)


DEFAULT_POLICY = BudgetPolicy()


class Priority(enum.IntEnum):
    """Who waits first for a permit (lower first)."""

    EVENT = 0  # a push someone waits for: events, tag messages, `copy`; anything not marked
    BACKFILL = 1  # timer and full-sync work: repository diffs, periodic checks


_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "sync_core_request_priority", default=Priority.EVENT
)


@contextlib.contextmanager
def priority(level: Priority) -> Iterator[None]:
    """While the block runs (and in the pool threads it starts), requests wait at ``level``."""
    token = _priority.set(level)
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority() -> Priority:
    return _priority.get()


@dataclass(frozen=True)
class Limits:
    """What one process may send to one registry (None: no limit)."""

    requests_per_second: float | None = None
    concurrent_requests: int | None = None

    def __post_init__(self) -> None:
        if self.requests_per_second is not None and not self.requests_per_second > 0:
            raise ValueError(f"requests_per_second must be > 0, got {self.requests_per_second!r}")
        if self.concurrent_requests is not None and self.concurrent_requests < 1:
            raise ValueError(f"concurrent_requests must be >= 1, got {self.concurrent_requests!r}")

    def stricter(self, other: Limits) -> Limits:
        """The lower of each limit (a limit beats none)."""

        def low(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        concurrent = low(self.concurrent_requests, other.concurrent_requests)
        return Limits(
            low(self.requests_per_second, other.requests_per_second),
            None if concurrent is None else int(concurrent),
        )


@dataclass
class Permit:
    """One request's right to go: release it once the answer's headers are in."""

    budget: Budget
    epoch: int  # the budget's slow-down count when it was granted
    level: Priority
    thread: int  # the thread that holds it
    nested: bool = False  # taken while the thread held another: no slot of its own
    released: bool = False

    def release(self) -> None:
        self.budget.release(self)

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        self.budget.answered(self, status, headers)


class Budget:
    """Requests per second, requests in flight and 429 slow-downs for one registry host.

    ``clock``: monotonic seconds; ``sleep``: waits for time (both injectable, for tests);
    ``wall``: epoch seconds, for reset headers given as a time.
    """

    def __init__(
        self,
        host: str,
        limits: Limits = Limits(),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        policy: BudgetPolicy = DEFAULT_POLICY,
    ):
        self.host = host
        self.policy = policy
        self.limits = limits
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._rate = limits.requests_per_second  # the rate in force (None: no limit)
        self._ceiling: float | None = None  # no configured rate: the rate to recover to, then none
        self._next = 0.0  # the earliest start of the next request
        self._pause_until = 0.0
        self._epoch = 0  # slow-downs so far
        self._strikes = 0  # slow-downs since the last success
        self._calm_since = 0.0  # the last cut of the rate, or the last recovery step
        self._recent: collections.deque[float] = collections.deque(maxlen=4096)  # grant times
        self._first: float | None = None  # the first grant
        self._answers: collections.deque[bool] = collections.deque(maxlen=policy.answers)  # was it a 429?
        self.in_flight = 0
        self._local = threading.local()  # .held: the permits this thread holds
        # figures, for logs, tests and benchmarks
        self.requests = 0
        self.throttled = 0  # 429 answers
        self.slowdowns = 0
        self.waited = 0.0  # seconds spent waiting for permits, all threads together
        self.max_in_flight = 0
        self.last: RateLimitInfo | None = None

    def __repr__(self) -> str:
        return f"Budget({self.host!r}, {self.limits}, rate={self._rate})"

    @property
    def rate(self) -> float | None:
        """The rate in force (requests per second; None: no limit)."""
        with self._cond:
            self._recover(self.clock())
            return self._rate

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def tighten(self, limits: Limits) -> None:
        """Apply the stricter of the current limits and ``limits`` (another client of this host)."""
        with self._cond:
            merged = self.limits.stricter(limits)
            if merged == self.limits:
                return
            self.limits = merged
            if merged.requests_per_second is not None:
                self._rate = min(self._rate or merged.requests_per_second, merged.requests_per_second)
            self._cond.notify_all()

    # -- taking and giving back -----------------------------------------------------------
    def acquire(self, level: Priority | None = None) -> Permit:
        """Wait for a permit (in ``level`` order, else the context's :func:`priority`)."""
        level = current_priority() if level is None else level
        thread = threading.get_ident()
        with self._cond:
            arrived = self.clock()
            nested = getattr(self._local, "held", 0) > 0
            if nested:
                self._wait_time()
            else:
                ticket = (int(level), next(self._tickets))
                heapq.heappush(self._waiting, ticket)
                try:
                    self._wait_turn(ticket)
                except BaseException:
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()
                    raise
                heapq.heappop(self._waiting)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            now = self.clock()
            self._next = now + 1.0 / self._rate if self._rate is not None else now
            self._recent.append(now)
            if self._first is None:
                self._first = now
            self._local.held = getattr(self._local, "held", 0) + 1
            self.requests += 1
            self.waited += now - arrived
            self._cond.notify_all()  # the next in line looks again
            return Permit(self, self._epoch, level, thread, nested)

    def _wait_turn(self, ticket: tuple[int, int]) -> None:
        """Return (lock held) when ``ticket`` is first in line, a slot is free and its time has come."""
        while True:
            now = self.clock()
            cap = self.limits.concurrent_requests
            if self._waiting[0] != ticket or (cap is not None and self.in_flight >= cap):
                self._cond.wait()  # a grant, a release or new limits wake every waiter
                continue
            if self._time_has_come(now):
                return

    def _wait_time(self) -> None:
        """Return (lock held) when the rate and any pause let a request start."""
        while not self._time_has_come(self.clock()):
            pass

    def _time_has_come(self, now: float) -> bool:
        """(lock held) True when a request may start now; else sleep (without the lock) until then."""
        self._recover(now)
        start = max(self._next, self._pause_until)
        if start <= now:
            return True
        self._cond.release()  # sleep without the lock: others may queue (and overtake)
        try:
            self.sleep(start - now)
        finally:
            self._cond.acquire()
        return False

    def release(self, permit: Permit) -> None:
        with self._cond:
            if permit.released:
                return
            permit.released = True
            if not permit.nested:
                self.in_flight -= 1
            if permit.thread == threading.get_ident():  # (a permit stays with its thread)
                self._local.held = max(0, getattr(self._local, "held", 0) - 1)
            self._cond.notify_all()

    # -- what the registry answered -----------------------------------------------------------
    def answered(self, permit: Permit, status: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer: a 429 slows the registry down; an exhausted allowance pauses it."""
        info = rate_limit_info(headers, self.wall())
        with self._cond:
            now = self.clock()
            self.last = info if info.any else self.last
            self._answers.append(status == 429)
            if status != 429:
                if permit.epoch == self._epoch:
                    self._strikes = 0  # sent after the last slow-down, and it went through
                reset = info.exhausted_for
                if reset is not None and reset <= self.policy.max_pause:
                    self._pause_until = max(self._pause_until, now + reset)
                return
            self.throttled += 1
            hint = pause_hint(headers, info, self.wall())
            if permit.epoch != self._epoch:  # sent before the last slow-down: already answered
                if hint is not None:
                    self._pause_until = max(self._pause_until, now + min(hint, self.policy.max_pause))
                return
            self._slow_down(now, hint)

    def _slow_down(self, now: float, hint: float | None) -> None:
        """(lock held) One slow-down: a shared pause; half the rate when 429s keep coming."""
        self._epoch += 1
        self.slowdowns += 1
        self._strikes += 1
        policy = self.policy
        pause = hint if hint is not None else policy.base_pause * 2 ** (self._strikes - 1)
        pause = min(pause, policy.max_pause)
        self._pause_until = max(self._pause_until, now + pause)
        slower = ""
        if sum(self._answers) >= policy.cut_after:  # not a stray one: the rate is too high
            self._calm_since = now
            observed = self._observed(now)
            if self._rate is None and self._ceiling is None:
                self._ceiling = observed
            self._rate = max(policy.min_rate, (observed if self._rate is None else self._rate) / 2)
            slower = f", then at most {self._rate:.2f} requests/s"
        logs.decision(
            log,
            "throttled",
            f"{self.host} answered 429: every request to it pauses {pause:.1f}s{slower}",
            level=logging.WARNING,
            registry=self.host,
            pause_seconds=round(pause, 2),
            requests_per_second=None if self._rate is None else round(self._rate, 2),
        )

    def _observed(self, now: float) -> float:
        """Requests per second granted over the last ``observe_seconds``, or since the first one
        when that is more recent (at least half a second; at least ``min_rate``)."""
        window = self.policy.observe_seconds
        while self._recent and self._recent[0] < now - window:
            self._recent.popleft()
        span = window if self._first is None else min(window, max(0.5, now - self._first))
        return max(self.policy.min_rate, len(self._recent) / span)

    def _recover(self, now: float) -> None:
        """(lock held) Grow a slowed-down rate back, one step per ``recovery_seconds`` of calm."""
        target = self.limits.requests_per_second or self._ceiling
        if self._rate is None or target is None or self._rate >= target:
            return
        steps = int((now - self._calm_since) // self.policy.recovery_seconds)
        if steps <= 0:
            return
        self._calm_since += steps * self.policy.recovery_seconds
        self._rate = self._rate * self.policy.recovery_factor**steps
        if self._rate >= target:
            self._rate = self.limits.requests_per_second  # None again when none is configured
            self._ceiling = None
            self._strikes = 0


class Budgets:
    """The budgets of one process, one per registry host, alive while a client holds one."""

    def __init__(self, factory: Callable[[str, Limits], Budget] = Budget):
        self.factory = factory
        self._lock = threading.Lock()
        self._budgets: weakref.WeakValueDictionary[str, Budget] = weakref.WeakValueDictionary()

    def for_host(self, host: str, limits: Limits = Limits()) -> Budget:
        """The budget of ``host`` (``name:port``), created or tightened to ``limits``."""
        key = host.lower()
        with self._lock:
            budget = self._budgets.get(key)
            if budget is None:
                budget = self.factory(key, limits)
                self._budgets[key] = budget
                return budget
        budget.tighten(limits)
        return budget


PROCESS_BUDGETS = Budgets()


def shared_budget(host: str, limits: Limits = Limits()) -> Budget:
    """The process's budget for ``host`` (see :class:`Budgets`)."""
    return PROCESS_BUDGETS.for_host(host, limits)
