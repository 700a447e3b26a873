"""The daily ``check`` of the Functions app: a credential that expires or loses a right is seen before
the copies fail.

The timer calls :func:`run_if_due` on every run; the first run of each UTC day runs every check
of ``python -m sync_core check`` (:mod:`sync_core.jobs.check`: reads only, writes nothing) with
the process's :class:`~sync_core.jobs.syncer.Syncer` and logs one structured record per finding
(``decision=check``, with ``subject``, ``check``, ``status``, ``asked``, ``answered`` and ``fix``
in customDimensions: warnings at WARNING, failures at ERROR). Every finding is also counted in
``registry_sync.check`` (``subject``, ``check``, ``status``); the alert rule "check found a
failure" (infra/modules/alerts.bicep) fires on ``status=fail``. It never raises: a check that
cannot run at all is logged and counted as a failure of ``subject=check``.
"""

from __future__ import annotations

import datetime as dt
import logging

from sync_core import logs
from sync_core.errors import describe
from sync_core.jobs.check import Checker, Report
from sync_core.jobs.check_findings import Finding, Status
from sync_core.jobs.syncer import Syncer

log = logging.getLogger("sync_core.check")

LEVELS = {Status.OK: logging.INFO, Status.WARN: logging.WARNING, Status.FAIL: logging.ERROR}


def due(previous: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether the timer run at ``now`` is the first of its UTC day (the previous one at ``previous``).

    Without a previous run (the first one, or the host lost its schedule state) it is due.
    """
    if previous is None:
        return True
    return now.astimezone(dt.timezone.utc).date() != previous.astimezone(dt.timezone.utc).date()


def log_finding(finding: Finding) -> None:
    fix = f" | fix: {finding.fix}" if finding.fix and finding.status is not Status.OK else ""
    logs.decision(
        log,
        "check",
        f"check {finding.status.value}: {finding.subject} {finding.check}: {finding.answered}{fix}",
        level=LEVELS[finding.status],
        subject=finding.subject,
        check=finding.check,
        status=finding.status.value,
        asked=finding.asked,
        answered=finding.answered,
        fix=finding.fix or None,
    )


def run_if_due(syncer: Syncer, previous: dt.datetime | None, now: dt.datetime) -> Report | None:
    """Run, log and count every check when ``now`` is the day's first timer run; never raises.

    Returns the report (None when not due, or when the check could not run at all).
    """
    if not due(previous, now):
        return None
    try:
        report = Checker(syncer).run()
        for finding in report.findings:
            log_finding(finding)
            syncer.metrics.check(finding.subject, finding.check, finding.status.value)
    except Exception as exc:  # noqa: BLE001 - the timer's own work must go on
        logs.decision(
            log,
            "check",
            f"check fail: the daily check could not run: {describe(exc)}",
            level=logging.ERROR,
            subject="check",
            check="run",
            status=Status.FAIL.value,
        )
        syncer.metrics.check("check", "run", Status.FAIL.value)
        return None
    return report
