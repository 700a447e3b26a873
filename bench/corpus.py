"""The benchmark's images: a platform catalog (also signed: 2 referrers a tag), a 1 GiB image, a wide catalog.

Everything is deterministic (same seed, same bytes, same digests) and built with the test
harness's image builders, which keep exact manifest bytes. The 1 GiB layer is never held in
memory: :class:`BigLayer` generates it block by block, once to hash it and once to push it.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.harness import images
from tests.harness.images import Blob, Manifest, Pusher

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run (``FULL`` for ``make bench``, ``QUICK`` for the smoke test)."""

    name: str
    repositories: int
    tags: int
    min_layer: int
    max_layer: int
    base_layer: int
    new_tags: int
    big_layer: int  # 0: no big image
    wide_repositories: int
    wide_tags: int
    wide_skopeo_sample: int  # repositories skopeo runs over in the wide scenarios (then scaled)
    sbom_size: int  # the SBOM each tag of the signed catalog has (besides its signature)
    two_target_rounds: int  # one-target and two-target runs, taken in turns (the median of each is kept)


FULL = Profile("full", 20, 5, 256 * KIB, 2 * MIB, 2 * MIB, 5, GIB, 2000, 20, 5, 64 * KIB, 3)
QUICK = Profile("quick", 3, 2, 16 * KIB, 64 * KIB, 64 * KIB, 1, 0, 10, 3, 1, 4 * KIB, 1)

PLATFORMS = ("linux/amd64", "linux/arm64")
SPDX = "application/spdx+json"


@dataclass
class Corpus:
    """``{(repo, tag): Manifest}`` for the platform catalog plus what the scenarios need."""

    namespace: str
    base: Blob
    images: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    new_images: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    referrers: dict[tuple[str, str], list[Manifest]] = field(default_factory=dict)  # of each tag's image

    @property
    def repositories(self) -> list[str]:
        return sorted({repo for repo, _ in self.images})

    @staticmethod
    def unique_blob_bytes(manifests) -> int:
        seen: dict[str, int] = {}
        for manifest in manifests:
            for blob in manifest.all_blobs():
                seen[blob.digest] = blob.size
        return sum(seen.values())

    @staticmethod
    def manifest_bytes(manifests) -> int:
        seen: dict[str, int] = {}
        for manifest in manifests:
            for m in manifest.walk():
                seen[m.digest] = m.size
        return sum(seen.values())


def _image(seed: str, index: int, rng: random.Random, profile: Profile, base: Blob) -> Manifest:
    """Even repositories are multi-arch (OCI index, 2 platforms); odd ones alternate OCI / Docker."""
    size = rng.randint(profile.min_layer, profile.max_layer)
    if index % 2 == 0:
        return images.oci_index(seed, PLATFORMS, (size,), base_layer=base, attestations=False)
    if index % 4 == 1:
        return images.oci_image(seed, (size,), base_layer=base)
    return images.docker_image(seed, (size,), base_layer=base)


def platform_corpus(profile: Profile, namespace: str = "platform") -> Corpus:
    rng = random.Random(f"registry-sync-bench:{profile.name}")
    base = images.layer("bench-base", profile.base_layer)
    corpus = Corpus(namespace, base)
    for i in range(profile.repositories):
        repo = f"{namespace}/service-{i:02d}"
        for t in range(profile.tags):
            tag = f"1.{t}.0"
            corpus.images[repo, tag] = _image(f"{repo}:{tag}", i, rng, profile, base)
    step = max(1, profile.repositories // max(1, profile.new_tags))
    for k in range(profile.new_tags):
        i = (k * step) % profile.repositories
        repo = f"{namespace}/service-{i:02d}"
        tag = "2.0.0"
        corpus.new_images[repo, tag] = _image(f"{repo}:{tag}", i, rng, profile, base)
    return corpus


def signed_corpus(profile: Profile, namespace: str = "signed") -> Corpus:
    """The platform catalog's shape (other content) with 2 referrers of each tag's image.

    A cosign 3 style signature (an OCI manifest with ``artifactType``, the empty config, one
    layer and ``subject``) and an SPDX SBOM of ``profile.sbom_size`` bytes, both untagged.
    """
    corpus = platform_corpus(profile, namespace)
    for (repo, tag), image in corpus.images.items():
        seed = f"{repo}:{tag}"
        corpus.referrers[repo, tag] = [
            images.signature(f"{seed}:sig", image),
            images.oci_artifact(f"{seed}:sbom", SPDX, image, (profile.sbom_size,), SPDX),
        ]
    return corpus


def push_referrers(pusher_factory, corpus: Corpus, workers: int = 8) -> None:
    """Each tag's referrers, untagged, and the referrers tag (``sha256-<hex of the image>``) listing them.

    That is how cosign, notation and oras attach referrers to a registry without the referrers API
    (distribution 2.8), and where clients, registry-sync included, look for them there.
    """
    indexes = {
        (repo, images.digest_tag(corpus.images[repo, tag].digest, suffix="")): images.referrers_index(
            referrers
        )
        for (repo, tag), referrers in corpus.referrers.items()
    }
    push_all(pusher_factory, indexes, workers)  # the index's children (the referrers) go first


def push_all(pusher_factory, items: dict[tuple[str, str], Manifest], workers: int = 8) -> None:
    """Push ``{(repo, tag): manifest}`` with a few threads (one Pusher per thread)."""
    local = threading.local()

    def push(item) -> None:
        (repo, tag), manifest = item
        pusher = getattr(local, "pusher", None)
        if pusher is None:
            pusher = local.pusher = pusher_factory()
        pusher.push(repo, manifest, tag)

    by_repo: dict[str, list] = {}
    for item in items.items():
        by_repo.setdefault(item[0][0], []).append(item)

    def push_repo(entries) -> None:  # one repository's tags in order (shared blobs pushed once)
        for item in entries:
            push(item)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(push_repo, by_repo.values()))


# -- the 1 GiB layer --------------------------------------------------------------------------


class BigLayer:
    """A deterministic pseudo-random layer of ``size`` bytes, generated on the fly.

    Block ``i`` (1 MiB) is a fixed pseudo-random block with its first 16 bytes replaced by the
    block number, so no two blocks are equal and nothing larger than one block is in memory.
    """

    BLOCK = MIB

    def __init__(self, seed: str, size: int):
        self.seed = seed
        self.size = size
        self._block = hashlib.shake_256(f"big:{seed}".encode()).digest(self.BLOCK)
        self._digest: str | None = None

    def blocks(self):
        sent = 0
        i = 0
        while sent < self.size:
            n = min(self.BLOCK, self.size - sent)
            block = i.to_bytes(16, "big") + self._block[16:]
            yield block[:n]
            sent += n
            i += 1

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for block in self.blocks():
                h.update(block)
            self._digest = "sha256:" + h.hexdigest()
        return self._digest

    def descriptor(self) -> dict:
        return {"mediaType": images.OCI_LAYER, "digest": self.digest, "size": self.size}

    def reader(self) -> _GeneratorReader:
        return _GeneratorReader(self.blocks(), self.size)


class _GeneratorReader:
    """A file-like body with a length (so ``requests`` streams it with Content-Length)."""

    def __init__(self, blocks, size: int):
        self._blocks = blocks
        self._size = size
        self._pending = b""

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._blocks, b"")
        if n is None or n < 0 or n >= len(self._pending):
            data, self._pending = self._pending, b""
            return data
        data, self._pending = self._pending[:n], self._pending[n:]
        return data


def big_image(layer: BigLayer, base: Blob) -> Manifest:
    """An OCI image: config + the shared base layer + the big layer (whose bytes are not held).

    The returned Manifest lists only the small blobs; push the big layer with
    :func:`push_big_layer` first.
    """
    config = Blob(
        images._dump(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2024-01-01T00:00:00Z",
                "config": {"Labels": {"org.registry-sync.bench": layer.seed}},
                "rootfs": {"type": "layers", "diff_ids": [base.digest, layer.digest]},
            }
        ),
        images.OCI_CONFIG,
    )
    body = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [base.retyped(images.OCI_LAYER).descriptor(), layer.descriptor()],
    }
    return Manifest(images._dump(body), images.OCI_MANIFEST, (config, base.retyped(images.OCI_LAYER)))


def push_big_layer(pusher: Pusher, repo: str, layer: BigLayer) -> None:
    """Stream the big layer to ``repo`` (POST, then one PUT with Content-Length)."""
    if not pusher.blob_exists(repo, layer.digest):
        pusher.upload_blob(repo, layer.digest, layer.reader(), timeout=600)


# -- the wide catalog ------------------------------------------------------------------------


def wide_image() -> Manifest:
    return images.oci_image("bench-wide", (4 * KIB,))


def _repositories_dir(storage: Path) -> Path:
    return storage / "docker" / "registry" / "v2" / "repositories"


def _blob_dir(storage: Path, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart


def seed_wide(
    source_pusher: Pusher,
    source_storage: Path,
    target_storage: Path,
    *,
    namespace: str,
    repositories: int,
    tags: int,
    target_copies: dict[str, int],
) -> list[str]:
    """The wide catalog: ``repositories`` repositories of ``tags`` tags of one small image.

    One repository is pushed over HTTP (so the registry writes its own storage layout); the
    others are copies of its directory in the filesystem storage of the registry (the layout of
    distribution 2.8 names content only by digest, so a repository directory is relocatable).
    ``target_copies`` maps a target namespace to how many of the repositories to pre-populate
    there (:func:`mirror_copies`), so that the sync is a no-op. Pushing 2,000 x 20 tags over HTTP
    would take minutes. Returns the source repository names.
    """
    image = wide_image()
    names = [f"{namespace}/r{i:05d}" for i in range(repositories)]
    for t in range(tags):
        source_pusher.push(names[0], image, f"t{t:02d}")
    copy_repository(source_storage, names[0], source_storage, names[1:])
    mirror_copies(source_storage, target_storage, names, target_copies)
    return names


def mirror_copies(
    source_storage: Path, target_storage: Path, names: list[str], target_copies: dict[str, int]
) -> None:
    """Copies of the wide repositories ``names`` (seeded by :func:`seed_wide`) in another registry's
    storage: the image's blobs, and ``<prefix>/<name without its namespace>`` for the first
    ``count`` names of each ``{prefix: count}``."""
    image = wide_image()
    for digest in [image.digest, *(b.digest for b in image.blobs)]:
        blob = _blob_dir(target_storage, digest)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(_blob_dir(source_storage, digest), blob, copy_function=shutil.copyfile)
    copies = [
        f"{prefix}/{name.split('/', 1)[1]}"
        for prefix, count in target_copies.items()
        for name in names[:count]
    ]
    copy_repository(source_storage, names[0], target_storage, copies)


def copy_repository(storage: Path, template: str, target_storage: Path, names: list[str]) -> None:
    """Copies of repository ``template`` of ``storage`` named ``names`` in ``target_storage``
    (existing ones are left alone); its blobs must be there already."""
    root = _repositories_dir(storage) / template
    # The template's leaf directories and (small) link files, read once: faster than copytree.
    leaves: list[str] = []
    files: list[tuple[str, bytes]] = []
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir() and not any(path.iterdir()):
            leaves.append(rel)
        elif path.is_file():
            files.append((rel, path.read_bytes()))

    def copy_to(name: str) -> None:
        destination = _repositories_dir(target_storage) / name
        if destination.exists():
            return
        for rel in leaves:
            (destination / rel).mkdir(parents=True, exist_ok=True)
        for rel, data in files:
            target = destination / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy_to, names))


def check_tags(base_url: str, token: str | None, repo: str) -> list[str]:
    """Tags of ``repo`` straight from a registry (for sanity checks after seeding)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{base_url}/v2/{repo}/tags/list", headers=headers, timeout=30)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return sorted(r.json().get("tags") or [])
