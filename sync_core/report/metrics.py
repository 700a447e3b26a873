"""Metrics: OpenTelemetry counters and histograms (into Application Insights), and the same figures per run.

Every figure comes from one call of the run's :class:`~sync_core.report.recorder.Recorder`,
which adds it to the run's summary (what ``--json`` prints under ``metrics``) and to the
process's instruments (:class:`Metrics`) in the same call: the two cannot disagree. The instruments (names and attributes are what the alert rules query; see
docs/metrics.md):

=============================  =========  =================================================
``registry_sync.tags``         counter    ``target``, ``outcome`` (copied|unchanged|skipped|failed)
``registry_sync.bytes_uploaded``  counter ``target`` (bytes, unit ``By``)
``registry_sync.blobs``        counter    ``target``, ``placement`` (uploaded|mounted|present)
``registry_sync.referrers``    counter    ``target`` (referrers copied)
``registry_sync.run.duration`` histogram  ``trigger`` (timer|event|worker|cli), ``ok`` ("true"|"false"), seconds
``registry_sync.mirror_lag``   histogram  ``target``, seconds from a new source push to its copy
``registry_sync.backfill``     counter    ``target`` (tags copied that were not new pushes)
``registry_sync.staleness``    histogram  ``target``, seconds since the oldest change not yet mirrored (per timer run)
``registry_sync.check``        counter    ``subject`` (source|key-vault|a target), ``check``, ``status`` (ok|warn|fail)
=============================  =========  =================================================

Whether they go anywhere is decided once per process, from the process environment
(:func:`configure`):

* no ``APPLICATIONINSIGHTS_CONNECTION_STRING``: no-op. Nothing of OpenTelemetry is imported, no
  provider, exporter or thread exists; the figures per run are still kept (``--json``).
* the connection string and ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true``: the Functions
  Python worker has called ``configure_azure_monitor()`` itself (the documented setup with
  ``"telemetryMode": "OpenTelemetry"``); configuring again would export twice, so the instruments
  come from the global MeterProvider it set.
* the connection string alone (the CLI; a Functions app without that setting):
  ``configure_azure_monitor()`` for metrics only. Logs stay where they go today (stderr, or the
  Functions host, which already forwards them) and registry requests are not traced: the distro
  (1.8) reads its logs/traces switches from ``OTEL_LOGS_EXPORTER`` / ``OTEL_TRACES_EXPORTER``
  only, so those are set to ``none`` unless already set; live metrics, performance counters and
  every instrumentation are off.

Tests inject a provider (``install(Metrics(provider))``): a global MeterProvider can be set only
once per process.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sync_core.engine.results import Work

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

log = logging.getLogger(__name__)

METER = "registry_sync"
TAGS = "registry_sync.tags"
BYTES_UPLOADED = "registry_sync.bytes_uploaded"
BLOBS = "registry_sync.blobs"
REFERRERS = "registry_sync.referrers"
RUN_DURATION = "registry_sync.run.duration"
MIRROR_LAG = "registry_sync.mirror_lag"
BACKFILL = "registry_sync.backfill"
STALENESS = "registry_sync.staleness"
CHECK = "registry_sync.check"

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
WORKER_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
# What configure_azure_monitor() instruments by default (distro 1.8): all off, registry requests
# would otherwise each become a dependency record.
INSTRUMENTATIONS = (
    "azure_sdk",
    "django",
    "fastapi",
    "flask",
    "httpx",
    "httpx2",
    "psycopg2",
    "requests",
    "urllib",
    "urllib3",
)
FLUSH_TIMEOUT_SECONDS = 10.0
EXPORT_TIMEOUT_SECONDS = 10  # per export request (azure-core's default read timeout is 300 s)


class Outcome(str, enum.Enum):
    """What became of a tag at a target (attribute ``outcome`` of ``registry_sync.tags``)."""

    COPIED = "copied"
    UNCHANGED = "unchanged"  # the target had it already
    SKIPPED = "skipped"  # a rule excludes it (name, skip types, unreadable at the source)
    FAILED = "failed"


class BlobPlacement(str, enum.Enum):
    """How a blob came to be at a target (attribute ``placement`` of ``registry_sync.blobs``)."""

    UPLOADED = "uploaded"
    MOUNTED = "mounted"  # from another repository of the same registry
    PRESENT = "present"  # it was there already (known, or found by a HEAD)


class Trigger(str, enum.Enum):
    """What started a run (attribute ``trigger`` of ``registry_sync.run.duration``)."""

    TIMER = "timer"
    EVENT = "event"
    WORKER = "worker"
    CLI = "cli"


# -- the instruments ------------------------------------------------------------------------------


class Metrics:
    """The process's instruments, from ``provider``; without one, every call only returns (no-op).

    ``owned``: this process configured the provider (the CLI flushes it before exiting); else it
    is the global one someone else set up, looked up again when flushing.
    """

    def __init__(self, provider: MeterProvider | None = None, *, owned: bool = True):
        self.provider = provider
        self.owned = owned
        self.enabled = provider is not None
        if provider is None:
            return
        meter = provider.get_meter(METER)
        self._tags = meter.create_counter(TAGS, unit="{tag}", description="Tags per target and outcome")
        self._bytes = meter.create_counter(
            BYTES_UPLOADED, unit="By", description="Bytes uploaded to the target"
        )
        self._blobs = meter.create_counter(
            BLOBS, unit="{blob}", description="Blobs placed at the target, by how"
        )
        self._referrers = meter.create_counter(REFERRERS, unit="{referrer}", description="Referrers copied")
        self._duration = meter.create_histogram(RUN_DURATION, unit="s", description="One run or invocation")
        self._lag = meter.create_histogram(
            MIRROR_LAG, unit="s", description="A new push at the source (event or listing time) to its copy"
        )
        self._backfill = meter.create_counter(
            BACKFILL, unit="{tag}", description="Tags copied that were not new pushes (onboarding, repairs)"
        )
        self._staleness = meter.create_histogram(
            STALENESS,
            unit="s",
            description="Oldest source change not yet confirmed at the target (per timer run)",
        )
        self._check = meter.create_counter(
            CHECK, unit="{finding}", description="Findings of the daily check, per subject, check and status"
        )

    def __repr__(self) -> str:
        return f"Metrics(enabled={self.enabled})"

    def tags(self, target: str, outcome: Outcome, count: int = 1) -> None:
        if self.enabled and count:
            self._tags.add(count, {"target": target, "outcome": outcome.value})

    def work(self, target: str, work: Work) -> None:
        """The work of copies at ``target``: bytes, blobs by placement, referrers copied."""
        if not self.enabled:
            return
        if work.bytes_uploaded:
            self._bytes.add(work.bytes_uploaded, {"target": target})
        for placement, count in (
            (BlobPlacement.UPLOADED, work.blobs_uploaded),
            (BlobPlacement.MOUNTED, work.blobs_mounted),
            (BlobPlacement.PRESENT, work.blobs_skipped),
        ):
            if count:
                self._blobs.add(count, {"target": target, "placement": placement.value})
        if work.referrers_copied:
            self._referrers.add(work.referrers_copied, {"target": target})

    def lag(self, target: str, seconds: float) -> None:
        if self.enabled:
            self._lag.record(seconds, {"target": target})

    def backfill(self, target: str, count: int = 1) -> None:
        if self.enabled and count:
            self._backfill.add(count, {"target": target})

    def staleness(self, target: str, seconds: float) -> None:
        if self.enabled:
            self._staleness.record(seconds, {"target": target})

    def check(self, subject: str, check: str, status: str) -> None:
        """One finding of the daily ``check`` (``status``: ok, warn or fail)."""
        if self.enabled:
            self._check.add(1, {"subject": subject, "check": check, "status": status})

    def run(self, trigger: Trigger, ok: bool, seconds: float) -> None:
        """One run (CLI command) or invocation (timer, event, worker) took ``seconds``."""
        if self.enabled:
            self._duration.record(seconds, {"trigger": trigger.value, "ok": "true" if ok else "false"})

    @contextmanager
    def timed(self, trigger: Trigger) -> Iterator[RunTimer]:
        """Record the duration of the block: ok unless it raises or sets ``ok = False``."""
        timer = RunTimer()
        try:
            yield timer
        except BaseException:
            timer.ok = False
            raise
        finally:
            self.run(trigger, timer.ok, time.monotonic() - timer.started)

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Export what is recorded now (before a short-lived process ends). False: not all of it."""
        if not self.enabled:
            return True
        provider = self.provider
        if not self.owned:
            from opentelemetry import metrics as otel

            provider = otel.get_meter_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            return True
        try:
            return bool(force_flush(timeout_millis=int(timeout * 1000)))
        except Exception as exc:  # noqa: BLE001 - telemetry must never fail a run
            log.warning("metrics flush failed: %s", exc)
            return False


@dataclass
class RunTimer:
    ok: bool = True
    started: float = field(default_factory=time.monotonic)


# -- the process's metrics ------------------------------------------------------------------------

_lock = threading.Lock()
_current: Metrics | None = None


def current() -> Metrics:
    """This process's :class:`Metrics`, decided from ``os.environ`` on first use (see the module doc)."""
    global _current
    with _lock:
        if _current is None:
            _current = configure(os.environ)
        return _current


def install(metrics: Metrics | None) -> Metrics | None:
    """Use ``metrics`` from now on (tests); None: decide again on next use. Returns the previous."""
    global _current
    with _lock:
        previous, _current = _current, metrics
        return previous


def configure(environ: Mapping[str, str]) -> Metrics:
    """The enable/no-op decision (see the module doc). Never raises: a failure means no metrics."""
    connection_string = environ.get(CONNECTION_STRING, "").strip()
    if not connection_string:
        return Metrics()
    try:
        if environ.get(WORKER_TELEMETRY, "").strip().lower() == "true":
            from opentelemetry import metrics as otel

            return Metrics(otel.get_meter_provider(), owned=False)
        return Metrics(_azure_monitor(connection_string))
    except Exception as exc:  # noqa: BLE001 - telemetry must never stop the mirror
        log.warning("metrics disabled: Azure Monitor could not be configured: %s", type(exc).__name__)
        return Metrics()


def _azure_monitor(connection_string: str) -> MeterProvider:
    """``configure_azure_monitor()`` for metrics only; returns the MeterProvider it set."""
    for name in ("OTEL_LOGS_EXPORTER", "OTEL_TRACES_EXPORTER"):
        os.environ.setdefault(name, "none")
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics as otel

    configure_azure_monitor(
        connection_string=connection_string,
        enable_live_metrics=False,
        enable_performance_counters=False,
        read_timeout=EXPORT_TIMEOUT_SECONDS,
        instrumentation_options={name: {"enabled": False} for name in INSTRUMENTATIONS},
    )
    return otel.get_meter_provider()
