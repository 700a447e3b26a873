"""The daily ``check`` of the Functions app (sync_core.azure.daily_check).

Against real registries: the first timer run of a UTC day runs every check with the process's
``Syncer``, logs one structured record per finding and counts each in ``registry_sync.check``
(read back through the OpenTelemetry SDK, the attributes the alert rule's query reads); other
runs do nothing; a right lost between two days is seen by the same long-lived ``Syncer``; a
check that cannot run is logged and counted, never raised.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sync_core.azure import daily_check
from sync_core.config.load import load_config
from sync_core.jobs import check
from sync_core.jobs.syncer import Syncer
from sync_core.report import metrics
from tests.harness import oci_env
from tests.harness.metric_points import points, value

BOT = ("daily-bot", "daily-bot-pw-3Vn")
DAY = dt.datetime(2026, 6, 1, 0, 5, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("previous", "now", "due"),
    [
        (None, DAY, True),  # the first run the host remembers
        (DAY - dt.timedelta(minutes=15), DAY, True),  # the first run after midnight UTC
        (DAY, DAY + dt.timedelta(minutes=15), False),
        (DAY, DAY + dt.timedelta(hours=23, minutes=50), False),
        (DAY, DAY + dt.timedelta(days=1), True),
        # the same instant in another zone is the same UTC day
        (DAY.astimezone(dt.timezone(dt.timedelta(hours=-5))), DAY + dt.timedelta(minutes=15), False),
    ],
)
def test_due_on_the_first_timer_run_of_each_utc_day(previous, now, due):
    assert daily_check.due(previous, now) is due


@pytest.fixture
def world(token_registry_src, fresh_issuer, fresh_registry):
    issuer = fresh_issuer(users={BOT[0]: (BOT[1], {"*": ["pull", "push"]})})
    target = fresh_registry(token_issuer=issuer, name="daily-target")
    settings = {
        **oci_env(token_registry_src, target),
        "SOURCE_NAMESPACE": "team",
        "SOURCE_REPOSITORIES": "team/app,team/legacy",
        "TARGET_USERNAME": BOT[0],
        "TARGET_PASSWORD": BOT[1],
    }
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with Syncer(load_config(settings), metrics=metrics.Metrics(provider)) as syncer:
        yield syncer, issuer, target, reader
    provider.shutdown()


def check_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sync_core.check"]


def test_the_day_s_first_run_logs_and_counts_every_finding_and_a_lost_right_shows_the_next_day(world, caplog):
    syncer, issuer, target, reader = world
    caplog.set_level(logging.INFO, logger="sync_core.check")
    mark = len(target.access_log())
    report = daily_check.run_if_due(syncer, DAY - dt.timedelta(minutes=15), DAY)
    assert report is not None and report.ok, [f for f in report.findings if f.status.value != "ok"]
    records = check_records(caplog)
    assert len(records) == len(report.findings), "one record per finding"
    for record, finding in zip(records, report.findings, strict=True):
        dims = record.custom_dimensions
        assert dims["decision"] == "check" and record.levelno == logging.INFO
        assert (dims["subject"], dims["check"], dims["status"]) == (finding.subject, finding.check, "ok")
        assert (record.subject, record.status) == (finding.subject, "ok"), "as attributes of their own too"
        assert dims["asked"] == finding.asked and dims["answered"] == finding.answered
    found = points(reader)
    assert value(found, metrics.CHECK, subject="target", check="push", status="ok") == 1
    assert {k[0] for k in found} == {metrics.CHECK}
    assert {frozenset(dict(k[1])) for k in found} == {frozenset({"subject", "check", "status"})}

    # not due again the same day: nothing is asked, logged or counted
    caplog.clear()
    asked = issuer.token_requests
    assert daily_check.run_if_due(syncer, DAY, DAY + dt.timedelta(minutes=15)) is None
    assert check_records(caplog) == [] and issuer.token_requests == asked

    # the user loses its push right; the next day's check of the same process sees it
    issuer.users[BOT[0]] = (BOT[1], {"*": ["pull"]})
    report = daily_check.run_if_due(
        syncer, DAY + dt.timedelta(hours=23, minutes=50), DAY + dt.timedelta(days=1)
    )
    assert report is not None and not report.ok
    failed = [r for r in check_records(caplog) if r.custom_dimensions["status"] == "fail"]
    assert [(r.subject, r.check, r.levelno) for r in failed] == [("target", "push", logging.ERROR)]
    assert "| fix: give the user pull and push on mirror/* at" in failed[0].getMessage()
    assert failed[0].custom_dimensions["fix"].startswith("give the user pull and push")
    assert value(points(reader), metrics.CHECK, subject="target", check="push", status="fail") == 1
    assert target.writes(mark) == [], "the check writes nothing"


def test_a_check_that_cannot_run_is_logged_and_counted_never_raised(world, caplog, monkeypatch):
    syncer, _, _, reader = world

    def broken(self, targets=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(check.Checker, "run", broken)
    caplog.set_level(logging.INFO, logger="sync_core.check")
    assert daily_check.run_if_due(syncer, None, DAY) is None
    (record,) = check_records(caplog)
    assert (
        record.levelno == logging.ERROR
        and "the daily check could not run: unexpected RuntimeError" in record.getMessage()
    )
    assert value(points(reader), metrics.CHECK, subject="check", check="run", status="fail") == 1
