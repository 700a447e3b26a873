"""The sync job: registry clients for one configuration, planning, copying, the summary.

:class:`Syncer` is what the CLI and the queue worker hold: it builds the registry clients and
copiers once (tokens, connections and Key Vault secrets are reused), asks the
:class:`~sync_core.plan.planner.Planner` what each target lacks and executes the work. A failing tag,
repository or target is recorded in the summary and never stops the rest.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable

from sync_core.config.model import SyncConfig
from sync_core.config.secrets import SecretStore
from sync_core.engine.copier import Copier
from sync_core.engine.destination import Destination, Placement
from sync_core.logs import InvocationPool
from sync_core.plan.catalog import Fingerprint, make_source, source_actions
from sync_core.plan.planner import Planner, plan_concurrency
from sync_core.plan.work import Check, Reason, WorkItem, WorkKind, interleave
from sync_core.registry.budget import Limits, Priority, priority
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import ImageRef, is_fallback_tag
from sync_core.report import metrics as metrics_
from sync_core.report.recorder import Recorder
from sync_core.report.summary import Summary

BLOB_CONCURRENCY = 4  # blob transfers per image copy (one pool for the process: x SYNC_CONCURRENCY)

Progress = Callable[[Summary], None]

#: Work that someone is waiting for (an event, a tag message, ``copy``): its requests go ahead of
#: the timer's backfill in each registry's budget (``sync_core.registry.budget``).
EVENT_REASONS = frozenset({Reason.PUSHED, Reason.QUEUED, Reason.REQUESTED})


def work_priority(group: Iterable[WorkItem]) -> Priority:
    """The budget priority of a copy: an event's if any of its items is one."""
    return Priority.EVENT if any(w.reason in EVENT_REASONS for w in group) else Priority.BACKFILL


class Syncer:
    """Registry clients, the copier and the run logic for one configuration.

    Create once per process (the Functions host keeps it between invocations) so that tokens,
    connections and Key Vault secrets are reused.
    """

    def __init__(
        self,
        config: SyncConfig,
        *,
        secrets: SecretStore | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        metrics: metrics_.Metrics | None = None,
    ):
        self.config = config
        self.metrics = metrics or metrics_.current()  # the process's instruments (or a no-op)
        self.secrets = secrets or SecretStore(config.key_vault_url)
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        # Connections per host: every planning or copying thread and blob transfer may hold one
        # (a request beyond the pool opens a connection it then throws away: a round trip more).
        pool = max(plan_concurrency(config.concurrency), config.concurrency * (BLOB_CONCURRENCY + 1)) + 4
        # One request budget per registry host for the whole process (every thread, every
        # invocation); the source has limits only when configured, a 429 slows it all the same.
        source = config.source
        self.source_client = RegistryClient(
            source.registry,
            self.secrets.credentials(source.credentials),
            actions=source_actions(source),
            pool_size=pool,
            limits=Limits(source.requests_per_second, source.concurrent_requests),
        )
        self.source = make_source(config.source, self.source_client)
        self.target_clients: dict[str, RegistryClient] = {}
        self.destinations: dict[str, Destination] = {}
        for target in config.targets:
            client = RegistryClient(
                target.registry,
                self.secrets.credentials(target.credentials),
                actions="pull,push",
                pool_size=pool,
                limits=Limits(target.requests_per_second, target.concurrent_requests),
            )
            self.target_clients[target.name] = client
            self.destinations[target.name] = Destination(target.name, client)
        self.copier = Copier(
            self.source_client,
            blob_concurrency=config.concurrency * BLOB_CONCURRENCY,  # shared by the copies
            referrers=config.referrers,
        )
        self.planner = Planner(config, self.source, self.target_clients, self.clock)

    def close(self) -> None:
        self.copier.close()

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recorder(self, summary: Summary) -> Recorder:
        """Where this process reports the outcomes of a run that counts into ``summary``."""
        return Recorder(summary, self.metrics, self.clock)

    # -- planning -------------------------------------------------------------------------
    def repositories(self) -> list[str]:
        return self.source.repositories()

    def plan_repository(
        self,
        repository: str,
        summary: Summary,
        targets: Iterable[str] | None = None,
        check: Check | None = None,
        since: dt.datetime | None = None,
    ) -> list[WorkItem]:
        """What each target lacks of ``repository`` (failures and skips go into ``summary``).

        A repository's diff is backfill: its requests wait behind an event's in the budgets."""
        with priority(Priority.BACKFILL):
            return self.planner.plan_repository(repository, self.recorder(summary), targets, check, since)

    def fingerprints(self, repositories: list[str]) -> dict[str, Fingerprint | BaseException | None]:
        """Each repository's fingerprint at the source (None: gone), or what stopped the reading.

        Read side by side (two small metadata requests each); only a source with metadata (ACR)
        is asked: see :attr:`Source.fingerprints` (``plan/catalog.py``).
        """

        def read(repository: str) -> Fingerprint | BaseException | None:
            try:
                return self.source.fingerprint(repository)
            except Exception as exc:  # noqa: BLE001 - that repository's: the timer enqueues it anyway
                return exc

        workers = min(plan_concurrency(self.config.concurrency), max(1, len(repositories)))
        with priority(Priority.BACKFILL), InvocationPool(workers, thread_name_prefix="fingerprint") as pool:
            return dict(zip(repositories, pool.map(read, repositories), strict=True))

    # -- copying --------------------------------------------------------------------------
    def copy_group(self, group: list[WorkItem], recorder: Recorder) -> None:
        """One source image (or digest) to every target of ``group`` (one source read per blob)."""
        with priority(work_priority(group)):
            self._copy_group(group, recorder)

    def _copy_group(self, group: list[WorkItem], recorder: Recorder) -> None:
        first = group[0]
        placements: list[Placement] = []
        slot: dict[tuple[str, str, str], int] = {}  # one placement per (target, repository, reference)
        for work in group:
            key = (work.target, work.target_repository, work.reference)
            if key in slot:
                continue  # the same work twice: it would wait for its own upload claim
            slot[key] = len(placements)
            rules = self.config.target(work.target).rules
            placements.append(
                Placement(
                    self.destinations[work.target], work.target_repository, work.tag, work.at_target, rules
                )
            )
        repo, reference = first.source_repository, first.reference
        if first.kind is WorkKind.TAG:
            results = self.copier.copy_to(repo, reference, placements, expected_digest=first.digest)
        elif first.kind is WorkKind.REFERRER:
            results = self.copier.copy_referrer(repo, reference, placements)
        else:
            results = self.copier.copy_referrers_of(repo, reference, placements)
        done: set[int] = set()
        for work in group:
            index = slot[(work.target, work.target_repository, work.reference)]
            if index not in done:
                done.add(index)
                recorder.outcome(work, results[index])

    def execute(
        self,
        work: list[WorkItem],
        summary: Summary,
        *,
        deadline: float | None = None,
        progress: Progress | None = None,
    ) -> list[WorkItem]:
        """Copy every item; with a ``deadline`` (monotonic), start none after it. Returns the rest."""
        recorder = self.recorder(summary)
        left: list[WorkItem] = []
        lock = threading.Lock()

        def run(group: list[WorkItem]) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                with lock:
                    left.extend(group)
                return
            self.copy_group(group, recorder)
            if progress:
                progress(summary)

        groups = interleave(work, round_robin=self.config.concurrency > 1)
        # Tags named like referrers tags (sha256-<hex>) after the rest: the copy of the image they
        # may list the referrers of writes such a tag at a target without the referrers API, and
        # the tag's own copy (which decides by its content what it is) then finds it done.
        later = [is_fallback_tag(g[0].tag or "") for g in groups]
        with InvocationPool(self.config.concurrency, thread_name_prefix="copy") as pool:
            for phase in (False, True):
                list(pool.map(run, [g for g, last in zip(groups, later, strict=True) if last is phase]))
        return left

    # -- entry points -----------------------------------------------------------------------
    def run(
        self,
        *,
        dry_run: bool = False,
        repositories: list[str] | None = None,
        targets: list[str] | None = None,
        progress: Progress | None = None,
        check: Check | None = None,
    ) -> Summary:
        """The full job (or a dry run that only plans)."""
        started = time.monotonic()
        summary = Summary(dry_run=dry_run)
        tick = (lambda: progress(summary)) if progress else None
        with priority(Priority.BACKFILL):  # a whole catalog: behind any event work in the process
            work = self.planner.plan(self.recorder(summary), repositories, targets, tick, check)
        if dry_run:
            summary.planned = work
        else:
            self.execute(work, summary, progress=progress)
        summary.duration_seconds = time.monotonic() - started
        return summary

    def copy_image(
        self,
        ref: ImageRef,
        summary: Summary,
        targets: Iterable[str] | None = None,
        digest: str | None = None,
        reason: Reason = Reason.REQUESTED,
    ) -> None:
        """Copy one image to each target (by name mapping; tag filters do not apply)."""
        recorder = self.recorder(summary)
        tag = None if ref.is_digest else ref.reference
        digest = ref.reference if ref.is_digest else digest
        work = self.planner.image(ref.repository, WorkKind.TAG, tag, digest, reason, recorder, targets)
        if work:
            self.copy_group(work, recorder)
