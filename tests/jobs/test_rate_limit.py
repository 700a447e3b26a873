"""An initial sync into a registry behind a rate limit, as Docker Hub's abuse limit answers it.

Topology (everything on 127.0.0.1)::

    Syncer --> docker-registry (the source: 24 repositories x 2 small tags)
           --> FaultProxy(limit=WindowLimit(15)) --> docker-registry (token auth): the mirror

The proxy admits 15 requests in any second and answers a bare 429 beyond (no ``Retry-After``),
with ``RateLimit-Limit`` / ``RateLimit-Remaining`` on every answer. The target is configured with
Docker Hub's default budget (``DOCKER_HUB_DEFAULTS``), everything else is the app's default
(``SYNC_CONCURRENCY`` 8, production retry policies). With the budget the sync completes, every tag
byte-identical, with few 429s; with the budget taken out of the transports (what the code did
before it had one) the same sync is throttled request by request and fails. And the job layer
marks what waits in the budgets' lines: a repository's diff and its copies as backfill, an
event's copy ahead of them.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from sync_core.azure import handlers, messages
from sync_core.config.load import load_config
from sync_core.config.registries import DOCKER_HUB_DEFAULTS
from sync_core.jobs.syncer import Syncer, work_priority
from sync_core.plan.work import Reason, WorkItem, WorkKind
from sync_core.registry import budget as budget_module
from sync_core.registry.budget import Priority
from sync_core.registry.names import ImageRef
from sync_core.report.summary import Summary
from tests.harness import images, oci_env
from tests.harness.faultproxy import FaultProxy
from tests.harness.ratelimit import WindowLimit
from tests.harness.verify import verify_present

LIMIT = 15  # requests per second the mirror admits (the measurement)
REPOSITORIES = [f"gs/rl{i:02d}" for i in range(24)]
TAGS = ("1.0", "1.1")
CATALOG = {
    (repo, tag): images.oci_image(f"ratelimit-{repo}-{tag}", (96,)) for repo in REPOSITORIES for tag in TAGS
}
EXPECTED = {(f"mirror/{repo[len('gs/') :]}", tag): m.digest for (repo, tag), m in CATALOG.items()}


class LimitedMirror:
    """The source (seeded), the mirror and the rate-limiting proxy in front of it."""

    def __init__(self, fresh_registry):
        self.source = fresh_registry(auth="token", name="ratelimit-src")
        pusher = self.source.pusher()
        for (repo, tag), manifest in CATALOG.items():
            pusher.push(repo, manifest, tag)
        pusher.close()
        self.target = fresh_registry(auth="token", name="ratelimit-dst")
        self.limit = WindowLimit(LIMIT)
        self.proxy = FaultProxy(self.target.url, limit=self.limit)
        self.env = dict(
            oci_env(self.source, self.target, ",".join(REPOSITORIES)),
            TARGET_REGISTRY=self.proxy.url,
            # the mirror is configured as Docker Hub is by default
            TARGET_REQUESTS_PER_SECOND=str(DOCKER_HUB_DEFAULTS.requests_per_second),
            TARGET_CONCURRENT_REQUESTS=str(DOCKER_HUB_DEFAULTS.concurrent_requests),
        )

    def sync(self, *, budget: bool = True) -> Summary:
        with Syncer(load_config(self.env)) as syncer:
            if not budget:  # as before the budget: every request goes as it comes
                for client in syncer.target_clients.values():
                    client.transport.budget = None
            return syncer.run()

    def at_target(self) -> dict[tuple[str, str], str]:
        """Every tag at the mirror, deep-verified straight at the registry (not through the proxy)."""
        verifier = self.target.pusher()
        try:
            return verify_present(verifier, sorted({repo for repo, _ in EXPECTED}))
        finally:
            verifier.close()

    def statuses(self) -> Counter[int | None]:
        return Counter(r.status for r in self.proxy.log)

    def close(self) -> None:
        self.proxy.stop()


@pytest.fixture
def mirror(fresh_registry):
    world = LimitedMirror(fresh_registry)
    try:
        yield world
    finally:
        world.close()


def test_with_the_default_budget_an_initial_sync_completes_exactly_with_few_429s(mirror):
    started = time.monotonic()
    summary = mirror.sync()
    elapsed = time.monotonic() - started
    statuses = mirror.statuses()
    requests, throttled = sum(statuses.values()), statuses[429]
    print(f"\nbudgeted sync: {elapsed:.1f}s, {requests} requests at the mirror, {throttled} answered 429")
    assert summary.ok, summary.failures
    assert summary.tags_copied == len(EXPECTED)
    assert mirror.at_target() == EXPECTED, "every tag at the mirror, byte-identical to the source"
    assert throttled < 0.05 * requests, statuses
    # the budget kept the pace: never more than the configured rate in any second (+1 at the edges)
    rate = DOCKER_HUB_DEFAULTS.requests_per_second
    assert rate is not None and requests / elapsed <= rate + 1


def test_without_the_budget_the_same_sync_is_throttled_and_fails(mirror):
    summary = mirror.sync(budget=False)
    statuses = mirror.statuses()
    requests, throttled = sum(statuses.values()), statuses[429]
    present = mirror.at_target()
    print(f"\nunbudgeted sync: {requests} requests, {throttled} answered 429, {len(present)} tags mirrored")
    assert throttled > 0.25 * requests, statuses
    assert not summary.ok and len(present) < len(EXPECTED)


def test_a_repository_diff_waits_as_backfill_and_an_event_s_copy_ahead_of_it(mirror, monkeypatch):
    """Every permit the job takes, at which priority: the job layer sets it, the budget reads it."""
    levels: list[tuple[str, Priority]] = []
    acquire = budget_module.Budget.acquire

    def recording(self, level=None):
        levels.append((self.host, budget_module.current_priority() if level is None else level))
        return acquire(self, level)

    monkeypatch.setattr(budget_module.Budget, "acquire", recording)
    with Syncer(load_config(mirror.env)) as syncer:
        summary = Summary()
        work = syncer.plan_repository(REPOSITORIES[0], summary)  # a repository message: backfill
        planned = set(levels)
        levels.clear()
        syncer.execute(work, summary)
        copied = set(levels)
        levels.clear()
        syncer.copy_image(ImageRef.parse(f"{REPOSITORIES[1]}:{TAGS[0]}"), summary, reason=Reason.PUSHED)
        event = set(levels)
    assert summary.ok and summary.tags_copied == len(TAGS) + 1
    assert {level for _, level in planned} == {Priority.BACKFILL} and len({h for h, _ in planned}) == 2
    assert {level for _, level in copied} == {Priority.BACKFILL}
    assert {level for _, level in event} == {Priority.EVENT}, "an event's copy, the source's reads too"


@pytest.mark.parametrize(
    ("reasons", "level"),
    [
        ((Reason.MISSING,), Priority.BACKFILL),
        ((Reason.DIGEST_DIFFERS, Reason.FULL_CHECK, Reason.RECENT), Priority.BACKFILL),
        ((Reason.PUSHED,), Priority.EVENT),
        ((Reason.QUEUED,), Priority.EVENT),
        ((Reason.REQUESTED,), Priority.EVENT),
        ((Reason.MISSING, Reason.PUSHED), Priority.EVENT),
    ],
)
def test_a_copy_waits_at_the_priority_of_its_reasons(reasons, level):
    group = [WorkItem("t", "gs/app", "mirror/app", WorkKind.TAG, "1.0", None, reason) for reason in reasons]
    assert work_priority(group) is level


def test_work_left_over_keeps_its_reason_through_the_queue_and_so_its_place_behind_events(
    mirror, monkeypatch
):
    """A time budget re-enqueues what a repository's diff found as single messages: they keep the
    diff's reason, so their copies still wait as backfill; an event's message keeps "pushed"."""
    levels: list[Priority] = []
    acquire = budget_module.Budget.acquire

    def recording(self, level=None):
        levels.append(budget_module.current_priority() if level is None else level)
        return acquire(self, level)

    monkeypatch.setattr(budget_module.Budget, "acquire", recording)
    with Syncer(load_config(mirror.env)) as syncer:
        work = syncer.plan_repository(REPOSITORIES[2], Summary())
        left = [handlers.work_message(w) for w in work]  # as a time budget leaves them
        assert {json.loads(m)["reason"] for m in left} == {"missing"}
        levels.clear()
        summary, _ = handlers.process_message(left[0], syncer)
        assert summary.tags_copied == 1 and set(levels) == {Priority.BACKFILL}
        (other,) = set(TAGS) - {json.loads(left[0])["tag"]}
        pushed = messages.WorkMessage("tag", REPOSITORIES[2], "target", other, reason=Reason.PUSHED).dumps()
        levels.clear()
        summary, _ = handlers.process_message(pushed, syncer)
        assert summary.tags_copied == 1 and set(levels) == {Priority.EVENT}
