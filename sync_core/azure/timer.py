"""What the timer does: find what changed at the source, and enqueue only that (and the full checks due).

One run (``sync_schedule``, every ``SYNC_SCHEDULE``):

1. list the catalog, apply the filters and the name mapping (two repositories mapped onto one
   stop the run);
2. read each repository's fingerprint at the source (ACR metadata: two small requests each,
   side by side; ``plan/catalog.Fingerprint``); a plain OCI source has none: every repository
   is looked at, every run;
3. per target, load what the state (``azure/state.py``) recorded of each repository and decide
   (``plan/schedule.decide``): new, changed, failed, full check due, or nothing;
4. enqueue the repositories to look at, in ``repositories`` messages of :data:`BATCH_SIZE`
   (one execution for many repositories), and record that they were enqueued;
5. record the staleness per target (``registry_sync.staleness``: the oldest source change not
   yet confirmed there).

It never asks a target anything: a run with nothing changed sends no request to any mirror and
enqueues nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from sync_core import logs
from sync_core.azure.messages import RepositoryWork, WorkMessage
from sync_core.azure.state import StateStore
from sync_core.config.model import Compare, TargetConfig
from sync_core.errors import NameRejected, describe
from sync_core.jobs.syncer import Syncer
from sync_core.plan.catalog import parse_time
from sync_core.plan.mapping import check_mappings
from sync_core.plan.schedule import Decision, RepositoryState, decide, staleness
from sync_core.report.metrics import Trigger

log = logging.getLogger("sync_core.work")

#: Repositories per ``repositories`` message: a few dozen no-op checks take seconds, and a batch
#: left unfinished by the time budget is re-enqueued from where it stopped.
BATCH_SIZE = 50


def last_run(schedule_status: object) -> dt.datetime | None:
    """The previous timer run from the host's schedule status (``{"Last": "<ISO time>", ...}``)."""
    last = schedule_status.get("Last") if isinstance(schedule_status, dict) else None
    when = parse_time(last)
    # the host writes "0001-01-01T00:00:00" before the first run
    return when if when is not None and when.year > 2000 else None


def schedule_messages(
    syncer: Syncer, state: StateStore, previous: dt.datetime | None = None, now: dt.datetime | None = None
) -> list[str]:
    """The timer's run (see the module doc): the queue messages to send.

    ``previous``: when the timer last ran (the host's schedule status), to spread the periodic
    full checks over ``SYNC_FULL_CHECK_HOURS``.
    """
    with syncer.metrics.timed(Trigger.TIMER):
        config = syncer.config
        now = now or syncer.clock()
        repositories = syncer.repositories()

        def not_enqueued(target: TargetConfig, repository: str, exc: NameRejected) -> None:
            message = f"not enqueued {repository} for {target.name}: {exc}"
            logs.decision(log, "ignored", message, repository=repository, target=target.name)

        mapped = check_mappings(config, repositories, not_enqueued)  # two onto one: stop here
        wanted = sorted({r for names in mapped.values() for r in names})
        fingerprints = syncer.fingerprints(wanted) if syncer.source.fingerprints else {}
        sources: dict[str, tuple[str | None, dt.datetime | None]] = {}
        for repository in wanted:
            found = fingerprints.get(repository)
            if isinstance(found, BaseException):
                logs.decision(
                    log,
                    "warning",
                    f"{repository}: its source metadata could not be read ({describe(found)}): looked at anyway",
                    level=logging.WARNING,
                    repository=repository,
                )
                sources[repository] = (None, None)
            elif found is not None:
                sources[repository] = (found.text(), found.updated)
            elif not syncer.source.fingerprints:
                sources[repository] = (None, None)
            # else: gone since the catalog was listed
        messages: list[str] = []
        for target in config.targets:
            names = [r for r in wanted if r in mapped.get(target.name, {}) and r in sources]
            messages += _target_run(syncer, state, target, names, sources, previous, now)
        return messages


def _target_run(
    syncer: Syncer,
    state: StateStore,
    target: TargetConfig,
    names: list[str],
    sources: dict[str, tuple[str | None, dt.datetime | None]],
    previous: dt.datetime | None,
    now: dt.datetime,
) -> list[str]:
    config = syncer.config
    recorded = state.load(target.name)
    decisions = [
        decide(
            name,
            recorded.get(name),
            *sources[name],
            previous=previous,
            now=now,
            full_check_hours=config.full_check_hours,
            periodic=config.compare is Compare.RECENT,
        )
        for name in names
    ]
    chosen = [d for d in decisions if d.why is not None]
    state.enqueued(target.name, chosen, now)
    begun = [
        d
        for d in decisions
        if d.why is None and d.changed_since is not None and _new_change(recorded.get(d.repository), d)
    ]
    state.pending(target.name, begun)
    stale = staleness(decisions, now)
    syncer.metrics.staleness(target.name, stale)
    batches = [chosen[i : i + BATCH_SIZE] for i in range(0, len(chosen), BATCH_SIZE)]
    messages = [
        WorkMessage.repositories(
            target.name, [RepositoryWork(d.repository, d.full_check, d.source, d.since) for d in batch]
        ).dumps()
        for batch in batches
    ]
    reasons = Counter(d.why.value for d in chosen if d.why is not None)
    logs.decision(
        log,
        "enqueued",
        f"{target.name}: enqueued {len(chosen)} of {len(names)} repositories in {len(messages)} messages"
        + (f" ({', '.join(f'{n} {why}' for why, n in sorted(reasons.items()))})" if chosen else "")
        + f"; staleness {stale:.0f}s",
        target=target.name,
        count=len(chosen),
        messages=len(messages),
        full_checks=sum(1 for d in chosen if d.full_check),
        staleness_seconds=round(stale, 1),
        **{f"why_{why.replace(' ', '_')}": n for why, n in reasons.items()},
    )
    return messages


def _new_change(recorded: RepositoryState | None, decision: Decision) -> bool:
    """The decision saw a change begin that the state does not hold yet."""
    return recorded is None or recorded.changed_since != decision.changed_since
