"""``make bench`` scenario group ``day``: a compressed day at fleet scale, the timer's design
measured (issue 20).

The pipeline of the Azure app runs in this process on one simulated clock (``bench/day_world.py``):
every tick calls ``azure/timer.schedule_messages`` (the host's previous run: 15 minutes before),
then ``azure/handlers.process_message`` for every message it enqueued, and for every message those
leave over, as the queue would deliver them; pushes happen between ticks through the ACR stand-in,
and their Event Grid events (shaped like ``tests/fixtures/events/image-pushed.eventgrid.json``)
go through ``handlers.event_messages`` and then the worker. The worker tier
(``tests/worker/test_worker_contract.py``) runs the same functions inside the real Functions
Python worker.

Phases, on one catalog, one state and one clock:

  onboarding   one tick with an empty state, mirrors already complete: every repository fully
               checked (what a lost or reset state costs)
  events       a day of ``ticks`` ticks with ``pushes`` pushes, each with its event
  lost         the next day, as many pushes, every event lost
  no-op        one tick with nothing changed and no full check due (a tick after the last one, its
               window one minute long: see :meth:`Replay.noop`)
  previous     the design before issue 20, ``old_ticks`` ticks: one ``repository`` message per
               repository and target every tick (each worker lists the source and the target),
               full checks spread as then, one push without its event before each tick; scaled
               to a day by ``ticks / old_ticks``

Every target request made while the worker handles a repository is put down to what that
repository's work was: a full check, a copy (it copied a tag or a referrer; an event's work), or
other (a look that copied nothing). Figures and goals: ``bench/day_report.py``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import corpus
from bench.day_world import DayWorld, Usage
from sync_core.azure.handlers import event_messages, process_message
from sync_core.azure.messages import MessageKind, WorkMessage
from sync_core.azure.timer import schedule_messages
from sync_core.errors import SyncError, describe
from sync_core.plan.schedule import spread_moment_passed
from sync_core.plan.work import Check
from tests.harness import images
from tests.harness.acr import format_ticks, from_ticks, to_ticks
from tests.harness.images import Manifest
from tests.harness.paths import ROOT

EVENT = ROOT / "tests" / "fixtures" / "events" / "image-pushed.eventgrid.json"
INTERVAL = dt.timedelta(minutes=15)  # SYNC_SCHEDULE's default
MAX_DEQUEUE = 5  # host.json maxDequeueCount: a message that fails this often goes to the poison queue


@dataclass(frozen=True)
class DayProfile:
    name: str
    repositories: int
    tags: int
    ticks: int  # a day; SYNC_FULL_CHECK_HOURS is set to its length
    pushes: int  # a day
    old_ticks: int  # of the previous design, measured and scaled

    @property
    def full_check_hours(self) -> float:
        return self.ticks * INTERVAL.total_seconds() / 3600


FULL = DayProfile("full", 2000, 3, 96, 50, 2)
QUICK = DayProfile("quick", 40, 3, 16, 6, 2)


@dataclass
class Push:
    """One push to the source: a new tag, a moved tag, or a referrer pushed by digest."""

    kind: str  # "tag", "moved", "referrer"
    repository: str
    manifest: Manifest
    tag: str | None
    when: dt.datetime  # planned
    at: dt.datetime | None = None  # the source's time of it (ACR lastUpdateTime)
    first_tick: int = 0  # the first tick after it
    done: dict[str, tuple[dt.datetime, int]] = field(default_factory=dict)  # target -> (at, tick)

    @property
    def reference(self) -> str:
        return self.tag or self.manifest.digest

    def lags(self) -> list[float]:
        assert self.at is not None
        return [(when - self.at).total_seconds() for when, _ in self.done.values()]


@dataclass
class Figures:
    """One phase: executions by trigger, target requests by what they served, pushes, ticks."""

    label: str
    ticks: int = 0
    seconds: float = 0.0  # wall time of the phase on this machine
    executions: Counter = field(default_factory=Counter)  # timer, event, queue
    usage: dict[str, Usage] = field(default_factory=dict)  # timer, full check, copy, other
    units: Counter = field(default_factory=Counter)  # repository works (or event messages) of each
    pushes: list[Push] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timer_target_requests: int = 0  # must stay 0: the timer never asks a target
    staleness: dict[str, float] = field(default_factory=dict)  # highest recorded, per target
    app_lags: dict[str, list[float]] = field(default_factory=dict)  # registry_sync.mirror_lag

    def total(self) -> Usage:
        out = Usage()
        for usage in self.usage.values():
            out.add(usage)
        return out


class Replay:
    def __init__(self, world: DayWorld, profile: DayProfile, log: Callable[[str], None]):
        self.world = world
        self.profile = profile
        self.log = log
        self.syncer = world.syncer
        self.config = world.syncer.config
        self.rng = random.Random(f"registry-sync-bench-day:{profile.name}")
        self.event = json.loads(EVENT.read_text())
        self.pusher = world.acr.pusher()
        self.now = world.start  # the time of the last tick
        self.tick_number = 0
        self.pending: list[Push] = []
        self.figures = Figures("setup")
        self.category = "other"
        self._attribute()

    # -- attribution ------------------------------------------------------------------------------
    def _attribute(self) -> None:
        """Each repository the worker plans opens an account of its own (see the module doc)."""
        plan, execute = self.syncer.plan_repository, self.syncer.execute

        def planned(repository, summary, targets=None, check=None, since=None):
            self.settle()
            self.category = "full check" if check is Check.FULL else "other"
            self.figures.units[self.category] += 1
            return plan(repository, summary, targets, check, since)

        def executing(work, summary, **kwargs):
            before = summary.tags_copied + summary.work.referrers_copied
            left = execute(work, summary, **kwargs)
            copied = summary.tags_copied + summary.work.referrers_copied > before
            if copied and self.category == "other":
                self.figures.units["other"] -= 1
                self.figures.units["copy"] += 1
                self.category = "copy"
            return left

        self.syncer.plan_repository = planned
        self.syncer.execute = executing

    def settle(self) -> None:
        """The requests since the last settling go to the current account."""
        self.figures.usage.setdefault(self.category, Usage()).add(self.world.drain())

    # -- phases -----------------------------------------------------------------------------------
    def phase(self, label: str, run: Callable[[Figures], None]) -> Figures:
        self.settle()
        self.figures = figures = Figures(label)
        self.world.metrics.clear()
        started = time.monotonic()
        run(figures)
        self.settle()
        figures.seconds = time.monotonic() - started
        figures.staleness = {t: max(v) for t, v in self.world.metrics.staleness_seconds.items()}
        figures.app_lags = {t: list(v) for t, v in self.world.metrics.lag_seconds.items()}
        for push in figures.pushes:
            missing = [t.name for t in self.config.targets if t.name not in push.done]
            if missing:
                figures.failures.append(f"{push.repository}:{push.reference} never reached {missing}")
        self.log(
            f"day: {label}: {figures.ticks} ticks, {sum(figures.executions.values())} executions, "
            f"{figures.total().target_requests} target requests, {figures.seconds:.1f}s"
            + (f", FAILURES: {figures.failures[:3]}" if figures.failures else "")
        )
        return figures

    def onboarding(self, figures: Figures) -> None:
        self.tick(figures, self.now)

    def day(self, figures: Figures, events: bool) -> None:
        day = self.now
        pushes = self.plan_pushes(day, figures.label)
        for k in range(1, self.profile.ticks + 1):
            when = day + k * INTERVAL
            while pushes and pushes[0].when < when:
                self.push(figures, pushes.pop(0), events)
            self.tick(figures, when)
            if k % 24 == 0:
                self.log(
                    f"day: {figures.label}: tick {k} of {self.profile.ticks}, "
                    f"{sum(figures.executions.values())} executions so far"
                )

    def noop(self, figures: Figures) -> None:
        """A tick with nothing changed and no full check due: at least a tick after the last one
        (every token has expired), with the host's previous run a minute before it (a window that
        holds no repository's full check moment: with 2,000 repositories every 15-minute window
        holds some)."""
        hours, width = self.config.full_check_hours, dt.timedelta(minutes=1)
        when = self.now + INTERVAL
        while any(spread_moment_passed(n, when - width, when, hours) for n in self.world.names):
            when += width
        self.tick(figures, when, previous=when - width)

    def previous(self, figures: Figures) -> None:
        for k in range(1, self.profile.old_ticks + 1):
            when = self.now + INTERVAL
            (push,) = self.plan_pushes(self.now, f"{figures.label}{k}", count=1)
            self.push(figures, push, events=False)
            self.tick(figures, when, old=True)

    # -- one tick ---------------------------------------------------------------------------------
    def tick(
        self, figures: Figures, when: dt.datetime, *, previous: dt.datetime | None = None, old: bool = False
    ) -> None:
        self.world.clock.advance_to(when)
        self.settle()
        self.now = when
        self.tick_number += 1
        self.category = "timer"
        last = previous or when - INTERVAL
        if old:
            messages = self.old_timer(last, when)
        else:
            messages = schedule_messages(self.syncer, self.world.state, last)
        figures.executions["timer"] += 1
        timer = self.world.drain()
        figures.usage.setdefault("timer", Usage()).add(timer)
        figures.timer_target_requests += timer.target_requests
        self.run_queue(figures, messages, old=old)
        figures.ticks += 1

    def old_timer(self, previous: dt.datetime, now: dt.datetime) -> list[str]:
        """The timer before issue 20: every repository, to every target, a message each."""
        hours = self.config.full_check_hours
        return [
            WorkMessage(
                MessageKind.REPOSITORY,
                name,
                target.name,
                full_check=spread_moment_passed(name, previous, now, hours),
            ).dumps()
            for name in self.syncer.repositories()
            for target in self.config.targets
        ]

    def run_queue(
        self, figures: Figures, messages: list[str], *, old: bool = False, event: bool = False
    ) -> None:
        """Every message, and what each leaves over, in turn; a failing one is tried again as the
        host does, up to ``maxDequeueCount`` times (then it would be in the poison queue)."""
        queue = deque(messages)
        while queue:
            text = queue.popleft()
            for _ in range(MAX_DEQUEUE):
                if event:
                    self.settle()
                    self.category = "copy"
                    figures.units["copy"] += 1
                figures.executions["queue"] += 1
                try:
                    summary, leftover = process_message(
                        text, self.syncer, state=None if old else self.world.state
                    )
                except SyncError as exc:
                    figures.failures.append(describe(exc))
                    continue
                figures.failures += [f"{f.item}: {f.reason}" for f in summary.failures]
                queue.extend(leftover)
                break
            self.settle()
            self.category = "other"
            self.observe()

    # -- pushes -----------------------------------------------------------------------------------
    def plan_pushes(self, start: dt.datetime, label: str, count: int | None = None) -> list[Push]:
        """``count`` (default: the profile's) pushes spread over the day (or the next tick), each
        in a repository of its own: mostly new tags, every tenth from the fourth a moved tag, from
        the sixth a referrer pushed by digest."""
        count = count or self.profile.pushes
        span = INTERVAL * (self.profile.ticks if count > 1 else 1)
        slot = span / count
        out = []
        for i, repository in enumerate(self.rng.sample(self.world.names, count)):
            when = start + slot * (i + self.rng.uniform(0.05, 0.95))
            seed = f"day-{label}-{i}"
            if i % 10 == 5:
                manifest = images.signature(seed, corpus.wide_image())  # on the tags' image
                out.append(Push("referrer", repository, manifest, None, when))
            elif i % 10 == 3:
                out.append(Push("moved", repository, images.oci_image(seed, (700 + i,)), "t01", when))
            else:
                out.append(
                    Push("tag", repository, images.oci_image(seed, (700 + i,)), f"{label}-{i:02d}", when)
                )
        return out

    def push(self, figures: Figures, push: Push, events: bool) -> None:
        self.world.clock.advance_to(push.when)
        self.settle()
        self.pusher.push(push.repository, push.manifest, push.tag)
        if push.tag is not None:
            times = self.world.acr.tag_times(push.repository, push.tag)
            assert times is not None
            push.at = times[1]
        else:
            push.at = from_ticks(self.world.acr.manifests_of(push.repository)[push.manifest.digest].updated)
        push.first_tick = self.tick_number + 1
        figures.pushes.append(push)
        self.pending.append(push)
        if events:
            figures.executions["event"] += 1
            self.run_queue(figures, event_messages(self.event_of(push), self.config), event=True)

    def event_of(self, push: Push) -> dict:
        """The ImagePushed event ACR sends for ``push`` (EventGridSchema)."""
        assert push.at is not None
        event = copy.deepcopy(self.event)
        stamp = format_ticks(to_ticks(push.at))
        event["id"] = str(uuid.UUID(int=self.rng.getrandbits(128)))
        event["eventTime"] = stamp
        event["subject"] = f"{push.repository}:{push.tag}" if push.tag else push.repository
        data = event["data"]
        data["id"] = str(uuid.UUID(int=self.rng.getrandbits(128)))
        data["timestamp"] = stamp
        data["request"]["host"] = self.world.acr.host
        target = data["target"]
        size = push.manifest.size
        target.update(mediaType=push.manifest.media_type, size=size, length=size, digest=push.manifest.digest)
        target["repository"] = push.repository
        if push.tag:
            target["tag"] = push.tag
        else:
            target.pop("tag", None)
        return event

    def observe(self) -> None:
        """Which pending pushes are now at which target (asked directly, not counted)."""
        now = self.world.clock.now()
        for push in list(self.pending):
            for target in self.config.targets:
                if target.name in push.done:
                    continue
                if self.world.held(target.name, push.repository, push.reference) == push.manifest.digest:
                    push.done[target.name] = (now, self.tick_number)
            if len(push.done) == len(self.config.targets):
                self.pending.remove(push)


def run(profile: DayProfile, workdir: Path, log: Callable[[str], None]) -> dict[str, Figures]:
    """The phases (see the module doc), in order; returns each one's figures."""
    started = time.monotonic()
    world = DayWorld(profile.repositories, profile.tags, profile.full_check_hours, workdir)
    try:
        log(
            f"day: seeded {profile.repositories} repositories x {profile.tags} tags, 2 mirrors, in {time.monotonic() - started:.1f}s"
        )
        replay = Replay(world, profile, log)
        out = {}
        out["onboarding"] = replay.phase("onboarding", replay.onboarding)
        out["events"] = replay.phase("events", lambda f: replay.day(f, events=True))
        out["lost"] = replay.phase("lost", lambda f: replay.day(f, events=False))
        out["noop"] = replay.phase("noop", replay.noop)
        out["previous"] = replay.phase("previous", replay.previous)
        return out
    finally:
        world.close()
