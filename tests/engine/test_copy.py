"""The copy engine against real docker-registry 2.8 processes.

Every seeded image is mirrored token -> token and token -> htpasswd once per session (module
fixture ``mirrored``); the tests then check what the destination holds with independent
clients: the harness ``Pusher`` and ``skopeo``. The other tests build their own registries:
corrupted source storage, key rotation mid-copy, a 64 MiB layer under ``tracemalloc``, blob
downloads redirected to a "storage" host, forced chunked uploads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import tracemalloc
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from sync_core.engine import uploads as uploads_module
from sync_core.engine.ledger import BlobLedger
from sync_core.engine.results import CopyResult
from sync_core.errors import DigestMismatch, RegistryError, refused, worth_redelivering
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.retry import RetryPolicy
from tests.harness import BASIC, PUSHER, READER, Pusher
from tests.harness import images as img
from tests.harness.copying import OneTarget
from tests.harness.faultproxy import FaultProxy
from tests.harness.front import forward
from tests.harness.recording import RecordingTransport, Waits
from tests.harness.scripted import Reply, Request, ScriptedServer

RUN = uuid.uuid4().hex[:8]  # keeps this run's destination repositories apart from other tests'
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.01)


def client(registry, user, actions="pull", **kwargs) -> RegistryClient:
    kwargs.setdefault("transport", RecordingTransport(sleep=Waits()))
    return RegistryClient(registry.url, StaticCredentials(Credentials(*user)), actions=actions, **kwargs)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def uploads(transport: RecordingTransport) -> list:
    """Requests that write blob data or manifests."""
    return [e for e in transport.log if e[0] in ("POST", "PATCH", "PUT")]


# -- everything seeded, mirrored to a token registry and to an htpasswd registry -------------------


@dataclass
class Mirror:
    registry: object
    user: tuple[str, str]
    prefix: str
    results: dict[tuple[str, str], CopyResult] = field(default_factory=dict)

    def repo(self, repo: str) -> str:
        return f"{self.prefix}/{repo}"

    def pusher(self) -> Pusher:
        return self.registry.pusher()


@pytest.fixture(scope="module", params=["token", "basic"])
def mirrored(request, token_registry_src, seeded, token_registry_dst, basic_registry) -> Mirror:
    if request.param == "token":
        mirror = Mirror(token_registry_dst, PUSHER, f"m{RUN}")
    else:
        mirror = Mirror(basic_registry, BASIC, f"m{RUN}")
    src = client(token_registry_src, READER)
    dst = client(mirror.registry, mirror.user, "pull,push")
    with OneTarget(src, dst, blob_concurrency=4) as copier:
        for repo, tag in seeded:
            mirror.results[repo, tag] = copier.copy(repo, tag, mirror.repo(repo))
    return mirror


def test_every_seeded_image_has_the_source_digest_at_the_destination(mirrored, seeded):
    pusher = mirrored.pusher()
    for (repo, tag), manifest in seeded.items():
        result = mirrored.results[repo, tag]
        assert result.status == "copied", (repo, tag, result)
        assert result.digest == manifest.digest and result.media_type == manifest.media_type
        raw, content_type, header_digest = pusher.fetch_manifest(mirrored.repo(repo), tag)
        assert raw == manifest.raw, (repo, tag)
        assert header_digest == manifest.digest == sha256(raw)
        assert content_type == manifest.media_type
    for repo in seeded.repos():
        # plus the referrers tag (sha256-<hex>) that lists each referrer: distribution 2.8 has no
        # referrers API, so the copier maintains the tag as the distribution spec asks clients to
        subjects = {m.subject.digest for (r, _), m in seeded.items() if r == repo and m.subject is not None}
        fallback = [f"sha256-{d.split(':', 1)[1]}" for d in subjects]
        assert pusher.tags(mirrored.repo(repo)) == sorted([*seeded.tags(repo), *fallback])


def test_result_counts_match_the_image_tree(mirrored, seeded):
    for (repo, tag), manifest in seeded.items():
        result = mirrored.results[repo, tag]
        blobs = manifest.all_blobs()
        assert result.work.blobs_uploaded + result.work.blobs_mounted + result.work.blobs_skipped == len(
            blobs
        ), (repo, tag)
        assert result.work.manifests_pushed <= len(list(manifest.walk()))  # children may already be there
        assert result.work.manifests_pushed >= 1
    # nothing of big/blob exists anywhere else: all uploaded, bytes counted exactly
    big = seeded.manifest("big/blob", "large")
    result = mirrored.results["big/blob", "large"]
    assert result.work.blobs_uploaded == len(big.all_blobs())
    assert result.work.bytes_uploaded == sum(b.size for b in big.all_blobs())
    assert result.work.manifests_pushed == 1


def test_skopeo_reads_the_exact_source_bytes(mirrored, seeded):
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is part of the test environment"
    creds = ":".join(mirrored.user)

    def inspect(item):
        (repo, tag), manifest = item
        ref = f"docker://{mirrored.registry.host}/{mirrored.repo(repo)}:{tag}"
        out = subprocess.run(
            [skopeo, "inspect", "--raw", "--tls-verify=false", "--creds", creds, ref],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return repo, tag, out.returncode, out.stdout, out.stderr.decode(errors="replace")

    with ThreadPoolExecutor(max_workers=8) as pool:
        for repo, tag, code, stdout, stderr in pool.map(inspect, seeded.items()):
            assert code == 0, (repo, tag, stderr)
            assert stdout == seeded.manifest(repo, tag).raw, (repo, tag)


def test_every_child_manifest_and_blob_can_be_fetched_back(mirrored, seeded):
    pusher = mirrored.pusher()
    for (repo, tag), top in seeded.items():
        dst_repo = mirrored.repo(repo)
        for manifest in top.walk():
            raw, content_type, _ = pusher.fetch_manifest(dst_repo, manifest.digest)
            assert sha256(raw) == manifest.digest and raw == manifest.raw
            document = json.loads(raw)
            # walk what the destination itself says, not only what we expect
            for entry in document.get("manifests", []):
                assert sha256(pusher.fetch_manifest(dst_repo, entry["digest"])[0]) == entry["digest"]
            for entry in [document["config"], *document["layers"]] if "config" in document else []:
                data = pusher.fetch_blob(dst_repo, entry["digest"])
                assert sha256(data) == entry["digest"] and len(data) == entry["size"], (repo, tag)
        for blob in top.all_blobs():
            assert sha256(pusher.fetch_blob(dst_repo, blob.digest)) == blob.digest


def test_copying_again_uploads_nothing(mirrored, seeded, token_registry_src):
    # a new Copier (empty ledger) and new clients: the destination itself says "up to date"
    src = client(token_registry_src, READER)
    dst = client(mirrored.registry, mirrored.user, "pull,push")
    with OneTarget(src, dst) as copier:
        for repo, tag in seeded:
            result = copier.copy(repo, tag, mirrored.repo(repo))
            assert result.status == "unchanged", (repo, tag)
            assert result.digest == seeded.manifest(repo, tag).digest
            assert (result.work.bytes_uploaded, result.work.blobs_uploaded, result.work.manifests_pushed) == (
                0,
                0,
                0,
            )
    assert uploads(dst.transport) == []
    # only manifest HEADs at the destination (and token requests, which go elsewhere)
    assert all(m == "HEAD" or not url.startswith(mirrored.registry.url) for m, url, _ in dst.transport.log)


def test_expected_digest_makes_no_source_request(mirrored, seeded, token_registry_src):
    src = client(token_registry_src, READER)
    dst = client(mirrored.registry, mirrored.user, "pull,push")
    with OneTarget(src, dst) as copier:
        for (repo, tag), manifest in seeded.items():
            result = copier.copy(repo, tag, mirrored.repo(repo), expected_digest=manifest.digest)
            assert result.status == "unchanged" and result.digest == manifest.digest
        assert src.transport.requests_sent == 0 and src.transport.log == []
        assert uploads(dst.transport) == []

        # a stale expectation (the listing said another digest): the source is asked after all
        other = seeded.manifest("library/alpine", "3.19").digest
        result = copier.copy("library/alpine", "3.20", mirrored.repo("library/alpine"), expected_digest=other)
        assert result.status == "unchanged"
        assert result.digest == seeded.manifest("library/alpine", "3.20").digest
        assert src.transport.requests_sent > 0


# -- cross-repository mount ------------------------------------------------------------------------


def test_shared_layer_is_uploaded_once_then_mounted(token_registry_src, token_registry_dst, seeded):
    base = seeded.base_layer
    src = client(token_registry_src, READER)
    dst = client(token_registry_dst, PUSHER, "pull,push")
    prefix = f"mount{RUN}"
    with OneTarget(src, dst, blob_concurrency=4) as copier:
        first = copier.copy("library/alpine", "3.20", f"{prefix}/alpine")
        assert first.work.blobs_mounted == 0 and first.work.blobs_uploaded == 3
        assert first.work.bytes_uploaded == sum(
            b.size for b in seeded.manifest("library/alpine", "3.20").all_blobs()
        )

        legacy = seeded.manifest("team/legacy", "v1")
        second = copier.copy("team/legacy", "v1", f"{prefix}/legacy")
        assert second.status == "copied"
        assert second.work.blobs_mounted == 1
        assert second.work.blobs_uploaded == len(legacy.all_blobs()) - 1
        assert second.work.bytes_uploaded == sum(b.size for b in legacy.all_blobs()) - base.size

        # an index whose two platforms share the layer: one mount, not two
        third = copier.copy("team/app", "1.0.0", f"{prefix}/app")
        assert third.work.blobs_mounted == 1
        app_blobs = seeded.manifest("team/app", "1.0.0").all_blobs()
        assert third.work.bytes_uploaded == sum(b.size for b in app_blobs) - base.size

    mounts = [url for m, url, status in dst.transport.log if m == "POST" and "mount=" in url]
    assert len(mounts) == 2 and all(f"from={urllib.parse.quote(prefix)}" in u for u in mounts)
    pusher = token_registry_dst.pusher()
    for repo in ("alpine", "legacy", "app"):
        assert sha256(pusher.fetch_blob(f"{prefix}/{repo}", base.digest)) == base.digest


def test_concurrent_copies_sharing_a_layer_upload_it_once(token_registry_src, token_registry_dst, seeded):
    prefix = f"conc{RUN}"
    jobs = [("library/alpine", "3.20", f"{prefix}/a"), ("team/legacy", "v1", f"{prefix}/b")]
    with FaultProxy(token_registry_src.url) as proxy:
        src = client(proxy, READER)
        dst = client(token_registry_dst, PUSHER, "pull,push")
        assert src.list_tags("library/alpine")  # the challenge is known: no request waits for a first one
        # each copy reads its image's manifest first: the first read waits (30 s at most) for the other
        both = proxy.rendezvous(
            2, method="GET", path=r"^/v2/(library/alpine/manifests/3\.20|team/legacy/manifests/v1)$"
        )
        with OneTarget(src, dst, blob_concurrency=4) as copier, ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda job: copier.copy(*job), jobs))
    assert both.met, f"the two copies were never in flight at once: {both}"
    assert all(r.status == "copied" for r in results)
    unique = {
        b.digest: b.size
        for tag in (("library/alpine", "3.20"), ("team/legacy", "v1"))
        for b in seeded.manifest(*tag).all_blobs()
    }
    assert sum(r.work.bytes_uploaded for r in results) == sum(unique.values())
    assert sum(r.work.blobs_mounted for r in results) == 1


# -- verification of source bytes ------------------------------------------------------------------


def _blob_data_path(registry, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return Path(registry.storage_dir, "docker/registry/v2/blobs/sha256", hexpart[:2], hexpart, "data")


@pytest.mark.parametrize("size, chunked", [(1000, False), (700_000, False), (700_000, True)])
def test_source_serving_wrong_bytes_fails_with_digest_mismatch(fresh_registry, size, chunked, monkeypatch):
    monkeypatch.setattr(uploads_module, "CHUNK_SIZE", 300_000)
    src_reg, dst_reg = fresh_registry(), fresh_registry()
    image = img.oci_image(f"corrupt-{size}", (size, 2048))
    src_reg.pusher().push("team/app", image, "1.0")
    victim = image.blobs[1]
    path = _blob_data_path(src_reg, victim.digest)
    data = bytearray(path.read_bytes())
    assert bytes(data) == victim.data
    data[len(data) // 2] ^= 0xFF  # same length, different bytes
    path.write_bytes(bytes(data))
    served = requests.get(
        f"{src_reg.url}/v2/team/app/blobs/{victim.digest}",
        headers={"Authorization": f"Bearer {src_reg.token_issuer.mint(['repository:team/app:pull'])}"},
        timeout=10,
    ).content
    assert len(served) == size and sha256(served) != victim.digest  # the registry serves it as is

    src = client(src_reg, READER)
    dst = client(dst_reg, PUSHER, "pull,push")
    with OneTarget(src, dst, retry=RetryPolicy(attempts=4, backoff_base=0.01), chunked=chunked) as copier:
        with pytest.raises(DigestMismatch) as info:
            copier.copy("team/app", "1.0", "mirror/app")
        assert victim.digest in str(info.value)
        # read again without uploading, the same mismatch: the content itself, refused for good
        # (a skip, no redelivery), whatever the attempts the policy allows
        assert info.value.exhausted and refused(info.value) and not worth_redelivering(info.value)
        gets = [e for e in src.transport.log if e[0] == "GET" and victim.digest in e[1]]
        sessions = [e for e in dst.transport.log if e[0] == "POST" and "/blobs/uploads/" in e[1]]
        assert len(gets) == 2
        # a small blob is read whole and verified before any blob is placed: the image writes
        # nothing at all; a larger one streams into one upload, which the mismatch stops before
        # its last byte (the other blobs may be placed meanwhile)
        own = [e for e in sessions if "mount=" not in e[1]]
        assert len(own) == (0 if size <= uploads_module.SMALL_BLOB else len(image.blobs))
        # refused for the run: the same copier does not read it again
        with pytest.raises(DigestMismatch):
            copier.copy("team/app", "1.0", "mirror/app-again")
        assert len([e for e in src.transport.log if e[0] == "GET" and victim.digest in e[1]]) == 2

    pusher = dst_reg.pusher()
    assert not pusher.exists_manifest("mirror/app", "1.0")
    assert not pusher.exists_manifest("mirror/app", image.digest)
    assert not pusher.blob_exists("mirror/app", victim.digest)
    assert pusher.tags("mirror/app") == []


# -- tokens that stop working in the middle of a copy ------------------------------------------------


class HookTransport(RecordingTransport):
    """Calls ``hook(method, url)`` before each request while ``hook`` is set."""

    hook = None

    def send(self, method, url, **kwargs):
        if self.hook is not None:
            self.hook(method, url)
        return super().send(method, url, **kwargs)


def test_token_invalidated_mid_copy_is_refreshed(fresh_issuer, fresh_registry):
    issuer = fresh_issuer()
    src_reg, dst_reg = fresh_registry(token_issuer=issuer), fresh_registry(token_issuer=issuer)
    one, two = img.oci_image("mid-1", (3000, 2000)), img.oci_image("mid-2", (4000, 3000, 2000))
    pusher = src_reg.pusher()
    pusher.push("team/app", one, "one")
    pusher.push("team/app", two, "two")

    src = client(src_reg, READER, transport=HookTransport(sleep=Waits()))
    dst = client(dst_reg, PUSHER, "pull,push", transport=HookTransport(sleep=Waits()))
    with OneTarget(src, dst, blob_concurrency=1, retry=RetryPolicy(attempts=3, backoff_base=0.01)) as copier:
        assert copier.copy("team/app", "one", "mirror/app").status == "copied"
        tokens_before = issuer.token_requests
        fired = []

        def rotate(method, url):
            # the first blob upload of the second image: some blobs are done, others not
            if method == "PUT" and "/blobs/uploads/" in url and not fired:
                fired.append(len(dst.transport.log))
                src_start = len(src.transport.log)
                fired.append(src_start)
                issuer.rotate_key()  # every token issued so far is refused from now on
                src_reg.restart()
                dst_reg.restart()

        dst.transport.hook = rotate
        result = copier.copy("team/app", "two", "mirror/app")
        dst.transport.hook = None

    assert fired, "the rotation happened during the copy"
    assert result.status == "copied" and result.digest == two.digest
    assert issuer.token_requests > tokens_before
    assert any(status == 401 for _, _, status in dst.transport.log[fired[0] :])
    assert any(status == 401 for _, _, status in src.transport.log[fired[1] :])
    check = dst_reg.pusher()
    assert check.fetch_manifest("mirror/app", "two")[0] == two.raw
    for blob in two.all_blobs():
        assert sha256(check.fetch_blob("mirror/app", blob.digest)) == blob.digest


# -- memory --------------------------------------------------------------------------------------------


def push_streamed_layer(pusher: Pusher, repo: str, size: int, chunk: int = 4 * 1024 * 1024) -> str:
    """Upload ``size`` pseudo-random bytes in PATCH chunks, never holding more than one chunk;
    returns the digest."""
    response = pusher.request("POST", f"/v2/{repo}/blobs/uploads/", repo, data=b"")
    assert response.status_code == 202, response.text
    location = urllib.parse.urljoin(response.url, response.headers["Location"])
    hasher = hashlib.sha256()
    offset = 0
    counter = 0
    while offset < size:
        n = min(chunk, size - offset)
        piece = hashlib.shake_256(f"big-layer:{counter}".encode()).digest(n)
        counter += 1
        hasher.update(piece)
        response = pusher.request(
            "PATCH",
            location,
            repo,
            data=piece,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + n - 1}",
            },
        )
        assert response.status_code == 202, response.text
        location = urllib.parse.urljoin(location, response.headers["Location"])
        offset += n
        del piece
    digest = "sha256:" + hasher.hexdigest()
    sep = "&" if "?" in location else "?"
    response = pusher.request("PUT", f"{location}{sep}digest={digest}", repo, data=b"")
    assert response.status_code == 201, response.text
    return digest


def test_large_layer_streams_in_flat_memory(fresh_registry):
    size = 64 * 1024 * 1024
    src_reg, dst_reg = fresh_registry(), fresh_registry()
    pusher = src_reg.pusher()
    layer_digest = push_streamed_layer(pusher, "big/layer", size)
    config = img.Blob(
        b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', img.OCI_CONFIG
    )
    pusher.push_blob("big/layer", config)
    body = {
        "schemaVersion": 2,
        "mediaType": img.OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [{"mediaType": img.OCI_LAYER, "digest": layer_digest, "size": size}],
    }
    manifest = img.Manifest(json.dumps(body, indent=3).encode(), img.OCI_MANIFEST)
    pusher.put_manifest("big/layer", manifest, "64m")

    src, dst = client(src_reg, READER), client(dst_reg, PUSHER, "pull,push")
    with OneTarget(src, dst, blob_concurrency=4) as copier:
        tracemalloc.start()
        try:
            result = copier.copy("big/layer", "64m", "mirror/big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.status == "copied" and result.work.bytes_uploaded == size + config.size
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while copying a 64 MiB layer"

    # the destination holds the exact bytes (hashed while streaming, not loaded)
    check = dst_reg.pusher()
    assert check.fetch_manifest("mirror/big", "64m")[0] == manifest.raw
    response = check.request("GET", f"/v2/mirror/big/blobs/{layer_digest}", "mirror/big", stream=True)
    hasher = hashlib.sha256()
    for piece in response.iter_content(1024 * 1024):
        hasher.update(piece)
    assert "sha256:" + hasher.hexdigest() == layer_digest


# -- chunked uploads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [100_000, 256 * 1024])
def test_chunked_upload_sends_several_patches(fresh_registry, monkeypatch, chunk_size):
    # 100 000 is not a multiple of the 256 KiB read size: each PATCH must still carry exactly
    # its Content-Length (it overran it before the fix, and the registry then hung on it)
    monkeypatch.setattr(uploads_module, "CHUNK_SIZE", chunk_size)
    src_reg, dst_reg = fresh_registry(), fresh_registry()
    image = img.oci_image(f"chunked-{chunk_size}", (700_000, 100))
    src_reg.pusher().push("team/app", image, "1.0")
    src = client(src_reg, READER)
    dst = client(dst_reg, PUSHER, "pull,push", transport=RecordingTransport(sleep=Waits(), timeout=(5, 10)))
    with OneTarget(src, dst, chunked=True, retry=FAST_RETRY) as copier:
        result = copier.copy("team/app", "1.0", "mirror/app")
    assert result.status == "copied"
    patches = [e for e in dst.transport.log if e[0] == "PATCH"]
    expected = sum(-(-b.size // chunk_size) for b in image.all_blobs())
    assert len(patches) == expected and all(status == 202 for _, _, status in patches)
    check = dst_reg.pusher()
    for blob in image.all_blobs():
        assert check.fetch_blob("mirror/app", blob.digest) == blob.data
    assert check.fetch_manifest("mirror/app", "1.0")[0] == image.raw


# -- a proxy in front of a real registry -------------------------------------------------------------


def test_blob_download_redirected_to_storage_without_registry_credentials(
    token_registry_src, seeded, fresh_registry
):
    upstream = token_registry_src
    fetcher = upstream.pusher()

    def storage(request: Request) -> Reply:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        data = fetcher.fetch_blob(query["repo"][0], query["digest"][0])
        return Reply(200, {"Content-Type": "application/octet-stream"}, data)

    with ScriptedServer(storage) as store:

        def registry(request: Request) -> Reply:
            parts = urllib.parse.urlsplit(request.path).path.split("/blobs/")
            authorized = request.headers.get("authorization", "").startswith("Bearer ")
            if request.method == "GET" and len(parts) == 2 and parts[1].startswith("sha256:") and authorized:
                repo = parts[0].removeprefix("/v2/")
                target = f"{store.url}/blob?repo={urllib.parse.quote(repo)}&digest={parts[1]}&sig=s3"
                return Reply(307, {"Location": target})
            return forward(upstream.host, request)

        with ScriptedServer(registry) as proxy:
            dst_reg = fresh_registry()
            src = RegistryClient(
                proxy.url,
                StaticCredentials(Credentials(*READER)),
                transport=RecordingTransport(sleep=Waits()),
            )
            dst = client(dst_reg, PUSHER, "pull,push")
            with OneTarget(src, dst) as copier:
                results = [
                    copier.copy("team/app", "1.0.0", "mirror/app"),
                    copier.copy("team/legacy", "v1", "mirror/legacy"),
                ]
    assert all(r.status == "copied" for r in results)
    app, legacy = seeded.manifest("team/app", "1.0.0"), seeded.manifest("team/legacy", "v1")
    redirected = [s for s in proxy.requests if s.method == "GET" and "/blobs/sha256:" in s.path]
    wanted = {b.digest for b in app.all_blobs()} | {b.digest for b in legacy.all_blobs()}
    assert {s.path.rsplit("/", 1)[1] for s in redirected} == wanted
    assert all(s.headers["authorization"].startswith("Bearer ") for s in redirected)
    assert len(store.requests) == len(redirected)
    assert all("authorization" not in s.headers for s in store.requests)  # credentials stayed home
    check = dst_reg.pusher()
    for blob in app.all_blobs() + legacy.all_blobs():
        assert (
            sha256(
                check.fetch_blob("mirror/app" if blob in app.all_blobs() else "mirror/legacy", blob.digest)
            )
            == blob.digest
        )


def test_rejected_single_request_upload_falls_back_to_chunked(
    token_registry_src, seeded, fresh_registry, monkeypatch
):
    monkeypatch.setattr(uploads_module, "CHUNK_SIZE", 3000)
    dst_reg = fresh_registry()

    def registry(request: Request) -> Reply:
        if request.method == "PUT" and "/blobs/uploads/" in request.path and request.body:
            return Reply.json({"errors": [{"code": "SIZE_INVALID", "message": "use chunks"}]}, 413)
        return forward(dst_reg.host, request)

    with ScriptedServer(registry) as proxy:
        src = client(token_registry_src, READER)
        dst = RegistryClient(
            proxy.url,
            StaticCredentials(Credentials(*PUSHER)),
            actions="pull,push",
            transport=RecordingTransport(sleep=Waits()),
        )
        with OneTarget(src, dst, retry=FAST_RETRY) as copier:
            result = copier.copy("library/alpine", "3.19", "mirror/alpine")
    image = seeded.manifest("library/alpine", "3.19")
    assert result.status == "copied" and result.work.blobs_uploaded == len(image.all_blobs())
    rejected = [s for s in proxy.requests if s.method == "PUT" and "/blobs/uploads/" in s.path and s.body]
    assert len(rejected) == len(image.all_blobs())  # each blob tried whole once
    assert len([s for s in proxy.requests if s.method == "PATCH"]) >= len(image.all_blobs())
    check = dst_reg.pusher()
    assert check.fetch_manifest("mirror/alpine", "3.19")[0] == image.raw
    for blob in image.all_blobs():
        assert check.fetch_blob("mirror/alpine", blob.digest) == blob.data


# -- skip rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo, tag, skip",
    [
        ("team/app", "1.0.0", img.IN_TOTO),  # attestation children of the index
        ("team/app", "sig", img.COSIGN_SIG_ARTIFACT),  # the artifact type
        ("team/app", "sig", img.OCI_EMPTY),  # Alibaba: empty config blobs
        ("charts/hello", "0.1.0", img.HELM_CONFIG),
    ],
)
def test_skipped_media_types_write_nothing(token_registry_src, seeded, fresh_registry, repo, tag, skip):
    if tag == "sig":
        tag = img.digest_tag(seeded.manifest("team/app", "1.0.0").digest)
    dst_reg = fresh_registry()
    src, dst = client(token_registry_src, READER), client(dst_reg, PUSHER, "pull,push")
    with OneTarget(src, dst) as copier:
        result = copier.copy(repo, tag, "mirror/x", skip_media_types=frozenset({skip}))
    assert result.status == "skipped" and skip in result.reason
    assert uploads(dst.transport) == []
    assert not dst_reg.pusher().exists_manifest("mirror/x", tag)


def test_blob_ledger_gives_an_upload_to_exactly_one_claimant():
    ledger = BlobLedger()
    owners = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        if ledger.begin_upload("sha256:" + "1" * 64) is None:
            owners.append(threading.get_ident())

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(owners) == 1


def test_long_lived_copier_recovers_when_the_target_loses_content(token_registry_src, seeded, fresh_registry):
    """A Functions process keeps its Copier between invocations; content deleted at the target
    meanwhile must not make every later copy fail: a failed manifest push forgets the repository."""
    target = fresh_registry(auth="none")
    src = client(token_registry_src, READER)
    dst = RegistryClient(target.url, actions="pull,push")
    manifest = seeded.manifest("library/alpine", "3.19")
    with OneTarget(src, dst, retry=FAST_RETRY) as copier:
        assert copier.copy("library/alpine", "3.19", "kept/alpine").status == "copied"
        pusher = target.pusher()
        pusher.delete_manifest("kept/alpine", manifest.digest)
        layer = manifest.all_blobs()[-1]
        deleted = requests.delete(f"{target.url}/v2/kept/alpine/blobs/{layer.digest}", timeout=10)
        assert deleted.status_code == 202
        with pytest.raises(
            RegistryError, match=r"PUT manifest kept/alpine:3\.19: HTTP 400 \(MANIFEST_BLOB_UNKNOWN:"
        ) as refusal:
            copier.copy("library/alpine", "3.19", "kept/alpine")  # trusted its memory: refused
        assert refusal.value.status == 400
        result = copier.copy("library/alpine", "3.19", "kept/alpine")  # looks again, re-uploads
    assert result.status == "copied" and result.work.blobs_uploaded >= 1
    assert pusher.fetch_manifest("kept/alpine", "3.19")[0] == manifest.raw
    assert sha256(pusher.fetch_blob("kept/alpine", layer.digest)) == layer.digest


def test_ledger_knowledge_expires():
    now = [0.0]
    ledger = BlobLedger(ttl=60, clock=lambda: now[0])
    ledger.record("a/b", "sha256:" + "1" * 64)
    assert ledger.known("a/b", "sha256:" + "1" * 64) and ledger.holder("sha256:" + "1" * 64, "c/d") == "a/b"
    now[0] = 61
    assert not ledger.known("a/b", "sha256:" + "1" * 64)
    assert ledger.holder("sha256:" + "1" * 64, "c/d") is None
