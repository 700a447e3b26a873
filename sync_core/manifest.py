"""Manifests and descriptors: parsing and validation of what registries hand us.

A :class:`Manifest` keeps the exact bytes it was fetched as; they are pushed unchanged, so the
digest at the destination is the digest at the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import InvalidContent
from .jsondoc import parse_json
from .names import (
    DOCKER_MANIFEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    check_digest,
    digest_of,
    verify_digest,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
NON_DISTRIBUTABLE_MARKERS = ("foreign", "nondistributable")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    platform: dict[str, Any] | None = field(default=None, compare=False)
    urls: tuple[str, ...] = ()

    @property
    def non_distributable(self) -> bool:
        """Foreign/non-distributable layers live elsewhere (``urls``); registries do not hold them."""
        return bool(self.urls) and any(m in self.media_type for m in NON_DISTRIBUTABLE_MARKERS)

    @classmethod
    def parse(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise InvalidContent(f"{where}: descriptor is not an object")
        media_type = value.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidContent(f"{where}: descriptor has no mediaType")
        try:
            digest = check_digest(value.get("digest"))
        except InvalidContent as exc:
            raise InvalidContent(f"{where}: {exc}") from None
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidContent(f"{where}: descriptor {digest} has an invalid size {size!r}")
        artifact_type = value.get("artifactType")
        platform = value.get("platform")
        urls = value.get("urls") or ()
        if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
            raise InvalidContent(f"{where}: descriptor {digest} has invalid urls")
        return cls(
            media_type,
            digest,
            size,
            artifact_type if isinstance(artifact_type, str) else None,
            platform if isinstance(platform, dict) else None,
            tuple(urls),
        )


@dataclass(frozen=True)
class Manifest:
    raw: bytes = field(repr=False)
    media_type: str
    digest: str

    @cached_property
    def document(self) -> dict[str, Any]:
        return parse_json(self.raw, f"manifest {self.digest}", dict)  # type: ignore[no-any-return]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @cached_property
    def children(self) -> list[Descriptor]:
        """The manifests an index refers to (empty for an image manifest)."""
        if not self.is_index:
            return []
        entries = self.document.get("manifests")
        if not isinstance(entries, list):
            raise InvalidContent(f"index {self.digest} has no manifests list")
        children = [Descriptor.parse(e, f"index {self.digest} manifests[{i}]") for i, e in enumerate(entries)]
        for child in children:
            if child.media_type not in MANIFEST_TYPES:
                raise InvalidContent(
                    f"index {self.digest} refers to {child.digest} of unsupported media type {child.media_type!r}"
                )
        return children

    @cached_property
    def config(self) -> Descriptor | None:
        if self.is_index:
            return None
        return Descriptor.parse(self.document.get("config"), f"manifest {self.digest} config")

    @cached_property
    def layers(self) -> list[Descriptor]:
        if self.is_index:
            return []
        entries = self.document.get("layers")
        if entries is None and self.media_type != DOCKER_MANIFEST:
            return []  # OCI artifacts may have no layers
        if not isinstance(entries, list):
            raise InvalidContent(f"manifest {self.digest} has no layers list")
        return [Descriptor.parse(e, f"manifest {self.digest} layers[{i}]") for i, e in enumerate(entries)]

    @property
    def blobs(self) -> list[Descriptor]:
        """Config and layers that a registry must hold before it accepts this manifest."""
        found = [] if self.config is None else [self.config]
        found.extend(layer for layer in self.layers if not layer.non_distributable)
        return found

    @property
    def artifact_type(self) -> str | None:
        value = self.document.get("artifactType")
        return value if isinstance(value, str) else None

    def media_types(self) -> set[str]:
        """Every media/artifact type this manifest itself declares (for target skip rules)."""
        types = {self.media_type}
        if self.artifact_type:
            types.add(self.artifact_type)
        if self.config is not None:
            types.add(self.config.media_type)
        types.update(layer.media_type for layer in self.layers)
        types.update(c.artifact_type for c in self.children if c.artifact_type)
        return types

    def validate(self) -> Manifest:
        """Parse every part now, so that malformed content fails before anything is written."""
        _ = self.children, self.config, self.layers
        return self


def parse_manifest(
    raw: bytes, content_type: str | None, where: str, expected_digest: str | None = None
) -> Manifest:
    """Validate manifest bytes from a registry and wrap them in a :class:`Manifest`."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidContent(
            f"{where}: manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
        )
    if expected_digest:
        verify_digest(raw, expected_digest, f"{where}: manifest")
        digest = expected_digest
    else:
        digest = digest_of(raw)
    document = parse_json(raw, f"{where}: manifest", dict)
    if document.get("schemaVersion") != 2:
        raise InvalidContent(f"{where}: unsupported manifest schemaVersion {document.get('schemaVersion')!r}")
    declared = document.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip()
    media_type = declared if isinstance(declared, str) and declared else header
    if media_type not in MANIFEST_TYPES:
        raise InvalidContent(f"{where}: unsupported manifest media type {media_type!r}")
    manifest = Manifest(raw, media_type, digest)
    manifest.__dict__["document"] = document  # already parsed
    if media_type in IMAGE_TYPES and "manifests" in document and "layers" not in document:
        raise InvalidContent(f"{where}: manifest declares {media_type} but looks like an index")
    return manifest.validate()
