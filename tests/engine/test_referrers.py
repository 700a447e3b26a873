"""Referrers (signatures, SBOMs, attestations) and moving tags, end to end.

The source is the ACR stand-in, which serves the OCI 1.1 referrers API and lists untagged
manifests in ``_manifests`` as ACR does. Two targets: a plain ``distribution`` 2.8 registry (no
referrers API: the sync maintains the referrers tag ``sha256-<hex>``) and a second ACR stand-in
(answers ``OCI-Subject``: the referrers API lists what was pushed). Everything is checked with the
harness's own clients, and discovery at each target the way cosign/notation/oras do it: the
referrers API first, the referrers tag where there is none.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
import requests
import yaml

from sync_core.azure import handlers, messages
from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.engine.destination import AtTarget, Destination, Placement
from sync_core.engine.results import CopyStatus
from sync_core.jobs.syncer import Syncer
from sync_core.plan import schedule
from sync_core.plan.schedule import RepositoryState
from sync_core.plan.work import Check
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from tests.harness import images, oci_env, plain_and_api_env, plain_and_api_targets
from tests.harness.acr import AcrStandIn
from tests.harness.events import image_pushed
from tests.harness.front import RegistryFront

NS = "gs"
SOURCE_USER = ("sync", "sync-pw-7Qe")
TARGET_USER = ("mirror-bot", "mirror-pw-3Kd")
SPDX = "application/spdx+json"
NOTATION = "application/vnd.cncf.notary.signature"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def artifact(
    seed: str, subject: images.Manifest, artifact_type: str, *, as_index: bool = False
) -> images.Manifest:
    """A referrer of ``subject``: an artifact manifest (empty config), or an index with a subject."""
    if not as_index:
        return images.signature(seed, subject, artifact_type)
    part = images.oci_image(f"{seed}-part", (64,))
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": artifact_type,
        "manifests": [part.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.example.seed": seed},
    }
    return images.Manifest(json.dumps(body).encode(), OCI_INDEX, (), (part,), subject=subject)


class World:
    """The source and both targets, with what was pushed where."""

    def __init__(self, source: AcrStandIn, plain, api: AcrStandIn):
        self.source, self.plain, self.api = source, plain, api
        self.pusher = source.pusher()

    def env(self, **extra: str) -> dict[str, str]:
        return {**plain_and_api_env(self.source.url, NS, SOURCE_USER, TARGET_USER), **extra}

    def config_file(self, tmp_path, **target_extra) -> str:
        targets = plain_and_api_targets(
            self.plain.url, self.api.url, target_extra.get("plain"), target_extra.get("api")
        )
        path = tmp_path / "sync.json"
        path.write_text(json.dumps({"targets": targets}))
        return str(path)

    def syncer(self, tmp_path, env_extra: dict | None = None, **target_extra) -> Syncer:
        return Syncer(load_config(self.env(**(env_extra or {})), self.config_file(tmp_path, **target_extra)))


def referrers_at(world: World, target: str, repo: str, digest: str) -> set[str]:
    """Discovery as a client does it: the referrers API, else the referrers tag (404: none)."""
    if target == "api":
        token = world.api.mint([f"repository:{repo}:pull"])
        r = requests.get(
            f"{world.api.url}/v2/{repo}/referrers/{digest}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
        return {m["digest"] for m in r.json()["manifests"]}
    pusher = world.plain.pusher()
    tag = images.digest_tag(digest, suffix="")
    if not pusher.exists_manifest(repo, tag):
        return set()
    raw, content_type, _ = pusher.fetch_manifest(repo, tag)
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX == content_type.split(";")[0]
    return {m["digest"] for m in index["manifests"]}


def untagged_push(world: World, event_id: str, manifest: images.Manifest) -> dict:
    """The ImagePushed event ACR sends for ``manifest`` pushed to ``gs/app`` by digest."""
    return image_pushed(
        event_id, world.source.host, f"{NS}/app", manifest.digest, media_type=manifest.media_type
    )


def writes(acr: AcrStandIn) -> int:
    return sum(1 for e in acr.log if e.method in ("PUT", "POST", "PATCH", "DELETE"))


@pytest.fixture
def world(token_issuer, fresh_registry):
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with (
        AcrStandIn(users=users, issuer=token_issuer, name="ref-src") as source,
        AcrStandIn(
            users={TARGET_USER[0]: (TARGET_USER[1], {"*": ["pull", "push"]})},
            issuer=token_issuer,
            name="ref-api",
        ) as api,
    ):
        yield World(source, fresh_registry(), api)


def seed_signed_image(world: World):
    """``gs/app:1.0`` (two platforms + buildx attestations) with referrers of every kind."""
    app = images.oci_index("ref-app", layer_sizes=(300,))
    amd64 = app.children[0]
    sig = artifact("ref-sig", app, images.COSIGN_SIG_ARTIFACT)  # signature of the index
    sbom = artifact("ref-sbom", amd64, SPDX)  # SBOM of one platform
    sbom_sig = artifact("ref-sbom-sig", sbom, NOTATION)  # a signature of the SBOM
    bundle = artifact("ref-bundle", app, "application/vnd.example.bundle", as_index=True)  # an index referrer
    world.pusher.push(f"{NS}/app", app, "1.0")
    for referrer in (sig, sbom, sbom_sig, bundle):
        world.pusher.push(f"{NS}/app", referrer)  # untagged: found through the referrers API only
    return app, amd64, sig, sbom, sbom_sig, bundle


def test_referrers_reach_both_kinds_of_target_and_a_second_run_writes_nothing(world, tmp_path):
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    with world.syncer(tmp_path) as syncer:
        first = syncer.run()
    assert first.ok, first.failures
    assert first.tags_copied == 2 and first.work.referrers_copied == 2 * 4, first.to_dict()

    for target in ("plain", "api"):
        assert referrers_at(world, target, "mirror/app", app.digest) == {sig.digest, bundle.digest}, target
        assert referrers_at(world, target, "mirror/app", amd64.digest) == {sbom.digest}, target
        assert referrers_at(world, target, "mirror/app", sbom.digest) == {sbom_sig.digest}, target
        assert referrers_at(world, target, "mirror/app", sig.digest) == set(), target
    # byte for byte, referrers included
    for referrer in (sig, sbom, sbom_sig, bundle):
        assert world.plain.pusher().fetch_manifest("mirror/app", referrer.digest)[0] == referrer.raw
        assert world.api.pusher().fetch_manifest("mirror/app", referrer.digest)[0] == referrer.raw
    # the registry with the referrers API got no referrers tag: it answered OCI-Subject
    assert world.api.pusher().tags("mirror/app") == ["1.0"]
    assert sorted(world.plain.pusher().tags("mirror/app")) == sorted(
        ["1.0", *(images.digest_tag(d, suffix="") for d in (app.digest, amd64.digest, sbom.digest))]
    )

    world.source.reset_log()
    world.api.reset_log()
    plain_mark = len(world.plain.access_log())
    with world.syncer(tmp_path) as syncer:
        second = syncer.run()
    assert second.ok and (second.tags_copied, second.work.referrers_copied, second.work.manifests_pushed) == (
        0,
        0,
        0,
    )
    assert writes(world.api) == 0
    assert world.plain.writes(plain_mark) == []  # the registry's own access log, not our counters
    # no manifest, blob or referrers request at the source: the listings say it all
    assert world.source.count(("manifest", "blob", "referrers")) == 0, world.source.log


def test_a_referrer_pushed_later_follows_by_event_within_a_minute_and_by_the_timer(world, tmp_path):
    app, *_ = seed_signed_image(world)
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().ok
    # a target-native referrer listed in the plain target's referrers tag must survive the merge
    native = artifact("native-sig", app, NOTATION)
    plain = world.plain.pusher()
    plain.push("mirror/app", native)
    tag = images.digest_tag(app.digest, suffix="")
    listed = json.loads(plain.fetch_manifest("mirror/app", tag)[0])
    listed["manifests"].append(
        {
            "mediaType": native.media_type,
            "digest": native.digest,
            "size": native.size,
            "artifactType": NOTATION,
        }
    )
    plain.put_manifest("mirror/app", images.Manifest(json.dumps(listed).encode(), OCI_INDEX), tag)

    late = artifact("late-sig", app, NOTATION)
    world.pusher.push(f"{NS}/app", late)
    event = untagged_push(world, "evt-late", late)
    with world.syncer(tmp_path) as syncer:
        queued = handlers.event_messages(event, syncer.config)
        assert [messages.parse_message(m, syncer.config).kind for m in queued] == ["referrer", "referrer"]
        for message in queued:
            summary, left = handlers.process_message(message, syncer)
            assert summary.ok and left == [] and summary.work.referrers_copied == 1
    for target in ("plain", "api"):
        assert late.digest in referrers_at(world, target, "mirror/app", app.digest), target
    assert native.digest in referrers_at(world, "plain", "mirror/app", app.digest)  # merged, not dropped

    # missed event: the timer's next run finds the untagged manifest the source changed lately
    missed = artifact("missed-sig", app, NOTATION)
    world.pusher.push(f"{NS}/app", missed)
    with world.syncer(tmp_path) as syncer:
        run = syncer.run()
    assert run.ok and run.work.referrers_copied == 2 and run.tags_copied == 0, run.to_dict()
    for target in ("plain", "api"):
        assert {late.digest, missed.digest} <= referrers_at(world, target, "mirror/app", app.digest)


def test_a_cosign_tag_pushed_later_follows_by_event_whatever_the_tag_filters(world, tmp_path):
    # cosign attaches by tag (``sha256-<hex>.sig``): its event carries a tag no release filter
    # would let through, yet it belongs to an image that is mirrored, so it follows at once
    app = images.oci_index("cosign-app", layer_sizes=(200,))
    world.pusher.push(f"{NS}/app", app, "1.0")
    env = {"TAG_INCLUDE": r"\d+\.\d+"}
    with world.syncer(tmp_path, env_extra=env) as syncer:
        assert syncer.run().ok
    sig_tag = images.digest_tag(app.digest, "sig")
    sig = images.cosign_signature("cosign-late", app)
    world.pusher.push(f"{NS}/app", sig, sig_tag)
    event = {
        "id": "evt-cosign",
        "eventType": "Microsoft.ContainerRegistry.ImagePushed",
        "eventTime": dt.datetime.now(dt.timezone.utc).isoformat(),
        "data": {
            "target": {
                "mediaType": sig.media_type,
                "digest": sig.digest,
                "repository": f"{NS}/app",
                "tag": sig_tag,
            },
            "request": {"host": world.source.host},
        },
    }
    with world.syncer(tmp_path, env_extra=env) as syncer:
        queued = handlers.event_messages(event, syncer.config)
        parsed = [messages.parse_message(m, syncer.config) for m in queued]
        assert {(m.kind, m.tag, m.target) for m in parsed} == {
            ("tag", sig_tag, "plain"),
            ("tag", sig_tag, "api"),
        }
        for message in queued:
            summary, left = handlers.process_message(message, syncer)
            assert summary.ok and left == [] and summary.tags_copied == 1, summary.to_dict()
    for target in (world.plain, world.api):
        assert target.pusher().fetch_manifest("mirror/app", sig_tag)[2] == sig.digest


def test_an_untagged_child_event_is_ignored_by_the_worker(world, tmp_path):
    app, amd64, *_ = seed_signed_image(world)
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().ok
        message = messages.WorkMessage("referrer", f"{NS}/app", "plain", digest=amd64.digest).dumps()
        summary, _ = handlers.process_message(message, syncer)
    assert summary.ok and summary.work.referrers_copied == 0 and summary.work.manifests_pushed == 0


def test_referrers_policy_and_target_skip_rules_apply_to_each_referrer(world, tmp_path):
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    with world.syncer(
        tmp_path,
        env_extra={"SYNC_REFERRERS": f"{images.COSIGN_SIG_ARTIFACT},{SPDX}"},
        plain={"skip_artifact_types": [SPDX]},
    ) as syncer:
        summary = syncer.run()
    assert summary.ok, summary.failures
    # policy: only signatures and SBOMs (not the bundle, and not the notation signature of the SBOM)
    assert referrers_at(world, "api", "mirror/app", app.digest) == {sig.digest}
    assert referrers_at(world, "api", "mirror/app", amd64.digest) == {sbom.digest}
    assert referrers_at(world, "api", "mirror/app", sbom.digest) == set()
    # the plain target skips SBOMs: the image and its signature are there, the SBOM is not
    assert referrers_at(world, "plain", "mirror/app", app.digest) == {sig.digest}
    assert referrers_at(world, "plain", "mirror/app", amd64.digest) == set()
    assert world.plain.pusher().fetch_manifest("mirror/app", "1.0")[2] == app.digest
    assert any(SPDX in w.warning for w in summary.warnings if w.target == "plain")

    with world.syncer(tmp_path, env_extra={"SYNC_REFERRERS": "none"}) as syncer:
        run = syncer.run()
    assert run.ok and run.work.referrers_copied == 0


def test_moved_tags_follow_within_one_run_and_old_ones_at_the_full_check(world, tmp_path):
    first, second = images.oci_image("move-1", (100,)), images.oci_image("move-2", (120,))
    world.pusher.push(f"{NS}/tool", first, "latest")
    world.pusher.push(f"{NS}/tool", first, "stable")
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().tags_copied == 4
    world.pusher.push(f"{NS}/tool", second, "latest")  # re-pushed: lastUpdateTime is now
    with world.syncer(tmp_path) as syncer:
        run = syncer.run()
    assert run.ok and run.tags_copied == 2  # both targets, within one run, by default
    for target in (world.plain, world.api):
        assert target.pusher().fetch_manifest("mirror/tool", "latest")[2] == second.digest

    # a move the recheck window no longer covers (an event and runs missed for hours)
    world.pusher.push(f"{NS}/tool", second, "stable")
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    world.source.set_tag_times(f"{NS}/tool", "stable", long_ago)
    with world.syncer(tmp_path) as syncer:
        quiet = syncer.run()
        assert quiet.ok and quiet.tags_copied == 0
        full = syncer.run(check=Check.FULL)
    assert full.ok and full.tags_copied == 2
    for target in (world.plain, world.api):
        assert target.pusher().fetch_manifest("mirror/tool", "stable")[2] == second.digest


def test_full_checks_are_spread_over_the_period_and_all_due_without_a_state():
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
    repos = [f"gs/repo-{i}" for i in range(400)]
    checked = RepositoryState("x", full_checked=now - dt.timedelta(hours=1))
    assert all(schedule.full_check_due(r, None, None, now, 24) for r in repos)  # never checked
    assert not any(schedule.full_check_due(r, checked, None, now, 24) for r in repos)  # no previous run
    overdue = RepositoryState("x", full_checked=now - dt.timedelta(hours=31))
    assert all(schedule.full_check_due(r, overdue, None, now, 24) for r in repos)  # missed its moment
    assert all(schedule.spread_moment_passed(r, now - dt.timedelta(hours=25), now, 24) for r in repos)
    # 96 runs of 15 minutes cover a day: every repository is due exactly once
    start = now - dt.timedelta(days=1)
    due: dict[str, int] = dict.fromkeys(repos, 0)
    for i in range(96):
        previous, current = start + dt.timedelta(minutes=15 * i), start + dt.timedelta(minutes=15 * (i + 1))
        for repo in repos:
            due[repo] += schedule.spread_moment_passed(repo, previous, current, 24)
    assert set(due.values()) == {1}
    per_run = [
        sum(
            schedule.spread_moment_passed(
                r, start + dt.timedelta(minutes=15 * i), start + dt.timedelta(minutes=15 * (i + 1)), 24
            )
            for r in repos
        )
        for i in range(96)
    ]
    assert max(per_run) < 20  # ~400/96 a run, not all at once


def test_a_referrers_tag_that_is_not_ours_is_a_refusal_reported_not_a_failure_to_redeliver(world, tmp_path):
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    # someone else's image sits under the tag name the referrers tag schema reserves for app's referrers
    squatter = images.oci_image("ref-squatter", (32,))
    tag = images.digest_tag(app.digest, suffix="")
    world.plain.pusher().push("mirror/app", squatter, tag)
    with world.syncer(tmp_path) as syncer:
        summary = syncer.run()
    assert summary.ok and summary.failures == [], summary.failures
    refusals = [s for s in summary.skipped if s.target == "plain" and "refused" in s.reason]
    assert {r.item for r in refusals} == {f"{NS}/app:1.0 (referrer {d})" for d in (sig.digest, bundle.digest)}
    assert all("not an OCI image index" in r.reason for r in refusals)
    assert world.plain.pusher().fetch_manifest("mirror/app", tag)[2] == squatter.digest  # left alone
    assert referrers_at(world, "api", "mirror/app", app.digest) == {sig.digest, bundle.digest}


def test_an_entry_lost_from_a_referrers_tag_is_listed_again_when_the_referrer_is_next_seen(world, tmp_path):
    # the run died between the referrer's PUT and the tag's, or another process's write replaced
    # the tag: the referrer is at the target, but a client looking through the tag cannot see it
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().ok
    plain = world.plain.pusher()
    tag = images.digest_tag(app.digest, suffix="")

    def drop_sig() -> None:
        listed = json.loads(plain.fetch_manifest("mirror/app", tag)[0])
        listed["manifests"] = [m for m in listed["manifests"] if m["digest"] != sig.digest]
        plain.put_manifest("mirror/app", images.Manifest(json.dumps(listed).encode(), OCI_INDEX), tag)
        assert referrers_at(world, "plain", "mirror/app", app.digest) == {bundle.digest}

    drop_sig()  # the signature was pushed lately: the next run's recent untagged manifests include it
    with world.syncer(tmp_path) as syncer:
        run = syncer.run()
    assert run.ok and run.tags_copied == 0, run.failures
    assert referrers_at(world, "plain", "mirror/app", app.digest) == {sig.digest, bundle.digest}
    assert referrers_at(world, "api", "mirror/app", app.digest) == {sig.digest, bundle.digest}
    assert world.api.pusher().tags("mirror/app") == ["1.0"]  # no referrers tag where the API is

    drop_sig()  # an old signature: the full check looks at every untagged manifest
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    for manifest in world.source.manifests_of(f"{NS}/app"):
        world.source.set_manifest_times(f"{NS}/app", manifest, long_ago)
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().ok
        assert referrers_at(world, "plain", "mirror/app", app.digest) == {bundle.digest}  # not in the window
        full = syncer.run(check=Check.FULL)
    assert full.ok and full.tags_copied == 0, full.failures
    assert referrers_at(world, "plain", "mirror/app", app.digest) == {sig.digest, bundle.digest}


def test_a_target_that_narrows_indexes_gets_the_referrers_of_what_it_holds_only(world, tmp_path):
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    arm64 = next(c for c in app.children if c.platform and c.platform["architecture"] == "arm64")
    arm_sbom = artifact("ref-arm-sbom", arm64, SPDX)
    world.pusher.push(f"{NS}/app", arm_sbom)
    narrow = {"plain": {"platforms": ["linux/amd64"]}}
    with world.syncer(tmp_path, **narrow) as syncer:
        first = syncer.run()
    assert first.ok, first.failures
    plain = world.plain.pusher()
    # the platform it holds, with its SBOM and the SBOM's signature
    assert referrers_at(world, "plain", "mirror/app", amd64.digest) == {sbom.digest}
    assert referrers_at(world, "plain", "mirror/app", sbom.digest) == {sbom_sig.digest}
    # nothing of what it does not hold: the source index (its own index has another digest), arm64
    for absent in (sig, bundle, arm_sbom):
        assert not plain.exists_manifest("mirror/app", absent.digest), absent
    for subject in (app, arm64):
        assert not plain.exists_manifest("mirror/app", images.digest_tag(subject.digest, suffix=""))
    # the full mirror has everything
    assert referrers_at(world, "api", "mirror/app", arm64.digest) == {arm_sbom.digest}

    # the next runs, recent and full, find the narrowed target in order without the source's trees
    for check in (Check.RECENT, Check.FULL):
        world.source.reset_log()
        with world.syncer(tmp_path, **narrow) as syncer:
            again = syncer.run(check=check)
        assert again.ok and (again.tags_copied, again.work.referrers_copied, again.work.manifests_pushed) == (
            0,
            0,
            0,
        ), check
        assert world.source.count(("blob",)) == 0, check


def test_from_a_plain_oci_source_the_full_check_finds_late_referrers_of_the_index_and_its_children(
    fresh_registry, tmp_path
):
    source, target = fresh_registry(name="oci-src"), fresh_registry(name="oci-dst")
    pusher = source.pusher()
    app = images.oci_index("oci-late", layer_sizes=(120,), attestations=False)
    pusher.push("gs/app", app, "1.0")
    env = oci_env(source, target)
    with Syncer(load_config(env)) as syncer:
        assert syncer.run().tags_copied == 1
    # referrers added later, each listed in its subject's referrers tag (distribution has no API)
    sig, child_sbom = (
        artifact("oci-late-sig", app, NOTATION),
        artifact("oci-late-sbom", app.children[0], SPDX),
    )
    for referrer, subject, kind in ((sig, app, NOTATION), (child_sbom, app.children[0], SPDX)):
        pusher.push("gs/app", referrer)
        entry = {
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.size,
            "artifactType": kind,
        }
        listing = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        pusher.put_manifest(
            "gs/app",
            images.Manifest(json.dumps(listing).encode(), OCI_INDEX),
            images.digest_tag(subject.digest, suffix=""),
        )
    with Syncer(load_config(env)) as syncer:
        full = syncer.run(check=Check.FULL)
    assert full.ok and full.work.referrers_copied == 2, full.to_dict()
    check = target.pusher()
    for referrer, subject in ((sig, app), (child_sbom, app.children[0])):
        assert check.fetch_manifest("mirror/app", referrer.digest)[0] == referrer.raw
        listed = json.loads(
            check.fetch_manifest("mirror/app", images.digest_tag(subject.digest, suffix=""))[0]
        )
        assert [m["digest"] for m in listed["manifests"]] == [referrer.digest]


def test_the_referrers_of_one_subject_are_listed_with_one_write(world, tmp_path):
    # distribution 2.8 has no referrers API: the copier writes the referrers tag itself, once for
    # all the referrers of a subject it pushed in one go (the index has two here).
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    mark = len(world.plain.access_log())
    with world.syncer(tmp_path) as syncer:
        summary = syncer.run()
    assert summary.ok, summary.failures
    tag_puts = Counter(
        w[1].split("?")[0].rsplit("/", 1)[1]
        for w in world.plain.writes(mark)
        if w[0] == "PUT" and "/manifests/sha256-" in w[1]
    )
    assert tag_puts == {images.digest_tag(d, suffix=""): 1 for d in (app.digest, amd64.digest, sbom.digest)}
    assert referrers_at(world, "plain", "mirror/app", app.digest) == {sig.digest, bundle.digest}


def test_a_target_that_fails_to_answer_decides_nothing_for_the_other_targets(world, tmp_path):
    # copy_referrer and copy_referrers_of ask each target whether it holds the subject: a target
    # answering 401 (wrong credentials here) fails alone; the target before it still gets the
    # new signature, and the one before is not charged with the other's error.
    app, *_ = seed_signed_image(world)
    with world.syncer(tmp_path) as syncer:
        assert syncer.run().ok
    late = artifact("ref-late", app, images.COSIGN_SIG_ARTIFACT)
    world.pusher.push(f"{NS}/app", late)
    wrong = Destination(
        "wrong", RegistryClient(world.plain.url, StaticCredentials(Credentials("nobody", "x")))
    )
    with world.syncer(tmp_path) as syncer:
        good = Placement(syncer.destinations["plain"], "mirror/app", None, AtTarget.TAG_ABSENT)
        bad = Placement(wrong, "mirror/app", None, AtTarget.TAG_ABSENT)
        for copy, reference in (
            (syncer.copier.copy_referrer, late.digest),
            (syncer.copier.copy_referrers_of, app.digest),
        ):
            ok, failed = copy(f"{NS}/app", reference, [good, bad])
            assert ok.error is None and ok.status in (CopyStatus.COPIED, CopyStatus.UNCHANGED), (copy, ok)
            assert failed.error is not None and "401" in str(failed.error), (copy, failed)
    assert late.digest in referrers_at(world, "plain", "mirror/app", app.digest)


def test_a_referrer_index_narrowed_for_a_target_is_listed_as_the_target_holds_it(world, tmp_path):
    # a referrer that is itself a multi-platform index reaches a target that keeps linux/amd64
    # only as its own narrowed index (another digest): the referrers tag lists that one
    app, amd64, _, sbom, *_ = seed_signed_image(world)
    parts = [images.oci_image(f"ref-multi:{p}", (64,), platform=p) for p in ("linux/amd64", "linux/arm64")]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.example.bundle",
        "manifests": [m.descriptor(platform=m.platform) for m in parts],
        "subject": amd64.descriptor(),
    }
    multi = images.Manifest(json.dumps(body).encode(), OCI_INDEX, (), tuple(parts), subject=amd64)
    world.pusher.push(f"{NS}/app", multi)
    with world.syncer(tmp_path, plain={"platforms": ["linux/amd64"]}) as syncer:
        summary = syncer.run()
    assert summary.ok, summary.failures
    plain = world.plain.pusher()
    listed = referrers_at(world, "plain", "mirror/app", amd64.digest)
    assert not plain.exists_manifest("mirror/app", multi.digest)
    # exactly the SBOM and one more: the narrowed index, held at the target
    others = listed - {sbom.digest}
    assert sbom.digest in listed and len(others) == 1 and multi.digest not in others, listed
    (narrowed,) = others
    raw, media_type, digest = plain.fetch_manifest("mirror/app", narrowed)
    held = json.loads(raw)
    assert (media_type, digest) == (OCI_INDEX, narrowed)
    assert [m["digest"] for m in held["manifests"]] == [parts[0].digest]  # linux/amd64 only
    assert (held["subject"]["digest"], held["artifactType"]) == (amd64.digest, body["artifactType"])
    assert plain.exists_manifest("mirror/app", parts[0].digest)
    assert not plain.exists_manifest("mirror/app", parts[1].digest)


def test_a_failing_untagged_listing_does_not_stop_the_tags(world, tmp_path):
    # ACR's _manifests listing only finds candidate referrers: when it fails, the repository's
    # tags are still planned and copied (their referrers with them); the failure is reported
    app, amd64, sig, *_ = seed_signed_image(world)
    world.source.fail_next(1, 403, kinds="acr_manifests")
    with world.syncer(tmp_path) as syncer:
        summary = syncer.run()
    assert summary.tags_copied == 2, summary.to_dict()
    reasons = [f.reason for f in summary.failures]
    assert reasons and all("untagged manifests" in r for r in reasons), reasons
    assert not summary.ok and summary.tags_failed == 0
    assert sig.digest in referrers_at(world, "plain", "mirror/app", app.digest)


def test_an_event_for_a_referrer_of_an_image_not_mirrored_is_a_skip_with_its_reason(world, tmp_path, capsys):
    # issue 16: `event FILE` and the worker said "copy", 0 tags, exit 0, and nothing more
    kept, dropped = images.oci_image("ev-kept", (64,)), images.oci_image("ev-dropped", (64,))
    world.pusher.push(f"{NS}/app", kept, "1.0")
    world.pusher.push(f"{NS}/app", dropped, "dev")  # TAG_INCLUDE leaves it out: never mirrored
    env = world.env(TAG_INCLUDE=r"\d+\.\d+")
    config = world.config_file(tmp_path)
    assert cli.main(["sync", "--config", config], environ=env) == 0
    sig = artifact("ev-sig", dropped, NOTATION)
    world.pusher.push(f"{NS}/app", sig)
    event = untagged_push(world, "evt-unmirrored", sig)
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    capsys.readouterr()
    assert cli.main(["event", str(path), "--json", "--config", config], environ=env) == 0
    summary = json.loads(capsys.readouterr().out)
    reason = f"its subject {dropped.digest} is not at the target (a referrer follows its subject)"
    assert {(s["target"], s["item"], s["reason"]) for s in summary["skipped"]} == {
        (target, f"{NS}/app@{sig.digest}", reason) for target in ("plain", "api")
    }, summary
    # the worker, for the queue message the Event Grid function makes of it
    with Syncer(load_config(env, config)) as syncer:
        for message in handlers.event_messages(event, syncer.config):
            done, _ = handlers.process_message(message, syncer)
            assert done.ok and [(s.item, s.reason) for s in done.skipped] == [
                (f"{NS}/app@{sig.digest}", reason)
            ]
    for target in ("plain", "api"):
        assert referrers_at(world, target, "mirror/app", dropped.digest) == set()


def test_a_target_that_sends_oci_subject_without_serving_the_api_still_gets_the_referrers_tag(
    world, tmp_path
):
    """ECR answers a push of a manifest with a subject with OCI-Subject, yet serves no referrers
    API: the header alone must not stop the referrers tag, or clients could not find them there."""
    app, amd64, sig, sbom, sbom_sig, bundle = seed_signed_image(world)
    with RegistryFront(world.plain, subject_header=True) as ecr_like:
        config = tmp_path / "ecr.yaml"
        config.write_text(yaml.safe_dump({"targets": plain_and_api_targets(ecr_like.url, world.api.url)[:1]}))
        with Syncer(load_config(world.env(), str(config))) as syncer:
            summary = syncer.run()
    assert summary.ok, summary.failures
    assert referrers_at(world, "plain", "mirror/app", app.digest) == {sig.digest, bundle.digest}
    assert referrers_at(world, "plain", "mirror/app", amd64.digest) == {sbom.digest}
    assert referrers_at(world, "plain", "mirror/app", sbom.digest) == {sbom_sig.digest}
