"""The source side of a copy: a manifest and everything below it, fetched once and validated.

:class:`SourceTrees` fetches a manifest (by tag or digest) and walks it: every child manifest of
an index (in parallel), every blob descriptor, sizes checked against each other; schema 1 blob
sizes asked of the source. The result, an :class:`ImageTree`, is the same whatever the targets
hold: the outcome of a copy depends on the source only. Manifests are cached by digest
(content-addressed, never stale), bounded in bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sync_core.errors import InvalidContent, NotFound, SourceGone
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import UNKNOWN_SIZE, Descriptor, Manifest
from sync_core.registry.names import is_digest

MAX_INDEX_DEPTH = 8  # indexes of indexes: real content nests one or two levels
MANIFEST_CACHE_BYTES = 64 * 1024 * 1024


@dataclass
class ImageTree:
    """A manifest and everything below it, fetched from the source and validated."""

    top: Manifest
    manifests: list[Manifest] = field(default_factory=list)  # below the top, children first
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # blobs of every manifest
    blobs_of: dict[str, list[Descriptor]] = field(default_factory=dict)  # manifest digest -> its blobs
    children_of: dict[str, list[str]] = field(default_factory=dict)  # index digest -> child digests
    warnings: list[str] = field(default_factory=list)

    @property
    def all_manifests(self) -> list[Manifest]:
        return [self.top, *self.manifests]

    def subtree(self, digest: str) -> Iterable[str]:
        """``digest`` and the digests of every manifest below it."""
        yield digest
        for child in self.children_of.get(digest, ()):
            yield from self.subtree(child)


class ManifestCache:
    """Source manifests by digest (content-addressed: never stale), bounded in bytes."""

    def __init__(self, limit: int = MANIFEST_CACHE_BYTES):
        self.limit = limit
        self._items: OrderedDict[str, Manifest] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> Manifest | None:
        with self._lock:
            manifest = self._items.get(digest)
            if manifest is not None:
                self._items.move_to_end(digest)
            return manifest

    def put(self, manifest: Manifest) -> None:
        with self._lock:
            if manifest.digest in self._items:
                return
            self._items[manifest.digest] = manifest
            self._bytes += manifest.size
            while self._bytes > self.limit and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.size


class SourceTrees:
    """Fetches and validates image trees from ``source`` (thread-safe; ``pool`` fetches children)."""

    def __init__(self, source: RegistryClient, pool: InvocationPool):
        self.source = source
        self.pool = pool
        self.cache = ManifestCache()

    def tree(self, src_repo: str, reference: str) -> ImageTree:
        """The manifest at ``reference`` and everything below it, validated (bytes verified)."""
        try:
            top = self.manifest(src_repo, reference)
        except NotFound:
            raise SourceGone(
                f"{self.source.host}/{src_repo}{'@' if is_digest(reference) else ':'}{reference} is not at the "
                "source (deleted since it was listed or pushed?)"
            ) from None
        tree = ImageTree(top)
        self._walk(src_repo, tree.top, tree, 0, {tree.top.digest})
        return tree

    def manifest(self, src_repo: str, reference: str) -> Manifest:
        """One manifest from the source (by digest: from the cache when it is there)."""
        if is_digest(reference):
            cached = self.cache.get(reference)
            if cached is not None:
                return cached
        manifest = self.source.get_manifest(src_repo, reference)
        self.cache.put(manifest)
        return manifest

    def _walk(self, src_repo: str, manifest: Manifest, tree: ImageTree, depth: int, seen: set[str]) -> None:
        blobs = manifest.blobs
        if any(b.size == UNKNOWN_SIZE for b in blobs):  # schema 1: no sizes in the manifest
            blobs = list(self.pool.map(lambda b: self._sized(src_repo, b), blobs))
        tree.blobs_of[manifest.digest] = blobs
        for blob in blobs:
            # one descriptor per blob is placed and checked: the others must say the same size
            first = tree.blobs.setdefault(blob.digest, blob)
            if first.size != blob.size:
                raise InvalidContent(
                    f"manifest {manifest.digest} describes blob {blob.digest} as {blob.size} bytes, "
                    f"another descriptor in the same image as {first.size} bytes"
                )
        if not manifest.is_index:
            return
        if depth >= MAX_INDEX_DEPTH:
            raise InvalidContent(f"index {manifest.digest} nests deeper than {MAX_INDEX_DEPTH} levels")
        children = [c for c in manifest.children if c.digest not in seen]
        tree.children_of[manifest.digest] = [c.digest for c in manifest.children]
        seen.update(c.digest for c in children)
        # fetched in parallel (round trips dominate); the walk goes on in this thread
        fetched = list(self.pool.map(lambda c: self.manifest(src_repo, c.digest), children))
        sizes = {c.digest: c.size for c in fetched}
        for descriptor in manifest.children:  # every descriptor, also of a child met before
            known = self.cache.get(descriptor.digest)
            size = sizes.get(descriptor.digest, known.size if known is not None else None)
            if size is not None and size != descriptor.size:
                raise InvalidContent(
                    f"index {manifest.digest} describes manifest {descriptor.digest} as "
                    f"{descriptor.size} bytes, the manifest is {size} bytes"
                )
        for descriptor, child in zip(children, fetched, strict=True):
            if child.media_type != descriptor.media_type:
                tree.warnings.append(
                    f"index {manifest.digest} declares {descriptor.digest} as {descriptor.media_type}, "
                    f"the registry serves {child.media_type} (copied as served)"
                )
            self._walk(src_repo, child, tree, depth + 1, seen)
            tree.manifests.append(child)

    def _sized(self, src_repo: str, blob: Descriptor) -> Descriptor:
        if blob.size != UNKNOWN_SIZE:
            return blob
        size = self.source.blob_size(src_repo, blob.digest)
        if size is None or size < 0:
            raise InvalidContent(
                f"schema 1 layer {blob.digest} is {'not at the source' if size is None else 'of unknown size there'}"
            )
        return Descriptor(blob.media_type, blob.digest, size)
