"""``python -m sync_core verify`` (sync_core.jobs.verify) against real registries.

The source is the ACR stand-in (digests in ``_tags``, the referrers API); the targets a plain
``distribution`` registry (no referrers API: the referrers tag ``sha256-<hex>`` lists them) and a
second ACR stand-in (referrers API). A sync mirrors everything, then the targets are damaged
with the harness's own client (a tag deleted, a tag moved, a blob deleted, a referrer deleted,
a referrers tag that no longer lists one) and ``verify`` must name exactly that, through the CLI.
A plain OCI source (a HEAD per tag at the source) and the targets' skip rules are covered too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.jobs.syncer import Syncer
from tests.harness import images, layouts, oci_env, plain_and_api_env, plain_and_api_targets
from tests.harness.acr import AcrStandIn

NS = "gs"
SOURCE_USER = ("verify-sync", "verify-sync-pw-2Lp")
API_USER = ("verify-bot", "verify-bot-pw-7Rt")
SPDX = "application/spdx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class World:
    def __init__(self, source: AcrStandIn, plain, api: AcrStandIn, tmp_path: Path):
        self.source, self.plain, self.api = source, plain, api
        self.pusher = source.pusher()
        self.tmp_path = tmp_path
        self.write_config()

    def write_config(self, top: dict | None = None, **plain_extra) -> None:
        self.config = self.tmp_path / "targets.json"
        targets = plain_and_api_targets(self.plain.url, self.api.url, plain_extra)
        self.config.write_text(json.dumps({**(top or {}), "targets": targets}))

    def env(self) -> dict[str, str]:
        return plain_and_api_env(self.source.url, NS, SOURCE_USER, API_USER)

    def sync(self) -> None:
        with Syncer(load_config(self.env(), str(self.config))) as syncer:
            summary = syncer.run()
        assert summary.ok, summary.failures


@pytest.fixture
def world(token_issuer, fresh_registry, tmp_path):
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with (
        AcrStandIn(users=users, issuer=token_issuer, name="verify-src") as source,
        AcrStandIn(
            users={API_USER[0]: (API_USER[1], {"*": ["pull", "push", "delete"]})},
            issuer=token_issuer,
            name="verify-api",
        ) as api,
    ):
        yield World(source, fresh_registry(), api, tmp_path)


def seed(world: World):
    """``gs/app:1.0`` (two platforms) signed, with an SBOM of one platform; ``gs/tool`` 1.0 and 2.0."""
    app = images.oci_index("verify-app", layer_sizes=(300,), attestations=False)
    sig = images.signature("verify-sig", app)
    sbom = images.signature("verify-sbom", app.children[0], SPDX)
    tool1, tool2 = images.oci_image("verify-tool-1", (200,)), images.oci_image("verify-tool-2", (210,))
    world.pusher.push(f"{NS}/app", app, "1.0")
    world.pusher.push(f"{NS}/app", sig)
    world.pusher.push(f"{NS}/app", sbom)
    world.pusher.push(f"{NS}/tool", tool1, "1.0")
    world.pusher.push(f"{NS}/tool", tool2, "2.0")
    return app, sig, sbom, tool1, tool2


def verify(world: World, capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli.main(["verify", "--json", "--config", str(world.config), *args], environ=world.env())
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def rows(report: dict) -> set[tuple]:
    return {(f["target"], f["item"], f["status"], f["expected"], f["actual"]) for f in report["findings"]}


def test_a_complete_mirror_verifies_with_and_without_deep(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    world.sync()
    code, report = verify(world, capsys)
    assert code == 0 and report["complete"] and report["findings"] == [], report
    for target in ("plain", "api"):
        # three tags; the signature of the index (the SBOM belongs to a child: --deep only)
        assert report["targets"][target] == {
            "tags": 3,
            "referrers": 1,
            "manifests": 0,
            "blobs": 0,
            "skipped": 0,
            "problems": 0,
        }
    code, deep = verify(world, capsys, "--deep")
    assert code == 0 and deep["complete"] and deep["deep"], deep
    blobs = {b.digest for m in (app, sig, sbom, tool1, tool2) for b in m.all_blobs()}
    for target in ("plain", "api"):
        t = deep["targets"][target]
        assert (t["tags"], t["referrers"]) == (3, 2)
        assert t["manifests"] == len(app.children) + 2  # the platform images, the two referrers
        assert t["blobs"] == len(blobs)
    # the table for a person
    capsys.readouterr()
    assert cli.main(["verify", "--config", str(world.config)], environ=world.env()) == 0
    text = capsys.readouterr().out
    assert text.startswith("verify: complete") and "target plain: 3 tags and 1 referrers in order" in text


def test_what_is_missing_or_differs_is_named_per_target(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    world.sync()
    plain, api = world.plain.pusher(), world.api.pusher()
    plain.delete_manifest("mirror/tool", tool2.digest)  # a deleted tag
    moved = images.oci_image("verify-moved", (90,))
    api.push("mirror/tool", moved, "1.0")  # a moved tag
    api.delete_manifest("mirror/app", sig.digest)  # a missing referrer (API target)
    # the plain target's referrers tag no longer lists the signature (it is still there)
    tag = images.digest_tag(app.digest, suffix="")
    plain.put_manifest(
        "mirror/app",
        images.Manifest(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode(), OCI_INDEX
        ),
        tag,
    )
    code, report = verify(world, capsys)
    assert code == 1 and not report["complete"]
    assert rows(report) == {
        ("plain", "mirror/tool:2.0", "missing", tool2.digest, None),
        ("api", "mirror/tool:1.0", "differs", tool1.digest, moved.digest),
        ("api", f"mirror/app@{sig.digest}", "missing", sig.digest, None),
        ("plain", f"mirror/app@{sig.digest}", "unlisted-referrer", sig.digest, None),
    }, report["findings"]
    unlisted = next(f for f in report["findings"] if f["status"] == "unlisted-referrer")
    assert f"referrers tag {tag}" in unlisted["detail"] and images.COSIGN_SIG_ARTIFACT in unlisted["detail"]
    # one target only
    code, report = verify(world, capsys, "--target", "plain")
    assert (
        code == 1
        and set(report["targets"]) == {"plain"}
        and {f["target"] for f in report["findings"]} == {"plain"}
    )
    # the table for a person names them too
    capsys.readouterr()
    assert cli.main(["verify", "--config", str(world.config)], environ=world.env()) == 1
    text = capsys.readouterr().out
    assert "INCOMPLETE: 4 finding(s)" in text and "mirror/tool:2.0" in text and "unlisted-referrer" in text
    # a sync repairs what it can see by name; verify then says what is still wrong
    world.sync()
    code, report = verify(world, capsys)
    assert ("plain", "mirror/tool:2.0", "missing", tool2.digest, None) not in rows(report)


def test_deep_finds_a_deleted_blob_and_a_missing_referrer_of_a_child(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    world.sync()
    plain = world.plain.pusher()
    layer = tool1.blobs[-1]
    response = plain.request("DELETE", f"/v2/mirror/tool/blobs/{layer.digest}", "mirror/tool")
    assert response.status_code == 202
    world.api.pusher().delete_manifest("mirror/app", sbom.digest)  # the SBOM of a platform image
    code, report = verify(world, capsys)
    assert code == 0, report  # the tags still resolve by HEAD; child referrers need --deep
    code, report = verify(world, capsys, "--deep")
    assert code == 1
    assert rows(report) == {
        ("plain", f"mirror/tool@{layer.digest}", "missing", f"{layer.size} bytes", None),
        ("api", f"mirror/app@{sbom.digest}", "missing", sbom.digest, None),
    }, report["findings"]
    details = {f["item"]: f["detail"] for f in report["findings"]}
    assert details[f"mirror/tool@{layer.digest}"] == "blob of mirror/tool:1.0"
    assert details[f"mirror/app@{sbom.digest}"].startswith(f"referrer of mirror/app@{app.children[0].digest}")


def test_what_sync_skips_is_not_missing(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    world.write_config(skip_artifact_types=[SPDX], tag_exclude="2\\..*")
    world.sync()
    assert not world.plain.pusher().exists_manifest("mirror/app", sbom.digest)
    code, report = verify(world, capsys, "--deep")
    assert code == 0, report
    assert report["targets"]["plain"]["skipped"] == 1  # the SBOM; tool:2.0 is not selected at all
    assert report["targets"]["plain"]["tags"] == 2 and report["targets"]["api"]["tags"] == 3


def test_a_plain_oci_source_is_asked_for_each_digest(token_issuer, fresh_registry, tmp_path, capsys):
    source, target = fresh_registry(), fresh_registry()
    pusher = source.pusher()
    first = images.oci_image("verify-oci-1", (100,))
    pusher.push("gs/app", first, "1.0")
    env = oci_env(source, target)
    assert cli.main(["sync", "--json"], environ=env) == 0
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=env) == 0
    second = images.oci_image("verify-oci-2", (100,))
    pusher.push("gs/app", second, "1.0")  # moved at the source, not yet mirrored
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=env) == 1
    (finding,) = json.loads(capsys.readouterr().out)["findings"]
    assert (finding["item"], finding["status"], finding["expected"], finding["actual"]) == (
        "mirror/app:1.0",
        "differs",
        second.digest,
        first.digest,
    )


def test_global_mapping_rules_place_repositories_as_sync_does(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    world.write_config(top={"mappings": [{"match": "tool", "replace": "mirror/tools/the-tool"}]})
    world.sync()
    assert world.plain.pusher().exists_manifest("mirror/tools/the-tool", "2.0")
    code, report = verify(world, capsys)
    assert code == 0 and report["complete"], report
    assert report["targets"]["plain"]["tags"] == 3 and report["targets"]["plain"]["skipped"] == 0
    world.plain.pusher().delete_manifest("mirror/tools/the-tool", tool2.digest)
    code, report = verify(world, capsys)
    assert code == 1 and rows(report) == {
        ("plain", "mirror/tools/the-tool:2.0", "missing", tool2.digest, None)
    }


def test_a_target_that_narrows_indexes_verifies_against_the_index_narrowed_from_the_source(world, capsys):
    app, sig, sbom, tool1, tool2 = seed(world)
    amd64 = next(c for c in app.children if c.platform["architecture"] == "amd64")
    world.write_config(platforms=["linux/amd64"])
    world.sync()
    held = json.loads(world.plain.pusher().fetch_manifest("mirror/app", "1.0")[0])
    assert [m["digest"] for m in held["manifests"]] == [amd64.digest]
    for args in ((), ("--deep",)):
        code, report = verify(world, capsys, *args)
        assert code == 0 and report["complete"], (args, report)
        assert report["targets"]["plain"]["tags"] == 3
    # the rules change: what the target holds was narrowed by the old ones, and sync re-narrows
    world.write_config(platforms=["linux/arm64"])
    code, report = verify(world, capsys)
    assert code == 1 and {(f["item"], f["status"]) for f in report["findings"]} == {
        ("mirror/app:1.0", "differs")
    }
    world.sync()
    code, report = verify(world, capsys)
    assert code == 0 and report["complete"], report


def test_configuration_errors_exit_2(world, capsys):
    capsys.readouterr()
    assert cli.main(["verify", "--config", str(world.config), "--target", "nope"], environ=world.env()) == 2
    assert "nope" in capsys.readouterr().err


def test_a_referrers_tag_verifies_with_the_source_bytes_or_as_a_merged_listing(fresh_registry, capsys):
    # issue 16: sync writes the source's referrers tag where the entries match, merges where the
    # target's tag holds more; verify accepts both, and names an entry the tag leaves out
    shape = layouts.shape("oras-fallback")
    source, target = fresh_registry(), fresh_registry()
    layouts.push(source, "gs/app", shape)
    env = oci_env(source, target)
    assert cli.main(["sync", "--json"], environ=env) == 0
    (tag,) = [t for t in shape.tags if t.startswith("sha256-")]
    pusher = target.pusher()
    assert pusher.fetch_manifest("mirror/app", tag)[0] == shape.data(shape.tags[tag])
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=env) == 0

    listed = json.loads(shape.data(shape.tags[tag]))
    theirs = images.signature("verify-theirs", shape.manifest(shape.tags["v1"]))
    pusher.push("mirror/app", theirs)  # another client lists its own referrer there
    merged = {
        **listed,
        "manifests": [
            *listed["manifests"],
            {"mediaType": theirs.media_type, "digest": theirs.digest, "size": theirs.size},
        ],
    }
    pusher.put_manifest("mirror/app", images.Manifest(json.dumps(merged).encode(), OCI_INDEX), tag)
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=env) == 0, capsys.readouterr().out

    dropped = listed["manifests"][0]["digest"]
    short = {**merged, "manifests": [m for m in merged["manifests"] if m["digest"] != dropped]}
    pusher.put_manifest("mirror/app", images.Manifest(json.dumps(short).encode(), OCI_INDEX), tag)
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=env) == 1
    report = json.loads(capsys.readouterr().out)
    finding = next(f for f in report["findings"] if f["item"] == f"mirror/app:{tag}")
    assert finding["status"] == "unlisted-referrer" and dropped in finding["detail"], finding
