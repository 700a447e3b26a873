"""``check`` at the targets (sync_core.jobs.check_targets), against every kind of registry the suite runs.

Targets: ``distribution`` 2.8 with token auth (no referrers API; the test issuer puts what it
grants in the token's ``access`` claim), with Basic auth and without auth; the ACR stand-in (the
referrers API); a front that sends Docker Hub's rate-limit headers; a closed port. Users that may
only pull, may push only elsewhere, or may not pull the other repositories are made on purpose:
``check`` must name each with its fix while no target sees a write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync_core.config.load import load_config
from sync_core.jobs.check import Checker, Report
from sync_core.jobs.check_findings import Finding, Status
from sync_core.jobs.syncer import Syncer
from sync_core.report import metrics
from tests.harness import BASIC, READER, images, plain_and_api_env, plain_and_api_targets
from tests.harness.acr import AcrStandIn
from tests.harness.front import RegistryFront
from tests.harness.registry import free_port

NS = "gs"
SRC = ("targets-src", "targets-src-pw-6Rb")
API = ("targets-api", "targets-api-pw-8Kc")
API_PULL = ("targets-api-pull", "targets-api-pull-pw-1Zs")


@pytest.fixture(scope="module")
def source(token_issuer):
    """gs/app (an index with a signature), gs/tool, gs/charts/hello (three levels)."""
    with AcrStandIn(
        users={SRC[0]: (SRC[1], {"*": ["pull", "metadata_read"]})}, issuer=token_issuer, name="targets-src"
    ) as acr:
        pusher = acr.pusher()
        app = images.oci_index("targets-app", layer_sizes=(120,), attestations=False)
        pusher.push(f"{NS}/app", app, "1.0")
        pusher.push(f"{NS}/app", images.signature("targets-app-sig", app))
        pusher.push(f"{NS}/tool", images.oci_image("targets-tool", (90,)), "2.0")
        pusher.push(f"{NS}/charts/hello", images.helm_chart("targets-hello"), "0.1.0")
        acr.seeded = app
        yield acr


@pytest.fixture(scope="module")
def api(token_issuer):
    """An ACR stand-in as a target (the referrers API): one user may push, one may only pull."""
    users = {API[0]: (API[1], {"*": ["pull", "push"]}), API_PULL[0]: (API_PULL[1], {"*": ["pull"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="targets-api") as acr:
        yield acr


class World:
    """A file configuration with the targets "plain" and "api" (tests.harness.plain_and_api_targets)."""

    def __init__(self, source: AcrStandIn, plain_url: str, api_url: str, tmp_path: Path):
        self.source, self.plain_url, self.api_url, self.tmp_path = source, plain_url, api_url, tmp_path

    def check(
        self, plain: dict | None = None, api: dict | None = None, top: dict | None = None, **settings
    ) -> Report:
        config = self.tmp_path / "targets.json"
        targets = plain_and_api_targets(self.plain_url, self.api_url, plain, api)
        config.write_text(json.dumps({**(top or {}), "targets": targets}))
        env = {**plain_and_api_env(self.source.url, NS, SRC, API), **settings}
        budget = env.pop("BUDGET", None)
        with Syncer(load_config(env, str(config)), metrics=metrics.Metrics()) as syncer:
            for client in syncer.target_clients.values():
                client.transport.sleep = lambda seconds: None  # retries without waiting
            checker = (
                Checker(syncer) if budget is None else Checker(syncer, budget=lambda target: float(budget))
            )
            return checker.run()


@pytest.fixture
def world(source, api, fresh_registry, tmp_path):
    plain = fresh_registry(name="targets-plain")
    world = World(source, plain.url, api.url, tmp_path)
    world.plain = plain
    world.api = api
    return world


def rows(report: Report, subject: str, check: str) -> list[Finding]:
    return [f for f in report.findings if f.subject == subject and f.check == check]


def one(report: Report, subject: str, check: str) -> Finding:
    (found,) = rows(report, subject, check)
    return found


def no_writes(world: World, marks: tuple[int, int, int]) -> None:
    assert world.plain.writes(marks[0]) == [], "plain saw writes"
    assert world.api.backend.writes(marks[1]) == [], "api saw writes"
    assert world.source.backend.writes(marks[2]) == [], "the source saw writes"


def marks(world: World) -> tuple[int, int, int]:
    return (
        len(world.plain.access_log()),
        len(world.api.backend.access_log()),
        len(world.source.backend.access_log()),
    )


def test_targets_in_order_with_and_without_the_referrers_api(world):
    before = marks(world)
    report = world.check()
    assert report.ok, [f for f in report.findings if f.status is not Status.OK]
    for target in ("plain", "api"):
        assert [f.check for f in report.findings if f.subject == target] == [
            "rules",
            "path-depth",
            "collisions",
            "reach",
            "credentials",
            "push",
            "push",
            "mount",
            "referrers",
            "rate-limit",
        ], target
        pushes = rows(report, target, "push")
        assert [f.answered for f in pushes] == [
            "granted pull,push on mirror/app",
            "granted pull,push on mirror/charts/hello",
        ], "one repository per target namespace"
        assert "what its claims grant" in pushes[0].asked
    plain, with_api = one(report, "plain", "referrers"), one(report, "api", "referrers")
    assert plain.answered.startswith("not served (a plain 404"), plain
    assert with_api.answered.startswith(
        "served, it seems: an OCI error for a repository not mirrored yet (NAME_UNKNOWN)"
    )
    assert one(report, "plain", "path-depth").answered.startswith("no path-depth limit known")
    no_writes(world, before)

    # once mirrored, the API answers with an index
    with Syncer(
        load_config(plain_and_api_env(world.source.url, NS, SRC, API), str(world.tmp_path / "targets.json"))
    ) as syncer:
        assert syncer.run().ok
    served = one(world.check(), "api", "referrers")
    assert served.status is Status.OK and served.answered == "served: an OCI index (1 referrer(s) listed)"


def test_a_user_that_may_only_pull_is_named_with_its_fix(world):
    before = marks(world)
    report = world.check(
        PLAIN_USER=READER[0], PLAIN_PASS=READER[1], API_USER=API_PULL[0], API_PASS=API_PULL[1]
    )
    for target in ("plain", "api"):
        pushes = rows(report, target, "push")
        assert [f.status for f in pushes] == [Status.FAIL, Status.FAIL], pushes
        assert pushes[0].answered == "granted pull on mirror/app"
        assert "give the user pull and push on mirror/* at" in pushes[0].fix
        assert one(report, target, "credentials").status is Status.OK, "the credentials themselves are fine"
    assert not report.ok
    no_writes(world, before)


def test_a_namespace_the_user_may_not_write_to_is_named(world, fresh_issuer, fresh_registry):
    issuer = fresh_issuer(users={"ns-bot": ("ns-bot-pw-5Yd", {"mirror/*": ["pull", "push"]})})
    target = fresh_registry(token_issuer=issuer, name="targets-ns")
    world.plain_url, world.plain = target.url, target
    before = marks(world)
    report = world.check(plain={"namespace": "other"}, PLAIN_USER="ns-bot", PLAIN_PASS="ns-bot-pw-5Yd")
    finding = rows(report, "plain", "push")[0]
    assert (finding.status, finding.answered) == (Status.FAIL, "granted nothing on other/app")
    assert "targets[plain].namespace" in finding.fix
    ok = world.check(PLAIN_USER="ns-bot", PLAIN_PASS="ns-bot-pw-5Yd")
    assert all(f.status is Status.OK for f in rows(ok, "plain", "push"))
    no_writes(world, before)


def test_basic_and_anonymous_registries_cannot_tell_rights_without_writing(
    world, basic_registry, anon_registry
):
    world.plain_url, world.plain = basic_registry.url, basic_registry
    before = marks(world)
    report = world.check(PLAIN_USER=BASIC[0], PLAIN_PASS=BASIC[1])
    push = one(report, "plain", "push")
    assert (
        push.status is Status.WARN
        and "Basic authentication" in push.answered
        and "without writing" in push.answered
    )
    assert one(report, "plain", "credentials").answered == "accepted (Basic)"
    assert "cannot be told without writing" in one(report, "plain", "mount").answered
    refused = world.check(PLAIN_USER=BASIC[0], PLAIN_PASS="not-the-password")
    finding = one(refused, "plain", "credentials")
    assert finding.status is Status.FAIL and "HTTP 401" in finding.answered
    assert "targets[plain].username / targets[plain].password" in finding.fix
    assert not rows(refused, "plain", "push"), "nothing more is asked with refused credentials"
    no_writes(world, before)

    world.plain_url, world.plain = anon_registry.url, anon_registry
    before = marks(world)
    report = world.check(plain={"username_env": None, "password_env": None})
    assert one(report, "plain", "credentials").answered.startswith(
        "none configured; the registry answered anonymously"
    )
    assert "asks for no credentials" in one(report, "plain", "push").answered
    no_writes(world, before)


def test_a_mount_needs_pull_on_the_other_repository(world, fresh_issuer, fresh_registry):
    issuer = fresh_issuer(users={"one-repo": ("one-repo-pw-2Qe", {"mirror/app": ["pull", "push"]})})
    target = fresh_registry(token_issuer=issuer, name="targets-mount")
    world.plain_url, world.plain = target.url, target
    report = world.check(PLAIN_USER="one-repo", PLAIN_PASS="one-repo-pw-2Qe")
    mount = one(report, "plain", "mount")
    assert mount.status is Status.WARN
    assert mount.answered.startswith(
        "pull on mirror/charts/hello not granted: mounts from it will be refused"
    )
    assert "repository:mirror/charts/hello:pull" in mount.asked
    assert one(world.check(), "api", "mount").answered.startswith("pull on mirror/charts/hello granted")


def test_names_deeper_than_the_target_accepts_and_collisions_are_named(world):
    before = marks(world)
    report = world.check(plain={"max_path_depth": 2})
    depth = one(report, "plain", "path-depth")
    assert depth.status is Status.FAIL
    assert depth.answered == (
        "accepts at most 2 path levels (targets[plain].max_path_depth); deeper: mirror/charts/hello (from gs/charts/hello)"
    )
    assert "mappings rule" in depth.fix and "repository_exclude" in depth.fix
    fixed = world.check(
        plain={"max_path_depth": 2, "mappings": [{"match": "charts/(.+)", "replace": "mirror-charts/\\1"}]}
    )
    assert one(fixed, "plain", "path-depth").status is Status.OK

    both = world.check(top={"mappings": [{"match": "(app|tool)", "replace": "mirror/one"}]})
    collision = one(both, "plain", "collisions")
    assert (collision.status, collision.answered) == (
        Status.FAIL,
        "gs/app and gs/tool both map to mirror/one",
    )
    assert "targets[plain].mappings" in collision.fix
    left_out = world.check(api={"mappings": [{"match": "charts/.*", "replace": None}]})
    assert one(left_out, "api", "path-depth").answered.endswith("; 1 left out by a null rule")
    no_writes(world, before)


def test_the_referrers_probe_fails_when_refused(world):
    world.api.fail_next(1, 403, kinds="referrers")
    finding = one(world.check(), "api", "referrers")
    assert finding.status is Status.FAIL and "HTTP 403" in finding.answered


def test_an_unreachable_target_is_named_with_its_setting(world):
    world.plain_url = f"http://127.0.0.1:{free_port()}"
    report = world.check()
    reach = one(report, "plain", "reach")
    assert reach.status is Status.FAIL and "failed after 5 attempt(s)" in reach.answered
    assert reach.fix.startswith("targets[plain].registry: check the host name")
    assert [f.check for f in report.findings if f.subject == "plain"] == [
        "rules",
        "path-depth",
        "collisions",
        "reach",
    ]
    assert rows(report, "api", "push"), "the other target is still checked"


def test_rate_limit_headers_against_the_budget(world, fresh_registry):
    backend = fresh_registry(name="targets-limited")
    with RegistryFront(backend, rate_limit=(100, 76, 21600)) as front:
        world.plain_url, world.plain = front.url, backend
        found = one(world.check(), "plain", "rate-limit")
        assert found.status is Status.OK
        assert found.answered == (
            "rate limit 100 per 6 h (about 0.00463 requests/s on average), 76 left; no request budget configured"
        )
        assert "HEAD /v2/mirror/app/manifests/1.0" in found.asked
        assert one(world.check(), "api", "rate-limit").answered == "no rate-limit headers in its answers"
        front.rate_limit = (100, 0, 21600)
        exhausted = one(world.check(), "plain", "rate-limit")
        assert exhausted.status is Status.FAIL and "0 left" in exhausted.answered
        front.rate_limit = (100, 5, 21600)
        assert one(world.check(), "plain", "rate-limit").status is Status.WARN
        front.rate_limit = (600, 500, 60)  # 10 requests/s on average
        over = one(world.check(BUDGET="20"), "plain", "rate-limit")
        assert over.status is Status.WARN and "the configured budget is 20 requests/s" in over.answered
        assert over.fix.startswith("requests_per_second of this target: at most 10")
        within = one(world.check(BUDGET="5"), "plain", "rate-limit")
        assert within.status is Status.OK and within.answered.endswith(
            "within it at the configured 5 requests/s"
        )
