"""The timer's decision: which repositories to look at for a target in this run, and why.

Pure functions over what the source says now (a :class:`~sync_core.plan.catalog.Fingerprint`
per repository) and what was recorded of each (repository, target) (:class:`RepositoryState`,
kept in the app's storage account by ``azure/state.py``). A repository is enqueued when

* its state is lost or new (never confirmed mirrored): a full check, once;
* its source changed since it was last confirmed mirrored (the fingerprints differ);
* its last work failed (or never reported back within :data:`OUTSTANDING` of being enqueued:
  timed out, crashed, lost) and nothing succeeded since;
* its periodic full check is due (spread over ``SYNC_FULL_CHECK_HOURS``, or overdue);

and not while work enqueued for the same source state is still outstanding. Nothing else:
an unchanged repository costs the source two metadata requests and the targets nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import math
from dataclasses import dataclass

#: How long enqueued work may take before the timer enqueues the repository again when it has
#: not reported back (twice the worker's 30-minute function timeout).
OUTSTANDING = dt.timedelta(hours=1)
#: A full check this much later than its period is due even if its spread moment was missed.
OVERDUE_FACTOR = 1.25


@dataclass(frozen=True)
class RepositoryState:
    """What is recorded of one repository at one target (all times aware UTC; None: never).

    ``source``: the fingerprint (its text) last confirmed mirrored; ``enqueued_source``: the one
    the timer last enqueued work for; ``changed_since``: when the source's current change began,
    for the staleness figure (kept while ``changed_base`` is still the confirmed ``source``).
    """

    repository: str
    source: str | None = None
    mirrored: dt.datetime | None = None
    full_checked: dt.datetime | None = None
    enqueued: dt.datetime | None = None
    enqueued_source: str | None = None
    failed: dt.datetime | None = None
    reason: str | None = None
    changed_since: dt.datetime | None = None
    changed_base: str | None = None

    @property
    def failing(self) -> bool:
        """Its last work failed and nothing succeeded since."""
        return self.failed is not None and (self.mirrored is None or self.failed >= self.mirrored)


class Why(str, enum.Enum):
    """Why the timer enqueues a repository (logged, and counted per run)."""

    NEW = "new"  # no state: never confirmed mirrored here (or the state was lost)
    CHANGED = "changed"  # the source's fingerprint differs from the one last mirrored
    FAILED = "failed"  # its last work failed, or never reported back
    FULL_CHECK = "full check"  # its periodic full check is due
    UNKNOWN = "no metadata"  # the source cannot tell (plain OCI): every run looks


@dataclass(frozen=True)
class Decision:
    repository: str
    why: Why | None  # None: nothing to do this run
    full_check: bool = False
    source: str | None = None  # the fingerprint the work is for (None: the source cannot tell)
    since: dt.datetime | None = None  # last confirmed mirrored: changes after it are new pushes
    changed_since: dt.datetime | None = None  # for the state and the staleness figure
    changed_base: str | None = None


def spread_moment_passed(
    repository: str, previous: dt.datetime | None, now: dt.datetime, hours: float
) -> bool:
    """Whether the run at ``now`` (the one before it: ``previous``) holds ``repository``'s moment.

    Each repository has its own moment in every ``hours``-long period (from a hash of its name),
    so full checks are spread over the period instead of all falling on one run.
    """
    if previous is None:
        return False
    period = hours * 3600.0
    offset = int.from_bytes(hashlib.sha256(repository.encode()).digest()[:8], "big") % int(period)
    before = math.floor((previous.timestamp() - offset) / period)
    return math.floor((now.timestamp() - offset) / period) > before


def full_check_due(
    repository: str,
    state: RepositoryState | None,
    previous: dt.datetime | None,
    now: dt.datetime,
    hours: float,
) -> bool:
    """Its spread moment fell in (previous, now], or it was never checked, or it is overdue."""
    if state is None or state.full_checked is None:
        return True
    if spread_moment_passed(repository, previous, now, hours):
        return True
    return now - state.full_checked >= dt.timedelta(hours=hours * OVERDUE_FACTOR)


def decide(
    repository: str,
    state: RepositoryState | None,
    source: str | None,
    source_updated: dt.datetime | None,
    *,
    previous: dt.datetime | None,
    now: dt.datetime,
    full_check_hours: float,
    periodic: bool = True,
) -> Decision:
    """What the timer does with ``repository`` at one target (see the module doc).

    ``source``: the fingerprint now (None: the source cannot tell); ``source_updated``: the
    source's time of its latest change (the start of staleness when it is a new change);
    ``periodic``: whether periodic full checks run (``SYNC_COMPARE=recent``).
    """
    full = periodic and full_check_due(repository, state, previous, now, full_check_hours)
    since = state.mirrored if state is not None else None
    changed = state is None or source is None or state.source != source
    changed_since, changed_base = None, None
    if state is not None and source is not None and changed:
        if state.changed_since is not None and state.changed_base == state.source:
            changed_since, changed_base = state.changed_since, state.changed_base  # the same change goes on
        else:
            begun = source_updated if source_updated is not None and source_updated <= now else now
            changed_since, changed_base = begun, state.source
    if state is None:
        why: Why | None = Why.NEW
        full = periodic
    elif source is None:
        why = Why.UNKNOWN
    elif changed:
        why = Why.CHANGED
    elif state.failing:
        why = Why.FAILED
    elif full:
        why = Why.FULL_CHECK
    else:
        why = None
    if why is not None and state is not None and _outstanding(state, source, now):
        why = None  # its work for this very source state is on its way
    return Decision(repository, why, full, source, since, changed_since, changed_base)


def _outstanding(state: RepositoryState, source: str | None, now: dt.datetime) -> bool:
    """Work enqueued for ``source`` has not reported back yet, and may still."""
    if state.enqueued is None or state.enqueued_source != source or now - state.enqueued >= OUTSTANDING:
        return False
    reported = [t for t in (state.mirrored, state.failed) if t is not None and t >= state.enqueued]
    return not reported


def staleness(decisions: list[Decision], now: dt.datetime) -> float:
    """Seconds since the oldest source change not yet confirmed at the target (0: none).

    A change counts from the source's time of it, as the first run that saw it recorded; it
    stops counting when the work for it (or a later one) reports success. A source without
    metadata (plain OCI) has no such figure: 0.
    """
    oldest = min((d.changed_since for d in decisions if d.changed_since is not None), default=None)
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
