"""Fault injection: a full sync through fault proxies on both sides ends complete and verified.

Topology (everything on 127.0.0.1)::

    Syncer --> FaultProxy(source) --> AcrStandIn (oauth2 token endpoint, /acr/v1, /v2) --> docker-registry
           --> FaultProxy(target) --> docker-registry (token auth)
           --> FaultProxy(token)  --> TokenIssuer (the target's realm, rewritten by the target proxy)

About 10 % of the requests on each side get a fault (connection reset before the answer or in
the middle of the body, truncated body, corrupted body, 500/502/503, 429 with and without
``Retry-After``, slow answer; on the target also resets and errors *after* the registry acted),
and the token endpoints throttle in bursts. Tokens live 2 seconds, so they are
refreshed during the run. After every run an independent client (the harness ``Pusher``,
straight at the target registry) deep-verifies every tag present: manifest, child manifests
and blobs fetched back and digest-checked.
"""

from __future__ import annotations

import collections
import json
import time

import pytest

from sync_core.config.load import load_config
from sync_core.jobs.syncer import Syncer
from sync_core.registry.budget import BudgetPolicy
from sync_core.registry.retry import RetryPolicy
from sync_core.report.summary import Summary
from tests.harness import images
from tests.harness.acr import AcrStandIn
from tests.harness.faultproxy import FaultProxy, FaultRule
from tests.harness.verify import verify_present

SRC_USER = ("mirror-reader", "mirror-reader-password")
DST_USER = ("pusher", "pusher-pass")  # STANDARD_USERS of the harness: pull,push on everything
NAMESPACE = "gs"
MIRROR = "mirror"

#: Production attempt counts (Transport 5, Copier 4) with short waits, so the test runs fast.
FAST_RETRY = RetryPolicy(attempts=5, backoff_base=0.05, backoff_cap=0.4, retry_after_cap=1.0)
FAST_UPLOAD_RETRY = RetryPolicy(attempts=4, backoff_base=0.05, backoff_cap=0.4)
#: The request budgets' reactions to 429s as in production (pause everyone, halve the rate when
#: they keep coming, recover), with short waits: about 5 % of token requests here are 429s.
FAST_BUDGET = BudgetPolicy(base_pause=0.05, max_pause=1.0, recovery_seconds=0.2)

READ_KINDS = {"reset", "reset_mid_body", "truncate", "status", "throttle", "slow", "corrupt_body"}


def catalog() -> dict[tuple[str, str], images.Manifest]:
    base = images.layer("faults-base", 3000)
    app = images.oci_index("faults-app-1.0", ("linux/amd64", "linux/arm64"), (1200, 700), base_layer=base)
    out = {
        (f"{NAMESPACE}/alpine", "3.19"): images.oci_image("faults-alpine-3.19", (2048, 1024)),
        (f"{NAMESPACE}/alpine", "3.20"): images.oci_image("faults-alpine-3.20", (1024,), base_layer=base),
        (f"{NAMESPACE}/app", "1.0"): app,
        (f"{NAMESPACE}/app", "1.1"): images.oci_index(
            "faults-app-1.1", ("linux/amd64", "linux/arm64"), (900,)
        ),
        (f"{NAMESPACE}/app", images.digest_tag(app.digest)): images.signature("faults-app-sig", app),
        (f"{NAMESPACE}/legacy", "v1"): images.docker_image("faults-legacy-v1", (1536,), base_layer=base),
        (f"{NAMESPACE}/legacy", "v2"): images.docker_manifest_list("faults-legacy-v2"),
        (f"{NAMESPACE}/chart", "0.1.0"): images.helm_chart("faults-chart", "chart", "0.1.0"),
        (f"{NAMESPACE}/big", "large"): images.oci_image("faults-big", (1_500_000,)),
        (f"{NAMESPACE}/deep/tool", "2.0"): images.oci_image("faults-deep-tool", (800, 300)),
        ("other/outside", "1"): images.oci_image("faults-outside", (100,)),
    }
    return out


CATALOG = catalog()
#: (target repository, tag) -> digest of everything the sync must produce.
EXPECTED = {
    (f"{MIRROR}/{repo[len(NAMESPACE) + 1 :]}", tag): m.digest
    for (repo, tag), m in CATALOG.items()
    if repo.startswith(NAMESPACE + "/")
}
TARGET_REPOS = sorted({repo for repo, _ in EXPECTED} | {f"{MIRROR}/outside", "other/outside"})
#: (target repository, referrers tag) -> referrer digests the tag must list: distribution 2.8 has
#: no referrers API, so the sync keeps the referrers tag (sha256-<hex of the subject>) itself.
REFERRERS_TAGS = {
    (f"{MIRROR}/{repo[len(NAMESPACE) + 1 :]}", images.digest_tag(m.subject.digest, suffix="")): {m.digest}
    for (repo, _), m in CATALOG.items()
    if repo.startswith(NAMESPACE + "/") and m.subject is not None
}


@pytest.fixture(scope="module")
def acr(token_issuer):
    users = {SRC_USER[0]: (SRC_USER[1], {"*": ["pull", "metadata_read"]})}  # read-only, root wildcard
    with AcrStandIn(users=users, issuer=token_issuer, name="faults-acr") as stand_in:
        pusher = stand_in.pusher()
        for (repo, tag), manifest in CATALOG.items():
            pusher.push(repo, manifest, tag)
        pusher.close()
        yield stand_in


class World:
    """Source and target behind fault proxies, for one test."""

    def __init__(
        self,
        acr: AcrStandIn,
        fresh_issuer,
        fresh_registry,
        *,
        rate: float,
        seed: int,
        token_lifetime: int = 300,
    ):
        self.acr = acr
        self.preexisting: dict[tuple[str, str], str] = {}
        self.issuer = fresh_issuer(lifetime=token_lifetime)
        self.target = fresh_registry(auth="token", token_issuer=self.issuer, name="faults-dst")
        realm_origin = f"http://127.0.0.1:{self.issuer.port}"
        self.token_fp = FaultProxy(
            realm_origin,
            [
                FaultRule("throttle", retry_after=1),
                FaultRule("throttle"),
                FaultRule("status", status=(500, 503)),
                FaultRule("reset"),
            ],
            seed=seed + 1,
            rate=rate,
        )
        self.source_fp = FaultProxy(
            acr.url,
            [
                FaultRule("reset"),
                FaultRule("reset_mid_body", method="GET"),
                FaultRule("truncate", method="GET"),
                FaultRule("corrupt_body", method="GET", path=r"/blobs/sha256:|/manifests/"),
                FaultRule("status", status=(500, 502, 503)),
                FaultRule("throttle", retry_after=1, weight=0.5),
                FaultRule("throttle", weight=0.5),
                FaultRule("slow", delay_ms=300),
            ],
            seed=seed,
            rate=rate,
        )
        self.target_fp = FaultProxy(
            self.target.url,
            [
                FaultRule("reset"),
                FaultRule("reset", forward=True, name="reset-after-acting"),  # done, answer lost
                FaultRule("reset_mid_body", method="GET"),
                FaultRule("truncate", method="GET"),
                FaultRule("status", status=(500, 502, 503)),
                FaultRule("status", status=(500, 503), forward=True, name="error-after-acting"),
                FaultRule("throttle", retry_after=1, weight=0.5),
                FaultRule("throttle", weight=0.5),
                FaultRule("slow", delay_ms=300),
            ],
            seed=seed + 2,
            rate=rate,
            rewrite={realm_origin: self.token_fp.url},
        )
        self.verifier = images.Pusher.for_issuer(self.target.url, self.issuer)
        self.env = {
            "SOURCE_REGISTRY": self.source_fp.url,
            "SOURCE_KIND": "acr",
            "SOURCE_NAMESPACE": NAMESPACE,
            "SOURCE_USERNAME": SRC_USER[0],
            "SOURCE_PASSWORD": SRC_USER[1],
            "TARGET_REGISTRY": self.target_fp.url,
            "TARGET_NAMESPACE": MIRROR,
            "TARGET_USERNAME": DST_USER[0],
            "TARGET_PASSWORD": DST_USER[1],
            "SYNC_CONCURRENCY": "4",
        }

    def syncer(self) -> Syncer:
        """A new Syncer (as a new timer run or CLI process would have), with short backoffs."""
        syncer = Syncer(load_config(self.env))
        for client in (syncer.source_client, *syncer.target_clients.values()):
            client.transport.retry = FAST_RETRY
            assert client.transport.budget is not None
            client.transport.budget.policy = FAST_BUDGET
        syncer.copier.blobs.retry = FAST_UPLOAD_RETRY
        return syncer

    def close(self) -> None:
        self.verifier.close()
        for fp in (self.source_fp, self.target_fp, self.token_fp):
            fp.stop()


@pytest.fixture
def world_factory(acr, fresh_issuer, fresh_registry):
    made: list[World] = []
    lifetime = acr.token_lifetime

    def make(**kwargs) -> World:
        world = World(acr, fresh_issuer, fresh_registry, **kwargs)
        made.append(world)
        return world

    try:
        yield make
    finally:
        acr.token_lifetime = lifetime
        acr.clear_failures()
        for world in made:
            world.close()


def reported(summary: Summary) -> tuple[set[tuple[str, str]], set[str]]:
    """(target tags named by tag-level failures, source repositories named by repository-level ones)."""
    tags, repos = set(), set()
    for failure in summary.failures:
        assert failure.item and failure.reason, failure
        item = failure.item.split(" -> ")[0]
        if ":" in item:
            repo, tag = item.rsplit(":", 1)
            tags.add((f"{MIRROR}/{repo[len(NAMESPACE) + 1 :]}", tag))
        else:
            repos.add(f"{MIRROR}/{item[len(NAMESPACE) + 1 :]}")
    return tags, repos


def check_target(world: World, summary: Summary, expected: dict | None = None) -> set[tuple[str, str]]:
    """Every present tag resolves fully and is byte-identical; what is missing was reported."""
    expected = EXPECTED if expected is None else expected
    present = verify_present(world.verifier, TARGET_REPOS)
    for key in set(present) & set(REFERRERS_TAGS):
        listed = {m["digest"] for m in json.loads(world.verifier.fetch_manifest(*key)[0])["manifests"]}
        assert listed == REFERRERS_TAGS[key], f"{key} must list exactly the referrers of its subject"
    present = {k: v for k, v in present.items() if k not in REFERRERS_TAGS}
    extra = {k: v for k, v in present.items() if k not in expected}
    assert extra == world.preexisting, "something outside the selection appeared (or vanished) at the target"
    for key, digest in present.items():
        if key in expected:
            assert digest == expected[key], f"{key} is not byte-identical to the source"
    missing = set(expected) - set(present)
    failed_tags, failed_repos = reported(summary)
    silent = {k for k in missing if k not in failed_tags and k[0] not in failed_repos}
    assert not silent, f"missing at the target but not reported as failed: {sorted(silent)}"
    return missing


def seed_preexisting(world: World) -> None:
    """Content at the target that is not in the source: it must survive every run untouched."""
    keep = images.oci_image("faults-keep-me", (64,))
    world.verifier.push(f"{MIRROR}/alpine", keep, "keep-me")
    world.verifier.push(f"{MIRROR}/outside", keep, "1")
    world.preexisting = {
        (f"{MIRROR}/alpine", "keep-me"): keep.digest,
        (f"{MIRROR}/outside", "1"): keep.digest,
    }


def check_source_read_only_and_nothing_deleted(world: World) -> None:
    source_methods = collections.Counter(r.method for r in world.source_fp.log)
    assert set(source_methods) <= {"GET", "HEAD"}, source_methods
    assert {e.method for e in world.acr.log} <= {"GET", "HEAD"}, "the source saw a write"
    target_methods = collections.Counter(r.method for r in world.target_fp.log)
    assert "DELETE" not in target_methods, target_methods
    assert set(target_methods) <= {"GET", "HEAD", "POST", "PUT", "PATCH"}, target_methods


def test_full_sync_with_ten_percent_faults_on_each_side_ends_complete_and_verified(world_factory, acr):
    acr.token_lifetime = 2  # seconds: tokens are refreshed (at 80 % of their lifetime) during the run
    world = world_factory(rate=0.10, seed=20240611, token_lifetime=2)
    seed_preexisting(world)
    acr.reset_log()
    # Token endpoints throttling in bursts, with and without Retry-After.
    acr.fail_next(2, 429, kinds="token", retry_after="1")
    world.issuer.fail_next(2, 429)
    world.issuer.fail_next(1, 503)
    # Make sure every fault kind fires at least once on each side, whatever the random draw.
    sfp, tfp = world.source_fp, world.target_fp
    sfp.fail_next(1, "reset_mid_body", method="GET", path=r"/blobs/sha256:", fraction=0.5)
    sfp.fail_next(1, "truncate", method="GET", path=r"/manifests/", fraction=0.3)
    sfp.fail_next(1, "corrupt_body", method="GET", path=r"/blobs/sha256:")
    sfp.fail_next(1, "corrupt_body", method="GET", path=r"/manifests/sha256:")
    sfp.fail_next(1, "throttle", method="GET", path=r"/_tags", retry_after=1)
    sfp.fail_next(1, "throttle", method="HEAD|GET", path=r"/manifests/")
    sfp.fail_next(1, "status", path=r"/_catalog", status=502)
    sfp.fail_next(1, "reset", path=r"/oauth2/token")
    sfp.fail_next(1, "slow", path=r"/blobs/", delay_ms=800)
    tfp.fail_next(1, "reset", method="PUT", path=r"/blobs/uploads/", forward=True)
    tfp.fail_next(1, "status", method="PUT", path=r"/manifests/", status=500, forward=True)
    tfp.fail_next(1, "throttle", method="POST", retry_after=1)
    tfp.fail_next(1, "throttle", method="HEAD")
    tfp.fail_next(1, "reset_mid_body", method="GET", path=r"/tags/list")
    tfp.fail_next(1, "truncate", method="GET", path=r"/tags/list")
    tfp.fail_next(1, "slow", method="PUT", delay_ms=800)

    started = time.monotonic()
    runs: list[dict] = []
    for _ in range(3):  # "if one run cannot absorb the faults, the next run completes the job"
        with world.syncer() as syncer:
            summary = syncer.run()
            tokens = (
                syncer.source_client.auth.tokens_fetched,
                sum(c.auth.tokens_fetched for c in syncer.target_clients.values()),
            )
        missing = check_target(world, summary)
        runs.append(
            {
                "failures": summary.failures,
                "missing": len(missing),
                "copied": summary.tags_copied,
                "tokens": tokens,
                "seconds": round(summary.duration_seconds, 2),
            }
        )
        if summary.ok:
            assert not missing
            break
    else:
        pytest.fail(f"three runs did not complete the job: {runs}")
    elapsed = time.monotonic() - started

    check_source_read_only_and_nothing_deleted(world)
    source_stats, target_stats = world.source_fp.stats(), world.target_fp.stats()
    token_stats = world.token_fp.stats()
    assert READ_KINDS <= set(source_stats["faults"]), source_stats
    assert {"reset", "reset_mid_body", "truncate", "status", "throttle", "slow"} <= set(
        target_stats["faults"]
    )
    assert {r.rule for r in world.target_fp.log} >= {"reset-after-acting", "error-after-acting"}
    # "about 10 %": the random share plus the few deterministic ones above
    for stats in (source_stats, target_stats):
        assert 0.05 <= stats["faulted"] / stats["requests"] <= 0.25, stats
    # tokens: throttled endpoints answered in the end, and 2-second tokens were refreshed mid-run
    # (the same scope set granted again) on both sides
    assert acr.count("token", status=429) >= 2 and world.issuer.token_requests > 0
    for grants in (acr.grants, world.issuer.grants):
        per_scope_set = collections.Counter(frozenset(g.requested) for g in grants)
        assert max(per_scope_set.values()) >= 2, per_scope_set
    print(f"\nfault sync: {len(runs)} run(s) in {elapsed:.1f}s: {runs}")
    print(
        f"source faults {source_stats['faults']} of {source_stats['requests']} requests; "
        f"target faults {target_stats['faults']} of {target_stats['requests']}; "
        f"token proxy {token_stats['faults']} of {token_stats['requests']}"
    )


def test_an_overwhelmed_run_reports_exactly_what_failed_and_the_next_run_completes(world_factory, acr):
    world = world_factory(rate=0.0, seed=7)
    seed_preexisting(world)
    # Every blob upload into mirror/big fails; the source cannot list the tags of gs/legacy.
    uploads = world.target_fp.add_rule(
        FaultRule("status", method="PUT", path=r"^/v2/mirror/big/blobs/uploads/", status=503, count=10_000)
    )
    listing = world.source_fp.add_rule(
        FaultRule("status", path=r"^/acr/v1/gs/legacy/_tags", status=500, count=10_000)
    )
    with world.syncer() as syncer:
        first = syncer.run()
    assert not first.ok
    missing = check_target(world, first)
    assert missing == {(f"{MIRROR}/big", "large"), (f"{MIRROR}/legacy", "v1"), (f"{MIRROR}/legacy", "v2")}
    failures = {f.item: f.reason for f in first.failures}
    assert set(failures) == {f"{NAMESPACE}/big:large -> target", f"{NAMESPACE}/legacy"}, failures
    assert "HTTP 503" in failures[f"{NAMESPACE}/big:large -> target"]
    assert (
        "listing source tags" in failures[f"{NAMESPACE}/legacy"]
        and "HTTP 500" in failures[f"{NAMESPACE}/legacy"]
    )
    assert first.tags_failed == 1 + 1 and first.tags_copied == len(EXPECTED) - 3
    assert uploads.fired == 2 * FAST_UPLOAD_RETRY.attempts  # config and layer: restarted, then given up

    world.target_fp.remove_rule(uploads)
    world.source_fp.remove_rule(listing)
    with world.syncer() as syncer:
        second = syncer.run()
    assert second.ok, second.failures
    assert check_target(world, second) == set()
    assert second.tags_copied == 3  # only what the first run could not do
    check_source_read_only_and_nothing_deleted(world)


def test_a_token_that_expires_while_the_request_is_under_way_is_refreshed(world_factory, acr, monkeypatch):
    """ACR checks ``exp`` without leeway: a token the client holds for fresh, expired when the
    request arrives, gets 401. Two clocks instead of sleeps: the client's stands still (its token
    stays fresh for it), the stand-in's moves on past the token's ``exp``."""
    world = world_factory(rate=0.0, seed=3)
    with world.syncer() as syncer:
        source, auth = syncer.source, syncer.source_client.auth
        client_now = time.time()
        monkeypatch.setattr(auth, "clock", lambda: client_now)
        assert {t.name for t in source.tags(f"{NAMESPACE}/alpine")} == {"3.19", "3.20"}
        fetched = auth.tokens_fetched
        lifetime = acr.token_lifetime
        monkeypatch.setattr(acr, "clock", lambda: time.time() + lifetime)  # the token's exp is past
        acr.reset_log()
        assert {t.name for t in source.tags(f"{NAMESPACE}/alpine")} == {"3.19", "3.20"}
        statuses = [e.status for e in acr.log if e.kind == "acr_tags"]
        assert statuses == [401, 200], statuses
        assert auth.tokens_fetched == fetched + 1


@pytest.mark.parametrize("kind", ["truncate", "reset_mid_body", "corrupt_body"])
def test_a_manifest_body_that_breaks_or_arrives_damaged_is_fetched_again_in_the_same_run(world_factory, kind):
    """Manifests are streamed (to enforce the 4 MiB limit), so the transport cannot retry them."""
    world = world_factory(rate=0.0, seed=11)
    # the index by tag, then a child by digest: both answers broken once
    rules = [
        world.source_fp.fail_next(1, kind, method="GET", path=r"/manifests/1\.0$", fraction=0.4),
        world.source_fp.fail_next(1, kind, method="GET", path=r"/manifests/sha256:", fraction=0.4),
    ]
    with world.syncer() as syncer:
        summary = syncer.run(repositories=[f"{NAMESPACE}/app"])
    assert summary.ok, summary.failures
    assert [r.fired for r in rules] == [1, 1]
    app = {k: v for k, v in EXPECTED.items() if k[0] == f"{MIRROR}/app"}
    assert check_target(world, summary, app) == set()
