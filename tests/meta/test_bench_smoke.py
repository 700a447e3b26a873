"""The benchmark harness works end to end (``python -m bench.run --quick``): registries, latency
proxies, both tools, counters and the results files. Ratios are the benchmark's business, not a
unit test's: nothing here asserts a speed."""

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
        timeout=240,
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
