"""Faithful to the byte on real-content shapes (issue 16), from the fixtures in tests/fixtures/shapes.

Each shape (an OCI image layout written by ``scripts/make-shape-fixtures.py``, as oras, regclient
and containers/image left such content) is pushed into a plain ``distribution`` 2.8 source
(``tests/harness/layouts.py``) and synced to another one, without the referrers API either. Checked
with the harness's own client and the registries' access logs, not with the sync's counters:

* a referrers tag at the source (oras's fallback, regclient's ``external``) reaches the mirror
  with the source's digest, and ``verify`` agrees; a second run writes nothing;
* a tag that is named like a referrers tag but holds an image is copied as the tag it is, by
  ``sync`` and by an event;
* an image one of whose descriptors has the wrong size (containers/image's ``multi:1.0.0``) is
  refused and writes nothing at the target, on the first run and every other;
* a blob whose bytes do not match its digest is read again without uploading, refused, and
  never uploaded (a second run writes nothing); within one process it is not read again.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sync_core.azure import handlers
from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.jobs.syncer import Syncer
from sync_core.registry.names import ImageRef
from sync_core.report.summary import Summary
from tests.harness import layouts, oci_env
from tests.harness.events import image_pushed
from tests.harness.images import sha256_digest
from tests.harness.paths import ROOT
from tests.harness.registry import Registry

NS = "gs"


def repositories(*names: str) -> str:
    return ",".join(f"{NS}/{n}" for n in names)


@pytest.fixture
def source(fresh_registry):
    """A plain distribution 2.8 holding ``layout`` under ``gs/<name>`` for each name asked."""

    def load(*names: str) -> Registry:
        registry = fresh_registry(name="shapes-src")
        for name in names:
            layouts.push(registry, f"{NS}/{name}", layouts.shape(name))
        return registry

    return load


def sync(source: Registry, target: Registry, *names: str) -> Summary:
    with Syncer(load_config(oci_env(source, target, repositories(*names)))) as syncer:
        return syncer.run()


def held(target: Registry, repository: str) -> dict[str, str]:
    """``{tag: digest}`` at a registry, each digest the hash of the bytes it serves."""
    pusher = target.pusher()
    return {tag: sha256_digest(pusher.fetch_manifest(repository, tag)[0]) for tag in pusher.tags(repository)}


def blob_reads(registry: Registry, digest: str, since: int = 0) -> int:
    return sum(1 for method, path, _ in registry.access_log()[since:] if method == "GET" and digest in path)


def test_the_fixtures_are_what_the_script_makes():
    script = ROOT / "scripts" / "make-shape-fixtures.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, "tests/fixtures/shapes differs: run scripts/make-shape-fixtures.py"


@pytest.mark.parametrize("name", ["oras-fallback", "external"])
def test_a_referrers_tag_keeps_the_source_digest_and_a_second_run_writes_nothing(
    source, fresh_registry, capsys, name
):
    shape = layouts.shape(name)
    src, dst = source(name), fresh_registry(name="shapes-dst")
    first = sync(src, dst, name)
    assert first.ok, first.failures
    # every tag, the referrers tag included, has the source's digest (and so its bytes)
    assert held(dst, f"mirror/{name}") == shape.tags
    for digest in shape.media_types:
        assert dst.pusher().fetch_manifest(f"mirror/{name}", digest)[0] == shape.data(digest)

    mark = len(dst.access_log())
    second = sync(src, dst, name)
    assert second.ok and (second.tags_copied, second.work.manifests_pushed) == (0, 0), second.to_dict()
    assert dst.writes(mark) == []  # the registry's own access log
    capsys.readouterr()
    assert cli.main(["verify", "--json"], environ=oci_env(src, dst, repositories(name))) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] and report["targets"]["target"]["tags"] == len(shape.tags), report


def test_copying_the_image_alone_writes_the_source_s_referrers_tag(source, fresh_registry):
    # `copy REPO:TAG` of the image: its referrers follow, and the referrers tag it writes at a
    # target without the API lists exactly the source's entries: the source's bytes
    shape = layouts.shape("oras-fallback")
    src, dst = source("oras-fallback"), fresh_registry(name="shapes-dst")
    summary = Summary()
    with Syncer(load_config(oci_env(src, dst, repositories("oras-fallback")))) as syncer:
        syncer.copy_image(ImageRef(f"{NS}/oras-fallback", "v1"), summary)
    assert summary.ok and summary.work.referrers_copied == 2, summary.to_dict()
    assert held(dst, "mirror/oras-fallback") == shape.tags


def test_a_tag_named_like_a_referrers_tag_is_copied_as_the_tag_it_is(source, fresh_registry):
    shape = layouts.shape("digest-named")
    src, dst = source("digest-named"), fresh_registry(name="shapes-dst")
    first = sync(src, dst, "digest-named")
    assert first.ok and first.tags_copied == len(shape.tags), first.to_dict()
    assert held(dst, "mirror/digest-named") == shape.tags
    mark = len(dst.access_log())
    assert sync(src, dst, "digest-named").tags_copied == 0
    assert dst.writes(mark) == []

    # an event for such a tag is a tag to copy as well (the copier looks at what it is)
    (named,) = [t for t, d in shape.tags.items() if t.startswith("sha256-") and t != d.replace(":", "-")]
    empty = fresh_registry(name="shapes-event")
    event = image_pushed("evt-named", src.host, f"{NS}/digest-named", shape.tags[named], tag=named)
    with Syncer(load_config(oci_env(src, empty, repositories("digest-named")))) as syncer:
        (message,) = handlers.event_messages(event, syncer.config)
        summary, _ = handlers.process_message(message, syncer)
    assert summary.ok and summary.tags_copied == 1, summary.to_dict()
    assert held(empty, "mirror/digest-named") == {named: shape.tags[named]}


def test_an_image_with_a_misdescribed_blob_is_refused_and_writes_nothing_on_any_run(source, fresh_registry):
    src, dst = source("multi-misdescribed"), fresh_registry(name="shapes-dst")
    env = oci_env(src, dst, repositories("multi-misdescribed"))
    for run in range(3):
        mark = len(dst.access_log())
        if run < 2:
            with Syncer(load_config(env)) as syncer:
                summary = syncer.run()
        else:  # and `copy`, which knows nothing of the target beforehand
            summary = Summary()
            with Syncer(load_config(env)) as syncer:
                syncer.copy_image(ImageRef(f"{NS}/multi-misdescribed", "1.0.0"), summary)
        assert summary.ok and summary.tags_skipped == 1, summary.to_dict()
        (refusal,) = summary.skipped
        assert "source serves 584 bytes, the manifest says 585" in refusal.reason, refusal
        assert dst.writes(mark) == [], run  # not one blob of it, whatever the order of the threads
    assert dst.pusher().tags("mirror/multi-misdescribed") == []


def test_a_damaged_blob_is_read_again_without_uploading_refused_and_not_read_again(source, fresh_registry):
    shape = layouts.shape("damaged")
    (damaged,) = shape.damaged()
    src, dst = source("damaged"), fresh_registry(name="shapes-dst")
    env = oci_env(src, dst, repositories("damaged"))
    for _run in range(2):  # every run: read twice, then refused; never sent to the target
        mark, read = len(dst.access_log()), len(src.access_log())
        with Syncer(load_config(env)) as syncer:
            summary = syncer.run()
            assert summary.ok and summary.tags_skipped == 1, summary.to_dict()
            (refusal,) = summary.skipped
            assert refusal.reason.startswith("refused: ") and damaged in refusal.reason, refusal
            assert blob_reads(src, damaged, read) == 2
            writes = dst.writes(mark)
            # a small damaged blob is read and verified before any blob of the image is placed:
            # no run writes anything, whatever the order of the threads
            assert writes == [], writes
            # refused for the run: the same process does not read it again
            again = Summary()
            syncer.copy_image(ImageRef(f"{NS}/damaged", "1.0"), again)
            assert again.tags_skipped == 1 and blob_reads(src, damaged, read) == 2
    assert dst.pusher().tags("mirror/damaged") == []
