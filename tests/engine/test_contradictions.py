"""Answers that contradict what was just verified are tried again (issue 16, item 5).

distribution 2.8 rewrites a blob's or manifest's link file in place when another client pushes it
too; a request that reads it meanwhile answers 400 ``DIGEST_INVALID`` for manifest bytes that
hash to their digest, or ``MANIFEST_BLOB_UNKNOWN`` for a blob or child that is there. A front
(:class:`ScriptedServer` passing everything else on to a real registry) gives those answers to
the first writes of each manifest and blob: the copy tries again (waits recorded, not slept) and
ends byte for byte; a registry that keeps answering so is reported with how often it did, as a
permanent failure, not a transient one.
"""

from __future__ import annotations

import collections
import threading

from sync_core.engine.pushing import Patience
from sync_core.errors import RegistryError, is_transient
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.retry import RetryPolicy
from tests.harness import PUSHER, READER, layouts
from tests.harness.copying import OneTarget
from tests.harness.front import forward
from tests.harness.images import sha256_digest
from tests.harness.recording import RecordingTransport, Waits
from tests.harness.scripted import Reply, Request, ScriptedServer

PATIENCE = RetryPolicy(attempts=6, backoff_base=0.05, backoff_cap=1.0)


def answer(code: str, message: str) -> Reply:
    return Reply.json({"errors": [{"code": code, "message": message}]}, 400)


class Contradicting:
    """Answers the first ``times`` writes of each manifest (and of each blob upload's last PUT)
    with the contradictions of a registry whose link files are being rewritten."""

    def __init__(self, upstream: str, times: int, blobs: bool = True):
        self.upstream, self.times, self.blobs = upstream, times, blobs
        self.seen: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        path = request.path.split("?")[0]
        manifest = request.method == "PUT" and "/manifests/" in path
        blob = (
            self.blobs and request.method == "PUT" and "/blobs/uploads/" in path and "digest=" in request.path
        )
        if manifest or blob:
            with self.lock:
                self.seen[path if manifest else request.path.split("digest=")[1]] += 1
                n = self.seen[path if manifest else request.path.split("digest=")[1]]
            if n <= self.times:
                if manifest and n % 2 == 0:
                    return answer("MANIFEST_BLOB_UNKNOWN", "blob unknown to registry")
                return answer("DIGEST_INVALID", "provided digest did not match uploaded content")
        return forward(self.upstream, request)


def clients(source, front_url: str) -> tuple[RegistryClient, RegistryClient]:
    src = RegistryClient(
        source.url, StaticCredentials(Credentials(*READER)), transport=RecordingTransport(sleep=Waits())
    )
    dst = RegistryClient(
        front_url,
        StaticCredentials(Credentials(*PUSHER)),
        actions="pull,push",
        transport=RecordingTransport(sleep=Waits()),
    )
    return src, dst


def test_contradicting_answers_are_tried_again_and_the_copy_is_exact(fresh_registry):
    shape = layouts.shape("oras-fallback")  # an image, two referrers and the referrers tag
    source, target = fresh_registry(), fresh_registry()
    layouts.push(source, "gs/app", shape)
    front = Contradicting(target.host, times=2)
    waits = Waits()
    with ScriptedServer(front) as server:
        src, dst = clients(source, server.url)
        with OneTarget(src, dst, patience=Patience(PATIENCE, waits), sleep=Waits()) as copier:
            result = copier.copy("gs/app", "v1", "mirror/app")
    assert result.error is None and result.work.referrers_copied == 2, result
    assert not result.referrer_errors, result.referrer_errors
    pusher = target.pusher()
    held = {
        tag: sha256_digest(pusher.fetch_manifest("mirror/app", tag)[0]) for tag in pusher.tags("mirror/app")
    }
    assert held == shape.tags  # the image and the referrers tag, with the source's digests
    # every manifest write was answered twice with a contradiction, then went through
    manifests = {p: n for p, n in front.seen.items() if "/manifests/" in p}
    assert len(manifests) == 4 and set(manifests.values()) == {3}, manifests
    assert len(waits) >= 2 * len(manifests)  # backoff between the tries, recorded, not slept
    blobs = {d: n for d, n in front.seen.items() if "/manifests/" not in d}
    assert blobs and set(blobs.values()) == {3}, blobs  # each blob's upload too, after its bytes verified


def test_a_registry_that_keeps_contradicting_is_a_permanent_failure_naming_how_often(fresh_registry):
    shape = layouts.shape("oras-fallback")
    source, target = fresh_registry(), fresh_registry()
    layouts.push(source, "gs/app", shape)
    front = Contradicting(target.host, times=100, blobs=False)
    with ScriptedServer(front) as server:
        src, dst = clients(source, server.url)
        with OneTarget(src, dst, patience=Patience(PATIENCE, Waits()), sleep=Waits()) as copier:
            try:
                copier.copy("gs/app", "v1", "mirror/app")
            except RegistryError as exc:
                error = exc
            else:
                raise AssertionError("the copy went through a registry that refuses every manifest")
    assert f"the same answer {PATIENCE.attempts} times" in str(error) and error.status == 400, error
    assert not is_transient(error)  # reported as a refusal of the registry, not redelivered for ever
    assert target.pusher().tags("mirror/app") == []
