"""SIGKILL at random points of a sync, several times, then run again: the target ends complete.

The CLI (``python -m sync_core sync``, configured through the environment) runs as a subprocess
against a source behind a slow link (``bench.latency_proxy.LatencyProxy``, 1 MB/s per connection)
and a ``FaultProxy`` that injects nothing but logs every request, so kills land while blobs are
streaming from the source into the target. The process is killed with SIGKILL after seeded random
delays. An independent client (the harness ``Pusher``) watches the target *during* every run
(tag -> manifest -> child manifests -> blob HEADs) and deep-verifies it after every kill (every
blob fetched back and digest-checked): a target tag never references missing content. A last run
without a kill must finish the job and copy only what was left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.latency_proxy import LatencyProxy
from tests.harness import ADMIN, PUSHER, images
from tests.harness.faultproxy import FaultProxy
from tests.harness.paths import ROOT
from tests.harness.verify import Incomplete, verify_present

NAMESPACE = "k"
MIRROR = "killed"
KILLS = 5
SEED = 5150
LINK_BYTES_PER_S = 1_000_000  # per connection


def catalog() -> dict[tuple[str, str], images.Manifest]:
    base = images.layer("kill-base", 400_000)
    out: dict[tuple[str, str], images.Manifest] = {}
    for i in range(4):
        out[(f"{NAMESPACE}/img{i}", "1.0")] = images.oci_image(
            f"kill-img{i}-1.0", (300_000, 150_000), base_layer=base
        )
        out[(f"{NAMESPACE}/img{i}", "1.1")] = images.oci_image(
            f"kill-img{i}-1.1", (250_000,), base_layer=base
        )
    out[(f"{NAMESPACE}/multi", "2.0")] = images.oci_index(
        "kill-multi", ("linux/amd64", "linux/arm64"), (350_000,)
    )
    out[(f"{NAMESPACE}/legacy", "v1")] = images.docker_manifest_list(
        "kill-legacy", layer_sizes=(200_000, 100_000)
    )
    out[(f"{NAMESPACE}/big", "large")] = images.oci_image("kill-big", (1_500_000,))
    return out


CATALOG = catalog()
EXPECTED = {(f"{MIRROR}/{repo[len(NAMESPACE) + 1 :]}", tag): m.digest for (repo, tag), m in CATALOG.items()}
TARGET_REPOS = sorted({repo for repo, _ in EXPECTED})


class Watcher(threading.Thread):
    """Polls the target while a sync runs: every tag must resolve (manifests by GET, blobs by HEAD)."""

    def __init__(self, pusher: images.Pusher):
        super().__init__(daemon=True)
        self.pusher = pusher
        self.stop_event = threading.Event()
        self.violations: list[str] = []
        self.rounds = 0

    def check_once(self) -> None:
        for repo in TARGET_REPOS:
            for tag in self.pusher.tags(repo):
                self._resolve(repo, tag)
        self.rounds += 1

    def _resolve(self, repo: str, ref: str) -> None:
        # distribution 2.8 writes a tag's index link (which makes it show in tags/list) just
        # before its current link (which makes it resolvable): a tag that does not resolve yet
        # is asked again; one that never resolves is a violation (and fails the deep check too).
        for attempt in range(20 if not ref.startswith("sha256:") else 1):
            try:
                raw, _, _ = self.pusher.fetch_manifest(repo, ref)
                break
            except images.RegistryHTTPError as exc:
                if exc.status_code != 404 or attempt == 19 or ref.startswith("sha256:"):
                    self.violations.append(f"{repo}:{ref}: manifest {exc.status_code}")
                    return
                time.sleep(0.05)
        doc = json.loads(raw)
        for child in doc.get("manifests") or []:
            self._resolve(repo, child["digest"])
        for desc in [doc["config"], *(doc.get("layers") or [])] if "config" in doc else []:
            if not self.pusher.blob_exists(repo, desc["digest"]):
                self.violations.append(f"{repo}:{ref}: blob {desc['digest']} missing")

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.check_once()
            self.stop_event.wait(0.05)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)


@pytest.fixture
def world(fresh_registry, token_issuer):
    source = fresh_registry(auth="token", name="kill-src")
    target = fresh_registry(auth="token", name="kill-dst")
    pusher = source.pusher()
    for (repo, tag), manifest in CATALOG.items():
        pusher.push(repo, manifest, tag)
    pusher.close()
    link = LatencyProxy(
        "127.0.0.1", source.port, delay_ms=2, bandwidth_bytes_per_s=LINK_BYTES_PER_S, connect_rtt=False
    ).start()
    source_fp = FaultProxy(link.url)  # no faults: a request log to see what was in flight
    target_fp = FaultProxy(target.url)
    try:
        yield source, target, source_fp, target_fp
    finally:
        source_fp.stop()
        target_fp.stop()
        link.stop()


def cli_env(source_fp: FaultProxy, target_fp: FaultProxy) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "SOURCE_REGISTRY": source_fp.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": NAMESPACE,
        "SOURCE_USERNAME": ADMIN[0],
        "SOURCE_PASSWORD": ADMIN[1],
        "TARGET_REGISTRY": target_fp.url,
        "TARGET_NAMESPACE": MIRROR,
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
        "SYNC_CONCURRENCY": "3",
    }


def start_cli(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sync_core", "sync", "--json"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )


def wait_for_copy(proc: subprocess.Popen, source_fp: FaultProxy, mark: int, timeout: float = 30.0) -> bool:
    """Wait until this run requests its first blob from the source (False if it ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any("/blobs/" in r.path for r in source_fp.log[mark:]):
            return True
        time.sleep(0.01)
    return False


def in_flight(fp: FaultProxy) -> list[str]:
    return [f"{r.method} {r.path.split('?')[0]}" for r in fp.log if r.elapsed is None]


def test_sigkill_at_random_points_never_leaves_a_broken_tag_and_a_rerun_completes(world, tmp_path):
    source, target, source_fp, target_fp = world
    env = cli_env(source_fp, target_fp)
    rng = random.Random(SEED)
    verifier = target.pusher()
    kills: list[dict] = []
    started = time.monotonic()
    try:
        for k in range(KILLS):
            watcher = Watcher(target.pusher())
            mark = len(source_fp.log)
            proc = start_cli(env, tmp_path / "cli.log")
            watcher.start()
            # a seeded random delay counted from the first blob request of this run (so the kill
            # lands mid-copy however long the interpreter takes to start on a busy machine)
            delay = rng.uniform(0.3, 2.0)
            copying = wait_for_copy(proc, source_fp, mark)
            try:
                proc.wait(timeout=delay if copying else 0.01)
                finished = True  # the run ended before the kill (the rest of the job was small)
            except subprocess.TimeoutExpired:
                finished = False
                flying = in_flight(source_fp) + in_flight(target_fp)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
            watcher.finish()
            assert not watcher.violations, (
                f"kill {k}: a target tag referenced missing content: {watcher.violations}"
            )
            try:
                present = verify_present(verifier, TARGET_REPOS)  # deep: every blob fetched and hashed
            except Incomplete as exc:
                pytest.fail(
                    f"after kill {k} (at {delay:.2f}s) a target tag references missing content: {exc}"
                )
            assert all(EXPECTED[key] == digest for key, digest in present.items())
            kills.append(
                {
                    "at": round(delay, 2),
                    "killed": not finished,
                    "present": len(present),
                    "in_flight": [] if finished else flying,
                    "watch_rounds": watcher.rounds,
                }
            )
            if finished:
                break

        before = len(verify_present(verifier, TARGET_REPOS))
        watcher = Watcher(target.pusher())
        watcher.start()
        final = subprocess.run(
            [sys.executable, "-m", "sync_core", "sync", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        watcher.finish()
        assert final.returncode == 0, final.stderr.decode()[-3000:]
        summary = json.loads(final.stdout)
        assert summary["ok"] and summary["tags"]["copied"] == len(EXPECTED) - before, summary
        assert not watcher.violations, watcher.violations
        present = verify_present(verifier, TARGET_REPOS)
        assert present == EXPECTED
    finally:
        verifier.close()
    elapsed = time.monotonic() - started

    print(
        f"\nkills (delay s, tags present after, requests in flight, watcher rounds): "
        f"{[(k['at'], k['present'], len(k['in_flight']), k['watch_rounds']) for k in kills]}; "
        f"final run copied {summary['tags']['copied']} of {len(EXPECTED)}; {elapsed:.1f}s"
    )
    killed = [k for k in kills if k["killed"]]
    assert len(killed) >= 3, f"the runs were too short for the kills to land: {kills}"
    # the kills landed mid-copy: with blobs on the wire, and with some but not all tags copied
    assert any(any("/blobs/" in r for r in k["in_flight"]) for k in killed), kills
    assert any(0 < k["present"] < len(EXPECTED) for k in killed), kills
    assert {r.method for r in source_fp.log} <= {"GET", "HEAD"}
    assert "DELETE" not in {r.method for r in target_fp.log}
