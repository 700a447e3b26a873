"""The app in the real Azure Functions Python worker (azure-functions-runtime, Python 3.13).

What the host does at start-up (WorkerInitRequest: index function_app.py, register every function
in the worker's registry), what it sends for each trigger (TypedData and trigger metadata shaped as
the host and its extensions send them), and what comes back (InvocationResponse: status, every Out
value encoded by the worker). Each function runs against the ACR stand-in and a real
docker-registry as the mirror. See tests/worker/host.py for what is real and what stands in.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
import typing
import uuid

import azure.functions as func
import pytest
from azure.functions.decorators.core import BindingDirection

from sync_core.azure import runtime
from tests.harness.faultproxy import FaultProxy, FaultRule
from tests.harness.images import oci_image, oci_index
from tests.harness.paths import EVENTS
from tests.worker.conftest import NAMESPACE, SEEDED, TARGET_NAMESPACE
from tests.worker.host import ROOT, event_grid_input, ok, protos, queue_input, timer_input

FUNCTIONS = {"sync_schedule", "on_image_pushed", "sync_worker", "sync_event_worker"}
#: the queue each function writes to: the timer's work, and the events' work apart
QUEUES = {
    "sync_schedule": "%SYNC_QUEUE%",
    "sync_worker": "%SYNC_QUEUE%",
    "on_image_pushed": "%SYNC_EVENT_QUEUE%",
    "sync_event_worker": "%SYNC_EVENT_QUEUE%",
}


def sample(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def succeeded(response) -> None:
    assert ok(response.result), f"invocation failed: {response.result.exception.message}"


def queue_messages(worker, response) -> list[dict]:
    """The ``out`` queue binding of a response, decoded as the host reads it: one message per element."""
    succeeded(response)
    outputs = {b.name: b for b in response.output_data}
    assert set(outputs) <= {"out"}
    if not outputs:
        return []
    assert outputs["out"].data.WhichOneof("data") == "json"  # a JSON array: one queue message each
    decoded = worker.outputs(response)["out"]
    assert isinstance(decoded, list) and all(isinstance(m, str) for m in decoded)
    return [json.loads(m) for m in decoded]


def mirrored(acr, target, repository: str, tag: str) -> bool:
    mirror_repo = f"{TARGET_NAMESPACE}/{repository.removeprefix(NAMESPACE + '/')}"
    pusher = target.pusher()
    if not pusher.exists_manifest(mirror_repo, tag):
        return False
    return pusher.fetch_manifest(mirror_repo, tag)[0] == acr.pusher().fetch_manifest(repository, tag)[0]


# -- start-up: indexing and registration ------------------------------------------------------------


def test_worker_accepts_the_app_at_start_up(started):
    """The host starts the worker: it indexes function_app.py and registers every function."""
    assert ok(started.result), started.result.exception.message


def test_worker_reports_every_function_with_its_bindings(worker):
    assert set(worker.functions) == FUNCTIONS
    bindings = {
        name: {b["name"]: b for b in map(json.loads, meta.raw_bindings)}
        for name, meta in worker.functions.items()
    }
    assert bindings["sync_schedule"]["timer"]["type"] == "timerTrigger"
    assert bindings["sync_schedule"]["timer"]["schedule"] == "%SYNC_SCHEDULE%"
    assert bindings["on_image_pushed"]["event"]["type"] == "eventGridTrigger"
    for name in ("sync_worker", "sync_event_worker"):
        msg = bindings[name]["msg"]
        assert (msg["type"], msg["queueName"]) == ("queueTrigger", QUEUES[name]), name
    for name, by_name in bindings.items():
        out = by_name["out"]
        assert (out["type"], out["direction"], out["queueName"], out["connection"]) == (
            "queue",
            "OUT",
            QUEUES[name],
            "AzureWebJobsStorage",
        ), name
        meta = worker.functions[name]
        assert meta.bindings["out"].direction == protos.BindingInfo.out
        assert meta.properties["worker_indexed"] == "True"


def test_bicep_runs_the_python_of_this_tier():
    """Azure runs the Python of functionAppConfig.runtime: the one this tier tests."""
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    runtime = re.search(r"runtime:\s*\{\s*name:\s*'python'\s*version:\s*'([0-9.]+)'", bicep)
    assert runtime, "functionAppConfig.runtime not found in infra/main.bicep"
    assert runtime.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"


def _app_functions():
    """The decorated functions of a fresh import of function_app.py (an app indexes only once)."""
    spec = importlib.util.spec_from_file_location("function_app_fresh", ROOT / "function_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {f.get_function_name(): f for f in module.app.get_functions()}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_binding_annotation_passes_the_binding_registry(name):
    """azure.functions' own converters accept each annotation: inputs as inputs, Out[...] as outputs."""
    registry = func.get_binding_registry()
    function = _app_functions()[name]
    hints = typing.get_type_hints(function.get_user_function())
    for binding in function.get_bindings():
        annotation = hints[binding.name]
        converter = registry.get(binding.type)
        assert converter is not None, f"{name}.{binding.name}: no converter for {binding.type}"
        if binding.direction == BindingDirection.OUT.value:
            assert typing.get_origin(annotation) is func.Out, f"{name}.{binding.name}: {annotation!r}"
            (inner,) = typing.get_args(annotation)
            assert converter.check_output_type_annotation(inner), f"{name}.{binding.name}: {annotation!r}"
        else:
            assert converter.check_input_type_annotation(annotation), f"{name}.{binding.name}: {annotation!r}"


# -- the timer ---------------------------------------------------------------------------------------


def pipeline(worker, messages: list[dict]) -> int:
    """Every queue message through the real worker, and every message it enqueues, until none is
    left (as the host would deliver them). Returns the executions it took."""
    executions = 0
    queue = list(messages)
    while queue:
        body = json.dumps(queue.pop(0))
        response = worker.invoke("sync_worker", *queue_input(body, message_id=str(uuid.uuid4())))
        executions += 1
        queue += queue_messages(worker, response)
    return executions


def tick(worker, *, past_due: bool = False, invocation_id: str | None = None) -> list[dict]:
    """One timer run through the real worker (the host's schedule status: last run 15 minutes ago)."""
    inputs, metadata = timer_input(past_due=past_due)
    return queue_messages(
        worker, worker.invoke("sync_schedule", inputs, metadata, invocation_id=invocation_id)
    )


def test_timer_ticks_cost_what_changed(worker, acr, target, rpc_logs):
    """Three ticks of the whole pipeline (timer, then every message it enqueues) in the real worker,
    against Azurite (the state), the ACR stand-in and a real registry: the first mirrors every
    repository; a tick with nothing changed enqueues nothing and asks no target anything; a change
    made without an event is mirrored after the next tick; a repository whose work failed is
    enqueued again until it succeeds."""
    wanted = sorted(r for r in SEEDED if r.startswith(NAMESPACE + "/"))
    invocation_id = str(uuid.uuid4())
    first = tick(worker, past_due=True, invocation_id=invocation_id)  # nothing recorded yet: every repository
    warned = [s for s in rpc_logs.of("sync_core") if "past due" in s.rpc.message]
    assert warned and all(s.rpc.invocation_id == invocation_id for s in warned)
    assert {(m["v"], m["kind"], m["target"]) for m in first} == {(1, "repositories", "target")}
    assert sorted(e["name"] for m in first for e in m["repositories"]) == wanted
    pipeline(worker, first)
    assert all(mirrored(acr, target, r, t) for r in wanted for t in SEEDED[r])

    acr.reset_log()
    mark = len(target.access_log())
    assert tick(worker) == []  # nothing changed: the timer is the only execution
    assert target.access_log()[mark:] == []  # no request to the target at all
    per_repository = acr.count(kind={"acr_repository", "acr_tags", "token"}) / len(wanted)
    assert acr.count(kind={"catalog", "acr_catalog"}) == 1 and per_repository <= 3, acr.log

    pushed = oci_image("wk-deep-2", [777])
    acr.pusher().push("giantswarm/tools/deep", pushed, "2.0")  # no event: its delivery was lost
    acr.fail_next(5, 503, kinds="manifest")  # and the first try fails (the source keeps answering 503)
    changed = tick(worker)
    assert [[e["name"] for e in m["repositories"]] for m in changed] == [["giantswarm/tools/deep"]]
    failed = worker.invoke("sync_worker", *queue_input(json.dumps(changed[0]), message_id="deep-1"))
    assert failed.result.status == protos.StatusResult.Failure  # the host would retry it, then poison it
    assert not mirrored(acr, target, "giantswarm/tools/deep", "2.0")

    again = tick(worker)  # the failure is recorded: enqueued again
    assert [[e["name"] for e in m["repositories"]] for m in again] == [["giantswarm/tools/deep"]]
    assert pipeline(worker, again) == 1
    assert mirrored(acr, target, "giantswarm/tools/deep", "2.0")
    assert tick(worker) == []


# -- Event Grid: both schemas ------------------------------------------------------------------------


def _pushed(acr, name: str, repository: str, tag: str) -> dict:
    event = copy.deepcopy(sample(name))
    event["data"]["request"]["host"] = acr.host
    event["data"]["target"].update(repository=repository, tag=tag, digest=SEEDED[repository][tag].digest)
    return event


@pytest.mark.parametrize(
    "name, tag, body",
    [("image-pushed.eventgrid.json", "1.4.2", str), ("image-pushed.cloudevent.json", "1.4.3", bytes)],
    ids=["EventGridSchema", "CloudEvents"],
)
def test_pushed_event_enqueues_a_tag_message_that_the_worker_copies(worker, acr, target, name, tag, body):
    event = _pushed(acr, name, "giantswarm/example-app", tag)
    (message,) = queue_messages(worker, worker.invoke("on_image_pushed", *event_grid_input(event)))
    pushed = message.pop("pushed")  # the event's push time travels with the work (mirror lag)
    assert pushed.startswith(event["data"]["timestamp"][:19])
    assert message == {
        "v": 1,
        "kind": "tag",
        "repository": "giantswarm/example-app",
        "target": "target",
        "tag": tag,
        "digest": SEEDED["giantswarm/example-app"][tag].digest,
        "reason": "pushed",  # an event's work: ahead of the timer's backfill in the budgets
    }
    # The host puts that message on the events' queue; sync_event_worker gets it back as text or bytes.
    text = json.dumps({**message, "pushed": pushed}, separators=(",", ":"))
    payload = text.encode() if body is bytes else text
    response = worker.invoke(
        "sync_event_worker",
        *queue_input(payload, message_id=str(uuid.uuid4()), function="sync_event_worker"),
    )
    assert queue_messages(worker, response) == []
    assert mirrored(acr, target, "giantswarm/example-app", tag)


@pytest.mark.parametrize(
    "name, host, reason",
    [
        ("image-deleted.eventgrid.json", "acr", "not propagated"),
        ("image-pushed.eventgrid.json", None, "not the source"),  # gsoci.azurecr.io is not our source here
        ("image-pushed.cloudevent.json", None, "not the source"),
    ],
)
def test_events_without_work_enqueue_nothing(worker, acr, rpc_logs, name, host, reason):
    event = sample(name)
    if host == "acr":
        event["data"]["request"]["host"] = acr.host
    invocation_id = str(uuid.uuid4())
    response = worker.invoke("on_image_pushed", *event_grid_input(event), invocation_id=invocation_id)
    assert queue_messages(worker, response) == []
    assert any(
        reason in s.rpc.message and s.rpc.invocation_id == invocation_id for s in rpc_logs.of("sync_core")
    )


def test_untagged_push_goes_to_the_worker_which_ignores_a_child_manifest(worker, acr, target):
    """An untagged push may be a referrer: the worker fetches the manifest once and decides."""
    # a multi-platform image pushed by digest (its children first): no other test mirrors it,
    # so the target lacks the child whatever ran before
    index = oci_index("wk-untagged", ["linux/amd64", "linux/arm64"], [512])
    acr.pusher().push("giantswarm/example-app", index)
    child = index.children[0]
    mirror = target.pusher()
    assert not mirror.exists_manifest(f"{TARGET_NAMESPACE}/example-app", child.digest)
    event = copy.deepcopy(sample("image-pushed-child.eventgrid.json"))
    event["data"]["request"]["host"] = acr.host
    event["data"]["target"].update(repository="giantswarm/example-app", digest=child.digest)
    (message,) = queue_messages(worker, worker.invoke("on_image_pushed", *event_grid_input(event)))
    assert (message["kind"], message["digest"]) == ("referrer", child.digest)
    acr.reset_log()
    mark = len(target.access_log())
    response = worker.invoke(
        "sync_event_worker",
        *queue_input(json.dumps(message), message_id=str(uuid.uuid4()), function="sync_event_worker"),
    )
    assert response.result.status == protos.StatusResult.Success
    assert queue_messages(worker, response) == []
    # authentication challenges aside: the target is asked once whether it holds the child, the
    # source's copy is read once, it has no subject, and nothing is written
    asked = [(m, p, s) for m, p, s in target.access_log()[mark:] if s != 401]
    assert asked == [("HEAD", f"/v2/{TARGET_NAMESPACE}/example-app/manifests/{child.digest}", 404)], asked
    fetched = [(e.method, e.ref, e.status) for e in acr.log if e.kind == "manifest" and e.status != 401]
    assert fetched == [("GET", child.digest, 200)], acr.log
    assert target.writes(mark) == []
    assert not mirror.exists_manifest(f"{TARGET_NAMESPACE}/example-app", child.digest)


# -- the queue worker --------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [str, bytes])
def test_worker_message_as_text_or_bytes_with_queue_metadata(worker, acr, target, rpc_logs, body):
    tag = "1.0"
    text = json.dumps(
        {"v": 1, "kind": "repository", "repository": "giantswarm/tools/deep", "target": "target"}
    )
    message_id = str(uuid.uuid4())
    invocation_id = str(uuid.uuid4())
    payload = text.encode() if body is bytes else text
    response = worker.invoke(
        "sync_worker",
        *queue_input(payload, message_id=message_id, dequeue_count=2),
        invocation_id=invocation_id,
    )
    assert queue_messages(worker, response) == []
    assert mirrored(acr, target, "giantswarm/tools/deep", tag)
    # QueueMessage.id and .dequeue_count came from the trigger metadata
    done = [s for s in rpc_logs.of("sync_core") if "worker done" in s.rpc.message]
    assert any(
        f"message_id={message_id}" in s.rpc.message and "dequeue_count=2" in s.rpc.message for s in done
    )
    assert all(s.rpc.invocation_id == invocation_id for s in done if message_id in s.rpc.message)


def test_worker_failure_fails_the_invocation_so_the_host_retries(worker, acr):
    bad = worker.invoke("sync_worker", *queue_input('{"v": 9}', message_id="bad"))
    assert bad.result.status == protos.StatusResult.Failure
    assert "version" in bad.result.exception.message
    # a tag gone from the source is a permanent condition: reported, the invocation succeeds
    missing = json.dumps(
        {"v": 1, "kind": "tag", "repository": "giantswarm/multi", "target": "target", "tag": "9.9"}
    )
    skipped = worker.invoke("sync_worker", *queue_input(missing.encode(), message_id="missing"))
    assert skipped.result.status == protos.StatusResult.Success
    # a source answering 503 to every retry: the invocation fails, so the host redelivers it
    acr.fail_next(5, 503, kinds="manifest")
    tag = sorted(SEEDED["giantswarm/multi"])[0]
    flaky = json.dumps(
        {"v": 1, "kind": "tag", "repository": "giantswarm/multi", "target": "target", "tag": tag}
    )
    failed = worker.invoke("sync_worker", *queue_input(flaky.encode(), message_id="flaky"))
    assert failed.result.status == protos.StatusResult.Failure
    assert "failure" in failed.result.exception.message


def test_worker_re_enqueues_what_its_time_budget_leaves(worker, acr, target, monkeypatch):
    """A budget spent before any copy starts: every tag goes back on the queue as a tag message."""
    for tag, manifest in SEEDED["giantswarm/budget"].items():  # a repository no earlier test mirrored
        acr.pusher().push("giantswarm/budget-late", manifest, tag)
    slow = FaultRule(
        "slow", method="GET", path=r"/v2/wk-mirror/budget-late/tags/list", count=1, delay_ms=10_500
    )
    with FaultProxy(target.url, rules=[slow]) as proxy:
        monkeypatch.setenv("TARGET_REGISTRY", proxy.url)  # the mirror answers its tag listing slowly
        monkeypatch.setenv("SYNC_TIME_BUDGET_SECONDS", "10")  # the smallest budget the app accepts
        runtime.reset()  # the app reads its settings once per process: as if restarted
        try:
            text = json.dumps(
                {"v": 1, "kind": "repository", "repository": "giantswarm/budget-late", "target": "target"}
            )
            left = queue_messages(
                worker, worker.invoke("sync_worker", *queue_input(text, message_id="budget"))
            )
        finally:
            monkeypatch.undo()
            runtime.reset()
    assert slow.fired == 1
    assert sorted((m["kind"], m["repository"], m["tag"], m["digest"]) for m in left) == [
        ("tag", "giantswarm/budget-late", tag, manifest.digest)
        for tag, manifest in sorted(SEEDED["giantswarm/budget"].items())
    ]


# -- logs from the copy threads ----------------------------------------------------------------------


def test_log_lines_from_copy_threads_reach_the_host_with_the_invocation_id(worker, acr, target, rpc_logs):
    """Every line the core writes during an invocation, from any thread, names that invocation."""
    for tag, manifest in SEEDED["giantswarm/multi"].items():  # a repository no earlier test mirrored
        acr.pusher().push("giantswarm/multi-late", manifest, tag)
    invocation_id = str(uuid.uuid4())
    text = json.dumps(
        {"v": 1, "kind": "repository", "repository": "giantswarm/multi-late", "target": "target"}
    )
    before = len(rpc_logs.sent)
    succeeded(
        worker.invoke("sync_worker", *queue_input(text, message_id="multi"), invocation_id=invocation_id)
    )
    sent = [s for s in rpc_logs.sent[before:] if s.rpc.category.startswith("sync_core")]
    copy_lines = [s for s in sent if s.thread.startswith("copy")]
    copied = [s for s in copy_lines if "copied giantswarm/multi-late:" in s.rpc.message]
    assert len(copied) == len(SEEDED["giantswarm/multi"]), [s.rpc.message for s in sent]
    untied = [(s.thread, s.rpc.message[:80]) for s in sent if s.rpc.invocation_id != invocation_id]
    assert not untied, f"lines the host would drop (no invocation id): {untied}"
    # The 4.x worker (Python 3.10-3.12) reads the thread-local instead: the same id there too.
    assert all(s.thread_local_invocation_id == invocation_id for s in copy_lines)
    for tag in SEEDED["giantswarm/multi"]:
        assert mirrored(acr, target, "giantswarm/multi-late", tag)
