"""The real-content shapes of ``tests/fixtures/shapes`` (OCI image layouts), read and pushed.

``scripts/make-shape-fixtures.py`` writes them; :func:`shape` reads one and :func:`push` puts it
into a real registry the way its ``index.json`` says (tags, manifests by digest, in order):
blobs first, then child manifests, then each manifest. A blob whose bytes do not hash to its
digest cannot be uploaded (distribution checks): it is planted in the registry's storage, as
damaged storage would hold it. Independent of ``sync_core``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

from .images import Manifest, sha256_digest
from .paths import SHAPES
from .registry import Registry

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class Entry:
    """One line of ``index.json``: a manifest the registry holds under ``tag`` (None: by digest)."""

    digest: str
    media_type: str
    tag: str | None


@dataclass
class Shape:
    """One layout: its blobs (manifests included) by digest, and what the registry holds."""

    name: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def directory(self):
        return SHAPES / self.name

    def data(self, digest: str) -> bytes:
        return (self.directory / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    def manifest(self, digest: str) -> Manifest:
        raw = self.data(digest)
        return Manifest(raw, json.loads(raw).get("mediaType") or self.media_types[digest])

    @cached_property
    def media_types(self) -> dict[str, str]:
        return {e.digest: e.media_type for e in self.entries}

    @property
    def tags(self) -> dict[str, str]:
        """``{tag: digest}`` as the source holds them."""
        return {e.tag: e.digest for e in self.entries if e.tag is not None}

    def damaged(self) -> list[str]:
        """Blob digests whose stored bytes hash to something else."""
        return [
            f"sha256:{p.name}"
            for p in (self.directory / "blobs" / "sha256").iterdir()
            if sha256_digest(p.read_bytes()) != f"sha256:{p.name}"
        ]


def shape(name: str) -> Shape:
    index = json.loads((SHAPES / name / "index.json").read_text())
    return Shape(
        name,
        [
            Entry(e["digest"], e["mediaType"], (e.get("annotations") or {}).get(REF_NAME))
            for e in index["manifests"]
        ],
    )


def push(registry: Registry, repository: str, layout: Shape) -> None:
    """Put ``layout`` into ``repository`` at ``registry`` (see the module docstring)."""
    pusher = registry.pusher()
    done: set[str] = set()

    def place(digest: str) -> None:
        if digest in done:
            return
        done.add(digest)
        manifest = layout.manifest(digest)
        body = manifest.json
        for child in body.get("manifests", ()) if manifest.media_type in INDEX_TYPES else ():
            place(child["digest"])
            pusher.put_manifest(repository, layout.manifest(child["digest"]))
        for blob in [body.get("config") or {}, *(body.get("layers") or ())]:
            if not blob or blob.get("urls") or pusher.blob_exists(repository, blob["digest"]):
                continue
            data = layout.data(blob["digest"])
            if sha256_digest(data) == blob["digest"]:
                pusher.upload_blob(repository, blob["digest"], data)
            else:
                registry.plant_blob(repository, blob["digest"], data)

    try:
        for entry in layout.entries:
            place(entry.digest)
            pusher.put_manifest(repository, layout.manifest(entry.digest), entry.tag)
    finally:
        pusher.close()
