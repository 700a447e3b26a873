"""The request budget: rate, concurrency, 429 slow-downs shared by every thread, priority, headers.

Time is a :class:`FakeTime` (an injected monotonic clock whose ``sleep`` advances it): no test
here waits for real time. Threads are real; a test that needs a thread to be waiting checks the
budget's own queue (``Budget.waiting``) instead of sleeping.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

import pytest

from sync_core.logs import InvocationPool
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.budget import (
    DEFAULT_POLICY,
    Budget,
    Budgets,
    Limits,
    Permit,
    Priority,
    current_priority,
    priority,
)
from sync_core.registry.client import RegistryClient
from sync_core.registry.ratelimit import RateLimitInfo, pause_hint, rate_limit_info
from sync_core.registry.transport import Transport
from tests.harness import READER, images
from tests.harness.recording import Waits
from tests.harness.scripted import Reply, ScriptedServer, sequence

NOW = 1_700_000_000.0  # wall clock of the tests (epoch seconds)
BASE_PAUSE, MAX_PAUSE = DEFAULT_POLICY.base_pause, DEFAULT_POLICY.max_pause
MIN_RATE, CUT_AFTER = DEFAULT_POLICY.min_rate, DEFAULT_POLICY.cut_after
OBSERVE_SECONDS, RECOVERY_SECONDS = DEFAULT_POLICY.observe_seconds, DEFAULT_POLICY.recovery_seconds


class FakeTime:
    """A monotonic clock and its sleep: sleeping advances the clock, at once."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def budget(rate: float | None = None, concurrent: int | None = None, t: FakeTime | None = None) -> Budget:
    t = t or FakeTime()
    return Budget("registry.test", Limits(rate, concurrent), clock=t.clock, sleep=t.sleep, wall=lambda: NOW)


def clock_of(b: Budget) -> FakeTime:
    owner = b.clock.__self__  # type: ignore[attr-defined]
    assert isinstance(owner, FakeTime)
    return owner


def starts(b: Budget, count: int, status: int = 200) -> list[float]:
    """Take ``count`` permits one after the other, answer each with ``status``; their start times."""
    out = []
    for _ in range(count):
        permit = b.acquire()
        out.append(b.clock())
        permit.answered(status, {})
        permit.release()
    return out


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition of the budget (no fixed sleep: a bounded spin on a real event)."""
    done = threading.Event()
    for _ in range(2000):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# -- rate and concurrency ---------------------------------------------------------------------------


def test_requests_are_spaced_by_the_rate_without_bursts():
    b = budget(rate=4.0)
    times = starts(b, 9)
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [0.25] * 8, "one request every 1/rate seconds, from the first one on"
    assert times[-1] - times[0] == pytest.approx(2.0)
    assert b.requests == 9 and b.in_flight == 0
    assert b.waited == pytest.approx(2.0)


def test_an_unlimited_budget_never_waits():
    b = budget()
    times = starts(b, 50)
    assert set(times) == {times[0]} and not clock_of(b).slept


def test_idle_time_is_not_saved_up_as_a_burst():
    b = budget(rate=2.0)
    starts(b, 1)
    clock_of(b).advance(30.0)  # a long quiet spell
    times = starts(b, 3)
    assert [round(t - times[0], 9) for t in times] == [0.0, 0.5, 1.0]


def in_thread(b: Budget) -> Permit:
    """A permit taken by another thread (a thread that holds one gets nested permits)."""
    taken: list[Permit] = []
    thread = threading.Thread(target=lambda: taken.append(b.acquire()))
    thread.start()
    thread.join(5)
    return taken[0]


def test_concurrent_requests_are_capped_and_a_release_lets_the_next_one_go():
    b = budget(concurrent=2)
    held = [in_thread(b), in_thread(b)]
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(b.acquire()))
    worker.start()
    wait_until(lambda: b.waiting == 1, "the third request to wait")
    assert not got and b.in_flight == 2
    held[0].release()
    worker.join(5)
    assert got and b.in_flight == 2 and b.max_in_flight == 2
    held[0].release()  # releasing twice gives back one slot only
    assert b.in_flight == 2


def test_a_request_given_up_while_waiting_leaves_the_line():
    class Interrupted(Exception):
        pass

    t = FakeTime()
    interrupts = [Interrupted()]

    def sleep(seconds: float) -> None:
        if interrupts:
            raise interrupts.pop()  # the thread is interrupted while it waits for its turn
        t.sleep(seconds)

    b = Budget("registry.test", Limits(1.0), clock=t.clock, sleep=sleep)
    b.acquire().release()
    with pytest.raises(Interrupted):
        b.acquire()
    assert b.waiting == 0 and b.in_flight == 0
    b.acquire().release()  # the next one is not stuck behind it
    assert b.requests == 2


# -- 429: the whole registry slows down ---------------------------------------------------------------


def throttle(b: Budget, times: int = 1, headers: dict[str, str] | None = None) -> None:
    """``times`` requests one after the other (each after the last pause), each answered 429."""
    for _ in range(times):
        permit = b.acquire()
        permit.answered(429, headers or {})
        permit.release()


def test_a_bare_429_pauses_every_thread_but_a_stray_one_keeps_the_rate():
    b = budget(rate=10.0)
    t = clock_of(b)
    throttle(b)
    assert b.rate == 10.0 and b.slowdowns == 1 and b.throttled == 1
    before = t.clock()
    other: list[float] = []
    thread = threading.Thread(target=lambda: other.append(starts(b, 1)[0]))  # another thread
    thread.start()
    thread.join(5)
    assert other[0] - before == pytest.approx(BASE_PAUSE), "the pause holds every thread"


def test_429s_that_keep_coming_halve_the_rate():
    b = budget(rate=10.0)
    throttle(b, CUT_AFTER)
    assert b.rate == 5.0 and b.slowdowns == CUT_AFTER
    throttle(b)  # after the 2 s pause: one recovery step (6.25), then halved
    assert b.rate == 6.25 / 2


def test_many_429s_to_requests_sent_together_are_one_slow_down():
    b = budget(rate=10.0, concurrent=8)
    permits = [in_thread(b) for _ in range(8)]  # eight threads in flight when the limit hits
    for p in permits:
        p.answered(429, {})
        p.release()
    assert b.throttled == 8 and b.slowdowns == 1 and b.rate == 10.0
    throttle(b)  # the next one after the pause: the 429s keep coming
    assert b.slowdowns == 2 and b.rate == 5.0


def test_the_pause_doubles_while_429s_follow_each_other_and_resets_after_a_success():
    b = budget(rate=100.0)
    t = clock_of(b)

    def throttled_pause() -> float:
        permit = b.acquire()
        start = t.clock()
        permit.answered(429, {})
        permit.release()
        return b._pause_until - start

    assert throttled_pause() == BASE_PAUSE
    assert throttled_pause() == 2 * BASE_PAUSE
    assert throttled_pause() == 4 * BASE_PAUSE
    ok = b.acquire()
    ok.answered(200, {})
    ok.release()
    assert throttled_pause() == BASE_PAUSE, "a success in between: the next 429 starts over"


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "3600"}, MAX_PAUSE),
        ({"RateLimit-Limit": "15", "RateLimit-Remaining": "0", "RateLimit-Reset": "3"}, 3.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}, 12.0),
        ({"Retry-After": "2", "RateLimit-Reset": "30"}, 2.0),
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}, BASE_PAUSE),
    ],
    ids=[
        "retry-after",
        "retry-after-capped",
        "ratelimit-reset",
        "x-ratelimit-epoch",
        "retry-after-first",
        "docker-hub-pull-window",
    ],
)
def test_the_pause_follows_what_the_429_says(headers, pause):
    b = budget(rate=10.0)
    permit = b.acquire()
    start = b.clock()
    permit.answered(429, headers)
    permit.release()
    assert b._pause_until - start == pytest.approx(pause)


def test_a_late_429_with_a_longer_retry_after_lengthens_the_pause_without_slowing_again():
    b = budget(rate=10.0, concurrent=2)
    first, second = in_thread(b), in_thread(b)
    start = b.clock()
    first.answered(429, {})
    second.answered(429, {"Retry-After": "9"})
    assert b.slowdowns == 1 and b._pause_until - start == pytest.approx(9.0)


def test_the_rate_recovers_step_by_step_to_the_configured_one():
    b = budget(rate=10.0)
    t = clock_of(b)
    throttle(b, CUT_AFTER)
    seen = [b.rate]
    for _ in range(5):
        t.advance(RECOVERY_SECONDS)
        seen.append(b.rate)
    assert seen == [5.0, 6.25, 7.8125, 9.765625, 10.0, 10.0]


def test_an_unlimited_budget_slows_to_half_the_observed_rate_then_is_unlimited_again():
    b = budget(concurrent=64)
    t = clock_of(b)
    for _ in range(40):  # 40 requests in 2 s: 20 per second
        starts(b, 1)
        t.advance(0.05)
    throttle(b, CUT_AFTER)  # at 102 s (a pause of 1 s), at 103 s: 22 requests in the last 2 s
    assert b.rate == pytest.approx(22 / OBSERVE_SECONDS / 2)
    t.advance(RECOVERY_SECONDS * 3)  # 1.25 ** 3 < 2: still limited
    assert b.rate == pytest.approx(22 / OBSERVE_SECONDS / 2 * 1.25**3)
    t.advance(RECOVERY_SECONDS)
    assert b.rate is None, "back to no limit once the rate that drew the 429s is reached again"


def test_a_young_budget_observes_its_rate_since_its_first_request():
    b = budget()
    t = clock_of(b)
    for _ in range(10):  # 10 requests in the first half second: 20 per second
        starts(b, 1)
        t.advance(0.05)
    throttle(b, CUT_AFTER)  # at 100.5 s, then after the pause at 101.5 s: 12 requests in 1.5 s
    assert b.rate == pytest.approx(12 / 1.5 / 2)


def test_the_rate_never_drops_below_the_floor():
    b = budget(rate=0.3)
    throttle(b, 5)
    assert b.rate == MIN_RATE


def test_an_allowance_said_to_be_spent_pauses_before_any_429():
    b = budget()
    p = b.acquire()
    start = b.clock()
    p.answered(200, {"RateLimit-Limit": "15;w=1", "RateLimit-Remaining": "0;w=1"})
    p.release()
    assert b._pause_until - start == pytest.approx(1.0) and b.slowdowns == 0
    # Docker Hub's pull window (6 h) is no pause: pushes and HEADs do not count against it
    p = b.acquire()
    p.answered(200, {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"})
    p.release()
    assert b._pause_until - start == pytest.approx(1.0)


# -- priority -------------------------------------------------------------------------------------


def test_event_work_goes_ahead_of_backfill_waiting_before_it():
    b = budget(concurrent=1)
    held = b.acquire()
    order: list[str] = []

    def wait_for(level: Priority, name: str) -> None:
        with priority(level):
            permit = b.acquire()
        order.append(name)
        permit.release()

    backfill = [threading.Thread(target=wait_for, args=(Priority.BACKFILL, f"backfill{i}")) for i in range(3)]
    for i, thread in enumerate(backfill):
        thread.start()
        wait_until(lambda n=i + 1: b.waiting == n, "backfill in line")
    event = threading.Thread(target=wait_for, args=(Priority.EVENT, "event"))
    event.start()
    wait_until(lambda: b.waiting == 4, "the event in line")
    held.release()
    for thread in [*backfill, event]:
        thread.join(5)
    assert order == ["event", "backfill0", "backfill1", "backfill2"]


def test_priority_is_carried_into_pool_threads_and_restored():
    assert current_priority() is Priority.EVENT
    with priority(Priority.BACKFILL), InvocationPool(2) as pool:
        assert pool.submit(current_priority).result() is Priority.BACKFILL
    assert current_priority() is Priority.EVENT


# -- one budget per host -------------------------------------------------------------------------


def test_every_client_of_a_host_shares_one_budget_under_the_strictest_limits():
    budgets = Budgets()
    a = budgets.for_host("Registry-1.Docker.io", Limits(10.0, 8))
    b = budgets.for_host("registry-1.docker.io", Limits(5.0, None))
    c = budgets.for_host("registry.cn-hangzhou.aliyuncs.com", Limits(10.0, 8))
    assert a is b and a is not c
    assert a.limits == Limits(5.0, 8) and a.rate == 5.0
    del a, b
    gc.collect()
    assert budgets.for_host("registry-1.docker.io").limits == Limits(), "a budget no client holds is gone"


def test_limits_are_checked():
    with pytest.raises(ValueError, match="requests_per_second"):
        Limits(0.0)
    with pytest.raises(ValueError, match="concurrent_requests"):
        Limits(None, 0)
    assert Limits(2.0).stricter(Limits(None, 3)) == Limits(2.0, 3)


# -- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, RateLimitInfo()),
        (
            {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"},
            RateLimitInfo(100, 76, None, 21600),
        ),
        (
            {"RateLimit-Limit": "15", "RateLimit-Remaining": "3", "RateLimit-Reset": "2"},
            RateLimitInfo(15, 3, 2),
        ),
        (
            {
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(NOW) + 90),
            },
            RateLimitInfo(5000, 0, 90),
        ),
        ({"X-RateLimit-Reset": str(int(NOW) - 5)}, RateLimitInfo(None, None, 0)),
        ({"RateLimit-Remaining": "lots", "RateLimit-Limit": "10, 10;w=1"}, RateLimitInfo(10, None, None, 1)),
    ],
    ids=["none", "docker-hub", "ietf-draft", "x-ratelimit-epoch", "reset-in-the-past", "malformed"],
)
def test_rate_limit_headers(headers, expected):
    assert rate_limit_info(headers, NOW) == expected


def test_pause_hint_prefers_retry_after_then_the_reset():
    info = RateLimitInfo(10, 0, 4)
    assert pause_hint({"retry-after": "2"}, info, NOW) == 2.0
    assert pause_hint({"Retry-After": "soon"}, info, NOW) == 4.0
    assert pause_hint({}, RateLimitInfo(), NOW) is None
    assert RateLimitInfo(10, 0, None, 1).exhausted_for == 1 and RateLimitInfo(10, 1, 5).exhausted_for is None


# -- through the transport -------------------------------------------------------------------------


def test_a_429_to_one_client_pauses_the_next_request_of_another_client_of_the_host():
    t = FakeTime()
    b = Budget("one-host", Limits(), clock=t.clock, sleep=t.sleep)
    with ScriptedServer(sequence(Reply(429, {"Retry-After": "5"}), Reply(200), Reply(200))) as srv:
        first = Transport(budget=b, sleep=Waits())
        second = Transport(budget=b, sleep=Waits())
        assert first.send("GET", f"{srv.url}/v2/", retry=False).status_code == 429
        before = t.clock()
        assert second.send("GET", f"{srv.url}/v2/").status_code == 200
    assert t.clock() - before == pytest.approx(5.0), "the other client waited for the pause"
    assert b.throttled == 1 and b.slowdowns == 1


def test_a_throttled_request_is_retried_after_the_budget_s_pause_not_its_own_backoff():
    t = FakeTime()
    b = Budget("one-host", Limits(), clock=t.clock, sleep=t.sleep)
    waits = Waits()
    with ScriptedServer(sequence(Reply(429), Reply(429), Reply(200, body=b"ok"))) as srv:
        transport = Transport(budget=b, sleep=waits)
        response = transport.send("GET", f"{srv.url}/v2/")
        assert response.status_code == 200 and len(srv.requests) == 3
    assert waits == [0.0, 0.0], "no backoff of its own on a 429"
    assert b.slowdowns == 2 and sum(t.slept) >= 1.0 + 2.0, "the budget's pauses: 1 s, then doubled"


def test_every_request_of_a_client_is_charged_its_token_included(token_registry_src):
    b = Budget(token_registry_src.host, Limits())
    client = RegistryClient(
        token_registry_src.url, StaticCredentials(Credentials(*READER)), transport=Transport(budget=b)
    )
    assert client.list_tags("library/alpine")
    assert client.auth.tokens_fetched >= 1
    assert b.requests == client.transport.requests_sent >= 3  # challenge, token, listing
    assert b.in_flight == 0


def test_a_redirect_to_another_host_is_not_charged_to_the_registry():
    with ScriptedServer(lambda r: Reply(200, body=b"blob")) as storage:
        with ScriptedServer(lambda r: Reply(307, {"Location": f"{storage.url}/blob"})) as registry:
            b = Budget(registry.url, Limits())
            transport = Transport(budget=b, sleep=Waits())
            response = transport.send("GET", f"{registry.url}/v2/r/blobs/sha256:x", follow_redirects=True)
            assert response.content == b"blob"
    assert transport.requests_sent == 2 and b.requests == 1


def test_a_registry_client_gets_the_process_budget_of_its_host():
    a = RegistryClient("http://127.0.0.1:9/", limits=Limits(3.0, 2))
    b = RegistryClient("http://127.0.0.1:9", limits=Limits(None, 4))
    assert a.transport.budget is b.transport.budget
    assert a.transport.budget is not None and a.transport.budget.limits == Limits(3.0, 2)
    assert RegistryClient("http://127.0.0.1:10").transport.budget is not a.transport.budget


def test_a_thread_holding_a_permit_gets_its_token_request_through_ahead_of_the_line():
    b = budget(concurrent=1)
    held = b.acquire()
    waiter = threading.Thread(target=lambda: b.acquire().release())
    waiter.start()
    wait_until(lambda: b.waiting == 1, "another request in line")
    nested = b.acquire()  # the token for the request it holds a permit for: no slot, no line
    assert nested.nested and b.in_flight == 1 and b.waiting == 1
    nested.release()
    held.release()
    waiter.join(5)
    assert b.in_flight == 0 and b.requests == 3


def test_a_token_is_taken_after_the_wait_in_line_so_it_cannot_expire_in_it(fresh_issuer, fresh_registry):
    issuer = fresh_issuer(lifetime=1)  # fresh for 0.8 s; the line below is 3 s long
    registry = fresh_registry(token_issuer=issuer)
    registry.pusher().push("team/app", images.oci_image("budget-line", (64,)), "1.0")
    b = Budget(registry.host, Limits(4.0))
    client = RegistryClient(
        registry.url, StaticCredentials(Credentials(*READER)), transport=Transport(budget=b)
    )
    with InvocationPool(12) as pool:
        tags = list(pool.map(lambda _: client.list_tags("team/app"), range(12)))
    assert tags == [["1.0"]] * 12, "no request was refused for a token that expired while it waited"
    assert client.auth.tokens_fetched >= 2, "tokens were renewed along the line"
