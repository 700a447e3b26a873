"""``make bench``: registry-sync against ``skopeo sync --all``, side by side, through a latency proxy.

    python -m bench.run                 # the full benchmark (docs/benchmarks.md)
    python -m bench.run --quick         # small corpus, no 1 GiB image (tests/meta/test_bench_smoke.py)
    python -m bench.run --delay-ms 100 --bandwidth 50M --out /tmp/bench

Scenarios (each runs registry-sync, then skopeo, against the same mirror behind the same proxy;
registry-sync writes under ``rs/``, skopeo under ``sk/``):

  initial      sync the platform catalog into an empty mirror
  one-target, two-targets  registry-sync only, right after ``initial``: the same catalog into one
               empty mirror, and into two at once (one config file), in turns, 3 rounds (quick: 1);
               the median of each: bytes read from the source, wall time two against one
  verify       ``verify`` and ``verify --deep`` of that mirror (registry-sync only: requests, seconds)
  noop         the same sync again: nothing to do
  noop-full-check  the same with ``--full-check`` (registry-sync only; ``SYNC_COMPARE=digest`` does it
               every run, ``recent`` once per ``SYNC_FULL_CHECK_HOURS``)
  incremental  a few new tags appear at the source
  referrers-*  registry-sync only: the signed catalog (the same shape, 2 referrers a tag, listed in
               the referrers tag of each image): initial, noop and full-check, with the default
               ``SYNC_REFERRERS`` (all) and with ``none``
  big          one image with a 1 GiB layer (registry-sync sync vs ``skopeo copy --all``)
  wide-1       no-op over N repositories x 1 tag of one small image
  wide-T       no-op over the same N repositories x T tags (skopeo: a sample of repositories,
               its time and requests scaled by N / sample; it handles repositories one by one)

  day          a compressed day at fleet scale on the ACR stand-in, the app in-process: the timer's
               ticks, pushes with their events and with every event lost, a no-op tick, and the
               design before issue 20 (``bench/day.py``; figures and goals in ``bench/day_report.py``)

Scenario groups (``--scenarios``): sync, referrers, two, big, wide, day.

Results: a table on stdout, ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import corpus as corpora
from bench import day as days
from bench import day_report
from bench.tools import ROOT, ProcessResult, RegistrySync, Skopeo, skopeo_version
from bench.world import World
from tests.harness import images

MB = 1_000_000
TIMEOUT = 3600.0


@dataclass
class Row:
    scenario: str
    tool: str
    seconds: float
    ok: bool
    source_requests: int
    source_tokens: int
    mirror_requests: int
    mirror_tokens: int
    mirror_by_class: dict[str, int]
    source_by_class: dict[str, int]
    mirror_connections: int
    bytes_to_mirror: int
    bytes_from_mirror: int
    bytes_from_source: int
    max_rss_bytes: int
    cpu_seconds: float  # the tool's user + system CPU
    harness_cpu_seconds: (
        float  # the registries', latency proxies' and token issuers' CPU meanwhile (same cores)
    )
    scale: float = 1.0  # skopeo wide runs: measured on a sample, scaled by this factor
    note: str = ""
    summary: dict = field(default_factory=dict)
    ratio: float | None = None  # seconds / skopeo's seconds in the same scenario
    second_mirror: dict | None = (
        None  # two-target runs: the second mirror's counters (the mirror_* fields: the first's)
    )


def _row(
    scenario: str,
    tool: str,
    result: ProcessResult,
    counters: dict,
    *,
    scale: float = 1.0,
    note: str = "",
    summary: dict | None = None,
) -> Row:
    mirror, source, second = counters["mirror"], counters["source"], counters.get("mirror2")
    if not result.ok:
        note = (note + "; " if note else "") + f"FAILED (exit {result.returncode}): " + result.stderr[-400:]
    return Row(
        scenario=scenario,
        tool=tool,
        seconds=result.seconds * scale,
        ok=result.ok,
        source_requests=round(source["requests"] * scale),
        source_tokens=round(counters["source_tokens"] * scale),
        mirror_requests=round(mirror["requests"] * scale),
        mirror_tokens=round(counters["mirror_tokens"] * scale),
        mirror_by_class={k: round(v * scale) for k, v in sorted(mirror["requests_by_class"].items())},
        source_by_class={k: round(v * scale) for k, v in sorted(source["requests_by_class"].items())},
        mirror_connections=round(mirror["connections"] * scale),
        bytes_to_mirror=round(mirror["bytes_client_to_upstream"] * scale),
        bytes_from_mirror=round(mirror["bytes_upstream_to_client"] * scale),
        bytes_from_source=round(source["bytes_upstream_to_client"] * scale),
        max_rss_bytes=result.max_rss_bytes,
        cpu_seconds=result.cpu_seconds * scale,
        harness_cpu_seconds=counters["harness_cpu_seconds"] * scale,
        scale=scale,
        note=note,
        summary=summary or {},
        second_mirror={
            "requests": second["requests"],
            "requests_by_class": dict(sorted(second["requests_by_class"].items())),
            "tokens": counters["mirror2_tokens"],
            "bytes_to_mirror": second["bytes_client_to_upstream"],
        }
        if second and second["requests"]
        else None,
    )


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.profile = corpora.QUICK if args.quick else corpora.FULL
        self.workdir = Path(tempfile.mkdtemp(prefix="registry-sync-bench-"))
        self.world = World(
            delay_ms=args.delay_ms,
            source_delay_ms=args.source_delay_ms,
            bandwidth=args.bandwidth,
            wide=self.profile.wide_repositories > 0,
            mirrors=2 if "two" in args.scenarios else 1,
        )
        self.rs = RegistrySync(self.world.source_endpoint(), self.world.mirror_endpoint(), args.concurrency)
        self.rs_two = (
            RegistrySync(
                self.world.source_endpoint(),
                [self.world.mirror_endpoint(i) for i in (0, 1)],
                args.concurrency,
                self.workdir,
            )
            if "two" in args.scenarios
            else None
        )
        self.sk = Skopeo(self.world.source_endpoint(), self.world.mirror_endpoint(), self.workdir)
        self.rs_wide = RegistrySync(
            self.world.source_endpoint(wide=True), self.world.mirror_endpoint(), args.concurrency
        )
        self.sk_wide = Skopeo(
            self.world.source_endpoint(wide=True), self.world.mirror_endpoint(), self.workdir, "wide"
        )
        self.rows: list[Row] = []
        self.facts: dict = {}
        self.corpus = corpora.platform_corpus(self.profile)
        self.signed = corpora.signed_corpus(self.profile)
        self.big: corpora.BigLayer | None = None
        self.day: dict | None = None  # the day's summary (bench/day_report.py)

    def close(self) -> None:
        try:
            self.world.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # -- seeding -----------------------------------------------------------------------------
    def seed(self) -> None:
        started = time.monotonic()
        corpora.push_all(self.world.source_pusher, self.corpus.images)
        images = list(self.corpus.images.values())
        self.facts["corpus"] = {
            "repositories": len(self.corpus.repositories),
            "tags": len(self.corpus.images),
            "multi_arch_tags": sum(1 for m in images if m.is_index),
            "unique_blob_bytes": self.corpus.unique_blob_bytes(images),
            "manifest_bytes": self.corpus.manifest_bytes(images),
            "base_layer_bytes": self.corpus.base.size,
        }
        self.log(f"seeded {len(images)} tags in {time.monotonic() - started:.1f}s: {self.facts['corpus']}")
        if self.profile.big_layer and "big" in self.args.scenarios:
            started = time.monotonic()
            self.big = corpora.BigLayer("bench-1gib", self.profile.big_layer)
            pusher = self.world.source_pusher()
            corpora.push_big_layer(pusher, "big/huge", self.big)
            self.big_manifest = corpora.big_image(self.big, self.corpus.base)
            pusher.push("big/huge", self.big_manifest, "1.0.0")
            self.log(f"seeded the {self.profile.big_layer} byte layer in {time.monotonic() - started:.1f}s")

    # -- running -----------------------------------------------------------------------------
    def run_rs(
        self,
        scenario: str,
        source_ns: str,
        target_ns: str,
        *,
        wide: bool = False,
        tool: RegistrySync | None = None,
        settings: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        keep: bool = True,
    ) -> Row:
        tool = tool or (self.rs_wide if wide else self.rs)
        self.world.reset_counters()
        self.log(f"{scenario}: registry-sync ...")
        result, summary = tool.sync(source_ns, target_ns, TIMEOUT, settings=settings, args=args)
        row = _row(scenario, "registry-sync", result, self.world.counters(wide), summary=summary)
        if summary and not summary.get("ok", False):
            row.ok = False
            row.note += f" failures: {summary.get('failures')[:3]}"
        self.facts.setdefault("commands", {})[scenario] = tool.display(source_ns, target_ns, settings, args)
        self.log(f"{scenario}: registry-sync {row.seconds:.2f}s ok={row.ok} {row.note}")
        if keep:
            self.rows.append(row)
        return row

    def run_sk_sync(
        self,
        scenario: str,
        repositories: list[str],
        target_ns: str,
        *,
        wide: bool = False,
        scale: float = 1.0,
        note: str = "",
    ) -> Row | None:
        tool = self.sk_wide if wide else self.sk
        if self.args.skip_skopeo:
            return None
        self.world.reset_counters()
        self.log(f"{scenario}: skopeo sync over {len(repositories)} repositories ...")
        result = tool.sync(scenario, repositories, target_ns, TIMEOUT)
        row = _row(scenario, "skopeo", result, self.world.counters(wide), scale=scale, note=note)
        synced = re.findall(r"Synced (\d+) images", result.stderr)
        if not synced or int(synced[-1]) == 0:
            row.ok = False
            row.note += " skopeo synced no image: " + result.stderr[-300:]
        self.facts.setdefault("skopeo_commands", {})[scenario] = " ".join(
            tool.sync_command(tool.home / f"{scenario}.yaml", target_ns)
        )
        self.log(f"{scenario}: skopeo {result.seconds:.2f}s (x{scale:g}) ok={row.ok}")
        self.rows.append(row)
        return row

    def scenario_pair(self, scenario: str, source_ns: str, repositories: list[str]) -> tuple[Row, Row]:
        rs = self.run_rs(scenario, source_ns, "rs")
        sk = self.run_sk_sync(scenario, repositories, "sk")
        rs.ratio = rs.seconds / sk.seconds if sk and sk.seconds else None
        return rs, sk

    def verify_mirror(
        self, items: dict, prefixes: tuple[str, ...] | None = None, mirror: int = 0
    ) -> list[str]:
        """Every tag under each prefix (default: rs/ and sk/) with the source digest (byte-identical manifests)."""
        pusher = self.world.mirror_pusher(mirror)
        problems = []
        prefixes = prefixes or (("rs",) if self.args.skip_skopeo else ("rs", "sk"))
        for (repo, tag), manifest in items.items():
            leaf = repo.rsplit("/", 1)[1]
            for prefix in prefixes:
                _, _, digest = pusher.fetch_manifest(f"{prefix}/{leaf}", tag)
                if digest != manifest.digest:
                    problems.append(f"{prefix}/{leaf}:{tag} is {digest}, expected {manifest.digest}")
        pusher.close()
        return problems

    def verify_referrers(self, prefix: str, expected: bool) -> list[str]:
        """Each tag's referrers at the mirror as clients find them there (the referrers tag), or none."""
        pusher = self.world.mirror_pusher()
        problems = []
        for (repo, tag), referrers in self.signed.referrers.items():
            image = self.signed.images[repo, tag]
            where = f"{prefix}/{repo.rsplit('/', 1)[1]}"
            listing = images.digest_tag(image.digest, suffix="")
            found = set()
            if pusher.exists_manifest(where, listing):
                found = {
                    m["digest"] for m in json.loads(pusher.fetch_manifest(where, listing)[0])["manifests"]
                }
            want = {r.digest for r in referrers} if expected else set()
            if found != want:
                problems.append(f"{where}:{listing} lists {sorted(found)}, expected {sorted(want)}")
            for referrer in referrers if expected else ():
                if pusher.fetch_manifest(where, referrer.digest)[0] != referrer.raw:
                    problems.append(f"{where}@{referrer.digest} differs from the source")
        pusher.close()
        return problems

    def run(self) -> None:
        if self.args.scenarios & {"sync", "two", "referrers", "big"}:
            self.seed()
        if "sync" in self.args.scenarios:
            self.scenarios_sync()  # with the two-target run right after the initial one
        elif "two" in self.args.scenarios:
            self.scenario_two_targets()
        if "referrers" in self.args.scenarios:
            self.scenarios_referrers()
        if self.big is not None and "big" in self.args.scenarios:
            self.scenario_big()
        if self.profile.wide_repositories and "wide" in self.args.scenarios:
            self.scenario_wide()
        if "day" in self.args.scenarios:
            self.scenario_day()

    def scenarios_sync(self) -> None:
        ns = self.corpus.namespace
        repos = self.corpus.repositories
        self.scenario_pair("initial", ns, repos)
        problems = self.verify_mirror(self.corpus.images)
        self.facts["verify_initial"] = problems or "all tags byte-identical at rs/ and sk/"
        if "two" in self.args.scenarios:  # the same catalog, next to the one-target run it is compared with
            self.scenario_two_targets()
        self.scenario_verify(ns)
        self.scenario_pair("noop", ns, repos)
        self.run_rs("noop-full-check", ns, "rs", args=("--full-check",))
        corpora.push_all(self.world.source_pusher, self.corpus.new_images)
        new = list(self.corpus.new_images.values())
        self.facts["incremental"] = {
            "new_tags": len(new),
            "new_unique_blob_bytes": self.corpus.unique_blob_bytes(new) - self.corpus.base.size,
        }
        self.scenario_pair("incremental", ns, repos)
        problems = self.verify_mirror(self.corpus.new_images)
        self.facts["verify_incremental"] = problems or "all new tags byte-identical at rs/ and sk/"

    def scenario_two_targets(self) -> None:
        """The platform catalog into two empty mirrors in one run, and into one, taken in turns.

        Each round syncs into fresh namespaces (``one<i>/`` at the first mirror, ``two<i>/`` at
        both); the rows kept are each kind's median run (the machine is shared: one run can be
        slowed by something else), every run's time in the note.
        """
        assert self.rs_two is not None
        ns = self.corpus.namespace
        runs: dict[str, list[Row]] = {"one-target": [], "two-targets": []}
        problems = []
        for i in range(self.profile.two_target_rounds):
            runs["one-target"].append(self.run_rs("one-target", ns, f"one{i}", keep=False))
            runs["two-targets"].append(
                self.run_rs("two-targets", ns, f"two{i}", tool=self.rs_two, keep=False)
            )
            problems += [
                p for mirror in (0, 1) for p in self.verify_mirror(self.corpus.images, (f"two{i}",), mirror)
            ]
        self.facts["verify_two_targets"] = problems or "all tags byte-identical at both mirrors"
        for rows in runs.values():
            median = sorted(rows, key=lambda r: r.seconds)[len(rows) // 2]
            median.ok = all(r.ok for r in rows) and not problems
            if len(rows) > 1:
                median.note = (
                    f"median of {len(rows)} runs taken in turns with the other kind: "
                    + ", ".join(f"{r.seconds:.2f}" for r in rows)
                    + " s"
                )
            self.rows.append(median)

    def scenarios_referrers(self) -> None:
        """The signed catalog: initial, no-op and full check, following referrers (default) or not."""
        started = time.monotonic()
        corpora.push_all(self.world.source_pusher, self.signed.images)
        corpora.push_referrers(self.world.source_pusher, self.signed)
        images_ = list(self.signed.images.values())
        referrers = [r for rs in self.signed.referrers.values() for r in rs]
        self.facts["referrers"] = {
            "repositories": len(self.signed.repositories),
            "tags": len(images_),
            "referrers": len(referrers),
            "manifests": sum(1 for m in images_ for _ in m.walk()),
            "unique_blob_bytes": self.signed.unique_blob_bytes(images_),
            "referrer_blob_bytes": self.signed.unique_blob_bytes(referrers),
            "referrer_manifest_bytes": sum(r.size for r in referrers),
        }
        self.log(f"seeded the signed catalog in {time.monotonic() - started:.1f}s: {self.facts['referrers']}")
        ns = self.signed.namespace
        for suffix, target, settings in (
            ("", "ref-all", {}),
            ("-none", "ref-none", {"SYNC_REFERRERS": "none"}),
        ):
            self.run_rs(f"referrers-initial{suffix}", ns, target, settings=settings)
            problems = self.verify_mirror(self.signed.images, (target,))
            problems += self.verify_referrers(target, expected=not settings)
            self.facts[f"verify_referrers{suffix}"] = problems or (
                "all tags byte-identical, "
                + ("each with its 2 referrers listed" if not settings else "no referrers")
            )
            self.run_rs(f"referrers-noop{suffix}", ns, target, settings=settings)
            self.run_rs(
                f"referrers-full-check{suffix}", ns, target, settings=settings, args=("--full-check",)
            )

    def scenario_verify(self, ns: str) -> None:
        """``verify`` (and ``--deep``) of the complete mirror: what it costs, and that it says complete."""
        for deep in (False, True):
            scenario = "verify-deep" if deep else "verify"
            self.world.reset_counters()
            self.log(f"{scenario}: registry-sync ...")
            result, report = self.rs.verify(ns, "rs", TIMEOUT, deep=deep)
            row = _row(scenario, "registry-sync", result, self.world.counters(), summary=report)
            if not report.get("complete"):
                row.ok = False
                row.note += f" verify found: {report.get('findings', [])[:3]}"
            self.log(f"{scenario}: registry-sync {row.seconds:.2f}s ok={row.ok} {row.note}")
            self.rows.append(row)
        # what --deep must look at: each is checked once per target repository
        children = {
            (repo, m.digest)
            for (repo, _), image in self.corpus.images.items()
            for m in image.walk()
            if m is not image
        }
        blobs = {
            (repo, b.digest) for (repo, _), image in self.corpus.images.items() for b in image.all_blobs()
        }
        self.facts["verify"] = {
            "tags": len(self.corpus.images),
            "child_manifests": len(children),
            "blobs": len(blobs),
        }

    def scenario_big(self) -> None:
        rs = self.run_rs("big", "big", "rs")
        if self.args.skip_skopeo:
            return
        self.world.reset_counters()
        self.log("big: skopeo copy ...")
        result = self.sk.copy("big/huge:1.0.0", "sk/huge:1.0.0", TIMEOUT)
        sk = _row("big", "skopeo", result, self.world.counters(), note="skopeo copy --all")
        self.log(f"big: skopeo {sk.seconds:.2f}s ok={sk.ok}")
        self.facts.setdefault("skopeo_commands", {})["big"] = " ".join(
            self.sk.copy_command("big/huge:1.0.0", "sk/huge:1.0.0")
        )
        self.rows.append(sk)
        rs.ratio = rs.seconds / sk.seconds if sk.seconds else None
        pusher = self.world.mirror_pusher()
        for prefix in ("rs", "sk"):
            _, _, digest = pusher.fetch_manifest(f"{prefix}/huge", "1.0.0")
            if digest != self.big_manifest.digest:
                self.facts[f"verify_big_{prefix}"] = f"{digest} != {self.big_manifest.digest}"
        self.facts["big"] = {"layer_bytes": self.profile.big_layer, "layer_digest": self.big.digest}

    def scenario_wide(self) -> None:
        p = self.profile
        started = time.monotonic()
        sample = min(p.wide_skopeo_sample, p.wide_repositories)
        names = {}
        for label, tags in (("wide1", 1), (f"wide{p.wide_tags}", p.wide_tags)):
            names[label] = corpora.seed_wide(
                self.world.source_pusher(wide=True),
                self.world.storage("wide"),
                self.world.storage("mirror"),
                namespace=label,
                repositories=p.wide_repositories,
                tags=tags,
                target_copies={f"rs/{label}": p.wide_repositories, f"sk/{label}": sample},
            )
            # sanity: the copies are real repositories with every tag, at the source and the mirror
            src, dst = self.world.source_pusher(wide=True), self.world.mirror_pusher()
            last = names[label][-1]
            want = [f"t{t:02d}" for t in range(tags)]
            assert src.tags(last) == want, (last, src.tags(last))
            assert dst.tags(f"rs/{last}") == want
            assert (
                self.args.skip_skopeo
                or dst.tags(f"sk/{label}/{names[label][sample - 1].split('/', 1)[1]}") == want
            )
        self.log(f"wide: seeded 2 x {p.wide_repositories} repositories in {time.monotonic() - started:.1f}s")
        self.facts["wide"] = {
            "repositories": p.wide_repositories,
            "tags": p.wide_tags,
            "skopeo_sample": sample,
        }
        scale = p.wide_repositories / sample
        note = f"measured on {sample} repositories, x{scale:g}" if scale != 1 else ""
        for label in ("wide1", f"wide{p.wide_tags}"):
            scenario = f"wide-{label[4:]}"
            rs = self.run_rs(scenario, label, f"rs/{label}", wide=True)
            sk = self.run_sk_sync(
                scenario, names[label][:sample], f"sk/{label}", wide=True, scale=scale, note=note
            )
            rs.ratio = rs.seconds / sk.seconds if sk and sk.seconds else None

    def scenario_day(self) -> None:
        profile = days.QUICK if self.args.quick else days.FULL
        self.log(f"day: {profile} ...")
        phases = days.run(profile, self.workdir, self.log)
        self.day = day_report.summarize(profile, phases)

    # -- results -----------------------------------------------------------------------------
    def targets(self) -> list[tuple[str, bool, str]]:
        rows = {(r.scenario, r.tool): r for r in self.rows}
        out: list[tuple[str, bool, str]] = []

        def get(s, t):
            return rows.get((s, t))

        rs, sk = get("initial", "registry-sync"), get("initial", "skopeo")
        if rs and sk:
            out.append(
                (
                    "initial sync <= 0.25 x skopeo",
                    rs.ok and rs.ratio <= 0.25,
                    f"{rs.seconds:.2f}s vs {sk.seconds:.2f}s = {rs.ratio:.3f}",
                )
            )
            unique = self.facts["corpus"]["unique_blob_bytes"]
            out.append(
                (
                    "initial bytes to mirror <= 1.02 x unique blobs",
                    rs.bytes_to_mirror <= 1.02 * unique,
                    f"{rs.bytes_to_mirror} / {unique} = {rs.bytes_to_mirror / unique:.4f} "
                    f"(skopeo {sk.bytes_to_mirror / unique:.4f})",
                )
            )
        rs, sk = get("noop", "registry-sync"), get("noop", "skopeo")
        if rs and sk:
            n = self.facts["corpus"]["repositories"]
            out.append(
                (
                    "no-op <= 0.05 x skopeo",
                    rs.ok and rs.ratio <= 0.05,
                    f"{rs.seconds:.2f}s vs {sk.seconds:.2f}s = {rs.ratio:.3f}",
                )
            )
            per_repo_mirror = (rs.mirror_requests - rs.mirror_by_class.get("base", 0)) / n
            src = rs.source_by_class
            per_repo_source = (rs.source_requests - src.get("catalog", 0) - src.get("base", 0)) / n
            content = sum(rs.mirror_by_class.get(c, 0) for c in ("manifest", "blob", "blob_upload"))
            content += sum(src.get(c, 0) for c in ("manifest", "blob", "blob_upload"))
            out.append(
                (
                    "no-op <= 2 requests/repository/registry, no manifest or blob request",
                    per_repo_mirror <= 2 and per_repo_source <= 2 and content == 0,
                    f"mirror {per_repo_mirror:.2f}/repo (+{rs.mirror_tokens} token fetches), "
                    f"source {per_repo_source:.2f}/repo, manifest+blob requests {content}",
                )
            )
        out.extend(self.targets_two(get("one-target", "registry-sync"), get("two-targets", "registry-sync")))
        rs, noop = get("incremental", "registry-sync"), get("noop", "registry-sync")
        if rs and noop:
            new = self.facts["incremental"]["new_tags"]
            extra_req = rs.mirror_requests - noop.mirror_requests
            extra_s = rs.seconds - noop.seconds
            manifests = rs.mirror_by_class.get("manifest", 0)
            new_manifests = sum(sum(1 for _ in m.walk()) for m in self.corpus.new_images.values())
            out.append(
                (
                    "incremental: cost proportional to new tags",
                    rs.ok and manifests <= 2 * new_manifests,
                    f"{new} new tags: +{extra_req} mirror requests and +{extra_s:.2f}s over the no-op; "
                    f"{manifests} manifest requests for {new_manifests} new manifests",
                )
            )
            unique = self.facts["incremental"]["new_unique_blob_bytes"]
            out.append(
                (
                    "incremental bytes to mirror <= 1.02 x new unique blobs",
                    rs.bytes_to_mirror <= 1.02 * unique,
                    f"{rs.bytes_to_mirror} / {unique} = {rs.bytes_to_mirror / max(1, unique):.4f}",
                )
            )
        out.extend(self.targets_referrers(get))
        for scenario, deep in (("verify", False), ("verify-deep", True)):
            row = get(scenario, "registry-sync")
            if row is None:
                continue
            facts = self.facts["verify"]
            tags, children, src, dst = (
                facts["tags"],
                facts["child_manifests"],
                row.source_by_class,
                row.mirror_by_class,
            )
            # the cost verify --help states, for this plain OCI source without the referrers API:
            # mirror: 1 HEAD (--deep: GET) per tag; --deep: 1 GET per child manifest, 1 HEAD per
            # blob (distinct per repository). Source: 1 HEAD per tag and 1 referrers request per
            # tag (--deep: and per child manifest; here a GET of the referrers tag, after the API
            # answered 404). Plus the first request's auth challenge at each registry.
            want_mirror = tags + (children + facts["blobs"] if deep else 0)
            want_source = 2 * tags + (children if deep else 0)
            got_mirror = dst.get("manifest", 0) + dst.get("blob", 0)
            got_source = src.get("manifest", 0)
            out.append(
                (
                    f"{scenario}: requests as verify --help states",
                    row.ok and got_mirror <= want_mirror + 1 and got_source <= want_source + 1,
                    f"{tags} tags: mirror {got_mirror} manifest/blob requests (stated {want_mirror} + 1 auth "
                    f"challenge), source {got_source} manifest requests (stated {want_source}) and "
                    f"{src.get('referrers', 0)} referrers API probe(s); {row.source_requests + row.mirror_requests} "
                    f"requests in all with listings and challenges, {row.source_tokens + row.mirror_tokens} "
                    f"token fetches, {row.seconds:.2f}s",
                )
            )
        rss = max((r.max_rss_bytes for r in self.rows if r.tool == "registry-sync"), default=None)
        if rss is not None:  # (the day runs the app in the benchmark's own process)
            out.append(
                ("peak RSS <= 150 MB (every registry-sync run)", rss <= 150 * MB, f"{rss / MB:.1f} MB")
            )
        rs, sk = get("big", "registry-sync"), get("big", "skopeo")
        if rs and sk:
            out.append(
                (
                    "1 GiB copy no slower than skopeo copy",
                    rs.ok and rs.seconds <= sk.seconds,
                    f"{rs.seconds:.2f}s vs {sk.seconds:.2f}s "
                    f"({self.profile.big_layer / rs.seconds / MB:.0f} vs "
                    f"{self.profile.big_layer / sk.seconds / MB:.0f} MB/s)",
                )
            )
        t = self.profile.wide_tags
        one, many = get("wide-1", "registry-sync"), get(f"wide-{t}", "registry-sync")
        if one and many:
            out.append(
                (
                    f"wide no-op: {t} tags <= 1.2 x 1 tag",
                    many.ok and many.seconds <= 1.2 * one.seconds,
                    f"{many.seconds:.2f}s vs {one.seconds:.2f}s = {many.seconds / one.seconds:.3f}; "
                    f"requests {many.mirror_requests} vs {one.mirror_requests}",
                )
            )
        if self.day is not None:
            out.extend((g["goal"], g["met"], g["measured"]) for g in self.day["goals"])
        return out

    def targets_two(self, one: Row | None, two: Row | None) -> list[tuple[str, bool, str]]:
        """Issue 11: one source read for both targets, and little more wall time than one target."""
        if two is None:
            return []
        unique = self.facts["corpus"]["unique_blob_bytes"]
        second = two.second_mirror or {}
        out = [
            (
                "two targets: bytes read from the source <= 1.02 x unique blobs",
                two.ok and two.bytes_from_source <= 1.02 * unique,
                f"{two.bytes_from_source} / {unique} = {two.bytes_from_source / unique:.4f}"
                + (f" (one target: {one.bytes_from_source / unique:.4f})" if one else ""),
            )
        ]
        if one is not None:
            out.append(
                (
                    "two targets: wall time <= 1.2 x one target",
                    two.ok and two.seconds <= 1.2 * one.seconds,
                    f"{two.seconds:.2f}s vs {one.seconds:.2f}s = {two.seconds / one.seconds:.3f}; mirror requests "
                    f"{two.mirror_requests} + {second.get('requests', 0)} vs {one.mirror_requests}, "
                    f"MB to the mirrors {two.bytes_to_mirror / MB:.2f} + {second.get('bytes_to_mirror', 0) / MB:.2f} "
                    f"vs {one.bytes_to_mirror / MB:.2f}; CPU s tool + harness {two.cpu_seconds:.1f} + "
                    f"{two.harness_cpu_seconds:.1f} vs {one.cpu_seconds:.1f} + {one.harness_cpu_seconds:.1f} "
                    f"on {os.cpu_count()} cores",
                )
            )
        return out

    def targets_referrers(self, get) -> list[tuple[str, bool, str]]:
        """Issue 10: what referrers cost from a plain OCI source (the referrers tag schema)."""
        initial, noop, plain_noop = (
            get(s, "registry-sync") for s in ("referrers-initial", "referrers-noop", "noop")
        )
        if initial is None or noop is None:
            return []
        facts = self.facts["referrers"]
        tags, referrers = facts["tags"], facts["referrers"]
        copied = initial.summary.get("referrers", {}).get("copied", 0)
        verified = self.facts.get("verify_referrers", "")
        out = [
            (
                "referrers: all mirrored, byte-identical, listed in the mirror's referrers tag",
                initial.ok and copied == referrers and isinstance(verified, str),
                f"{copied} of {referrers} referrers copied ({tags} tags); {verified if isinstance(verified, str) else verified[:3]}",
            )
        ]
        content = sum(
            r.get(c, 0)
            for r in (noop.mirror_by_class, noop.source_by_class)
            for c in ("manifest", "blob", "blob_upload", "referrers")
        )
        if plain_noop is not None:
            same = (noop.source_requests, noop.mirror_requests) == (
                plain_noop.source_requests,
                plain_noop.mirror_requests,
            )
            out.append(
                (
                    "referrers: the no-op (SYNC_COMPARE=recent) costs what it costs without referrers",
                    noop.ok and same and content == 0,
                    f"with 2 referrers a tag: source {noop.source_requests}, mirror {noop.mirror_requests} "
                    f"requests; without: {plain_noop.source_requests}, {plain_noop.mirror_requests}; "
                    f"manifest/blob/referrers requests {content}",
                )
            )
        # The full check, per tag: source HEAD of the tag (a plain OCI listing has no digests), GET
        # of each of its manifests (the index and its children: their referrers count too; a warm
        # process has them cached) and GET of each one's referrers tag (after one referrers API
        # probe answered 404); mirror HEAD of the tag (the planner's; the copier trusts it), HEAD
        # of each referrer and, as the mirror has no referrers API, one GET of the referrers tag
        # of each subject with referrers (is each still listed?). SYNC_REFERRERS=none: the two
        # tag HEADs only. Plus each registry's first-request challenge.
        for suffix, follow in (("", True), ("-none", False)):
            row = get(f"referrers-full-check{suffix}", "registry-sync")
            if row is None:
                continue
            src, dst = row.source_by_class, row.mirror_by_class
            manifests = facts["manifests"]
            want_source, want_mirror = (
                (tags + 2 * manifests, 2 * tags + referrers) if follow else (tags, tags)
            )
            got_source, got_mirror = src.get("manifest", 0), dst.get("manifest", 0) + dst.get("blob", 0)
            copied = row.summary.get("tags", {}).get("copied", 0) + row.summary.get("referrers", {}).get(
                "copied", 0
            )
            out.append(
                (
                    f"referrers-full-check{suffix}: requests as stated, nothing copied",
                    row.ok and copied == 0 and got_source <= want_source and got_mirror <= want_mirror,
                    f"{tags} tags, {referrers} referrers: source {got_source} manifest requests (stated "
                    f"{want_source}) + {src.get('referrers', 0)} referrers API probe(s), mirror {got_mirror} "
                    f"(stated {want_mirror}); {row.source_requests} + {row.mirror_requests} requests in all, "
                    f"{row.seconds:.2f}s",
                )
            )
        return out

    def table(self) -> str:
        head = (
            "| scenario | tool | wall s | vs skopeo | CPU s tool + harness | requests source "
            "| requests mirror (manifest/blob/upload) | mirror tokens | MB from source | MB to mirror | peak RSS MB |"
        )
        lines = [head, "|" + "---|" * 11]

        def mirror(requests: int, by_class: dict, tokens: int, sent: int) -> tuple[str, str, str]:
            detail = (
                f"{by_class.get('manifest', 0)}/{by_class.get('blob', 0)}/{by_class.get('blob_upload', 0)}"
            )
            return f"{requests} ({detail})", str(tokens), f"{sent / MB:.2f}"

        for r in self.rows:
            cells = mirror(r.mirror_requests, r.mirror_by_class, r.mirror_tokens, r.bytes_to_mirror)
            if r.second_mirror:  # two targets: "first + second"
                other = mirror(
                    *(
                        r.second_mirror[k]
                        for k in ("requests", "requests_by_class", "tokens", "bytes_to_mirror")
                    )
                )
                cells = tuple(f"{a} + {b}" for a, b in zip(cells, other, strict=True))
            scaled = " *" if r.scale != 1 else ""
            ratio = f"{r.ratio:.3f}" if r.ratio is not None else ""
            status = "" if r.ok else " FAILED"
            lines.append(
                f"| {r.scenario} | {r.tool}{status} | {r.seconds:.2f}{scaled} | {ratio} "
                f"| {r.cpu_seconds:.1f} + {r.harness_cpu_seconds:.1f} "
                f"| {r.source_requests} "
                f"| {cells[0]} | {cells[1]} | {r.bytes_from_source / MB:.2f} | {cells[2]} "
                f"| {r.max_rss_bytes / MB:.0f} |"
            )
        if any(r.scale != 1 for r in self.rows):
            lines.append("")
            lines.append(
                "\\* skopeo in the wide scenarios: "
                + next(r.note for r in self.rows if r.scale != 1)
                + " (it syncs repositories one by one; time and counts scale linearly)"
            )
        return "\n".join(lines)

    def report(self) -> dict:
        return {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.run", *self.args.argv]),
            "profile": asdict(self.profile),
            "delay_ms": self.args.delay_ms,
            "source_delay_ms": self.args.source_delay_ms,
            "bandwidth_bytes_per_s": self.args.bandwidth,
            "machine": machine(),
            "facts": self.facts,
            "day": self.day,
            "rows": [asdict(r) for r in self.rows],
            "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in self.targets()],
        }


def machine() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "nproc": os.cpu_count(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "memory": sh("free -h | awk '/^Mem:/ {print $2}'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "requests": _version("requests"),
        "urllib3": _version("urllib3"),
        "skopeo": skopeo_version(),
        "docker_registry": sh("/usr/bin/docker-registry --version").split(" ")[-1],
    }


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return "?"


def _rate(text: str) -> float:
    from bench.latency_proxy import _parse_rate

    return _parse_rate(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small corpus, small wide catalog, no 1 GiB image"
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=None,
        help="one-way delay to the mirror (default 50; 10 with --quick)",
    )
    parser.add_argument(
        "--source-delay-ms", type=float, default=1.0, help="one-way delay to the source (default 1)"
    )
    parser.add_argument(
        "--bandwidth", type=_rate, default=None, help="cap per connection and direction, e.g. 50M"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="SYNC_CONCURRENCY (default: the app's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where results go")
    parser.add_argument("--skip-skopeo", action="store_true", help="registry-sync only (for tuning)")
    parser.add_argument(
        "--scenarios",
        default="sync,two,referrers,big,wide,day",
        help="comma-separated groups: sync (initial, verify, noop, incremental), two (two targets), "
        "referrers (the signed catalog), big, wide, day (a day at fleet scale)",
    )
    args = parser.parse_args(argv)
    if args.delay_ms is None:
        args.delay_ms = 10.0 if args.quick else 50.0
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    args.argv = argv
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()
    report = bench.report()
    table = bench.table()
    lines = [table] if bench.rows else []
    if bench.day is not None:
        lines += [
            "",
            "A day at fleet scale:",
            "",
            day_report.table(bench.day),
            "",
            day_report.model_table(bench.day),
        ]
    lines += ["", "Targets:"]
    for t in report["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}")
    text = "\n".join(lines)
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "results.md").write_text(text + "\n")
    print(f"\nresults: {args.out / 'results.json'}", file=sys.stderr)
    day_ok = bench.day is None or bench.day["ok"]
    return 0 if all(r.ok for r in bench.rows) and day_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
