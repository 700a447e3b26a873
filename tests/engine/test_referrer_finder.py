"""Referrers: whether a registry has the API is learned from what answers, not from one 404; a
referrers tag another writer replaced is merged again, and what a stale writer dropped put back;
a referrers tag listing what the source's lists gets the source's bytes (issue 16).

Against the ACR stand-in (the API; a repository it does not have answers ``NAME_UNKNOWN``, as
ACR does) and a real ``distribution`` 2.8 registry (no such route: its 404 carries no OCI error).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sync_core.config.model import ReferrerPolicy
from sync_core.engine.ledger import BlobLedger
from sync_core.engine.pushing import Patience
from sync_core.engine.referrers import Expiring, ReferrerFinder, ReferrersTags
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import parse_manifest
from sync_core.registry.names import digest_of
from tests.harness import PUSHER, images
from tests.harness.acr import AcrStandIn
from tests.harness.recording import Waits

USER = ("finder", "finder-pw-8Qs")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def test_an_unknown_repository_does_not_turn_the_api_off(token_issuer):
    with AcrStandIn(
        users={USER[0]: (USER[1], {"*": ["pull", "push"]})}, issuer=token_issuer, name="finder"
    ) as acr:
        pusher = acr.pusher()
        app = images.oci_image("finder-app", (64,))
        sig = images.signature("finder-sig", app)
        pusher.push("gs/app", app, "1.0")
        pusher.push("gs/app", sig)
        finder = ReferrerFinder(
            RegistryClient(acr.url, StaticCredentials(Credentials(*USER))), ReferrerPolicy()
        )
        # deleted since it was listed: nothing there, and nothing settled about the API
        assert finder.of("gs/gone", app.digest) == [] and finder.api is None
        assert [d.digest for d in finder.of("gs/app", app.digest)] == [sig.digest] and finder.api is True
        assert finder.of("gs/gone-too", app.digest) == [] and finder.api is True
        assert [d.digest for d in finder.of("gs/app", app.digest)] == [sig.digest]


def test_a_registry_without_the_route_is_read_through_the_referrers_tag(fresh_registry):
    registry = fresh_registry()
    pusher = registry.pusher()
    app = images.oci_image("finder-plain", (64,))
    pusher.push("gs/app", app, "1.0")
    finder = ReferrerFinder(
        RegistryClient(registry.url, StaticCredentials(Credentials(*PUSHER))), ReferrerPolicy()
    )
    assert finder.of("gs/app", app.digest) == [] and finder.api is False


def test_a_referrers_tag_overwritten_by_another_writer_is_merged_again(fresh_registry):
    # Two processes add to one referrers tag: both read it, both write it, the last write wins.
    # The writer whose entry was lost sees it on the read after its PUT and merges again.
    registry = fresh_registry()
    pusher = registry.pusher()
    app = images.oci_image("tags-app", (64,))
    ours, theirs = images.signature("tags-ours", app), images.signature("tags-theirs", app)
    pusher.push("gs/app", app, "1.0")
    pusher.push("gs/app", ours)
    pusher.push("gs/app", theirs)
    tag = images.digest_tag(app.digest, suffix="")
    client = RegistryClient(registry.url, StaticCredentials(Credentials(*PUSHER)), actions="pull,push")
    put = client.put_manifest
    raced = []

    def put_then_overwritten(repository, reference, manifest):
        answered = put(repository, reference, manifest)
        if not raced:  # the other process read before our PUT and writes after it
            raced.append(reference)
            entry = {"mediaType": theirs.media_type, "digest": theirs.digest, "size": theirs.size}
            raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
            put(repository, reference, parse_manifest(raw, OCI_INDEX, "theirs", digest_of(raw)))
        return answered

    client.put_manifest = put_then_overwritten  # type: ignore[method-assign]
    tags = ReferrersTags(client, BlobLedger())
    ours_manifest = client.get_manifest("gs/app", ours.digest)
    assert tags.add("gs/app", app.digest, [ours_manifest], patience=Patience(sleep=Waits())) is True
    listed = json.loads(pusher.fetch_manifest("gs/app", tag)[0])
    assert {m["digest"] for m in listed["manifests"]} == {ours.digest, theirs.digest}
    assert tags.listed("gs/app", app.digest) == {ours.digest, theirs.digest}


def _index(*referrers: images.Manifest, compact: bool = True) -> images.Manifest:
    """A referrers index listing ``referrers`` (oras's bytes when ``compact``, else another writer's)."""
    entries = [
        {"mediaType": r.media_type, "digest": r.digest, "size": r.size, "artifactType": r.artifact_type}
        for r in referrers
    ]
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    raw = json.dumps(document, separators=(",", ":") if compact else None).encode()
    return images.Manifest(raw, OCI_INDEX)


def signed(registry, seed: str, names: tuple[str, ...]):
    """``gs/app:1.0`` and one signature of it per name (by digest) at ``registry``; its pusher and a
    client of it that may push."""
    pusher = registry.pusher()
    app = images.oci_image(f"{seed}-app", (64,))
    referrers = tuple(images.signature(f"{seed}-{n}", app) for n in names)
    pusher.push("gs/app", app, "1.0")
    for referrer in referrers:
        pusher.push("gs/app", referrer)
    client = RegistryClient(registry.url, StaticCredentials(Credentials(*PUSHER)), actions="pull,push")
    return pusher, client, app, referrers


def test_a_referrers_tag_listing_what_the_source_s_lists_gets_its_bytes_else_a_merge(fresh_registry):
    # issue 16: where the entries to list are exactly those of the source's referrers tag, the
    # source's bytes (its digest); where the target's tag holds more, a merge keeps them
    pusher, client, app, (one, two, other) = signed(fresh_registry(), "exact", ("one", "two", "other"))
    tag = images.digest_tag(app.digest, suffix="")
    source = _index(one, two)
    theirs = parse_manifest(source.raw, OCI_INDEX, "source", source.digest)
    parsed = {r.digest: client.get_manifest("gs/app", r.digest) for r in (one, two, other)}
    tags = ReferrersTags(client, BlobLedger())
    patience = Patience(sleep=Waits())

    assert tags.add("gs/app", app.digest, [parsed[one.digest]], source=lambda: theirs, patience=patience)
    assert pusher.fetch_manifest("gs/app", tag)[2] != source.digest  # one of two: merged
    assert tags.add("gs/app", app.digest, [parsed[two.digest]], source=lambda: theirs, patience=patience)
    assert pusher.fetch_manifest("gs/app", tag)[0] == source.raw  # both: the source's bytes

    # a tag with the same entries in other bytes (an older mirror's): rewritten only when asked
    pusher.put_manifest("gs/app", _index(one, two, compact=False), tag)
    assert not tags.add("gs/app", app.digest, [], keep=[one.digest], source=lambda: theirs, patience=patience)
    assert tags.add("gs/app", app.digest, [], source=lambda: theirs, exact=True, patience=patience)
    assert pusher.fetch_manifest("gs/app", tag)[0] == source.raw

    # an entry written by another client: kept, and the tag merged, never the source's bytes
    pusher.put_manifest("gs/app", _index(other), tag)
    assert tags.add(
        "gs/app",
        app.digest,
        [parsed[one.digest], parsed[two.digest]],
        source=lambda: theirs,
        patience=patience,
    )
    listed = json.loads(pusher.fetch_manifest("gs/app", tag)[0])
    assert [m["digest"] for m in listed["manifests"]] == [other.digest, one.digest, two.digest]


def test_a_writer_puts_back_what_another_writer_s_stale_write_dropped(fresh_registry):
    # Another process wrote the tag from a read older than ours: an entry listed before is gone.
    # Our write lists every referrer of the subject we know present, not only the one we add.
    pusher, client, app, (first, second, new) = signed(fresh_registry(), "keep", ("first", "second", "new"))
    tag = images.digest_tag(app.digest, suffix="")
    pusher.put_manifest("gs/app", _index(second), tag)  # `first` was listed; a stale write dropped it
    described = []

    def describe(digest: str):
        described.append(digest)
        return client.get_manifest("gs/app", digest)

    tags = ReferrersTags(client, BlobLedger())
    assert tags.add(
        "gs/app",
        app.digest,
        [client.get_manifest("gs/app", new.digest)],
        keep=[first.digest, second.digest],
        describe=describe,
        patience=Patience(sleep=Waits()),
    )
    listed = json.loads(pusher.fetch_manifest("gs/app", tag)[0])
    assert {m["digest"] for m in listed["manifests"]} == {first.digest, second.digest, new.digest}
    assert described == [first.digest]  # only what had to be described again was read


def test_lookups_that_start_together_probe_the_api_once(fresh_registry):
    # A run's first referrer lookups go out from many copy threads at once; until one answer has
    # settled whether the registry has the API, they wait for it instead of each asking.
    registry = fresh_registry()
    pusher = registry.pusher()
    apps = [images.oci_image(f"probe-app-{i}", (64,)) for i in range(6)]
    for i, app in enumerate(apps):
        pusher.push("gs/app", app, f"1.{i}")
    client = RegistryClient(registry.url, StaticCredentials(Credentials(*PUSHER)))
    ask, probes = client.referrers, []

    def slow_probe(repository, digest):
        probes.append(digest)
        time.sleep(0.2)  # every other lookup has started by now
        return ask(repository, digest)

    client.referrers = slow_probe  # type: ignore[method-assign]
    finder = ReferrerFinder(client, ReferrerPolicy())
    start = threading.Barrier(len(apps))

    def look(digest: str) -> list:
        start.wait()
        return finder.of("gs/app", digest)

    with ThreadPoolExecutor(len(apps)) as pool:
        found = list(pool.map(look, [a.digest for a in apps]))
    assert found == [[]] * len(apps) and finder.api is False
    assert len(probes) == 1, probes


def test_expired_answers_do_not_pile_up_in_a_long_lived_process():
    now = [0.0]
    cache: Expiring[int] = Expiring(60.0, lambda: now[0])
    for i in range(1000):
        now[0] = float(i)  # one answer a second: at most ~60 of them alive at any time
        cache.put(("repo", f"sha256:{i}"), i)
    assert cache.get(("repo", "sha256:999")) == 999 and cache.get(("repo", "sha256:100")) is None
    assert len(cache._entries) <= 60 + 256, len(cache._entries)
