"""Metrics (sync_core.report.metrics): what a real sync exports, read back through the OpenTelemetry SDK.

In-process tests inject a real SDK ``MeterProvider`` with an ``InMemoryMetricReader`` (a global
provider can be set only once per process) and run real syncs: the ACR stand-in (referrers API,
``_tags`` times) to a plain ``distribution`` registry and a second ACR stand-in, through the CLI,
the Event Grid handler and the queue worker. Every figure is checked against what was pushed and
against the ``--json`` summary, which must agree exactly.

Subprocess tests cover what needs a fresh process: no connection string (nothing of OpenTelemetry
is imported or started), the Functions worker's own ``configure_azure_monitor()`` (the global
provider is used, the distro is not configured twice), and the real Azure Monitor exporter: the
CLI exports to a local stand-in of the ingestion endpoint (``/v2.1/track``), to a closed port and
to a port that never answers. A network guard in those processes refuses (and records) any
connection or name lookup that is not loopback.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sync_core.azure import handlers, messages, timer
from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.errors import SyncError
from sync_core.jobs.syncer import Syncer
from sync_core.plan.work import Check
from sync_core.report import metrics
from tests.harness import images, oci_env, plain_and_api_env, plain_and_api_targets
from tests.harness.acr import AcrStandIn
from tests.harness.metric_points import points, value
from tests.harness.paths import ROOT
from tests.harness.servers import LoopbackHTTPServer

NS = "gs"
SOURCE_USER = ("metrics-sync", "metrics-sync-pw-4Hq")
API_USER = ("metrics-bot", "metrics-bot-pw-9Xe")
SPDX = "application/spdx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IKEY = "00000000-0000-0000-0000-000000000000"
# The exporter's own traffic to Microsoft (SDK statistics, remote configuration), the Azure VM
# resource detector (IMDS): off in the subprocesses, which may reach loopback only.
QUIET_EXPORTER = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
}


# -- reading exported data points ---------------------------------------------------------------


def histogram(found: dict, name: str, **attributes: str):
    return found[(name, tuple(sorted(attributes.items())))]


def units(reader: InMemoryMetricReader) -> dict[str, str]:
    data = reader.get_metrics_data()
    return {m.name: m.unit for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}


@pytest.fixture
def reader():
    """A real SDK provider with an in-memory reader, installed as the process's metrics."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    previous = metrics.install(metrics.Metrics(provider))
    try:
        yield reader
    finally:
        metrics.install(previous)
        provider.shutdown()


# -- the world: an ACR stand-in, a plain registry and a registry with the referrers API ------------


class World:
    def __init__(self, source: AcrStandIn, plain, api: AcrStandIn, tmp_path: Path):
        self.source, self.plain, self.api = source, plain, api
        self.pusher = source.pusher()
        self.config = tmp_path / "targets.json"
        self.config.write_text(json.dumps({"targets": plain_and_api_targets(plain.url, api.url)}))

    def env(self, **extra: str) -> dict[str, str]:
        env = plain_and_api_env(self.source.url, NS, SOURCE_USER, API_USER)
        return {**env, "SYNC_CONCURRENCY": "1", **extra}

    def syncer(self) -> Syncer:
        return Syncer(load_config(self.env(), str(self.config)))


@pytest.fixture
def world(token_issuer, fresh_registry, tmp_path):
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with (
        AcrStandIn(users=users, issuer=token_issuer, name="metrics-src") as source,
        AcrStandIn(
            users={API_USER[0]: (API_USER[1], {"*": ["pull", "push"]})},
            issuer=token_issuer,
            name="metrics-api",
        ) as api,
    ):
        yield World(source, fresh_registry(), api, tmp_path)


def seed(world: World) -> dict[str, int]:
    """Two repositories sharing a base layer, a signature of the index and an SBOM of one platform.

    Returns ``{digest: size}`` of every distinct blob: what each target must be sent once.
    """
    base = images.layer("metrics-base", 700)
    app = images.oci_index("metrics-app", layer_sizes=(300,), base_layer=base, attestations=False)
    tool = images.oci_image("metrics-tool", (200,), base_layer=base)
    sig = images.signature("metrics-sig", app)
    sbom = images.signature("metrics-sbom", app.children[0], SPDX)
    world.pusher.push(f"{NS}/app", app, "1.0")
    world.pusher.push(f"{NS}/tool", tool, "1.0")
    for referrer in (sig, sbom):
        world.pusher.push(f"{NS}/app", referrer)
    return {b.digest: b.size for m in (app, tool, sig, sbom) for b in m.all_blobs()}


# -- in process: a real sync, read back through the SDK's in-memory reader -------------------------


def test_a_cli_sync_exports_every_figure_per_target_and_json_prints_the_same(world, reader, capsys):
    blobs = seed(world)
    capsys.readouterr()
    code = cli.main(["sync", "--json", "--config", str(world.config)], environ=world.env())
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["failures"]
    found = points(reader)
    for target in ("plain", "api"):
        assert value(found, metrics.TAGS, target=target, outcome="copied") == 2
        for outcome in ("unchanged", "skipped", "failed"):
            assert value(found, metrics.TAGS, target=target, outcome=outcome) == 0
        # every distinct blob sent once; the shared base mounted into the second repository; the
        # empty config of the second referrer found present (this process put it there)
        assert value(found, metrics.BYTES_UPLOADED, target=target) == sum(blobs.values())
        assert value(found, metrics.BLOBS, target=target, placement="uploaded") == len(blobs)
        assert value(found, metrics.BLOBS, target=target, placement="mounted") == 1
        assert value(found, metrics.BLOBS, target=target, placement="present") == 1
        assert value(found, metrics.REFERRERS, target=target) == 2
        # a sync without the timer's state has nothing to tell new pushes from: both tags are
        # backfill (counted apart), and no mirror lag is recorded for them
        assert value(found, metrics.BACKFILL, target=target) == 2
        assert (metrics.MIRROR_LAG, (("target", target),)) not in found

        # --json: the same figures, from the same calls
        figures = summary["metrics"][target]
        assert figures["tags"] == {"copied": 2, "unchanged": 0, "skipped": 0, "failed": 0}
        assert figures["bytes_uploaded"] == sum(blobs.values())
        assert figures["blobs"] == {"uploaded": len(blobs), "mounted": 1, "present": 1}
        assert figures["referrers"] == 2
        assert figures["backfill"] == 2
        assert figures["lag_seconds"] == {"count": 0, "min": None, "max": None, "avg": None}
    # the run totals are the sums over the targets
    assert summary["bytes_uploaded"] == 2 * sum(blobs.values())
    assert summary["referrers"]["copied"] == 4
    duration = histogram(found, metrics.RUN_DURATION, trigger="cli", ok="true")
    assert duration.count == 1 and 0 < duration.sum < 120
    assert units(reader) == {
        metrics.TAGS: "{tag}",
        metrics.BYTES_UPLOADED: "By",
        metrics.BLOBS: "{blob}",
        metrics.REFERRERS: "{referrer}",
        metrics.RUN_DURATION: "s",
        metrics.BACKFILL: "{tag}",
    }

    # a second run has nothing to copy (the listings say so): no figure moves, one more cli run
    capsys.readouterr()
    assert cli.main(["sync", "--json", "--config", str(world.config)], environ=world.env()) == 0
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert points(reader).keys() == found.keys()
    found = points(reader)
    for target in ("plain", "api"):
        assert value(found, metrics.TAGS, target=target, outcome="copied") == 2  # cumulative: no more
        assert value(found, metrics.BYTES_UPLOADED, target=target) == sum(blobs.values())
        assert value(found, metrics.BACKFILL, target=target) == 2
        assert again[target]["tags"] == {"copied": 0, "unchanged": 0, "skipped": 0, "failed": 0}
        assert again[target]["bytes_uploaded"] == 0 and again[target]["referrers"] == 0
        assert again[target]["lag_seconds"] == {"count": 0, "min": None, "max": None, "avg": None}
    assert histogram(found, metrics.RUN_DURATION, trigger="cli", ok="true").count == 2


def test_event_worker_and_timer_invocations_record_duration_lag_from_the_event_and_failures(
    world, reader, state
):
    seed(world)
    with world.syncer() as syncer:
        assert syncer.run().ok
    app2 = images.oci_image("metrics-app-2", (150,))
    world.pusher.push(f"{NS}/app", app2, "2.0")
    pushed = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=40)  # as Event Grid said
    event = {
        "id": "evt-metrics",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "eventTime": pushed.isoformat(),
        "data": {
            "target": {
                "mediaType": app2.media_type,
                "digest": app2.digest,
                "repository": f"{NS}/app",
                "tag": "2.0",
            },
            "request": {"host": world.source.host},
        },
    }
    with world.syncer() as syncer:
        queued = handlers.event_messages(event, syncer.config)
        assert len(queued) == 2
        for message in queued:  # through the queue: the event time travels in the message
            summary, left = handlers.process_message(message, syncer)
            assert summary.ok and left == [] and summary.tags_copied == 1
        summary, _ = handlers.process_message(queued[0], syncer)  # delivered twice: the target has it
        assert summary.tags_unchanged == 1
        handlers.event_messages(
            {"id": "bad", "eventType": "Microsoft.ContainerRegistry.ImagePushed"}, syncer.config
        )
        gone = messages.WorkMessage("tag", f"{NS}/app", "plain", "no-such-tag").dumps()
        summary, _ = handlers.process_message(gone, syncer)  # gone from the source: a skip, ok
        assert summary.ok and summary.tags_skipped == 1
        with pytest.raises(SyncError):
            handlers.process_message('{"v": 9}', syncer)  # invalid: raises, measured as failed
        assert timer.schedule_messages(syncer, state)
    found = points(reader)
    assert histogram(found, metrics.RUN_DURATION, trigger="event", ok="true").count == 1
    assert histogram(found, metrics.RUN_DURATION, trigger="event", ok="false").count == 1  # not an ACR event
    assert histogram(found, metrics.RUN_DURATION, trigger="worker", ok="true").count == 4
    assert histogram(found, metrics.RUN_DURATION, trigger="worker", ok="false").count == 1
    assert histogram(found, metrics.RUN_DURATION, trigger="timer", ok="true").count == 1
    for target in ("plain", "api"):
        assert value(found, metrics.TAGS, target=target, outcome="copied") == 3
        # the first sync's two tags are backfill; the pushed one has the lag from the event's time
        assert value(found, metrics.BACKFILL, target=target) == 2
        lag = histogram(found, metrics.MIRROR_LAG, target=target)
        assert lag.count == 1 and 40 <= lag.max < 160, lag.max  # the event's time, not the listing's
    assert value(found, metrics.TAGS, target="plain", outcome="unchanged") == 1
    assert histogram(found, metrics.MIRROR_LAG, target="plain").count == 1  # no lag for what was there
    assert value(found, metrics.TAGS, target="plain", outcome="skipped") == 1  # the tag gone from the source
    assert value(found, metrics.TAGS, target="api", outcome="skipped") == 0


def test_referrers_found_by_a_full_check_count_once(token_issuer, fresh_registry, reader, tmp_path):
    """A plain OCI source: the full check asks for each image's referrers (REFERRERS_OF work)."""
    source, target = fresh_registry(), fresh_registry()
    pusher = source.pusher()
    app = images.oci_image("metrics-oci-app", (120,))
    pusher.push("gs/app", app, "1.0")
    env = oci_env(source, target)
    with Syncer(load_config(env)) as syncer:
        assert syncer.run().ok
    sig = images.signature("metrics-oci-sig", app)
    pusher.push("gs/app", sig)
    listing = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [sig.descriptor(artifact_type=sig.artifact_type)],
    }
    referrers_tag = images.digest_tag(app.digest, suffix="")  # distribution 2.8: no referrers API
    pusher.put_manifest("gs/app", images.Manifest(json.dumps(listing).encode(), OCI_INDEX), referrers_tag)
    with Syncer(load_config(env)) as syncer:
        run = syncer.run(check=Check.FULL)
    assert run.ok and run.work.referrers_copied == 1, run.to_dict()
    (name,) = run.targets
    assert run.to_dict()["metrics"][name]["referrers"] == 1
    assert value(points(reader), metrics.REFERRERS, target=name) == 1


def test_without_instruments_the_figures_are_still_kept(world):
    seed(world)
    with Syncer(load_config(world.env(), str(world.config)), metrics=metrics.Metrics()) as syncer:
        summary = syncer.run()
    assert summary.ok and not syncer.metrics.enabled
    assert {t: f["tags"]["copied"] for t, f in summary.to_dict()["metrics"].items()} == {"api": 2, "plain": 2}


def test_without_a_connection_string_every_call_is_a_no_op():
    assert not metrics.configure({}).enabled
    assert not metrics.configure({metrics.CONNECTION_STRING: "  "}).enabled
    noop = metrics.Metrics()
    noop.tags("t", metrics.Outcome.COPIED)
    noop.lag("t", 1.0)
    with noop.timed(metrics.Trigger.CLI) as run:
        run.ok = False
    assert noop.flush() is True


# -- subprocesses: a fresh process each ---------------------------------------------------------

NETWORK_GUARD = '''
"""Loopback only: any other connection or name lookup is refused and written to NET_GUARD_LOG."""
import os, socket
_log, _ok = os.environ["NET_GUARD_LOG"], {"127.0.0.1", "::1", "localhost"}
def _refuse(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
    raise OSError(f"network guard: {what}")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
def connect(self, address):
    if isinstance(address, tuple) and address[0] not in _ok:
        _refuse(f"connect {address[0]}")
    return _connect(self, address)
def connect_ex(self, address):
    if isinstance(address, tuple) and address[0] not in _ok:
        _refuse(f"connect {address[0]}")
    return _connect_ex(self, address)
def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name not in _ok:
        _refuse(f"resolve {name}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


def run_python(tmp_path: Path, code_or_args: list[str], env: dict[str, str], timeout: float = 120):
    """``python ...`` in a fresh process: the repository importable, the network guard on."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = tmp_path / "net-guard.log"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_", "PYTHON_APPLICATIONINSIGHTS_"))
    }
    full = {
        **base,
        **env,
        "PYTHONPATH": f"{guard}{os.pathsep}{ROOT}",
        "NET_GUARD_LOG": str(log),
        "TMPDIR": str(tmp_path),
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, *code_or_args],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    refused = log.read_text().splitlines() if log.exists() else []
    return proc, time.monotonic() - started, refused


def test_without_a_connection_string_nothing_of_opentelemetry_is_loaded_or_started(world, tmp_path):
    seed(world)
    code = textwrap.dedent(f"""
        import json, sys, threading
        import function_app  # the Functions entry point imports the whole core
        loaded_by_import = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
        from sync_core.cli import main as cli
        from sync_core.report import metrics
        exit_code = cli.main(["sync", "--json", "--config", {str(world.config)!r}])
        print(json.dumps({{"exit": exit_code, "enabled": metrics.current().enabled,
            "by_import": loaded_by_import,
            "after_sync": sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor"))),
            "threads": [t.name for t in threading.enumerate()]}}), file=sys.stderr)
    """)
    proc, _, refused = run_python(tmp_path, ["-c", code], world.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stderr.strip().splitlines()[-1])
    assert facts == {
        "exit": 0,
        "enabled": False,
        "by_import": [],
        "after_sync": [],
        "threads": ["MainThread"],
    }
    assert json.loads(proc.stdout)["metrics"]["plain"]["tags"]["copied"] == 2  # the figures all the same
    assert refused == []


def test_with_the_functions_worker_telemetry_setting_the_global_provider_is_used_not_configured_again(
    tmp_path,
):
    """The worker's ``configure_azure_monitor()`` stands here as an SDK provider set globally,
    before the core's first use and (for a proxy meter) after it."""
    code = textwrap.dedent("""
        import json, sys
        from opentelemetry import metrics as otel
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from sync_core.report import metrics
        early = metrics.current()  # before the worker set its provider: a proxy meter
        reader = InMemoryMetricReader()
        otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
        early.tags("hub", metrics.Outcome.COPIED, 3)
        late = metrics.configure(__import__("os").environ)
        late.run(metrics.Trigger.WORKER, False, 2.5)
        assert late.flush() and early is metrics.current()
        data = reader.get_metrics_data()
        found = {m.name: [(dict(p.attributes), getattr(p, "value", None) or p.count) for p in m.data.data_points]
                 for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
        print(json.dumps({"found": found, "owned": [early.owned, late.owned],
            "distro": sorted(m for m in sys.modules if m.startswith("azure.monitor"))}))
    """)
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={IKEY}",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
        **QUIET_EXPORTER,
    }
    proc, _, refused = run_python(tmp_path, ["-c", code], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout)
    assert facts["distro"] == []  # configure_azure_monitor() was not called (not even imported)
    assert facts["owned"] == [False, False]
    assert facts["found"][metrics.TAGS] == [[{"target": "hub", "outcome": "copied"}, 3]]
    assert facts["found"][metrics.RUN_DURATION] == [[{"trigger": "worker", "ok": "false"}, 1]]
    assert refused == []


class Ingestion:
    """A stand-in for the Application Insights ingestion endpoint (``POST /v2.1/track``)."""

    def __init__(self):
        self.envelopes: list[dict] = []
        self.paths: list[str] = []
        ingestion = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                items = json.loads(body)
                ingestion.paths.append(self.path)
                ingestion.envelopes.extend(items)
                answer = json.dumps(
                    {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def metrics(self) -> list[tuple[str, dict, dict]]:
        """``(name, properties, metric data)`` of every metric envelope (customMetrics rows)."""
        return [
            (m["name"], e["data"]["baseData"].get("properties", {}), m)
            for e in self.envelopes
            if e["name"] == "Microsoft.ApplicationInsights.Metric"
            for m in e["data"]["baseData"]["metrics"]
        ]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def connection_string(endpoint: str) -> str:
    return f"InstrumentationKey={IKEY};IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"


def test_the_cli_exports_through_azure_monitor_what_it_prints(world, tmp_path):
    """configure_azure_monitor() for metrics only, the real exporter, a local ingestion endpoint."""
    blobs = seed(world)
    ingestion = Ingestion()
    try:
        env = world.env(
            APPLICATIONINSIGHTS_CONNECTION_STRING=connection_string(ingestion.url), **QUIET_EXPORTER
        )
        proc, _, refused = run_python(
            tmp_path, ["-m", "sync_core", "sync", "--json", "--config", str(world.config)], env
        )
    finally:
        ingestion.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert refused == []
    printed = json.loads(proc.stdout)["metrics"]
    assert set(ingestion.paths) == {"/v2.1/track"}
    rows = ingestion.metrics()
    # metrics only: no request, dependency or trace telemetry (no instrumentation, no log export)
    assert {e["name"] for e in ingestion.envelopes} == {"Microsoft.ApplicationInsights.Metric"}

    def total(name: str, **props: str) -> float:
        return sum(m["value"] for n, p, m in rows if n == name and p == props)

    for target in ("plain", "api"):
        assert total(metrics.TAGS, target=target, outcome="copied") == printed[target]["tags"]["copied"] == 2
        assert (
            total(metrics.BYTES_UPLOADED, target=target)
            == printed[target]["bytes_uploaded"]
            == sum(blobs.values())
        )
        for placement, count in printed[target]["blobs"].items():
            assert total(metrics.BLOBS, target=target, placement=placement) == count
        assert total(metrics.REFERRERS, target=target) == 2
        assert total(metrics.BACKFILL, target=target) == printed[target]["backfill"] == 2
        # no new push in a CLI sync (no timer state): no lag sample reaches the exporter either
        assert (
            not [m for n, p, m in rows if n == metrics.MIRROR_LAG]
            and printed[target]["lag_seconds"]["count"] == 0
        )
    (run,) = [m for n, p, m in rows if n == metrics.RUN_DURATION]
    assert [p for n, p, m in rows if n == metrics.RUN_DURATION] == [{"trigger": "cli", "ok": "true"}]
    assert run["count"] == 1 and run["value"] > 0


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_ingestion_endpoint_neither_fails_nor_holds_the_cli(world, tmp_path, endpoint):
    seed(world)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if endpoint == "closed":
        listener.close()  # connection refused
    else:
        listener.listen(16)  # accepts, never answers
    try:
        env = world.env(
            APPLICATIONINSIGHTS_CONNECTION_STRING=connection_string(f"http://127.0.0.1:{port}/"),
            **QUIET_EXPORTER,
        )
        proc, seconds, refused = run_python(
            tmp_path, ["-m", "sync_core", "sync", "--json", "--config", str(world.config)], env
        )
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["metrics"]["plain"]["tags"]["copied"] == 2
    assert "Traceback" not in proc.stderr
    # the flush waits at most the export timeout for an endpoint that never answers
    assert seconds < metrics.EXPORT_TIMEOUT_SECONDS + 30, seconds
    assert refused == []


def test_a_connection_string_the_distro_refuses_leaves_the_sync_alone(world, tmp_path):
    seed(world)
    env = world.env(APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=not-a-guid", **QUIET_EXPORTER)
    proc, _, refused = run_python(
        tmp_path, ["-m", "sync_core", "sync", "--json", "--config", str(world.config)], env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics disabled: Azure Monitor could not be configured" in proc.stderr
    assert json.loads(proc.stdout)["metrics"]["api"]["tags"]["copied"] == 2
    assert refused == []
