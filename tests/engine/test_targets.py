"""Mirrors as they really are: mapping rules, two-level names, narrowed indexes, target refusals, fan-out.

The source is the ACR stand-in holding images (``giantswarm/<app>``) and Helm charts three levels
deep (``charts/giantswarm/<chart>``), as gsoci does. The targets are real ``distribution``
registries behind :class:`~tests.harness.front.RegistryFront`, which answers exactly as Docker Hub
(refused cross-repository mounts, immutable tags) or Alibaba's personal edition (unknown manifest
classes: attestations) do.
"""

from __future__ import annotations

import collections
import json
import threading

import pytest

from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.errors import ConfigError, SetupError
from sync_core.jobs.syncer import Syncer
from sync_core.plan.work import Check
from sync_core.report.summary import Summary
from tests.harness import PUSHER, images
from tests.harness.acr import AcrStandIn
from tests.harness.fakeregistry import FakeRegistry
from tests.harness.front import IMAGE_CLASSES, RegistryFront
from tests.harness.scripted import Request

SOURCE_USER = ("sync", "sync-pw-4Rt")
CHART_RULE = {"match": "charts/giantswarm/(.+)", "replace": "giantswarmcharts/\\1"}
SOURCE_DIGEST = "io.registry-sync.source.digest"


@pytest.fixture
def source(token_issuer):
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="targets-src") as acr:
        pusher = acr.pusher()
        acr.app = images.oci_index("tg-app", layer_sizes=(2000,))  # two platforms + buildx attestations
        acr.tool = images.docker_image("tg-tool", (1500,))
        acr.chart = images.helm_chart("tg-hello", "hello", "0.1.0")
        pusher.push("giantswarm/app", acr.app, "1.0")
        pusher.push("giantswarm/tool", acr.tool, "2.0")
        pusher.push("charts/giantswarm/hello", acr.chart, "0.1.0")
        pusher.push("other/thing", images.oci_image("tg-other", (64,)), "1")
        yield acr


def env(source: AcrStandIn, **extra: str) -> dict[str, str]:
    return {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "acr",
        "SOURCE_USERNAME": SOURCE_USER[0],
        "SOURCE_PASSWORD": SOURCE_USER[1],
        "REPOSITORY_INCLUDE": "giantswarm/.+|charts/giantswarm/.+",
        "MIRROR_USER": PUSHER[0],
        "MIRROR_PASS": PUSHER[1],
        **extra,
    }


def config_file(tmp_path, targets: list[dict], **top) -> str:
    for target in targets:
        target.setdefault("username_env", "MIRROR_USER")
        target.setdefault("password_env", "MIRROR_PASS")
    path = tmp_path / "sync.json"
    path.write_text(json.dumps({"targets": targets, **top}))
    return str(path)


def test_charts_and_images_reach_a_hub_like_and_an_alibaba_like_mirror_reading_each_blob_once(
    source, fresh_registry, tmp_path, capsys
):
    with (
        RegistryFront(fresh_registry(name="hub"), refuse_mounts=True, immutable_tags=True) as hub,
        RegistryFront(fresh_registry(name="ali"), manifest_classes=IMAGE_CLASSES) as ali,
    ):
        path = config_file(
            tmp_path,
            [
                {"name": "hub", "registry": hub.url, "max_path_depth": 2},
                {"name": "ali", "registry": ali.url, "max_path_depth": 2, "drop_attestations": True},
            ],
            mappings=[CHART_RULE],
        )
        environment = env(source)

        # plan: the mapping and the narrowing are visible before anything is copied
        assert cli.main(["plan", "--config", path], environ=environment) == cli.EXIT_OK
        plan = capsys.readouterr().out
        assert "charts/giantswarm/hello -> giantswarmcharts/hello" in plan
        assert "indexes with other entries are rewritten for ali (no attestations)" in plan

        source.reset_log()
        with Syncer(load_config(environment, path)) as syncer:
            summary = syncer.run()
        assert summary.ok, summary.failures
        assert summary.tags_copied == 6  # 3 tags x 2 targets
        hub_check, ali_check = hub.registry.pusher(), ali.registry.pusher()
        # exact copies at the hub; the chart under its mapped two-level name
        assert hub_check.fetch_manifest("giantswarm/app", "1.0")[0] == source.app.raw
        assert hub_check.fetch_manifest("giantswarmcharts/hello", "0.1.0")[0] == source.chart.raw
        assert ali_check.fetch_manifest("giantswarmcharts/hello", "0.1.0")[0] == source.chart.raw
        assert ali_check.fetch_manifest("giantswarm/tool", "2.0")[0] == source.tool.raw
        # Alibaba: the index without its attestations, the source digest recorded
        raw, _, digest = ali_check.fetch_manifest("giantswarm/app", "1.0")
        narrowed = json.loads(raw)
        assert narrowed["annotations"][SOURCE_DIGEST] == source.app.digest
        platforms = [c for c in source.app.children if c.platform and c.platform["os"] != "unknown"]
        assert [m["digest"] for m in narrowed["manifests"]] == [c.digest for c in platforms]
        for child in platforms:
            assert ali_check.fetch_manifest("giantswarm/app", child.digest)[0] == child.raw
        assert ali.refused == {}  # nothing refused: the attestations never reached it
        assert [(r.target, r.item, r.source_digest, r.target_digest) for r in summary.rewritten] == [
            ("ali", "giantswarm/app:1.0", source.app.digest, digest)
        ]
        # each blob read from the source once for both mirrors
        blob_reads = collections.Counter(e.ref for e in source.log if e.kind == "blob" and e.method == "GET")
        assert blob_reads and set(blob_reads.values()) == {1}, blob_reads

        # a second run writes nothing, narrowed index included
        with Syncer(load_config(environment, path)) as syncer:
            again = syncer.run()
        assert again.ok and (again.tags_copied, again.work.manifests_pushed, again.work.bytes_uploaded) == (
            0,
            0,
            0,
        )


def test_several_targets_are_asked_for_each_blob_and_child_manifest_at_once(tmp_path):
    """Two targets cost one round trip per check, not one each: each target's HEAD of a blob or
    child manifest is answered only when the other target has been asked for the same digest too
    (a barrier per digest and target registry); asking one target after the other breaks it."""
    image = images.oci_index("tg-at-once", layer_sizes=(300, 200))  # two platforms + attestations
    src = FakeRegistry()
    src.push("team/app", image, "1.0")
    targets = [FakeRegistry(), FakeRegistry()]
    barriers: dict[str, threading.Barrier] = {}
    lock = threading.Lock()
    broken: list[str] = []

    def at_once(request: Request) -> None:
        if request.method == "HEAD" and "/sha256:" in request.path:
            with lock:
                barrier = barriers.setdefault(request.path.rsplit("/", 1)[1], threading.Barrier(2, timeout=5))
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                broken.append(request.path)
        return None  # then answer as a registry does

    for target in targets:
        target.hooks.append(at_once)
    path = config_file(tmp_path, [{"name": f"t{i}", "registry": t.url} for i, t in enumerate(targets)])
    environment = {
        "SOURCE_REGISTRY": src.url,
        "SOURCE_KIND": "oci",
        "SOURCE_REPOSITORIES": "team/app",
        "MIRROR_USER": PUSHER[0],
        "MIRROR_PASS": PUSHER[1],
    }
    try:
        with Syncer(load_config(environment, path)) as syncer:
            summary = syncer.run()
        assert summary.ok and summary.tags_copied == 2, summary.failures
        assert broken == [], broken
        children = {c.digest for c in image.children}
        blobs = {b.digest for b in image.all_blobs()}
        assert set(barriers) == children | blobs  # every child manifest and blob was asked for at both
        for target in targets:
            assert target.manifests[("team/app", "1.0")][0] == image.raw
            assert all(target.blobs[digest] == src.blobs[digest] for digest in blobs)
    finally:
        for registry in (src, *targets):
            registry.stop()


def test_without_drop_attestations_the_alibaba_refusal_is_a_skip_that_names_it(
    source, fresh_registry, tmp_path
):
    with RegistryFront(fresh_registry(name="ali"), manifest_classes=IMAGE_CLASSES) as ali:
        path = config_file(tmp_path, [{"name": "ali", "registry": ali.url}])
        with Syncer(load_config(env(source, REPOSITORY_INCLUDE="giantswarm/app"), path)) as syncer:
            summary = syncer.run()
            assert summary.ok and summary.tags_skipped == 1
            (skip,) = summary.skipped
            assert "unknown manifest class" in skip.reason and "drop_attestations" in skip.reason
            assert ali.refused["class"] >= 1
            assert syncer.run().tags_skipped == 1  # the same, every run: never a failure, never retried


def test_a_refused_mount_falls_back_to_an_upload(source, fresh_registry, tmp_path):
    base = images.layer("tg-shared-base", 3000)
    pusher = source.pusher()
    pusher.push("giantswarm/one", images.oci_image("tg-one", (100,), base_layer=base), "1")
    pusher.push("giantswarm/two", images.oci_image("tg-two", (120,), base_layer=base), "1")
    with RegistryFront(fresh_registry(name="hub"), refuse_mounts=True) as hub:
        path = config_file(tmp_path, [{"name": "hub", "registry": hub.url}])
        settings = env(source, REPOSITORY_INCLUDE="giantswarm/(one|two)", SYNC_CONCURRENCY="1")
        with Syncer(load_config(settings, path)) as syncer:
            summary = syncer.run()
        assert summary.ok, summary.failures
        assert hub.refused["mount"] >= 1 and summary.work.blobs_mounted == 0
        for repo in ("giantswarm/one", "giantswarm/two"):
            assert hub.registry.pusher().fetch_blob(repo, base.digest) == base.data


def test_an_immutable_tag_is_a_conflict_reported_with_both_digests_not_a_failure(
    source, fresh_registry, tmp_path
):
    with RegistryFront(fresh_registry(name="hub"), immutable_tags=True) as hub:
        path = config_file(tmp_path, [{"name": "hub", "registry": hub.url}])
        settings = env(source, REPOSITORY_INCLUDE="giantswarm/tool")
        with Syncer(load_config(settings, path)) as syncer:
            assert syncer.run().tags_copied == 1
        moved = images.docker_image("tg-tool-moved", (1600,))
        source.pusher().push("giantswarm/tool", moved, "2.0")  # the source moves the tag
        with Syncer(load_config(settings, path)) as syncer:
            summary = syncer.run()
        assert summary.ok and summary.tags_skipped == 1 and hub.refused["immutable"] == 1
        (skip,) = summary.skipped
        assert "conflict" in skip.reason and source.tool.digest in skip.reason and moved.digest in skip.reason
        assert hub.registry.pusher().fetch_manifest("giantswarm/tool", "2.0")[2] == source.tool.digest


def test_a_bare_403_on_a_moved_tag_is_a_failure_of_our_rights_not_an_immutable_tag(
    source, fresh_registry, tmp_path
):
    with RegistryFront(fresh_registry(name="hub"), deny_tag_writes=False) as hub:
        path = config_file(tmp_path, [{"name": "hub", "registry": hub.url}])
        settings = env(source, REPOSITORY_INCLUDE="giantswarm/tool")
        with Syncer(load_config(settings, path)) as syncer:
            assert syncer.run().tags_copied == 1
        source.pusher().push("giantswarm/tool", images.docker_image("tg-tool-moved-2", (1600,)), "2.0")
        hub.deny_tag_writes = True  # the push credential lost its write rights meanwhile
        with Syncer(load_config(settings, path)) as syncer:
            summary = syncer.run()
    assert not summary.ok and summary.tags_skipped == 0 and hub.refused["denied"] >= 1
    (failure,) = summary.failures
    assert "403" in failure.reason and "conflict" not in failure.reason and failure.retry, failure


def test_platform_selection_narrows_indexes_for_one_target_only(source, fresh_registry, tmp_path):
    narrow, full = fresh_registry(name="narrow"), fresh_registry(name="full")
    path = config_file(
        tmp_path,
        [
            {"name": "narrow", "registry": narrow.url, "platforms": ["linux/amd64"]},
            {"name": "full", "registry": full.url},
        ],
    )
    with Syncer(load_config(env(source, REPOSITORY_INCLUDE="giantswarm/(app|tool)"), path)) as syncer:
        summary = syncer.run()
    assert summary.ok, summary.failures
    amd64 = next(c for c in source.app.children if c.platform == {"os": "linux", "architecture": "amd64"})
    document = json.loads(narrow.pusher().fetch_manifest("giantswarm/app", "1.0")[0])
    # the amd64 image and its attestation (it attests amd64); arm64 and its attestation are gone
    kept = {m["digest"] for m in document["manifests"]}
    assert amd64.digest in kept and len(kept) == 2
    assert document["annotations"][SOURCE_DIGEST] == source.app.digest
    assert full.pusher().fetch_manifest("giantswarm/app", "1.0")[0] == source.app.raw
    # a single-platform image is never rewritten
    assert narrow.pusher().fetch_manifest("giantswarm/tool", "2.0")[0] == source.tool.raw

    # the next runs (a recheck, a full check) see the narrowed index as up to date: its
    # annotations name the source digest and the rules, so the source's tree is not fetched again
    for check in (Check.RECENT, Check.FULL):
        source.reset_log()
        with Syncer(load_config(env(source, REPOSITORY_INCLUDE="giantswarm/(app|tool)"), path)) as syncer:
            again = syncer.run(check=check)
        assert again.ok and again.tags_copied == 0 and again.work.manifests_pushed == 0, (
            check,
            again.to_dict(),
        )
        assert source.count(("manifest", "blob")) == 0, (check, source.log)


def test_two_repositories_mapped_to_one_stop_the_run_before_anything_is_copied(
    source, fresh_registry, tmp_path
):
    dst = fresh_registry()
    path = config_file(
        tmp_path,
        [
            {
                "name": "hub",
                "registry": dst.url,
                "mappings": [{"match": "giantswarm/(app|tool)", "replace": "giantswarm/everything"}],
            }
        ],
    )
    with Syncer(load_config(env(source), path)) as syncer, pytest.raises(ConfigError) as info:
        syncer.run()
    (problem,) = info.value.problems
    assert "giantswarm/app" in problem and "giantswarm/tool" in problem and "giantswarm/everything" in problem
    assert dst.pusher().catalog() == []
    assert cli.main(["sync", "--config", path], environ=env(source)) == cli.EXIT_CONFIG


def test_a_null_mapping_leaves_a_repository_out_of_one_target(source, fresh_registry, tmp_path):
    dst = fresh_registry()
    path = config_file(
        tmp_path,
        [{"name": "hub", "registry": dst.url, "mappings": [{"match": "charts/.*", "replace": None}]}],
    )
    with Syncer(load_config(env(source), path)) as syncer:
        summary = syncer.run()
    assert summary.ok and summary.tags_copied == 2
    assert sorted(dst.pusher().catalog()) == ["giantswarm/app", "giantswarm/tool"]
    assert any("leaves it out" in s.reason for s in summary.skipped)


def test_schema1_is_mirrored_where_the_target_takes_it_and_skipped_once_where_it_does_not(
    token_issuer, fresh_registry, tmp_path
):
    schema1 = {"compatibility": {"schema1": {"enabled": True}}}
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="s1-src", backend_config=schema1) as acr:
        legacy = images.schema1_image("tg-legacy", "giantswarm/legacy", "0.9", (700, 300))
        acr.pusher().push("giantswarm/legacy", legacy, "0.9")
        takes, refuses = fresh_registry(name="takes", extra_config=schema1), fresh_registry(name="refuses")
        path = config_file(
            tmp_path, [{"name": "takes", "registry": takes.url}, {"name": "refuses", "registry": refuses.url}]
        )
        with Syncer(load_config(env(acr), path)) as syncer:
            for target in syncer.target_clients.values():
                target.transport.sleep = lambda seconds: None
            summary = syncer.run()
            assert summary.ok, summary.failures  # a refusal is a skip, not a failure
            raw, content_type, digest = takes.pusher().fetch_manifest("giantswarm/legacy", "0.9")
            assert digest == legacy.digest and content_type.startswith(
                "application/vnd.docker.distribution.manifest.v1"
            )
            for blob in legacy.blobs:
                assert takes.pusher().fetch_blob("giantswarm/legacy", blob.digest) == blob.data
            (skip,) = summary.skipped
            assert skip.target == "refuses" and "schema 1" in skip.reason
            assert not refuses.pusher().exists_manifest("giantswarm/legacy", "0.9")
            # the same process does not try again: it learned the target refuses schema 1
            again = syncer.run()
        assert again.ok and again.tags_skipped == 1 and again.tags_copied == 0
        assert "earlier in this process" in again.skipped[0].reason


def test_an_empty_catalog_fails_the_run_naming_the_token_scope_unless_allowed(token_issuer, fresh_registry):
    users = {"narrow": ("narrow-pw", {"repo/*": ["pull", "metadata_read"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="empty-src") as acr:
        acr.catalog_filtered = True  # ACR: HTTP 200 and an empty list for a token that sees nothing
        acr.pusher().push("giantswarm/app", images.oci_image("tg-empty", (64,)), "1")
        settings = {
            "SOURCE_REGISTRY": acr.url,
            "SOURCE_KIND": "acr",
            "SOURCE_NAMESPACE": "giantswarm",
            "SOURCE_USERNAME": "narrow",
            "SOURCE_PASSWORD": "narrow-pw",
            "TARGET_REGISTRY": fresh_registry().url,
        }
        with Syncer(load_config(settings)) as syncer, pytest.raises(SetupError, match="scope map"):
            syncer.run()
        assert cli.main(["sync"], environ=settings) == cli.EXIT_CONFIG
        with Syncer(load_config(dict(settings, SOURCE_ALLOW_EMPTY="true"))) as syncer:
            summary = syncer.run()
        assert summary.ok and summary.repositories == 0


@pytest.mark.timeout(90)  # the old failure was a hang
def test_a_tag_listed_twice_is_planned_once_and_a_doubled_work_item_does_not_hang(
    source, fresh_registry, tmp_path
):
    # ACR pages tags newest first: a re-push while the listing is paged can name a tag twice.
    # Two works for one tag at one target would each wait for the other's upload claim.
    mirror = fresh_registry(name="twice")
    path = config_file(tmp_path, [{"name": "mirror", "registry": mirror.url}])
    with Syncer(load_config(env(source, REPOSITORY_INCLUDE="giantswarm/app"), path)) as syncer:
        listed = syncer.source.tags
        syncer.source.tags = lambda repository: listed(repository) * 2  # type: ignore[method-assign]
        planned = syncer.plan_repository("giantswarm/app", Summary())
        assert [(w.tag, w.target) for w in planned] == [("1.0", "mirror")]
        summary = Summary()
        copying = threading.Thread(
            target=syncer.copy_group, args=(planned * 2, syncer.recorder(summary)), daemon=True
        )
        copying.start()
        copying.join(60)
        assert not copying.is_alive(), "a doubled work item waits for itself"
    assert summary.ok and summary.tags_copied == 1, summary.to_dict()
    assert mirror.pusher().fetch_manifest("giantswarm/app", "1.0")[2] == source.app.digest


def test_a_full_check_asks_a_plain_source_for_each_tag_digest_once_for_all_targets(fresh_registry, tmp_path):
    # a plain OCI tag listing has no digests: the full check HEADs each tag at the source, once,
    # and compares that digest with every target's
    source, first, second = (
        fresh_registry(name="fc-src"),
        fresh_registry(name="fc-a"),
        fresh_registry(name="fc-b"),
    )
    app = images.oci_image("fc-app", (64,))
    source.pusher().push("gs/app", app, "1.0")
    path = tmp_path / "targets.json"
    path.write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "name": n,
                        "registry": r.url,
                        "namespace": "mirror",
                        "username_env": "U",
                        "password_env": "P",
                    }
                    for n, r in (("a", first), ("b", second))
                ]
            }
        )
    )
    env = {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": "gs",
        "SOURCE_USERNAME": PUSHER[0],
        "SOURCE_PASSWORD": PUSHER[1],
        "SOURCE_REPOSITORIES": "gs/app",
        "SYNC_REFERRERS": "none",
        "U": PUSHER[0],
        "P": PUSHER[1],
    }
    with Syncer(load_config(env, str(path))) as syncer:
        assert syncer.run().tags_copied == 2
    mark = len(source.access_log())
    with Syncer(load_config(env, str(path))) as syncer:
        full = syncer.run(check=Check.FULL)
    assert full.ok and full.tags_copied == 0 and full.tags_considered == 2, full.to_dict()
    heads = [e for e in source.access_log()[mark:] if e[0] == "HEAD" and "/manifests/1.0" in e[1]]
    assert len(heads) == 1, heads
