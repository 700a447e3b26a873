"""The timer's state (azure/state.py) in a real Azure Table: Azurite's table service."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from sync_core.azure.state import TableState, table_name
from sync_core.azure.storage import StorageAccess
from sync_core.errors import SyncError
from sync_core.plan.schedule import Decision, Why, decide
from tests.harness.azurite import ACCOUNT_KEY

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)


def test_each_writer_merges_its_own_fields_and_reads_give_them_back(state):
    assert state.load("hub") == {}  # no table yet: nothing recorded
    names = [f"gs/team-{i}/app" for i in range(130)]  # more than one transaction of 100
    state.enqueued("hub", [Decision(n, Why.NEW, True, f"F-{n}") for n in names], NOW)
    state.succeeded("hub", names[0], f"F-{names[0]}", NOW + dt.timedelta(minutes=1), full_check=True)
    state.failed("hub", names[1], "boom " * 200, NOW + dt.timedelta(minutes=2))
    loaded = state.load("hub")
    assert sorted(loaded) == sorted(names)
    done, broken, waiting = loaded[names[0]], loaded[names[1]], loaded[names[2]]
    assert (done.source, done.mirrored, done.full_checked) == (
        f"F-{names[0]}",
        NOW + dt.timedelta(minutes=1),
        done.mirrored,
    )
    assert (done.enqueued, done.enqueued_source) == (NOW, f"F-{names[0]}")  # the timer's fields kept
    assert broken.failing and len(broken.reason or "") == 500 and broken.source is None
    assert waiting.source is None and waiting.enqueued == NOW and not waiting.failing
    assert state.load("other") == {}  # a target is a partition of its own


def test_concurrent_writers_of_one_entity_lose_nothing(state):
    """The timer recording an enqueue and a worker recording a success, at the same moment, many
    times over: every field of both survives (MERGE, not replace)."""
    barrier = threading.Barrier(2)
    rounds = 15

    def timer() -> None:
        for i in range(rounds):
            barrier.wait(timeout=30)
            state.enqueued(
                "hub", [Decision("gs/app", Why.CHANGED, False, f"T{i}")], NOW + dt.timedelta(seconds=i)
            )

    def worker() -> None:
        for i in range(rounds):
            barrier.wait(timeout=30)
            state.succeeded("hub", "gs/app", f"W{i}", NOW + dt.timedelta(seconds=i), full_check=i % 2 == 0)

    threads = [threading.Thread(target=timer), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    (recorded,) = state.load("hub").values()
    last = NOW + dt.timedelta(seconds=rounds - 1)
    assert (recorded.enqueued, recorded.enqueued_source) == (last, f"T{rounds - 1}")
    assert (recorded.mirrored, recorded.source) == (last, f"W{rounds - 1}")
    assert recorded.full_checked == NOW + dt.timedelta(seconds=max(i for i in range(rounds) if i % 2 == 0))


def test_a_lost_state_makes_every_repository_new_so_one_full_pass_follows(state):
    state.succeeded("hub", "gs/app", "F1", NOW, full_check=True)
    assert (
        decide(
            "gs/app", state.load("hub")["gs/app"], "F1", None, previous=NOW, now=NOW, full_check_hours=24
        ).why
        is None
    )
    state.client.delete_table()  # an operator reset it, or a new storage account
    state._created = False
    lost = state.load("hub").get("gs/app")
    decision = decide("gs/app", lost, "F1", None, previous=NOW, now=NOW, full_check_hours=24)
    assert (decision.why, decision.full_check) == (Why.NEW, True)
    state.enqueued("hub", [decision], NOW)  # the table comes back on the next write
    assert state.load("hub")["gs/app"].enqueued == NOW


def test_the_table_is_named_after_the_queue():
    assert table_name("sync-work") == "syncworkstate"
    assert table_name("9lives") == "t9livesstate"


def test_a_refused_account_is_a_clear_error_without_the_key(azurite_tables):
    wrong = azurite_tables.connection_string().replace(ACCOUNT_KEY, "d3Jvbmcga2V5" * 8)
    store = TableState.for_access(StorageAccess(connection_string=wrong), "refused")
    with pytest.raises(
        SyncError, match=r"reading the state of hub in table refusedstate at storage account devstoreaccount1"
    ) as refused:
        store.load("hub")
    assert "d3Jvbmcga2V5" not in str(refused.value) and ACCOUNT_KEY not in str(refused.value)
