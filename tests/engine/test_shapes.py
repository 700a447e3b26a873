"""Real-world content shapes, mirrored byte for byte (issue 10).

Every shape of the issue's 1,700-tag run is built here with ``tests/harness/images.py`` and
pushed into the ACR stand-in (its backend a real distribution 2.8, allowed to store foreign
layer URLs), then synced to a fresh distribution 2.8 registry. For each shape:

* the outcome: copied byte-identical (every manifest by digest, every blob, the referrers as the
  target's referrers tag lists them), or refused with the reason, and the warnings expected;
* a second run writes nothing at the target (no PUT/POST/PATCH/DELETE in its access log);
* ``copy REPO:TAG`` (``Syncer.copy_image``) to an empty target ends in the same state with the
  same failures and warnings: the outcome depends on the source only.

Shapes distribution 2.8 refuses to store (the OCI 1.1-rc artifact manifest) come from a
``FakeRegistry`` source instead; see each test's docstring. Also here: the timer and event
paths (queue messages run by the worker) against ``sync``, with targets that already hold part
of an image; problem 4 (a blob the source cannot serve: nothing is written; a child the target
refuses: nothing is sent twice across runs); problem 5 (a wrong-size descriptor on every path that places a blob,
and below manifests the target holds); and a repository of 1,500 tags.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from sync_core.azure import handlers, timer
from sync_core.config.load import load_config
from sync_core.jobs.syncer import Syncer
from sync_core.registry.names import ImageRef
from sync_core.report.summary import Summary
from tests.harness import PUSHER, images
from tests.harness.acr import AcrStandIn
from tests.harness.events import image_pushed
from tests.harness.fakeregistry import FakeRegistry
from tests.harness.images import Manifest, Pusher, digest_tag
from tests.harness.registry import FOREIGN_URLS_ALLOWED, Registry

NS = "rw"
MIRROR = "mirror"
SOURCE_USER = ("sync-shapes", "shapes-pw-4Tq")
SPDX = "application/spdx+json"
NOTATION = "application/vnd.cncf.notary.signature"
BUNDLE = "application/vnd.example.bundle.v1"


# -- the shapes ---------------------------------------------------------------------------------


@dataclass
class Shape:
    """What one source repository holds and what the mirror must end with."""

    name: str
    tags: dict[str, Manifest]
    untagged: tuple[Manifest, ...] = ()  # referrers pushed by digest (the referrers API lists them)
    referrers: dict[str, set[str]] = field(default_factory=dict)  # subject -> referrers at the target
    fails: str | None = None  # every tag is refused with this in the reason
    warns: str | None = None  # a summary warning names this
    absent_blobs: tuple[str, ...] = ()  # digests the target must not get (foreign layers)
    # referrers tags at the source (by content): listed by their subject's copy, with the source's
    # bytes, not copied by their own work
    referrers_tags: tuple[str, ...] = ()

    @property
    def repository(self) -> str:
        return f"{NS}/{self.name}"

    @property
    def target_repository(self) -> str:
        return f"{MIRROR}/{self.name}"


def _shapes() -> list[Shape]:
    shapes = []

    index = images.oci_index("rw-buildx", layer_sizes=(300,))  # amd64 + arm64 + buildx attestations
    shapes.append(
        Shape("buildx", {"1.0": index, "legacy": images.docker_manifest_list("rw-list", layer_sizes=(200,))})
    )

    zstd = images.oci_image("rw-zstd", (400, 300), layer_type=images.OCI_LAYER_ZSTD)
    both = images.index_of([images.oci_image("rw-gzip", (250,)), zstd])  # gzip and zstd side by side
    shapes.append(Shape("zstd", {"1.0": zstd, "both": both}))

    windows = images.foreign_layer_image("rw-windows", (300,))
    windows_oci = images.foreign_layer_image("rw-windows-oci", (300,), oci=True)
    foreign = tuple(json.loads(m.raw)["layers"][0]["digest"] for m in (windows, windows_oci))
    shapes.append(Shape("foreign", {"ltsc2022": windows, "ltsc2022-oci": windows_oci}, absent_blobs=foreign))

    shapes.append(
        Shape(
            "buildkit-cache",
            {
                "cache": images.buildkit_cache_index("rw-cache"),
                "cache-docker": images.buildkit_cache_index("rw-cache-docker", media_type=images.DOCKER_LIST),
            },
        )
    )

    app = images.oci_index("rw-app", ("linux/amd64", "linux/arm64"), (200,))
    amd64 = app.children[0]
    sbom = images.oci_artifact("rw-sbom", SPDX, subject=amd64)  # artifactType + empty config, tagged
    sig = images.oci_artifact("rw-sig", images.COSIGN_SIG_ARTIFACT, subject=app, blob_sizes=(90,))
    sbom_sig = images.oci_artifact("rw-sbom-sig", NOTATION, subject=sbom, blob_sizes=(80,))  # of a referrer
    bundle = images.referrer_index("rw-bundle", app, BUNDLE)  # an index that is itself a referrer
    wasm = images.oci_artifact("rw-wasm", "application/vnd.wasm.content.layer.v1+wasm")  # no subject
    shapes.append(
        Shape(
            "artifacts",
            {"1.0": app, "sbom": sbom, "module": wasm},
            untagged=(sig, sbom_sig, bundle),
            referrers={
                app.digest: {sig.digest, bundle.digest},
                amd64.digest: {sbom.digest},
                sbom.digest: {sbom_sig.digest},
            },
        )
    )

    signed = images.oci_image("rw-signed", (300,))
    shapes.append(
        Shape(
            "cosign",
            {
                "1.0": signed,
                digest_tag(signed.digest, "sig"): images.cosign_signature("rw-signed", signed),
                digest_tag(signed.digest, "att"): images.cosign_attestation("rw-signed", signed),
            },
        )
    )

    # an older client wrote the referrers tag (sha256-<hex>) at the source: it is not a release;
    # the referrers it lists reach the target with their subject, and the target's referrers tag
    # lists the same: it gets the source's bytes (the same digest; issue 16)
    subject = images.oci_image("rw-fallback", (200,))
    listed = images.oci_artifact("rw-fallback-sig", NOTATION, subject=subject, blob_sizes=(60,))
    fallback = digest_tag(subject.digest, "")
    shapes.append(
        Shape(
            "fallback",
            {"1.0": subject, fallback: images.referrers_index([listed])},
            referrers={subject.digest: {listed.digest}},
            referrers_tags=(fallback,),
        )
    )

    shapes.append(
        Shape(
            "helm",
            {
                "0.1.0": images.helm_chart("rw-hello-0.1.0", "hello", "0.1.0"),
                "0.2.0": images.helm_chart("rw-hello-0.2.0", "hello", "0.2.0"),
            },
        )
    )

    shapes.append(Shape("nested", {"5-deep": images.nested_index("rw-nested", 5)}))
    shapes.append(
        Shape("too-deep", {"9-deep": images.nested_index("rw-too-deep", 9)}, fails="nests deeper than 8")
    )

    docker_child = images.docker_image("rw-ggcr", (300,))
    shapes.append(
        Shape(
            "ggcr",
            {"1.0": images.ggcr_index("rw-ggcr", docker_child)},
            warns=f"as {images.OCI_MANIFEST}, the registry serves {images.DOCKER_MANIFEST}",
        )
    )

    good = images.oci_image("rw-size", (300,))
    config = good.blobs[0]
    shapes.append(
        Shape(
            "misdescribed",
            {"bad": images.misdescribed(good, config, config.size - 155)},
            fails=f"source serves {config.size} bytes, the manifest says {config.size - 155}",
        )
    )
    # two descriptors of one blob in one index that disagree on its size: whichever comes first
    # must not decide; and an index whose descriptor of a child manifest has the wrong size
    shared = images.oci_image("rw-disagree", (300,))
    wrong = images.misdescribed(
        images.annotated(shared, {"variant": "b"}), shared.blobs[0], shared.blobs[0].size - 155
    )
    disagreeing = images.index_of([shared, wrong])
    shapes.append(Shape("disagreeing", {"1.0": disagreeing}, fails=f"{shared.blobs[0].size - 155} bytes"))
    child = images.oci_image("rw-child-size", (300,))
    entry = child.descriptor(platform=child.platform) | {"size": child.size - 10}
    misdescribed_child = images.index_of([child], [entry])
    shapes.append(Shape("misdescribed-child", {"1.0": misdescribed_child}, fails=f"{child.size - 10} bytes"))
    return shapes


SHAPES = {shape.name: shape for shape in _shapes()}

# problem 5: one config blob, described right in one repository and with the wrong size in another
SIZED = images.oci_image("rw-sized", (256,))
SIZED_CONFIG = SIZED.blobs[0]
MISSIZED = images.misdescribed(
    images.annotated(SIZED, {"variant": "b"}), SIZED_CONFIG, SIZED_CONFIG.size - 155
)


@pytest.fixture(scope="module")
def source(token_issuer):
    """The ACR stand-in with every shape under ``rw/<shape>`` (referrers pushed by digest)."""
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    with AcrStandIn(
        users=users, issuer=token_issuer, name="shapes-src", backend_config=FOREIGN_URLS_ALLOWED
    ) as acr:
        pusher = acr.pusher()
        for shape in SHAPES.values():
            for tag, manifest in shape.tags.items():
                pusher.push(shape.repository, manifest, tag)
            for referrer in shape.untagged:
                pusher.push(shape.repository, referrer)
        pusher.push(f"{NS}/size-a-good", SIZED, "good")
        pusher.push(f"{NS}/size-b-bad", MISSIZED, "bad")
        pusher.close()
        yield acr


@pytest.fixture
def target(fresh_registry):
    """``target()``: a fresh, empty distribution 2.8 (token auth) that stores foreign layers."""
    return lambda: fresh_registry(extra_config=FOREIGN_URLS_ALLOWED)


def syncer(source: AcrStandIn, target: Registry, repositories: list[str], **extra: str) -> Syncer:
    env = {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_USERNAME": SOURCE_USER[0],
        "SOURCE_PASSWORD": SOURCE_USER[1],
        "SOURCE_REPOSITORIES": ",".join(repositories),
        "TARGET_REGISTRY": target.url,
        "TARGET_NAMESPACE": MIRROR,
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
        **extra,
    }
    return Syncer(load_config(env))


def run(source: AcrStandIn, target: Registry, repositories: list[str], **extra: str) -> Summary:
    with syncer(source, target, repositories, **extra) as s:
        return s.run()


def copy_each(source: AcrStandIn, target: Registry, repository: str, tags) -> Summary:
    """``copy REPO:TAG`` for each tag, one process (Syncer) as the CLI would be for each."""
    summary = Summary()
    for tag in tags:
        with syncer(source, target, [repository]) as s:
            s.copy_image(ImageRef(repository, tag), summary)
    return summary


def outcome(summary: Summary, *hosts: str) -> tuple[set, set, set]:
    """(failures, refusals, warnings) as sets of (item, text), target hosts blanked out.

    A refusal is content that cannot be copied exactly: a skip with its reason, not a failure
    (a permanent condition, never retried by the queue).
    """

    def plain(text: str) -> str:
        for host in hosts:
            text = text.replace(host, "TARGET")
        return text

    return (
        {(f.item, plain(f.reason)) for f in summary.failures},
        {(r.item, plain(r.reason)) for r in refusals(summary)},
        {(w.item, plain(w.warning)) for w in summary.warnings},
    )


def refusals(summary: Summary) -> list[dict]:
    return [s for s in summary.skipped if s.reason.startswith("refused: ")]


def referrers_at(pusher: Pusher, repo: str, digest: str) -> set[str]:
    """The referrers a client finds at a registry without the referrers API (its referrers tag)."""
    tag = digest_tag(digest, "")
    if not pusher.exists_manifest(repo, tag):
        return set()
    index = json.loads(pusher.fetch_manifest(repo, tag)[0])
    assert index["mediaType"] == images.OCI_INDEX
    return {m["digest"] for m in index["manifests"]}


def state(pusher: Pusher, repo: str) -> dict[str, object]:
    """``{tag: digest}`` at a target; a referrers tag as the set of referrers it lists."""
    out: dict[str, object] = {}
    for tag in pusher.tags(repo):
        raw, _, digest = pusher.fetch_manifest(repo, tag)
        out[tag] = (
            frozenset(m["digest"] for m in json.loads(raw)["manifests"])
            if re.fullmatch(r"sha256-[0-9a-f]{64}", tag)
            else digest
        )
    return out


def assert_identical(pusher: Pusher, repo: str, top: Manifest, ref: str | None = None) -> None:
    """``top`` (at ``ref``) and everything below it are at ``repo`` with the exact source bytes."""
    raw, content_type, digest = pusher.fetch_manifest(repo, ref or top.digest)
    assert raw == top.raw and digest == top.digest, f"{repo}:{ref}"
    assert content_type.split(";")[0] == top.media_type
    for manifest in top.walk():
        assert pusher.fetch_manifest(repo, manifest.digest)[0] == manifest.raw, f"{repo}@{manifest.digest}"
    for blob in top.all_blobs():
        assert pusher.fetch_blob(repo, blob.digest) == blob.data, f"{repo} blob {blob.digest}"


def skopeo_raw(registry: Registry, repo: str, ref: str) -> bytes:
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is part of the test environment"
    out = subprocess.run(
        [
            skopeo,
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            ":".join(PUSHER),
            f"docker://{registry.host}/{repo}:{ref}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout


# -- every shape: exact copy, no-op second run, `copy` gives the same outcome --------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_shape_is_mirrored_exactly_a_second_run_writes_nothing_and_copy_agrees(source, target, name):
    shape = SHAPES[name]
    dst = target()
    first = run(source, dst, [shape.repository])
    pusher = dst.pusher()
    mirrored = [t for t in shape.tags if t not in shape.referrers_tags]
    if shape.fails:
        assert first.ok and first.tags_copied == 0 and first.tags_skipped == len(mirrored), first.to_dict()
        assert {r.item for r in refusals(first)} == {f"{shape.repository}:{t}" for t in mirrored}
        assert all(shape.fails in r.reason for r in refusals(first)), first.skipped
        assert pusher.tags(shape.target_repository) == []  # a refused tag is never written
    else:
        assert first.ok, first.failures
        assert first.tags_copied == len(mirrored), first.to_dict()
        for tag in mirrored:
            assert_identical(pusher, shape.target_repository, shape.tags[tag], tag)
        for referrer in shape.untagged:
            assert_identical(pusher, shape.target_repository, referrer)
        for subject, expected in shape.referrers.items():
            assert referrers_at(pusher, shape.target_repository, subject) == expected, subject
        for digest in shape.absent_blobs:
            assert not pusher.blob_exists(shape.target_repository, digest)
            assert not any(e.kind == "blob" and e.ref == digest for e in source.log)  # never asked for
        tags = set(pusher.tags(shape.target_repository))
        assert tags == {*mirrored, *(digest_tag(s, "") for s in shape.referrers)}
        for tag in shape.referrers_tags:
            assert_identical(pusher, shape.target_repository, shape.tags[tag], tag)
    if shape.warns:
        assert any(shape.warns in w.warning for w in first.warnings), first.warnings
    else:
        assert first.warnings == []

    mark = len(dst.access_log())
    second = run(source, dst, [shape.repository])
    assert dst.writes(mark) == [], dst.writes(mark)
    assert (
        second.tags_copied,
        second.work.manifests_pushed,
        second.work.blobs_uploaded,
        second.work.bytes_uploaded,
    ) == (
        0,
        0,
        0,
        0,
    )
    assert outcome(second, dst.host)[0] == outcome(first, dst.host)[0]  # a refused tag: refused again, alike

    empty = target()
    copied = copy_each(source, empty, shape.repository, mirrored)
    assert outcome(copied, empty.host) == outcome(first, dst.host)
    assert copied.tags_copied == first.tags_copied
    assert state(empty.pusher(), shape.target_repository) == state(pusher, shape.target_repository)


def test_skopeo_reads_the_source_bytes_of_the_unusual_shapes(source, target):
    names = ["ggcr", "zstd", "foreign", "buildkit-cache", "nested"]
    dst = target()
    assert run(source, dst, [SHAPES[n].repository for n in names]).ok
    for name in names:
        shape = SHAPES[name]
        for tag, manifest in shape.tags.items():
            assert skopeo_raw(dst, shape.target_repository, tag) == manifest.raw, (name, tag)


# -- problem 3: the same validation and limits in sync, copy, events and workers ------------------


def _event(source: AcrStandIn, repository: str, tag: str, manifest: Manifest) -> dict:
    return image_pushed(
        f"evt-{tag}",
        source.host,
        repository,
        manifest.digest,
        tag=tag,
        media_type=manifest.media_type,
        size=manifest.size,
    )


def worker(s: Syncer, messages: list[str]) -> list[Summary | str]:
    """Each queue message run by the worker: its summary, or the error it raised (failures raise,
    so that the host retries the message)."""
    out: list[Summary | str] = []
    for message in messages:
        try:
            out.append(handlers.process_message(message, s)[0])
        except Exception as exc:  # noqa: BLE001
            out.append(str(exc))
    return out


@pytest.mark.parametrize("name", ["too-deep", "ggcr", "nested", "misdescribed-child"])
def test_timer_events_and_workers_decide_like_sync_and_copy_whatever_the_target_holds(
    source, target, state, name
):
    """The timer path (repository message -> worker) and the event path (Event Grid -> tag
    message -> worker) give the outcome ``sync`` gives. A target that already holds everything
    below the top (tagged there by another client) changes nothing: a refused index is refused
    again, a warned one warned again, for ``sync`` and for ``copy``."""
    shape = SHAPES[name]
    ((tag, top),) = shape.tags.items()
    reference = run(source, target(), [shape.repository])
    assert reference.ok and bool(refusals(reference)) is bool(shape.fails)
    hosts: list[str] = []

    for path in ("timer", "event"):
        dst = target()
        hosts.append(dst.host)
        with syncer(source, dst, [shape.repository]) as s:
            if path == "timer":
                messages = timer.schedule_messages(s, state)
            else:
                messages = handlers.event_messages(_event(source, shape.repository, tag, top), s.config)
            (done,) = worker(s, messages)
        if shape.fails:  # a refusal: reported, the message is not redelivered (no raise)
            assert isinstance(done, Summary) and outcome(done, dst.host) == outcome(reference), (path, done)
            assert dst.pusher().tags(shape.target_repository) == []
        else:
            assert isinstance(done, Summary) and outcome(done, dst.host) == outcome(reference), (path, done)
            assert done.tags_copied == 1
            assert_identical(dst.pusher(), shape.target_repository, top, tag)

    for command in (run, copy_each):
        held = target()
        held_pusher = held.pusher()
        for i, child in enumerate(top.children):
            held_pusher.push(shape.target_repository, child, f"held-{i}")
        summary = (
            command(source, held, shape.repository, [tag])
            if command is copy_each
            else command(source, held, [shape.repository])
        )
        assert outcome(summary, held.host) == outcome(reference), (command.__name__, summary.to_dict())
        assert summary.tags_copied == reference.tags_copied
        if shape.fails:
            assert tag not in held_pusher.tags(shape.target_repository)
        else:
            assert (
                summary.work.manifests_pushed == 1 and summary.work.blobs_uploaded == 0
            )  # only the top was missing
            assert_identical(held_pusher, shape.target_repository, top, tag)


# -- issue 6: the OCI 1.1-rc artifact manifest (distribution 2.8 refuses to store it) -------------

RC_IMAGE = images.oci_image("rc-image", (300,))
RC_ARTIFACT = images.artifact_manifest("rc-sbom", RC_IMAGE, SPDX, (200, 100))
RC_OF_RC = images.artifact_manifest("rc-sbom-sig", RC_ARTIFACT, NOTATION, (50,))
RC_TAGGED = images.artifact_manifest("rc-bundle", None, BUNDLE, (120,))


@pytest.fixture
def rc_source():
    """A source without the referrers API, as an oras 1.0-rc client left it: the artifact
    manifests listed in referrers tags (``sha256-<hex>``), and one artifact manifest tagged."""
    registry = FakeRegistry()
    registry.push(f"{NS}/rc", RC_IMAGE, "1.0")
    registry.push(f"{NS}/rc", RC_TAGGED, "bundle")
    registry.push(f"{NS}/rc", images.referrers_index([RC_ARTIFACT]), digest_tag(RC_IMAGE.digest, ""))
    registry.push(f"{NS}/rc", images.referrers_index([RC_OF_RC]), digest_tag(RC_ARTIFACT.digest, ""))
    yield registry
    registry.stop()


def rc_syncer(source: FakeRegistry, target_url: str, **target_env: str) -> Syncer:
    env = {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_REPOSITORIES": f"{NS}/rc",
        "TARGET_REGISTRY": target_url,
        "TARGET_NAMESPACE": MIRROR,
        **target_env,
    }
    return Syncer(load_config(env))


def test_oci_1_1_rc_artifact_manifests_are_copied_as_manifests_with_their_blobs_and_subject(rc_source):
    """Source and target are ``FakeRegistry`` servers (in-memory): distribution 2.8 answers 400
    MANIFEST_INVALID to an artifact manifest, so it can neither be the source nor the target."""
    dst = FakeRegistry()
    try:
        with rc_syncer(rc_source, dst.url) as s:
            first = s.run()
        assert first.ok, first.failures
        assert first.tags_copied == 2 and first.work.referrers_copied == 2, first.to_dict()
        repo = f"{MIRROR}/rc"
        for manifest, stored_as in (
            (RC_IMAGE, images.OCI_MANIFEST),
            (RC_TAGGED, images.OCI_ARTIFACT),
            (RC_ARTIFACT, images.OCI_ARTIFACT),
            (RC_OF_RC, images.OCI_ARTIFACT),
        ):
            assert dst.manifests[(repo, manifest.digest)] == (manifest.raw, stored_as), manifest
            assert all(dst.blobs[b.digest] == b.data for b in manifest.blobs)  # its blobs followed
        assert dst.manifests[(repo, "bundle")][0] == RC_TAGGED.raw
        for subject, referrer in ((RC_IMAGE, RC_ARTIFACT), (RC_ARTIFACT, RC_OF_RC)):  # its subject followed
            listed = json.loads(dst.manifests[(repo, digest_tag(subject.digest, ""))][0])["manifests"]
            assert [(e["digest"], e["mediaType"], e.get("artifactType")) for e in listed] == [
                (referrer.digest, images.OCI_ARTIFACT, referrer.artifact_type)
            ]
        before = {k: v for k, v in dst.manifests.items()}

        dst.reset()
        with rc_syncer(rc_source, dst.url) as s:
            second = s.run()
        assert second.ok and second.tags_copied == 0 and dst.writes() == []

        empty = FakeRegistry()
        try:
            summary = Summary()
            for tag in ("1.0", "bundle"):
                with rc_syncer(rc_source, empty.url) as s:
                    s.copy_image(ImageRef(f"{NS}/rc", tag), summary)
            assert summary.ok and summary.tags_copied == 2 and summary.work.referrers_copied == 2
            assert empty.manifests == before
        finally:
            empty.stop()
    finally:
        dst.stop()


def test_a_target_that_refuses_the_artifact_manifest_is_reported_with_its_reason(rc_source, fresh_registry):
    """A real distribution 2.8 target cannot store the 1.1-rc artifact manifest: the tagged one
    fails with the registry's answer, the referrer is reported, everything else is copied."""
    dst = fresh_registry()
    with rc_syncer(rc_source, dst.url, TARGET_USERNAME=PUSHER[0], TARGET_PASSWORD=PUSHER[1]) as s:
        summary = s.run()
    reasons = {f.item: f.reason for f in summary.failures}
    assert (
        f"{NS}/rc:bundle -> target" in reasons and "MANIFEST_INVALID" in reasons[f"{NS}/rc:bundle -> target"]
    )
    assert any(RC_ARTIFACT.digest in r and "MANIFEST_INVALID" in r for r in reasons.values()), reasons
    assert summary.tags_copied == 1
    assert_identical(dst.pusher(), f"{MIRROR}/rc", RC_IMAGE, "1.0")


# -- issue 4: a blob the source cannot serve ------------------------------------------------------

FAILING = images.oci_image("rw-failing", (3000, 2000, 1000))
MISSING = FAILING.blobs[2]  # the source 404s this layer


def test_an_image_with_a_blob_the_source_lacks_writes_nothing_on_any_run(fresh_registry, tmp_path):
    """The source is a ``FakeRegistry`` that holds the manifest but answers 404 for one layer
    (GET and HEAD). Two distribution 2.8 targets (so the one-read-many-uploads path is covered
    too). Every descriptor is checked before the first write (issue 16): no blob of the image is
    uploaded, no upload session opened, on the first run or any other, whatever the order of the
    blob threads; the failure names the missing blob."""
    src = FakeRegistry()
    src.push(f"{NS}/failing", FAILING, "1.0")
    del src.blobs[MISSING.digest]
    targets = [fresh_registry(), fresh_registry()]
    path = tmp_path / "targets.json"
    path.write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "name": f"t{i}",
                        "registry": t.url,
                        "namespace": MIRROR,
                        "username_env": "T_USER",
                        "password_env": "T_PASS",
                    }
                    for i, t in enumerate(targets)
                ]
            }
        )
    )
    env = {
        "SOURCE_REGISTRY": src.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_REPOSITORIES": f"{NS}/failing",
        "T_USER": PUSHER[0],
        "T_PASS": PUSHER[1],
    }
    try:
        for _run in range(3):
            marks = [len(t.access_log()) for t in targets]
            with Syncer(load_config(env, str(path))) as s:
                summary = s.run()
            assert not summary.ok and summary.tags_failed == 2
            assert all(MISSING.digest in f.reason and "404" in f.reason for f in summary.failures)
            assert summary.work.bytes_uploaded == 0
            for t, mark in zip(targets, marks, strict=True):
                assert t.writes(mark) == []
        for t in targets:
            assert t.pusher().tags(f"{MIRROR}/failing") == []
            assert not any(t.pusher().blob_exists(f"{MIRROR}/failing", b.digest) for b in FAILING.blobs)
    finally:
        src.stop()


def fake_source_env(src: FakeRegistry, dst: Registry, repository: str) -> dict[str, str]:
    """A sync of ``repository`` from an in-memory source to ``dst`` (namespace ``MIRROR``)."""
    return {
        "SOURCE_REGISTRY": src.url,
        "SOURCE_KIND": "oci",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_REPOSITORIES": repository,
        "TARGET_REGISTRY": dst.url,
        "TARGET_NAMESPACE": MIRROR,
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
    }


def test_a_failing_index_does_not_push_its_children_again_on_every_run(fresh_registry):
    """An index whose second child the target refuses (an OCI 1.1-rc artifact manifest: 400 from
    distribution 2.8; the source is a ``FakeRegistry``, 2.8 cannot hold it either). The first
    child is stored by digest, the tag never: the tag listing still answers 404, yet the next
    runs must HEAD the children and write nothing but the refused manifest's PUT."""
    image = images.oci_image("rw-partial", (300,))
    refused = images.artifact_manifest("rw-partial-artifact", None, BUNDLE, (100,))
    index = images.index_of([image, refused])
    src = FakeRegistry()
    src.push(f"{NS}/partial", index, "1.0")
    dst = fresh_registry()
    env = fake_source_env(src, dst, f"{NS}/partial")
    try:
        for attempt in range(3):
            mark = len(dst.access_log())
            with Syncer(load_config(env)) as s:
                summary = s.run()
            assert not summary.ok and "MANIFEST_INVALID" in summary.failures[0].reason, summary.failures
            writes = dst.writes(mark)
            refused_puts = [w for w in writes if w[0] == "PUT" and refused.digest in w[1]]
            assert [w[2] for w in refused_puts] == [400], writes
            if attempt:
                assert writes == refused_puts, writes  # the stored child is not pushed again
                assert (summary.work.manifests_pushed, summary.work.bytes_uploaded) == (0, 0)
            assert dst.pusher().tags(f"{MIRROR}/partial") == []
    finally:
        src.stop()


# -- issue 5: every path that places a blob checks the descriptor's size ---------------------------


def _refused(summary: Summary, repository: str, via: str) -> bool:
    """``repository``'s tag was refused on the wrong size, found the way ``via`` says (the source's
    Content-Length for an upload, else the size the target has for the blob where it is)."""
    says = f"{SIZED_CONFIG.size} bytes, the manifest says {SIZED_CONFIG.size - 155}"
    reasons = [r.reason for r in refusals(summary) if r.item.startswith(f"{repository}:")]
    return len(reasons) == 1 and f"{via} {says}" in reasons[0] and summary.tags_skipped == 1


def test_a_wrong_size_descriptor_is_refused_on_upload_mount_and_already_present(source, target):
    """``rw/size-a-good`` describes a config blob rightly; ``rw/size-b-bad`` describes the same
    blob with 155 bytes too few (distribution 2.8 stored it: it checks existence, not size)."""
    good, bad = f"{NS}/size-a-good", f"{NS}/size-b-bad"
    mirror_good, mirror_bad = f"{MIRROR}/size-a-good", f"{MIRROR}/size-b-bad"
    upload = "source serves"

    # upload: nothing of the blob at the target
    dst = target()
    assert _refused(run(source, dst, [bad]), bad, upload)
    assert dst.pusher().tags(mirror_bad) == []

    # mount, within one run: the good image placed the blob in another repository first
    dst = target()
    mark = len(dst.access_log())
    summary = run(source, dst, [good, bad], SYNC_CONCURRENCY="1")
    assert summary.tags_copied == 1 and _refused(summary, bad, f"at {dst.host}/{mirror_good} is"), (
        summary.skipped
    )
    assert dst.pusher().tags(mirror_bad) == []
    config_hex = SIZED_CONFIG.digest.split(":")[1]
    mounts = [w for w in dst.writes(mark) if "mount=" in w[1]]
    # the config's size is checked against the other repository's before any mount is asked for
    # (the layer may or may not be mounted first: blob tasks run in parallel)
    assert not any(config_hex in w[1] for w in mounts), "the misdescribed config was never mounted"
    # ... and concurrently (either copy may come first): refused whichever way
    dst = target()
    summary = run(source, dst, [good, bad], SYNC_CONCURRENCY="8")
    assert summary.tags_copied == 1 and summary.tags_skipped == 1 and dst.pusher().tags(mirror_bad) == []

    # mount, in a later run of the same process (the Functions host keeps its Syncer and ledger)
    dst = target()
    with syncer(source, dst, [good, bad]) as s:
        s.copy_image(ImageRef(good, "good"), Summary())
        later = Summary()
        s.copy_image(ImageRef(bad, "bad"), later)
    assert _refused(later, bad, f"at {dst.host}/{mirror_good} is")
    # ... and in a later run of a new process: the blob is in the other repository only
    assert _refused(run(source, dst, [bad]), bad, upload)
    assert dst.pusher().tags(mirror_bad) == []

    # already present in the target repository itself
    dst = target()
    dst.pusher().push_blob(mirror_bad, SIZED_CONFIG)
    assert _refused(run(source, dst, [bad]), bad, f"at {dst.host}/{mirror_bad} is")
    assert dst.pusher().tags(mirror_bad) == []


def test_a_wrong_size_descriptor_below_a_manifest_the_target_already_holds_is_refused(source, target):
    """An index whose second platform image describes its config with the wrong size. A target
    that already holds that image (an older mirror run mounted it, or another client pushed it:
    distribution 2.8 stores it) must not change the outcome: refused as on an empty target."""
    good = images.oci_image("rw-held", (200,))
    bad = images.oci_image("rw-held", (200,), platform="linux/arm64")
    bad_config = bad.blobs[0]
    misdescribed = images.misdescribed(bad, bad_config, bad_config.size - 155)
    index = images.index_of([good, misdescribed])
    source.pusher().push(f"{NS}/size-d-held", index, "1.0")
    expected = f"the manifest says {bad_config.size - 155}"

    empty = target()
    refused = run(source, empty, [f"{NS}/size-d-held"])
    assert refused.ok and expected in refusals(refused)[0].reason, refused.skipped

    held = target()
    held.pusher().push(f"{MIRROR}/size-d-held", misdescribed, "1.0-arm64")  # tagged: HEADs are asked
    again = run(source, held, [f"{NS}/size-d-held"])
    assert again.ok and expected in refusals(again)[0].reason, again.skipped
    assert held.pusher().tags(f"{MIRROR}/size-d-held") == ["1.0-arm64"]
    with syncer(source, held, [f"{NS}/size-d-held"]) as s:  # and `copy`, which knows nothing beforehand
        copied = Summary()
        s.copy_image(ImageRef(f"{NS}/size-d-held", "1.0"), copied)
    assert copied.ok and expected in refusals(copied)[0].reason, copied.skipped


# -- 1,500 tags in one repository ------------------------------------------------------------------

MANY = 1500


def test_a_repository_with_1500_tags_is_mirrored_and_the_second_run_only_lists(token_issuer, fresh_registry):
    """1,500 manifests (one image, told apart by an annotation) pushed straight to the stand-in's
    backend, manifests only after the first, their push times spread over a month: listing
    pages, 1,500 copies, then a run that lists and writes nothing."""
    users = {SOURCE_USER[0]: (SOURCE_USER[1], {"*": ["pull", "metadata_read"]})}
    base = images.oci_image("rw-many", (200,))
    variants = {f"build-{i:04d}": images.annotated(base, {"org.example.build": str(i)}) for i in range(MANY)}
    with AcrStandIn(users=users, issuer=token_issuer, name="shapes-many") as acr:
        started = time.monotonic()
        pusher = acr.pusher(direct=True)
        pusher.push(f"{NS}/many", base, "base")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda item: pusher.put_manifest(f"{NS}/many", item[1], item[0]), variants.items()))
        pushed = time.monotonic() - started
        assert pushed < 30, f"pushing {MANY} tags took {pushed:.1f}s"
        now = dt.datetime.now(dt.timezone.utc)
        for i, tag in enumerate(["base", *variants]):  # one build every ~29 minutes for a month
            acr.set_tag_times(f"{NS}/many", tag, now - dt.timedelta(days=30) * (1 - i / (MANY + 1)))

        dst = fresh_registry()
        first = run(acr, dst, [f"{NS}/many"])
        assert first.ok, first.failures[:3]
        assert first.tags_copied == MANY + 1 and first.work.blobs_uploaded == 2, first.to_dict()
        target_pusher = dst.pusher()
        assert target_pusher.tags(f"{MIRROR}/many") == sorted([*variants, "base"])
        for tag in list(variants)[:: MANY // 10]:
            assert target_pusher.fetch_manifest(f"{MIRROR}/many", tag)[0] == variants[tag].raw

        acr.reset_log()
        mark = len(dst.access_log())
        second = run(acr, dst, [f"{NS}/many"])
        assert second.ok and second.tags_copied == 0 and dst.writes(mark) == []
        assert acr.count(("manifest", "blob", "referrers")) == 0  # the listing said it all

        empty = fresh_registry()
        copied = copy_each(acr, empty, f"{NS}/many", ["build-0042"])
        assert copied.ok and copied.tags_copied == 1
        assert empty.pusher().fetch_manifest(f"{MIRROR}/many", "build-0042")[0] == variants["build-0042"].raw


def test_a_tag_is_not_written_over_a_held_child_whose_blob_the_target_lost(fresh_registry):
    """The target holds an index's children, but one child's layer was deleted there since (a
    garbage collection, an operator). A new tag for that index must place the layer again before
    the tag is written, not trust the child manifest because it is present."""
    first, second = images.oci_image("rw-lost-a", (300,)), images.oci_image("rw-lost-b", (200,))
    index = images.index_of([first, second])
    src = FakeRegistry()
    src.push(f"{NS}/lost", index, "1.0")
    dst = fresh_registry()
    env = fake_source_env(src, dst, f"{NS}/lost")
    layer = first.blobs[-1]
    pusher = dst.pusher()
    try:
        with Syncer(load_config(env)) as s:
            assert s.run().ok
        deleted = pusher.request("DELETE", f"/v2/{MIRROR}/lost/blobs/{layer.digest}", f"{MIRROR}/lost")
        assert deleted.status_code == 202 and not pusher.blob_exists(f"{MIRROR}/lost", layer.digest)
        src.push(f"{NS}/lost", index, "2.0")
        with Syncer(load_config(env)) as s:
            summary = s.run()
        assert summary.ok and summary.tags_copied == 1, summary.to_dict()
        assert pusher.blob_exists(f"{MIRROR}/lost", layer.digest)
        assert summary.work.bytes_uploaded == layer.size, summary.to_dict()
        assert_identical(pusher, f"{MIRROR}/lost", index, "2.0")
    finally:
        src.stop()
