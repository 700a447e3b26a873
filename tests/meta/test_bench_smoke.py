"""The benchmark harness works end to end (``python -m bench.run --quick``): registries, latency
proxies, both tools, counters and the results files; and the day at fleet scale (its quick
size). Ratios are the benchmark's business, not a unit test's: nothing here asserts a speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.harness.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")


def test_quick_benchmark_runs_both_tools_and_reports(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,  # under pytest's 300 s; ~90 s on 2 shared cores (the day included)
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((out / "results.json").read_text())
    rows = {(r["scenario"], r["tool"]): r for r in report["rows"]}
    scenarios = ["initial", "noop", "incremental", "wide-1", f"wide-{report['profile']['wide_tags']}"]
    for scenario in scenarios:
        for tool in ("registry-sync", "skopeo"):
            row = rows[scenario, tool]
            assert row["ok"], (scenario, tool, row["note"])
            assert row["seconds"] > 0 and row["max_rss_bytes"] > 0
            assert row["mirror_requests"] > 0  # every run talks to the mirror through the proxy
    registry_sync_only = [
        "noop-full-check",
        "one-target",
        "two-targets",
        *(
            f"referrers-{run}{policy}"
            for run in ("initial", "noop", "full-check")
            for policy in ("", "-none")
        ),
    ]
    for scenario in registry_sync_only:
        assert rows[scenario, "registry-sync"]["ok"], (scenario, rows[scenario, "registry-sync"]["note"])
    # both tools mirrored every tag byte for byte (checked by the harness after the syncs); the two
    # targets and the referrers too
    assert "byte-identical" in report["facts"]["verify_initial"]
    assert "byte-identical" in report["facts"]["verify_incremental"]
    assert "byte-identical" in report["facts"]["verify_two_targets"]
    assert "each with its 2 referrers listed" in report["facts"]["verify_referrers"]
    assert rows["two-targets", "registry-sync"]["second_mirror"]["requests"] > 0
    initial = rows["initial", "registry-sync"]
    assert initial["bytes_to_mirror"] >= report["facts"]["corpus"]["unique_blob_bytes"]
    assert initial["summary"]["tags"]["copied"] == report["facts"]["corpus"]["tags"]
    noop = rows["noop", "registry-sync"]
    assert noop["summary"]["tags"]["missing"] == 0
    assert noop["mirror_by_class"].get("manifest", 0) == 0  # counted by class through the proxy
    assert {t["target"] for t in report["targets"]} >= {"peak RSS <= 150 MB (every registry-sync run)"}
    assert "| initial | registry-sync |" in (out / "results.md").read_text()
    check_day(report, (out / "results.md").read_text())


def check_day(report: dict, text: str) -> None:
    """The day's phases ran without a failure, every push reached both mirrors (the bench asks
    them directly), and the counts that do not depend on the machine are what issue 20 asks."""
    day = report["day"]
    profile = day["profile"]
    for phase in ("onboarding", "events", "lost", "noop", "previous"):
        assert day[phase]["failure_count"] == 0, (phase, day[phase]["failures"])
    for phase in ("events", "lost"):
        assert len(day[phase]["pushes"]) == profile["pushes"] > 0
        assert day[phase]["within_one_tick"] == profile["pushes"], day[phase]["pushes"]
        assert {p["kind"] for p in day[phase]["pushes"]} == {"tag", "moved", "referrer"}
        assert (
            day[phase]["ticks"] == profile["ticks"] and day[phase]["executions"]["timer"] == profile["ticks"]
        )
    assert (
        day["events"]["executions"]["event"] == profile["pushes"] and day["lost"]["executions"]["event"] == 0
    )
    assert day["events"]["lag_seconds"]["max"] < 15 * 60 <= day["lost"]["lag_seconds"]["max"] + 15 * 60
    noop = day["noop"]
    assert noop["executions"] == {"timer": 1, "event": 0, "queue": 0}
    assert noop["target_requests_total"] == 0 and noop["source"] > 0
    n = profile["repositories"]
    previous = day["previous"]  # one message per repository and target, every tick
    assert previous["executions"]["queue"] == 2 * n * profile["old_ticks"]
    assert previous["by_work"]["other"]["target_requests_total"] > 0
    met = {g["goal"]: g["met"] for g in day["goals"]}
    for goal in (
        "day: a no-op tick <= 2 executions",
        "day: a no-op tick sends 0 requests to the targets",
        "day: a no-op tick <= 3 source requests per repository",
        "day: the timer never sends a request to a target",
        "day: every event lost: each push at every target within one tick",
    ):
        assert met[goal], (goal, day["goals"])
    assert {t["target"] for t in report["targets"]} >= set(met)  # printed with the others, met or not
    assert "| executions: timer + Event Grid + queue |" in text and "previous design" in text
