"""Manifests and descriptors: parsing and validation of what registries hand us.

A :class:`Manifest` keeps the exact bytes it was fetched as; they are pushed unchanged, so the
digest at the destination is the digest at the source.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sync_core.errors import InvalidContent
from sync_core.registry.jsondoc import parse_json
from sync_core.registry.names import (
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    IMAGE_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_ARTIFACT,
    SCHEMA1,
    SCHEMA1_SIGNED,
    SCHEMA1_TYPES,
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

    @property
    def size(self) -> int:
        return len(self.raw)

    @cached_property
    def entries(self) -> list[Descriptor]:
        """Every entry of an index's ``manifests`` (empty for an image manifest)."""
        if not self.is_index:
            return []
        entries = self.document.get("manifests")
        if not isinstance(entries, list):
            raise InvalidContent(f"index {self.digest} has no manifests list")
        return [Descriptor.parse(e, f"index {self.digest} manifests[{i}]") for i, e in enumerate(entries)]

    @property
    def children(self) -> list[Descriptor]:
        """The manifests an index refers to (entries of a manifest media type)."""
        return [e for e in self.entries if e.media_type in MANIFEST_TYPES]

    @property
    def is_schema1(self) -> bool:
        return self.media_type in SCHEMA1_TYPES

    @cached_property
    def config(self) -> Descriptor | None:
        if self.is_index or self.media_type == OCI_ARTIFACT or self.is_schema1:
            return None
        return Descriptor.parse(self.document.get("config"), f"manifest {self.digest} config")

    @cached_property
    def layers(self) -> list[Descriptor]:
        """Layers of an image manifest; the ``blobs`` of an OCI 1.1-rc artifact manifest."""
        if self.is_index:
            return []
        if self.is_schema1:
            return _schema1_layers(self.document, self.digest)
        key = "blobs" if self.media_type == OCI_ARTIFACT else "layers"
        entries = self.document.get(key)
        if entries is None and self.media_type != DOCKER_MANIFEST:
            return []  # OCI artifacts may have no layers
        if not isinstance(entries, list):
            raise InvalidContent(f"manifest {self.digest} has no {key} list")
        return [Descriptor.parse(e, f"manifest {self.digest} {key}[{i}]") for i, e in enumerate(entries)]

    @property
    def blobs(self) -> list[Descriptor]:
        """The blobs a registry must hold before it accepts this manifest.

        Config and (distributable) layers of an image; the entries of an index that are not
        manifests (a BuildKit cache index lists its layers and cache config there).
        """
        if self.is_index:
            return [e for e in self.entries if e.media_type not in MANIFEST_TYPES]
        found = [] if self.config is None else [self.config]
        found.extend(layer for layer in self.layers if not layer.non_distributable)
        return found

    @cached_property
    def subject(self) -> Descriptor | None:
        """The manifest this one refers to (a signature, SBOM or attestation's image)."""
        value = self.document.get("subject")
        return None if value is None else Descriptor.parse(value, f"manifest {self.digest} subject")

    @property
    def artifact_type(self) -> str | None:
        value = self.document.get("artifactType")
        return value if isinstance(value, str) and value else None

    @property
    def annotations(self) -> dict[str, str]:
        value = self.document.get("annotations")
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    @property
    def referrer_type(self) -> str | None:
        """The artifact type a referrers listing shows for this manifest (distribution-spec 1.1).

        ``artifactType``, else the config's media type (an image manifest); an index without
        ``artifactType`` has none.
        """
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config is not None else None

    def referrer_descriptor(self) -> dict[str, Any]:
        """This manifest's entry in a referrers list (the fallback tag's index)."""
        entry: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.referrer_type:
            entry["artifactType"] = self.referrer_type
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry

    def media_types(self) -> set[str]:
        """Every media/artifact type this manifest itself declares (for target skip rules)."""
        types = {self.media_type}
        if self.artifact_type:
            types.add(self.artifact_type)
        if self.config is not None:
            types.add(self.config.media_type)
        types.update(layer.media_type for layer in self.layers)
        types.update(e.media_type for e in self.blobs if self.is_index)
        types.update(c.artifact_type for c in self.children if c.artifact_type)
        return types

    def validate(self) -> Manifest:
        """Parse every part now, so that malformed content fails before anything is written."""
        _ = self.entries, self.config, self.layers, self.subject
        return self


UNKNOWN_SIZE = -1  # schema 1 lists no blob sizes: the copier asks the source


def _schema1_layers(document: dict[str, Any], digest: str) -> list[Descriptor]:
    """The distinct ``fsLayers`` of a schema 1 manifest (sizes unknown, ``UNKNOWN_SIZE``)."""
    layers = document.get("fsLayers")
    if not isinstance(layers, list) or not layers:
        raise InvalidContent(f"schema 1 manifest {digest} has no fsLayers list")
    found: dict[str, Descriptor] = {}
    for i, layer in enumerate(layers):
        blob = layer.get("blobSum") if isinstance(layer, dict) else None
        try:
            found.setdefault(check_digest(blob), Descriptor(DOCKER_LAYER, check_digest(blob), UNKNOWN_SIZE))
        except InvalidContent:
            raise InvalidContent(
                f"schema 1 manifest {digest} fsLayers[{i}]: invalid blobSum {blob!r}"
            ) from None
    return list(found.values())


def schema1_payload(raw: bytes, where: str) -> bytes:
    """What a signed schema 1 manifest's digest is computed over: the bytes without the JWS.

    The first signature's protected header names how long the payload is (``formatLength``) and
    the text that closes it (``formatTail``, base64url), as libtrust writes them.
    """
    try:
        signatures = parse_json(raw, "manifest", dict)["signatures"]
        header = signatures[0]["protected"]
        protected = parse_json(
            base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)), "protected header", dict
        )
        length, tail = protected["formatLength"], protected["formatTail"]
        if not isinstance(length, int) or not 0 < length <= len(raw):
            raise ValueError("formatLength")
        return raw[:length] + base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))
    except (InvalidContent, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InvalidContent(
            f"{where}: signed schema 1 manifest with an unreadable signature ({exc})"
        ) from None


def _schema1_payload_digest(raw: bytes, where: str, expected: str) -> str | None:
    """The payload digest if ``raw`` is a signed schema 1 manifest, else None."""
    if b'"signatures"' not in raw:
        return None
    try:
        return digest_of(schema1_payload(raw, where), expected.split(":", 1)[0])
    except InvalidContent:
        return None


def parse_manifest(
    raw: bytes, content_type: str | None, where: str, expected_digest: str | None = None
) -> Manifest:
    """Validate manifest bytes from a registry and wrap them in a :class:`Manifest`."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidContent(
            f"{where}: manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
        )
    # bytes damaged on the way are a DigestMismatch (retried), whatever they look like now
    if expected_digest and digest_of(raw, check_digest(expected_digest).split(":", 1)[0]) != expected_digest:
        if _schema1_payload_digest(raw, where, expected_digest) != expected_digest:
            verify_digest(raw, expected_digest, f"{where}: manifest")  # raises DigestMismatch
    document = parse_json(raw, f"{where}: manifest", dict)
    declared = document.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip()
    media_type = declared if isinstance(declared, str) and declared else header
    if document.get("schemaVersion") == 1:
        media_type = SCHEMA1_SIGNED if "signatures" in document else SCHEMA1
    schema = document.get("schemaVersion")
    if not (
        schema == 2
        or (schema == 1 and media_type in SCHEMA1_TYPES)
        or (media_type == OCI_ARTIFACT and "schemaVersion" not in document)
    ):
        raise InvalidContent(f"{where}: unsupported manifest schemaVersion {schema!r}")
    if media_type in SCHEMA1_TYPES and schema != 1:
        raise InvalidContent(f"{where}: manifest declares {media_type} but is schemaVersion {schema!r}")
    # a signed schema 1 manifest's digest is that of its payload (registries compute it so)
    digest = expected_digest or digest_of(
        schema1_payload(raw, where) if media_type == SCHEMA1_SIGNED else raw
    )
    if media_type not in MANIFEST_TYPES:
        raise InvalidContent(f"{where}: unsupported manifest media type {media_type!r}")
    manifest = Manifest(raw, media_type, digest)
    manifest.__dict__["document"] = document  # already parsed
    if media_type in IMAGE_TYPES and "manifests" in document and "layers" not in document:
        raise InvalidContent(f"{where}: manifest declares {media_type} but looks like an index")
    return manifest.validate()
