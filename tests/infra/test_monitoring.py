"""Operating the mirror: the alert rules (infra/modules/alerts.bicep, parsed with pycep), the
queries the README shows for them, and the OpenTelemetry side of the host configuration.

checkov runs on the module with the rest of infra/ (tests/infra/test_infra.py).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from sync_core import logs
from tests.harness.paths import ROOT

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
ALERTS = INFRA / "modules" / "alerts.bicep"

#: The instruments of sync_core/report/metrics.py (agreed names) and their attributes.
METRICS = {
    "registry_sync.tags": {"target", "outcome"},
    "registry_sync.bytes_uploaded": {"target"},
    "registry_sync.blobs": {"target", "placement"},
    "registry_sync.referrers": {"target"},
    "registry_sync.run.duration": {"trigger", "ok"},
    "registry_sync.mirror_lag": {"target"},
    "registry_sync.backfill": {"target"},
    "registry_sync.staleness": {"target"},
    "registry_sync.check": {"subject", "check", "status"},
}
QUERIES = ("poisonQuery", "failedRunsQuery", "deadManQuery", "stalenessQuery", "checkQuery")
API_VERSIONS = {
    "Microsoft.Insights/actionGroups": "2023-01-01",
    "Microsoft.Insights/scheduledQueryRules": "2023-12-01",
}


def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    config = resource["config"]
    return config["config"] if "condition" in config and "config" in config else config


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    return parse(ALERTS)


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return parse(MAIN)


@pytest.fixture(scope="module")
def queries(alerts) -> dict[str, str]:
    return {name: alerts["variables"][name]["value"].strip() for name in QUERIES}


@pytest.fixture(scope="module")
def rules(alerts) -> dict[str, dict[str, Any]]:
    found = {
        n: body(r)
        for n, r in alerts["resources"].items()
        if r["type"] == "Microsoft.Insights/scheduledQueryRules"
    }
    return found


# ------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------


def test_api_versions_are_ga(alerts):
    for name, resource in alerts["resources"].items():
        assert API_VERSIONS.get(resource["type"]) == resource["api_version"], name


def test_five_rules_on_application_insights(rules, queries):
    criteria = {name: rule["properties"]["criteria"]["allOf"] for name, rule in rules.items()}
    assert {name: c[0]["query"] for name, c in criteria.items()} == {
        "poisonAlert": "poisonQuery",
        "failedRunsAlert": "failedRunsQuery",
        "deadManAlert": "deadManQuery",
        "stalenessAlert": "stalenessQuery",
        "checkAlert": "checkQuery",
    }
    for name, rule in rules.items():
        assert rule["kind"] == "LogAlert", name
        props = rule["properties"]
        assert props["scopes"] == ["appInsightsId"], name
        assert props["enabled"] is True and props["autoMitigate"] is True, name
        assert props["severity"] in range(5), name
        assert props["actions"] == {"actionGroups": "notify"}, name
        assert len(criteria[name]) == 1
        assert criteria[name][0]["failingPeriods"] == {
            "numberOfEvaluationPeriods": 1,
            "minFailingPeriodsToAlert": 1,
        }
        # a measured column is one the query produces
        column = criteria[name][0].get("metricMeasureColumn")
        if column:
            assert re.search(rf"\b{column}\b", queries[criteria[name][0]["query"]]), name
        for dimension in criteria[name][0].get("dimensions", []):
            assert re.search(rf"\bby {dimension['name']}\b", queries[criteria[name][0]["query"]]), name


def test_thresholds_and_windows(alerts, rules):
    poison, failed, dead, lag = (
        rules[n]["properties"] for n in ("poisonAlert", "failedRunsAlert", "deadManAlert", "stalenessAlert")
    )
    assert (poison["criteria"]["allOf"][0]["operator"], poison["criteria"]["allOf"][0]["threshold"]) == (
        "GreaterThan",
        0,
    )
    assert failed["criteria"]["allOf"][0]["operator"] == "GreaterThanOrEqual"
    assert failed["criteria"]["allOf"][0]["threshold"] == "failedRunsThreshold"
    dead_criterion = dead["criteria"]["allOf"][0]
    assert (dead_criterion["timeAggregation"], dead_criterion["operator"], dead_criterion["threshold"]) == (
        "Count",
        "LessThan",
        1,
    )
    assert lag["criteria"]["allOf"][0]["threshold"] == {
        "operator": {
            "type": "multiply",
            "operands": {"operand_1": "stalenessThresholdMinutes", "operand_2": 60},
        }
    }
    # the timer-driven rules look back two schedule periods and evaluate at most every 15 minutes
    for props in (poison, dead):
        assert (props["windowSize"], props["evaluationFrequency"]) == ("timerWindow", "timerFrequency")
    variables = {k: v["value"] for k, v in alerts["variables"].items()}
    assert variables["timerWindowMinutes"] == {
        "operator": {
            "type": "multiply",
            "operands": {"operand_1": 2, "operand_2": "syncSchedulePeriodMinutes"},
        }
    }
    assert variables["timerWindow"] == "PT${timerWindowMinutes}M"
    assert variables["timerFrequency"] == "PT${min(15, timerWindowMinutes)}M"
    # the check runs once a day: its rule looks back a day, so one failing check keeps it up
    check = rules["checkAlert"]["properties"]
    check_criterion = check["criteria"]["allOf"][0]
    assert (check["windowSize"], check["evaluationFrequency"]) == ("P1D", "PT1H")
    assert (
        check_criterion["timeAggregation"],
        check_criterion["operator"],
        check_criterion["threshold"],
    ) == (
        "Total",
        "GreaterThan",
        0,
    )
    params = alerts["parameters"]
    assert params["syncSchedulePeriodMinutes"]["default"] == 15
    assert params["stalenessThresholdMinutes"]["default"] == 60
    assert params["failedRunsThreshold"]["default"] == 3


def test_action_group_is_optional(alerts):
    ((name, group),) = [
        (n, r) for n, r in alerts["resources"].items() if r["type"] == "Microsoft.Insights/actionGroups"
    ]
    assert group["config"]["condition"] == "createActionGroup"
    text = ALERTS.read_text()
    assert "var createActionGroup = empty(actionGroupId) && !empty(alertEmail)" in text
    # an existing group wins; else the new one when there is an e-mail; else none
    assert re.search(
        r"var notify = empty\(actionGroupId\) \? \(createActionGroup \? \[\s*actionGroup\.id\s*\] : \[\]\) : \[\s*actionGroupId\s*\]",
        text,
    )
    props = body(group)["properties"]
    assert body(group)["location"] == "global"
    assert props["emailReceivers"] == [
        {"name": "operator", "emailAddress": "alertEmail", "useCommonAlertSchema": True}
    ]
    assert props["groupShortName"]["function"] == {
        "type": "take",
        "parameters": {"original_value": "namePrefix", "number_to_take": 12},
    }
    assert alerts["parameters"]["alertEmail"]["default"] == ""
    assert alerts["parameters"]["actionGroupId"]["default"] == ""


def test_main_deploys_the_module(main, alerts):
    (module,) = [m for m in main["modules"].values() if m["detail"]["path"] == "modules/alerts.bicep"]
    assert module["config"]["condition"] == "deployAlerts"
    params = module["config"]["config"]["params"]
    required = {n for n, p in alerts["parameters"].items() if "default" not in p}
    assert required <= set(params) <= set(alerts["parameters"])
    assert params["appInsightsId"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "appInsights", "operand_2": "id"}}
    }
    defaults = {
        n: main["parameters"][n]["default"]
        for n in (
            "deployAlerts",
            "alertEmail",
            "alertActionGroupId",
            "syncSchedulePeriodMinutes",
            "stalenessThresholdMinutes",
            "failedRunsThreshold",
        )
    }
    assert defaults == {
        "deployAlerts": True,
        "alertEmail": "",
        "alertActionGroupId": "",
        "syncSchedulePeriodMinutes": 15,
        "stalenessThresholdMinutes": 60,
        "failedRunsThreshold": 3,
    }
    # the dead-man period is the timer's: "0 */15 * * * *" runs every 15 minutes
    minutes = main["parameters"]["syncSchedule"]["default"].split()[1]
    assert minutes == f"*/{defaults['syncSchedulePeriodMinutes']}"
    # the azd parameters file changes both or neither
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert ("syncSchedule" in azd) == ("syncSchedulePeriodMinutes" in azd)


# ------------------------------------------------------------------------------------------
# the queries
# ------------------------------------------------------------------------------------------


def test_queries_use_the_agreed_metric_names(queries):
    named = {q: set(re.findall(r'name == "([^"]+)"', text)) for q, text in queries.items()}
    assert named == {
        "poisonQuery": set(),
        "failedRunsQuery": {"registry_sync.run.duration"},
        "deadManQuery": {"registry_sync.run.duration"},
        "stalenessQuery": {"registry_sync.staleness"},
        "checkQuery": {"registry_sync.check"},
    }
    for q, text in queries.items():
        for metric in named[q]:
            assert metric in METRICS
        for dimension in re.findall(r"customDimensions\.(\w+)", text):
            assert any(dimension in METRICS[m] for m in named[q]), f"{q}: {dimension}"
    assert 'customDimensions.trigger) == "timer"' in queries["deadManQuery"]
    assert 'tolower(tostring(customDimensions.ok)) == "true"' in queries["deadManQuery"]
    assert 'ok == "false"' in queries["failedRunsQuery"]
    assert "valueMax" in queries["stalenessQuery"] and "valueCount" in queries["failedRunsQuery"]
    assert queries["poisonQuery"].startswith("traces\n") and "decision=poison_depth" in queries["poisonQuery"]
    assert 'status == "fail"' in queries["checkQuery"] and "sum(valueSum)" in queries["checkQuery"]


def test_readme_shows_each_query_as_in_the_bicep(queries):
    readme = (INFRA / "README.md").read_text()
    section = readme[readme.index("## Alerts") :]
    blocks = [b.strip() for b in re.findall(r"```kusto\n(.*?)```", section, re.S)]
    for name, text in queries.items():
        assert text in blocks, f"{name} differs between infra/modules/alerts.bicep and infra/README.md"
    for metric in METRICS:
        assert f"`{metric}`" in section


def test_poison_query_reads_the_decision_line(queries, caplog):
    """The regexes of the poison query find the queue and count in the timer's log line."""
    caplog.set_level(logging.INFO)
    logs.decision(
        logging.getLogger("sync_core.poison"),
        "poison_depth",
        "poison queue sync-work-poison holds about 7 message(s)",
        queue="sync-work-poison",
        count=7,
    )
    (line,) = [r.getMessage() for r in caplog.records]
    query = queries["poisonQuery"]
    assert re.search(r'message contains "([^"]+)"', query).group(1) in line
    patterns = dict(re.findall(r'(\w+) = (?:toint\()?extract\(@"([^"]+)", 1, message\)', query))
    assert set(patterns) == {"queue", "depth"}
    assert re.search(patterns["queue"], line).group(1) == "sync-work-poison"
    assert re.search(patterns["depth"], line).group(1) == "7"


# ------------------------------------------------------------------------------------------
# OpenTelemetry: host.json, the app setting, the package, the log attributes
# ------------------------------------------------------------------------------------------


def test_opentelemetry_is_on_for_host_and_worker(main):
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    (site,) = [body(r) for r in main["resources"].values() if r["type"] == "Microsoft.Web/sites"]
    settings = {s["name"]: s["value"] for s in site["properties"]["siteConfig"]["appSettings"]}
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"
    # Entra ID with the app's user-assigned identity (tests/infra/test_infra.py checks the client id)
    auth = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert auth.startswith("ClientId=${") and auth.endswith("};Authorization=AAD")
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^azure-monitor-opentelemetry\b", requirements, re.M), "the worker loads the distro"
    # the worker configures the exporter itself; a second configure_azure_monitor() would export
    # twice: the one call (for the CLI) is in metrics.py, behind the worker's setting (what it does
    # with the setting on is proven by tests/report/test_metrics.py)
    calls = [
        p
        for p in [ROOT / "function_app.py", *(ROOT / "sync_core").rglob("*.py")]
        if "configure_azure_monitor(" in p.read_text()
    ]
    assert calls == [ROOT / "sync_core" / "report" / "metrics.py"]
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" in calls[0].read_text()


def test_the_exporter_floor_excludes_live_metrics_without_entra_id():
    """Exporters before 1.0.0b56 sent Live Metrics without the credential of
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 401 on a resource with local auth disabled
    (Azure/azure-sdk-for-python#48251). The distro 1.8.9 still admitted 1.0.0b54."""
    from packaging.requirements import Requirement

    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = {r.name: r for r in (Requirement(x) for x in lines if x.strip() and not x.startswith("#"))}
    distro = reqs["azure-monitor-opentelemetry"].specifier
    exporter = reqs["azure-monitor-opentelemetry-exporter"].specifier
    assert not distro.contains("1.8.9") and distro.contains("1.8.11")
    assert not exporter.contains("1.0.0b55", prereleases=True) and exporter.contains("1.0.0b58")


def test_decision_fields_reach_opentelemetry_as_attributes():
    """The OpenTelemetry log handler keeps each extra as an attribute (customDimensions entry)."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler  # what the distro attaches
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as Exporter
    except ImportError:  # older SDK
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as Exporter

    exporter = Exporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger("test.monitoring.otel")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        logs.decision(
            logger,
            "failed",
            "copy failed",
            repository="giantswarm/app",
            tag="1.0",
            count=2,
            reason=ValueError("x"),
            level=logging.WARNING,
        )
    finally:
        logger.removeHandler(handler)
    (record,) = exporter.get_finished_logs()
    attributes = dict(record.log_record.attributes)
    assert attributes["decision"] == "failed"
    assert (attributes["repository"], attributes["tag"], attributes["count"]) == ("giantswarm/app", "1.0", 2)
    assert attributes["reason"] == "ValueError('x')", "other types as their escaped repr"
