"""The Functions app: binding metadata, and each function called with azure.functions objects.

Called directly, as here, the functions prove their logic; the contract with the Functions worker
(indexing, registration, binding converters, logging) is proven by the worker tier, tests/worker.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

import function_app
from sync_core.azure import handlers, messages, runtime
from sync_core.errors import InvalidContent, SyncError
from sync_core.registry.retry import RetryPolicy
from tests.harness.acr import AcrStandIn
from tests.harness.function_context import Collect, Context
from tests.harness.images import oci_image, oci_index
from tests.harness.paths import EVENTS

ROOT_USER = ("sync-token", "sync-token-password")
MIRROR = ("pusher", "pusher-pass")


_FUNCTIONS = {
    f.get_function_name(): f for f in function_app.app.get_functions()
}  # indexes once, as the host does


def functions() -> dict:
    return _FUNCTIONS


def call(name: str, *args, context: Context | None = None):
    return functions()[name].get_user_function()(*args, context or Context())


def test_four_functions_with_expected_bindings():
    found = functions()
    assert set(found) == {"sync_schedule", "on_image_pushed", "sync_worker", "sync_event_worker"}
    bindings = {
        name: {b["name"]: b for b in json.loads(f.get_function_json())["bindings"]}
        for name, f in found.items()
    }
    timer = bindings["sync_schedule"]["timer"]
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%SYNC_SCHEDULE%"
    assert bindings["on_image_pushed"]["event"]["type"] == "eventGridTrigger"
    # the timer's work and the events' work: a queue and a function each, each re-enqueues on its own
    queues = {"sync_schedule": "%SYNC_QUEUE%", "sync_worker": "%SYNC_QUEUE%"}
    queues |= {"on_image_pushed": "%SYNC_EVENT_QUEUE%", "sync_event_worker": "%SYNC_EVENT_QUEUE%"}
    for name in ("sync_worker", "sync_event_worker"):
        worker = bindings[name]["msg"]
        assert (worker["type"], worker["queueName"], worker["connection"]) == (
            "queueTrigger",
            queues[name],
            "AzureWebJobsStorage",
        )
    for name in found:
        out = bindings[name]["out"]
        assert (out["type"], out["direction"], out["queueName"], out["connection"]) == (
            "queue",
            "OUT",
            queues[name],
            "AzureWebJobsStorage",
        )


@pytest.fixture(scope="module")
def acr(token_issuer):
    users = {ROOT_USER[0]: (ROOT_USER[1], {"*": ["pull", "push", "metadata_read", "delete"]})}
    with AcrStandIn(users=users, issuer=token_issuer) as stand_in:
        pusher = stand_in.pusher()
        for repo in ("giantswarm/app", "giantswarm/tools/deep", "other/thing"):
            pusher.push(repo, oci_image(f"fa-{repo}", [4096]), "1.0")
        pusher.push(
            "giantswarm/example-app", oci_index("fa-example", ["linux/amd64", "linux/arm64"], [2048]), "1.4.2"
        )
        yield stand_in


@pytest.fixture
def app_env(acr, token_registry_dst, azurite_tables, monkeypatch):
    settings = {
        "AzureWebJobsStorage": azurite_tables.connection_string(),  # the timer's state
        "SOURCE_REGISTRY": acr.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": "giantswarm",
        "SOURCE_USERNAME": ROOT_USER[0],
        "SOURCE_PASSWORD": ROOT_USER[1],
        "TARGET_REGISTRY": token_registry_dst.url,
        "TARGET_NAMESPACE": "fa-mirror",
        "TARGET_USERNAME": MIRROR[0],
        "TARGET_PASSWORD": MIRROR[1],
        "SYNC_QUEUE": f"sync-work-{secrets.token_hex(4)}",  # a state table of its own
        "SYNC_DAILY_CHECK": "false",  # its requests would fall on a tick crossing midnight UTC
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield settings
    runtime.reset()


def test_timer_enqueues_new_repositories_in_one_batch_then_only_what_changed(
    app_env, acr, token_registry_dst, monkeypatch
):
    monkeypatch.setenv(
        "TARGET_NAMESPACE", "fa-timer"
    )  # a mirror of its own: the other tests' stays as it was
    runtime.reset()
    config = runtime.shared_syncer().config
    acr.pusher().push("giantswarm/timer-app", oci_image("fa-timer-app", [1000]), "1.0")  # this test's own
    wanted = ["giantswarm/app", "giantswarm/example-app", "giantswarm/timer-app", "giantswarm/tools/deep"]

    def tick() -> list[messages.WorkMessage]:
        """A timer run whose previous run was just now: no periodic full check can fall between
        the two (each repository's moment is spread over the day), so only the state decides."""
        out = Collect()
        last = dt.datetime.now(dt.timezone.utc).isoformat()
        call("sync_schedule", TimerRequest(past_due=False, schedule_status={"Last": last}), out)
        return [messages.parse_message(m, config) for m in out.value or []]

    acr.reset_log()
    mark = len(token_registry_dst.access_log())
    (first,) = tick()  # nothing recorded yet: every repository, fully checked, in one message
    assert first.kind == "repositories" and [(w.name, w.full_check) for w in first.batch] == [
        (r, True) for r in wanted
    ]
    assert all(w.source and w.since is None for w in first.batch)
    assert acr.count(kind={"manifest", "blob"}) == 0  # metadata only: attributes and the newest tag
    assert acr.count(kind={"acr_repository"}) == acr.count(kind={"acr_tags"}) == len(wanted)
    assert token_registry_dst.access_log()[mark:] == []  # the timer never asks a target
    call("sync_worker", func.QueueMessage(id="w1", body=first.dumps().encode()), Collect())
    assert token_registry_dst.pusher().fetch_manifest("fa-timer/app", "1.0")

    acr.reset_log()
    mark = len(token_registry_dst.access_log())
    assert tick() == []  # nothing changed, nothing due: no message at all
    assert token_registry_dst.access_log()[mark:] == []
    assert acr.count() <= 1 + 3 * len(wanted), acr.log  # the catalog, then <= 3 per repository

    acr.pusher().push("giantswarm/timer-app", oci_image("fa-timer-app-2", [1024]), "2.0")  # no event
    (changed,) = tick()
    assert [(w.name, w.full_check) for w in changed.batch] == [("giantswarm/timer-app", False)]
    call("sync_worker", func.QueueMessage(id="w2", body=changed.dumps().encode()), Collect())
    assert token_registry_dst.pusher().fetch_manifest("fa-timer/timer-app", "2.0")
    assert tick() == []


def _event(name: str, **target) -> func.EventGridEvent:
    raw = json.loads((EVENTS / name).read_text())
    raw["data"]["target"].update(target)
    return func.EventGridEvent(
        id=raw["id"],
        data=raw["data"],
        topic=raw["topic"],
        subject=raw["subject"],
        event_type=raw["eventType"],
        event_time=None,
        data_version=raw["dataVersion"],
    )


def test_sample_events_give_the_documented_decisions(app_env, acr, caplog):
    caplog.set_level(logging.INFO)
    host = acr.host
    pushed = _event("image-pushed.eventgrid.json")
    pushed.get_json()["request"]["host"] = host
    out = Collect()
    call("on_image_pushed", pushed, out)
    (message,) = [messages.parse_message(m, runtime.shared_syncer().config) for m in out.value]
    assert (message.kind, message.repository, message.tag) == ("tag", "giantswarm/example-app", "1.4.2")

    for name, reason in [
        ("image-pushed-child.eventgrid.json", "not the source"),  # untagged: enqueued only from the source
        ("image-deleted.eventgrid.json", "not propagated"),
        ("image-pushed.eventgrid.json", "not the source"),  # host gsoci.azurecr.io is not our source here
    ]:
        out = Collect()
        caplog.clear()
        call("on_image_pushed", _event(name), out)
        assert out.value is None
        assert any(reason in r.getMessage() for r in caplog.records), name


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"target": "x"},
        {"target": {"repository": "giantswarm/../../etc", "tag": "1"}, "request": {"host": "h"}},
        {"target": {"repository": "giantswarm/app", "tag": "a" * 500}, "request": {"host": "h"}},
        {"target": {"repository": ["giantswarm/app"], "tag": {"x": 1}}},
        {"target": {"repository": "giantswarm/app", "tag": "1.0", "digest": "sha256:zz"}},
    ],
)
def test_malformed_events_enqueue_nothing_and_raise_nothing(app_env, acr, data):
    if "request" in data:
        data["request"]["host"] = acr.host
    event = func.EventGridEvent(
        id="x",
        data=data,
        topic="t",
        subject="s",
        event_type="Microsoft.ContainerRegistry.ImagePushed",
        event_time=None,
        data_version="1.0",
    )
    out = Collect()
    call("on_image_pushed", event, out)
    assert out.value is None


def test_worker_copies_a_repository_into_the_real_target(app_env, acr, token_registry_dst, caplog):
    out = Collect()
    body = messages.WorkMessage("repository", "giantswarm/example-app", "target").dumps()
    call("sync_worker", func.QueueMessage(id="m1", body=body.encode()), out)
    assert out.value is None
    pusher = token_registry_dst.pusher()
    source = acr.pusher()
    assert (
        pusher.fetch_manifest("fa-mirror/example-app", "1.4.2")[0]
        == source.fetch_manifest("giantswarm/example-app", "1.4.2")[0]
    )
    # a tag message for a tag already there is a no-op: nothing written or re-enqueued; the
    # source's manifest is read once (the message carries no digest), no blob
    tag_body = messages.WorkMessage("tag", "giantswarm/example-app", "target", "1.4.2").dumps()
    mark = len(token_registry_dst.access_log())
    acr.reset_log()
    caplog.set_level(logging.INFO, logger="sync_core")
    caplog.clear()
    again = Collect()
    call("sync_worker", func.QueueMessage(id="m2", body=tag_body), again)
    assert again.value is None
    assert token_registry_dst.writes(mark) == []
    assert acr.count(("blob", "upload")) == 0 and acr.manifest_gets() == 1, acr.log
    done = [m for m in caplog.messages if m.startswith("worker done:")]
    assert done == [
        "worker done: 0 copied, 1 unchanged, 0 skipped, 0 bytes uploaded | decision=done message_id=m2"
    ]


def test_worker_re_enqueues_what_the_time_budget_leaves(app_env, acr, token_registry_dst):
    syncer = runtime.shared_syncer()
    message = messages.WorkMessage("repository", "giantswarm/app", "target").dumps()
    summary, leftover = handlers.process_message(message, syncer, budget_seconds=0)
    assert summary.tags_copied == 0  # not started: the repository goes back as it came
    assert [(m["kind"], m["repositories"]) for m in map(json.loads, leftover)] == [
        ("repositories", [{"name": "giantswarm/app"}])
    ]
    summary, leftover = handlers.process_message(leftover[0], syncer)
    assert summary.tags_copied == 1 and leftover == []


def test_worker_raises_on_transient_failures_and_invalid_messages_only(app_env, acr):
    with pytest.raises(InvalidContent, match=r"^message version 9 is not supported \(expected 1\)$"):
        call("sync_worker", func.QueueMessage(id="bad", body=b'{"v": 9}'), Collect())
    # a tag gone from the source: reported as a skip, never retried into the poison queue
    missing = messages.WorkMessage("tag", "giantswarm/app", "target", "does-not-exist").dumps()
    summary, _ = handlers.process_message(missing, runtime.shared_syncer())
    assert summary.ok and "not at the source" in summary.skipped[0].reason
    call("sync_worker", func.QueueMessage(id="m3", body=missing), Collect())  # does not raise
    # a source that keeps answering 503: the host must retry the message (then poison it)
    runtime.shared_syncer().source_client.transport.retry = RetryPolicy(attempts=2, backoff_base=0.0)
    acr.fail_next(2, 503, kinds="manifest")
    again = messages.WorkMessage("tag", "giantswarm/app", "target", "1.0").dumps()
    with pytest.raises(
        SyncError,
        match=r"^1 failure\(s\) syncing giantswarm/app to target: giantswarm/app:1\.0 -> target: "
        r".*GET manifest giantswarm/app:1\.0: HTTP 503 ",
    ) as failed:
        call("sync_worker", func.QueueMessage(id="m4", body=again), Collect())
    assert failed.type is SyncError  # the worker's own "retry me", not the registry error itself


def test_cloudevents_delivery_gives_the_same_decision(app_env, acr):
    raw = json.loads((EVENTS / "image-pushed.cloudevent.json").read_text())
    raw["data"]["request"]["host"] = acr.host
    event = func.CloudEvent(
        id=raw["id"],
        source=raw["source"],
        type=raw["type"],
        specversion=raw["specversion"],
        time=None,
        subject=raw["subject"],
        data=raw["data"],
    )
    out = Collect()
    call("on_image_pushed", event, out)
    (message,) = [messages.parse_message(m, runtime.shared_syncer().config) for m in out.value]
    assert (message.kind, message.repository, message.tag) == ("tag", "giantswarm/example-app", "1.4.3")


class ThreadLocalIds(logging.Handler):
    """Records, per log record, its thread and the invocation id the 4.x worker would read there."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("sync_core"):
            found = getattr(Context.storage, "invocation_id", None)
            self.seen.append((record.threadName, record.getMessage(), found))


def test_copy_thread_log_lines_name_the_invocation(app_env, acr):
    """The 4.x worker (Python 3.10-3.12) ties a record to an invocation by the thread-local id."""
    handler = ThreadLocalIds()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    context = Context()
    try:
        body = messages.WorkMessage("repository", "giantswarm/tools/deep", "target").dumps()
        call("sync_worker", func.QueueMessage(id="deep", body=body), Collect(), context=context)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert any(thread.startswith("copy") and "copied" in message for thread, message, _ in handler.seen)
    # In the function's own thread the worker sets the id itself; in the core's threads we must.
    pool_lines = [s for s in handler.seen if s[0] != threading.current_thread().name]
    assert pool_lines and [s for s in pool_lines if s[2] != context.invocation_id] == []


def test_ruff_fix_keeps_the_annotations_the_worker_accepts():
    """``ruff --fix`` must not turn Out[typing.List[str]] back into Out[list[str]] (pyproject.toml)."""
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--fix", "--diff", "function_app.py"],
        cwd=Path(function_app.__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    assert "func.Out[typing.List[str]]" in Path(function_app.__file__).read_text()


def test_the_first_timer_run_of_a_day_runs_the_daily_check_unless_turned_off(
    app_env, acr, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="sync_core")
    yesterday = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).isoformat()
    for enabled, expected in (("false", False), ("true", True)):
        monkeypatch.setenv("SYNC_DAILY_CHECK", enabled)
        runtime.reset()
        caplog.clear()
        call("sync_schedule", TimerRequest(past_due=False, schedule_status={"Last": yesterday}), Collect())
        findings = [m for m in caplog.messages if "decision=check" in m]
        assert bool(findings) is expected, findings
