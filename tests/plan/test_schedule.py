"""The timer's decision per (repository, target): plan/schedule.py, table-driven (pure functions)."""

from __future__ import annotations

import datetime as dt

import pytest

from sync_core.plan.schedule import OUTSTANDING, RepositoryState, Why, decide, staleness

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
AGO = NOW - dt.timedelta(minutes=15)  # the previous timer run
HOUR = dt.timedelta(hours=1)
MIRRORED = RepositoryState("gs/app", source="F1", mirrored=NOW - 2 * HOUR, full_checked=NOW - 2 * HOUR)


def state(**changes) -> RepositoryState:
    values = {**MIRRORED.__dict__, **changes}
    return RepositoryState(**values)


# (case, recorded state, fingerprint now, expected why, expected full check)
CASES = [
    ("nothing recorded: new, fully checked once", None, "F1", Why.NEW, True),
    ("unchanged, checked lately: nothing to do", MIRRORED, "F1", None, False),
    ("the fingerprint moved: changed", MIRRORED, "F2", Why.CHANGED, False),
    ("never confirmed, only enqueued long ago", state(source=None, mirrored=None), "F1", Why.CHANGED, False),
    ("its last work failed", state(failed=NOW - HOUR), "F1", Why.FAILED, False),
    ("a failure before the last success is over", state(failed=NOW - 3 * HOUR), "F1", None, False),
    (
        "full check overdue (its moment missed)",
        state(full_checked=NOW - 31 * HOUR),
        "F1",
        Why.FULL_CHECK,
        True,
    ),
    ("never fully checked", state(full_checked=None), "F1", Why.FULL_CHECK, True),
    ("no metadata at the source (plain OCI)", MIRRORED, None, Why.UNKNOWN, False),
    (
        "work for this change is on its way: not again",
        state(enqueued=NOW - 10 * dt.timedelta(minutes=1), enqueued_source="F2"),
        "F2",
        None,
        False,
    ),
    (
        "work on its way was for an older change: the new one is enqueued",
        state(enqueued=NOW - 10 * dt.timedelta(minutes=1), enqueued_source="F1"),
        "F2",
        Why.CHANGED,
        False,
    ),
    (
        "work enqueued long ago never reported back (timed out): again",
        state(enqueued=NOW - OUTSTANDING - HOUR, enqueued_source="F2"),
        "F2",
        Why.CHANGED,
        False,
    ),
    (
        "work that failed after it was enqueued: again at once",
        state(
            enqueued=NOW - 20 * dt.timedelta(minutes=1),
            enqueued_source="F1",
            failed=NOW - 5 * dt.timedelta(minutes=1),
        ),
        "F1",
        Why.FAILED,
        False,
    ),
]


@pytest.mark.parametrize(
    ("recorded", "source", "why", "full"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(recorded, source, why, full):
    decision = decide(
        "gs/app", recorded, source, NOW - HOUR, previous=AGO, now=NOW, full_check_hours=24, periodic=True
    )
    assert (decision.why, decision.full_check) == (why, full)
    assert decision.source == source
    assert decision.since == (recorded.mirrored if recorded else None)


def test_without_periodic_checks_a_new_repository_is_looked_at_but_not_fully():
    decision = decide("gs/app", None, "F1", None, previous=AGO, now=NOW, full_check_hours=24, periodic=False)
    assert (decision.why, decision.full_check) == (Why.NEW, False)


def test_a_change_counts_from_its_source_time_until_it_is_confirmed():
    began = NOW - 3 * HOUR
    first = decide("gs/app", MIRRORED, "F2", began, previous=AGO, now=NOW, full_check_hours=24)
    assert (first.changed_since, first.changed_base) == (began, "F1")
    # later runs keep the start while the confirmed fingerprint is still the base
    kept = state(changed_since=began, changed_base="F1")
    later = decide("gs/app", kept, "F3", NOW, previous=AGO, now=NOW + HOUR, full_check_hours=24)
    assert later.changed_since == began
    # a success with an older fingerprint (F2) while F3 waits: a new change begins
    moved = state(source="F2", changed_since=began, changed_base="F1")
    anew = decide("gs/app", moved, "F3", NOW, previous=AGO, now=NOW + HOUR, full_check_hours=24)
    assert (anew.changed_since, anew.changed_base) == (NOW, "F2")
    # confirmed: no change, no staleness
    done = decide("gs/app", state(source="F3"), "F3", NOW, previous=AGO, now=NOW + HOUR, full_check_hours=24)
    assert done.changed_since is None
    assert staleness([first, done], NOW) == 3 * 3600
    assert staleness([done], NOW) == 0.0


def test_a_source_time_in_the_future_counts_from_now():
    decision = decide("gs/app", MIRRORED, "F2", NOW + HOUR, previous=AGO, now=NOW, full_check_hours=24)
    assert decision.changed_since == NOW
