"""Synthetic, deterministic images and a minimal, independent OCI pusher.

Nothing here imports ``sync_core``: the harness must not share code with what it tests.

Every builder takes a ``seed`` string; the same seed gives the same bytes and digests. Layer
content is pseudo-random (SHAKE-256 of the seed), so layers differ unless a :class:`Blob` is
passed in on purpose (``base_layer=``). Layers are *not* valid tarballs (registries and
``skopeo copy`` between registries do not care); the Helm chart layer is a real ``.tgz``.

Manifests are serialized once, with 3-space indentation like the Docker CLI (not the compact
form a naive ``json.dumps`` would give back), and :class:`Manifest` keeps those exact bytes:
any code that re-serializes a manifest will change its digest and be caught.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import requests

# -- media types -------------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
#: The OCI 1.1 release candidates' artifact manifest (``blobs``, no ``config``; removed in 1.1.0).
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"

MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
#: The Accept header sent on every manifest GET/HEAD.
ACCEPT = ", ".join(MANIFEST_TYPES)

EMPTY_JSON = b"{}"
_CREATED = "2024-01-01T00:00:00Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pseudo_random(seed: str, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes derived from ``seed``."""
    if size <= 0:
        return b""
    return hashlib.shake_256(seed.encode()).digest(size)


def _dump(obj) -> bytes:
    return json.dumps(obj, indent=3).encode()


# -- model ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Blob:
    data: bytes
    media_type: str = OCI_LAYER

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, annotations: dict | None = None) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if annotations:
            d["annotations"] = dict(annotations)
        return d

    def retyped(self, media_type: str) -> Blob:
        """The same bytes (same digest) described with another media type."""
        return self if media_type == self.media_type else Blob(self.data, media_type)

    def __eq__(self, other) -> bool:
        return isinstance(other, Blob) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Blob({self.digest[:19]}, {self.size}B, {self.media_type})"


@dataclass(frozen=True, eq=False)
class Manifest:
    """Exact manifest bytes plus what must exist before it can be pushed.

    ``blobs``: config and layers referenced by this manifest. ``children``: manifests an index
    refers to. ``subject``: the manifest an artifact refers to (not pushed with it).
    """

    raw: bytes
    media_type: str
    blobs: tuple[Blob, ...] = ()
    children: tuple[Manifest, ...] = ()
    subject: Manifest | None = None
    platform: dict | None = field(default=None, compare=False)
    payload: bytes | None = field(default=None, repr=False)  # signed schema 1: what the digest covers

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.raw if self.payload is None else self.payload)

    @property
    def size(self) -> int:
        return len(self.raw)

    @cached_property
    def json(self) -> dict:
        return json.loads(self.raw)

    @property
    def artifact_type(self) -> str | None:
        return self.json.get("artifactType")

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_LIST)

    def descriptor(
        self, platform: dict | None = None, annotations: dict | None = None, artifact_type: str | None = None
    ) -> dict:
        d: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if artifact_type:
            d["artifactType"] = artifact_type
        if platform:
            d["platform"] = dict(platform)
        if annotations:
            d["annotations"] = dict(annotations)
        return d

    def walk(self) -> Iterator[Manifest]:
        """This manifest and all children, children first (push order)."""
        for child in self.children:
            yield from child.walk()
        yield self

    def all_blobs(self) -> list[Blob]:
        """Unique blobs of this manifest and all its children."""
        seen: dict[str, Blob] = {}
        for m in self.walk():
            for b in m.blobs:
                seen.setdefault(b.digest, b)
        return list(seen.values())

    def __eq__(self, other) -> bool:
        return isinstance(other, Manifest) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Manifest({self.digest[:19]}, {self.media_type}, {self.size}B)"


# -- builders -----------------------------------------------------------------------------------


def layer(seed: str, size: int, media_type: str = OCI_LAYER) -> Blob:
    """A pseudo-random layer of exactly ``size`` bytes."""
    return Blob(pseudo_random(f"layer:{seed}", size), media_type)


def empty_blob() -> Blob:
    """The 2-byte ``{}`` blob (``application/vnd.oci.empty.v1+json``)."""
    return Blob(EMPTY_JSON, OCI_EMPTY)


def _image_config(seed: str, layers: Sequence[Blob], os_: str, arch: str, variant: str | None) -> bytes:
    cfg: dict = {
        "architecture": arch,
        "os": os_,
        "created": _CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.registry-sync.test.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b.data) for b in layers]},
        "history": [{"created": _CREATED, "created_by": f"synthetic layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    return _dump(cfg)


def _platform(os_: str, arch: str, variant: str | None = None) -> dict:
    p = {"architecture": arch, "os": os_}
    if variant:
        p["variant"] = variant
    return p


def _split_platform(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant]: {platform!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _single_image(
    seed: str,
    layer_sizes: Sequence[int],
    base_layer: Blob | None,
    platform: str,
    annotations: dict | None,
    *,
    manifest_type: str,
    config_type: str,
    layer_type: str,
) -> Manifest:
    os_, arch, variant = _split_platform(platform)
    layers = [base_layer.retyped(layer_type)] if base_layer is not None else []
    layers += [layer(f"{seed}:{platform}:{i}", n, layer_type) for i, n in enumerate(layer_sizes)]
    config = Blob(_image_config(seed, layers, os_, arch, variant), config_type)
    body: dict = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    if annotations:
        body["annotations"] = dict(annotations)
    return Manifest(_dump(body), manifest_type, (config, *layers), platform=_platform(os_, arch, variant))


def oci_image(
    seed: str,
    layer_sizes: Sequence[int] = (512, 1024),
    *,
    base_layer: Blob | None = None,
    platform: str = "linux/amd64",
    annotations: dict | None = None,
    layer_type: str = OCI_LAYER,
) -> Manifest:
    """OCI single-platform image: config + ``base_layer`` (if any) + one layer per size.

    ``layer_type``: e.g. :data:`OCI_LAYER_ZSTD` for a ``buildx --output compression=zstd`` image.
    """
    return _single_image(
        seed,
        layer_sizes,
        base_layer,
        platform,
        annotations,
        manifest_type=OCI_MANIFEST,
        config_type=OCI_CONFIG,
        layer_type=layer_type,
    )


def docker_image(
    seed: str,
    layer_sizes: Sequence[int] = (512, 1024),
    *,
    base_layer: Blob | None = None,
    platform: str = "linux/amd64",
) -> Manifest:
    """Docker v2 schema2 image (``base_layer`` keeps its digest, described as a Docker layer)."""
    return _single_image(
        seed,
        layer_sizes,
        base_layer,
        platform,
        None,
        manifest_type=DOCKER_MANIFEST,
        config_type=DOCKER_CONFIG,
        layer_type=DOCKER_LAYER,
    )


def attestation_manifest(seed: str, subject: Manifest) -> Manifest:
    """A buildx-style attestation manifest (in-toto SBOM + provenance) for ``subject``."""
    sbom = Blob(
        _dump(
            {
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://spdx.dev/Document",
                "subject": [{"name": "pkg:docker/synthetic", "digest": {"sha256": subject.digest[7:]}}],
                "predicate": {"spdxVersion": "SPDX-2.3", "name": f"sbom-{seed}"},
            }
        ),
        IN_TOTO,
    )
    provenance = Blob(
        _dump(
            {
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://slsa.dev/provenance/v0.2",
                "subject": [{"name": "pkg:docker/synthetic", "digest": {"sha256": subject.digest[7:]}}],
                "predicate": {"builder": {"id": f"synthetic-{seed}"}},
            }
        ),
        IN_TOTO,
    )
    config = Blob(
        _dump(
            {
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sbom.digest, provenance.digest]},
            }
        ),
        OCI_CONFIG,
    )
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            sbom.descriptor({"in-toto.io/predicate-type": "https://spdx.dev/Document"}),
            provenance.descriptor({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}),
        ],
    }
    return Manifest(
        _dump(body), OCI_MANIFEST, (config, sbom, provenance), platform=_platform("unknown", "unknown")
    )


def oci_index(
    seed: str,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    layer_sizes: Sequence[int] = (512, 1024),
    *,
    base_layer: Blob | None = None,
    attestations: bool = True,
    annotations: dict | None = None,
) -> Manifest:
    """OCI index of one OCI image per platform (all sharing ``base_layer`` if given) plus,
    with ``attestations``, one buildx-style attestation manifest per platform image."""
    images = [oci_image(f"{seed}:{p}", layer_sizes, base_layer=base_layer, platform=p) for p in platforms]
    entries = [m.descriptor(platform=m.platform) for m in images]
    children: list[Manifest] = list(images)
    if attestations:
        for img in images:
            att = attestation_manifest(f"{seed}:{img.digest}", img)
            children.append(att)
            entries.append(
                att.descriptor(
                    platform=_platform("unknown", "unknown"),
                    annotations={
                        "vnd.docker.reference.digest": img.digest,
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                )
            )
    body: dict = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    if annotations:
        body["annotations"] = dict(annotations)
    return Manifest(_dump(body), OCI_INDEX, (), tuple(children))


def docker_manifest_list(
    seed: str,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64/v8"),
    layer_sizes: Sequence[int] = (512, 1024),
    *,
    base_layer: Blob | None = None,
) -> Manifest:
    """Docker manifest list of one Docker v2 image per platform."""
    images = [docker_image(f"{seed}:{p}", layer_sizes, base_layer=base_layer, platform=p) for p in platforms]
    body = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [m.descriptor(platform=m.platform) for m in images],
    }
    return Manifest(_dump(body), DOCKER_LIST, (), tuple(images))


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1704067200
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    # level 0 (stored blocks): byte-identical whatever the zlib version
    return gzip.compress(buf.getvalue(), compresslevel=0, mtime=0)


def helm_chart(seed: str, name: str = "hello", version: str = "0.1.0") -> Manifest:
    """A Helm 3 chart stored as an OCI artifact."""
    chart_yaml = (
        f"apiVersion: v2\nname: {name}\nversion: {version}\n"
        f"description: synthetic chart {seed}\ntype: application\n"
    ).encode()
    values = f"seed: {json.dumps(seed)}\nreplicaCount: 1\n".encode()
    content = Blob(_tgz({f"{name}/Chart.yaml": chart_yaml, f"{name}/values.yaml": values}), HELM_CHART)
    config = Blob(
        json.dumps(
            {
                "name": name,
                "version": version,
                "description": f"synthetic chart {seed}",
                "apiVersion": "v2",
                "type": "application",
            }
        ).encode(),
        HELM_CONFIG,
    )
    body = {
        "schemaVersion": 2,
        "config": config.descriptor(),
        "layers": [content.descriptor()],
        "annotations": {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
        },
    }
    # Helm does not write "mediaType" into the manifest body; it is pushed as an OCI manifest.
    return Manifest(_dump(body), OCI_MANIFEST, (config, content))


def signature(seed: str, subject: Manifest, artifact_type: str = COSIGN_SIG_ARTIFACT) -> Manifest:
    """An OCI 1.1 artifact manifest with ``subject`` (a cosign-like signature)."""
    payload = Blob(
        json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": "synthetic"},
                    "image": {"docker-manifest-digest": subject.digest},
                    "type": "cosign container image signature",
                },
                "optional": {"seed": seed},
            }
        ).encode(),
        COSIGN_SIMPLESIGNING,
    )
    config = empty_blob()
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [
            payload.descriptor(
                {
                    "dev.cosignproject.cosign/signature": pseudo_random(f"sig:{seed}", 48).hex(),
                }
            )
        ],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": _CREATED},
    }
    return Manifest(_dump(body), OCI_MANIFEST, (config, payload), subject=subject)


DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def schema1_image(seed: str, name: str, tag: str, layer_sizes: Sequence[int] = (512,)) -> Manifest:
    """A signed Docker schema 1 manifest (libtrust JWS, ES256), as old registries still hold.

    Its digest is that of the payload: the bytes without the ``signatures`` member, which the
    protected header describes (``formatLength``, ``formatTail``).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    layers = [layer(f"{seed}-{i}", size, DOCKER_LAYER) for i, size in enumerate(layer_sizes)]
    body = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [{"blobSum": b.digest} for b in reversed(layers)],
        "history": [
            {"v1Compatibility": json.dumps({"id": hashlib.sha256(f"{seed}{i}".encode()).hexdigest()})}
            for i in range(len(layers))
        ],
    }
    payload = json.dumps(body, indent=3).encode()
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    cut = len(payload) - 2  # formatLength: up to the closing "\n}"
    protected = _b64url(
        json.dumps({"formatLength": cut, "formatTail": _b64url(payload[cut:]), "time": _CREATED}).encode()
    )
    r, s = decode_dss_signature(
        key.sign(f"{protected}.{_b64url(payload)}".encode(), ec.ECDSA(hashes.SHA256()))
    )
    signatures = [
        {
            "header": {"jwk": jwk, "alg": "ES256"},
            "protected": protected,
            "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        }
    ]
    raw = (
        payload[:cut]
        + b',\n   "signatures": '
        + json.dumps(signatures, indent=3).replace("\n", "\n   ").encode()
    )
    raw += payload[cut:]
    return Manifest(raw, DOCKER_SCHEMA1_SIGNED, tuple(layers), payload=payload)


def digest_tag(digest: str, suffix: str = "sig") -> str:
    """The cosign / referrers-fallback tag for a digest: ``sha256-<hex>.sig``."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}.{suffix}" if suffix else f"{alg}-{hexpart}"


# -- real-world shapes (tests/engine/test_shapes.py) ------------------------------------------------------


def annotated(manifest: Manifest, annotations: dict) -> Manifest:
    """``manifest`` with ``annotations`` added: another digest, the same blobs and children."""
    body = manifest.json | {"annotations": {**manifest.json.get("annotations", {}), **annotations}}
    return Manifest(
        _dump(body),
        manifest.media_type,
        manifest.blobs,
        manifest.children,
        manifest.subject,
        manifest.platform,
    )


def index_of(children: Sequence[Manifest], entries: Sequence[dict] | None = None) -> Manifest:
    """An OCI index of ``children`` (each described with its platform), or of ``entries`` as
    given (descriptors of ``children`` altered on purpose)."""
    listed = [c.descriptor(platform=c.platform) for c in children] if entries is None else list(entries)
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
    return Manifest(_dump(body), OCI_INDEX, (), tuple(children))


def misdescribed(manifest: Manifest, blob: Blob, size: int) -> Manifest:
    """``manifest`` whose descriptors of ``blob`` (config or layer) say ``size`` bytes.

    distribution 2.8 stores such a manifest (it checks that blobs exist, not their sizes).
    """
    body = manifest.json
    for entry in [body.get("config") or {}, *body.get("layers", ())]:
        if entry.get("digest") == blob.digest:
            entry["size"] = size
    return Manifest(_dump(body), manifest.media_type, manifest.blobs, platform=manifest.platform)


def foreign_layer_image(seed: str, layer_sizes: Sequence[int] = (512,), *, oci: bool = False) -> Manifest:
    """A Windows-style image whose base layer is foreign (non-distributable): described with
    ``urls`` and never pushed to a registry, so it is not among ``blobs``.

    Docker v2 with ``application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`` (``oci``: OCI
    with the non-distributable layer type). distribution 2.8 refuses such manifests unless
    ``validation.manifests.urls.allow`` admits the URL (see ``registry.FOREIGN_URLS_ALLOWED``).
    """
    foreign = layer(f"{seed}:foreign", 4096, OCI_NONDISTRIBUTABLE if oci else DOCKER_FOREIGN_LAYER)
    layers = [layer(f"{seed}:{i}", n, OCI_LAYER if oci else DOCKER_LAYER) for i, n in enumerate(layer_sizes)]
    config = Blob(
        _image_config(seed, [foreign, *layers], "windows", "amd64", None),
        OCI_CONFIG if oci else DOCKER_CONFIG,
    )
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    url = f"https://mcr.microsoft.com/v2/windows/servercore/blobs/{foreign.digest}"
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [{**foreign.descriptor(), "urls": [url]}, *(b.descriptor() for b in layers)],
    }
    return Manifest(_dump(body), media_type, (config, *layers), platform=_platform("windows", "amd64"))


def buildkit_cache_index(
    seed: str, layer_sizes: Sequence[int] = (300, 200), media_type: str = OCI_INDEX
) -> Manifest:
    """A BuildKit registry cache (``--cache-to type=registry``, ``image-manifest=false``): an
    index whose ``manifests`` are the cached layer *blobs* and the cache config, not manifests
    (``media_type``: :data:`DOCKER_LIST` with ``oci-mediatypes=false``)."""
    layers = [layer(f"{seed}:{i}", n) for i, n in enumerate(layer_sizes)]
    config = Blob(
        _dump(
            {
                "layers": [{"blob": b.digest, "parent": i - 1} for i, b in enumerate(layers)],
                "records": [
                    {"digest": sha256_digest(f"{seed}:record:{i}".encode()), "layers": [{"layer": i}]}
                    for i in range(len(layers))
                ],
            }
        ),
        BUILDKIT_CACHE_CONFIG,
    )
    entries = [
        b.descriptor(
            {"buildkit/createdat": _CREATED, "containerd.io/uncompressed": sha256_digest(b.data[::-1])}
        )
        for b in layers
    ]
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": [*entries, config.descriptor()]}
    return Manifest(_dump(body), media_type, (*layers, config))


def oci_artifact(
    seed: str,
    artifact_type: str,
    subject: Manifest | None = None,
    blob_sizes: Sequence[int] = (200,),
    blob_type: str = "application/vnd.example.data.v1",
) -> Manifest:
    """An OCI 1.1 artifact as ``oras push --artifact-type`` writes it: an image manifest with
    ``artifactType``, the empty config (``application/vnd.oci.empty.v1+json``) and ``subject``
    when given."""
    blobs = [layer(f"{seed}:{i}", n, blob_type) for i, n in enumerate(blob_sizes)]
    config = empty_blob()
    body: dict = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": config.descriptor(),
        "layers": [
            b.descriptor({"org.opencontainers.image.title": f"{seed}-{i}"}) for i, b in enumerate(blobs)
        ],
    }
    if subject is not None:
        body["subject"] = subject.descriptor()
    body["annotations"] = {"org.opencontainers.image.created": _CREATED}
    return Manifest(_dump(body), OCI_MANIFEST, (config, *blobs), subject=subject)


def artifact_manifest(
    seed: str,
    subject: Manifest | None = None,
    artifact_type: str = "application/vnd.example.sbom.v1",
    blob_sizes: Sequence[int] = (200,),
) -> Manifest:
    """An OCI 1.1-rc artifact manifest (``application/vnd.oci.artifact.manifest.v1+json``):
    ``blobs`` instead of config and layers, no ``schemaVersion``. oras 1.0-rc pushed these and
    ACR still serves them; distribution 2.8 refuses to store one (400 MANIFEST_INVALID)."""
    blobs = [layer(f"{seed}:{i}", n, "application/vnd.example.data.v1") for i, n in enumerate(blob_sizes)]
    body: dict = {
        "mediaType": OCI_ARTIFACT,
        "artifactType": artifact_type,
        "blobs": [b.descriptor() for b in blobs],
    }
    if subject is not None:
        body["subject"] = subject.descriptor()
    body["annotations"] = {"org.opencontainers.artifact.created": _CREATED}
    return Manifest(_dump(body), OCI_ARTIFACT, tuple(blobs), subject=subject)


def referrer_type(manifest: Manifest) -> str | None:
    """The artifact type a referrers listing shows: ``artifactType``, else the config's type."""
    return manifest.artifact_type or (manifest.json.get("config") or {}).get("mediaType")


def referrers_index(referrers: Sequence[Manifest]) -> Manifest:
    """The referrers tag schema's index (tagged ``sha256-<hex of the subject>``) listing
    ``referrers`` (its children: pushing it pushes them first)."""
    entries = []
    for referrer in referrers:
        entry = referrer.descriptor(artifact_type=referrer_type(referrer))
        if referrer.json.get("annotations"):
            entry["annotations"] = referrer.json["annotations"]
        entries.append(entry)
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return Manifest(_dump(body), OCI_INDEX, (), tuple(referrers))


def referrer_index(seed: str, subject: Manifest, artifact_type: str, parts: int = 2) -> Manifest:
    """An index that is itself a referrer (``subject``, ``artifactType``): e.g. a bundle of
    per-platform SBOMs attached to a multi-platform image."""
    children = [oci_image(f"{seed}:part{i}", (64,)) for i in range(parts)]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": artifact_type,
        "manifests": [c.descriptor() for c in children],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": _CREATED},
    }
    return Manifest(_dump(body), OCI_INDEX, (), tuple(children), subject=subject)


def nested_index(seed: str, depth: int, leaf: Manifest | None = None) -> Manifest:
    """``depth`` indexes, each the only child of the one above (depth 1: an index of ``leaf``)."""
    current = leaf or oci_image(f"{seed}:leaf", (128,))
    for level in range(depth):
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [current.descriptor(platform=current.platform)],
            "annotations": {"org.example.level": str(depth - level)},
        }
        current = Manifest(_dump(body), OCI_INDEX, (), (current,))
    return current


def ggcr_index(seed: str, child: Manifest) -> Manifest:
    """An index whose descriptor says OCI manifest for a ``child`` served as Docker v2 (as some
    go-containerregistry versions wrote them): the descriptor's type is not the served one."""
    entry = child.descriptor(platform=child.platform or _platform("linux", "amd64"))
    entry["mediaType"] = OCI_MANIFEST
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry],
        "annotations": {"org.example.seed": seed},
    }
    return Manifest(_dump(body), OCI_INDEX, (), (child,))


def _cosign_manifest(seed: str, subject: Manifest, layer_blob: Blob, annotations: dict) -> Manifest:
    config = Blob(
        json.dumps(
            {
                "architecture": "",
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [layer_blob.digest]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode(),
        OCI_CONFIG,
    )
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer_blob.descriptor(annotations)],
    }
    return Manifest(json.dumps(body, separators=(",", ":")).encode(), OCI_MANIFEST, (config, layer_blob))


def cosign_signature(seed: str, subject: Manifest) -> Manifest:
    """cosign's tag-based signature (tag ``sha256-<hex>.sig``): no ``subject``, a simplesigning
    layer with the signature in an annotation. Compact JSON, as cosign writes it."""
    payload = Blob(
        json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": "synthetic"},
                    "image": {"docker-manifest-digest": subject.digest},
                    "type": "cosign container image signature",
                },
                "optional": None,
            },
            separators=(",", ":"),
        ).encode(),
        COSIGN_SIMPLESIGNING,
    )
    signature_ = pseudo_random(f"cosign-sig:{seed}", 70).hex()
    return _cosign_manifest(seed, subject, payload, {"dev.cosignproject.cosign/signature": signature_})


def cosign_attestation(seed: str, subject: Manifest) -> Manifest:
    """cosign's tag-based attestation (tag ``sha256-<hex>.att``): a DSSE envelope layer."""
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "synthetic", "digest": {"sha256": subject.digest[7:]}}],
            "predicate": {"seed": seed},
        }
    ).encode()
    envelope = Blob(
        json.dumps(
            {
                "payloadType": "application/vnd.in-toto+json",
                "payload": statement.hex(),
                "signatures": [{"sig": pseudo_random(f"cosign-att:{seed}", 64).hex()}],
            }
        ).encode(),
        DSSE_ENVELOPE,
    )
    return _cosign_manifest(seed, subject, envelope, {"predicateType": "https://slsa.dev/provenance/v0.2"})


# -- pusher ---------------------------------------------------------------------------------------

TokenProvider = Callable[[list[str]], str]


class RegistryHTTPError(RuntimeError):
    def __init__(self, response: requests.Response, what: str):
        self.response = response
        self.status_code = response.status_code
        super().__init__(f"{what}: HTTP {response.status_code} {response.text[:500]}")


class Pusher:
    """A deliberately small OCI client (plain ``requests``), independent of ``sync_core``.

    Auth: ``token_provider(scopes) -> token`` for token registries (see :meth:`for_issuer`),
    ``basic_auth=(user, password)`` for htpasswd registries, or nothing. Tokens are requested
    per repository for ``actions`` (``repository:<repo>:pull,push,delete``) and cached; a 401
    is retried once with a fresh token.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider | None = None,
        *,
        basic_auth: tuple[str, str] | None = None,
        actions: Iterable[str] = ("pull", "push", "delete"),
        timeout: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.token_provider = token_provider
        self.basic_auth = basic_auth
        self.actions = ",".join(actions)
        self.timeout = timeout
        self.session = requests.Session()
        self._tokens: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_issuer(cls, base_url: str, issuer, lifetime: int = 3600, **kwargs) -> Pusher:
        """Tokens minted directly by a :class:`~tests.harness.tokens.TokenIssuer` (fixed
        long lifetime, so tests that change ``issuer.lifetime`` do not affect the pusher)."""
        return cls(base_url, lambda scopes: issuer.mint(scopes, lifetime=lifetime), **kwargs)

    # -- plumbing ---------------------------------------------------------------------------

    def _scopes(self, repo: str | None) -> list[str]:
        return [f"repository:{repo}:{self.actions}"] if repo else ["registry:catalog:*"]

    def _auth(self, repo: str | None, fresh: bool = False) -> dict:
        if self.token_provider is not None:
            key = tuple(self._scopes(repo))
            with self._lock:
                if fresh or key not in self._tokens:
                    self._tokens[key] = self.token_provider(list(key))
                return {"Authorization": f"Bearer {self._tokens[key]}"}
        return {}

    def request(self, method: str, path_or_url: str, repo: str | None, **kwargs) -> requests.Response:
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        headers = dict(kwargs.pop("headers", {}) or {})
        kwargs.setdefault("timeout", self.timeout)
        if self.basic_auth is not None:
            kwargs.setdefault("auth", self.basic_auth)
        resp = self.session.request(method, url, headers={**headers, **self._auth(repo)}, **kwargs)
        if resp.status_code == 401 and self.token_provider is not None:
            resp = self.session.request(
                method, url, headers={**headers, **self._auth(repo, fresh=True)}, **kwargs
            )
        return resp

    # -- blobs ------------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        if r.status_code in (200, 404):
            return r.status_code == 200
        raise RegistryHTTPError(r, f"HEAD blob {repo}@{digest}")

    def push_blob(self, repo: str, blob: Blob) -> bool:
        """Upload unless present (POST, then monolithic PUT). True if it was uploaded."""
        if self.blob_exists(repo, blob.digest):
            return False
        self.upload_blob(repo, blob.digest, blob.data)
        return True

    def upload_blob(self, repo: str, digest: str, data, timeout: float | None = None) -> None:
        """POST, then one PUT of ``data`` (bytes, or a file-like object with a length to stream)."""
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo, data=b"")
        if r.status_code != 202:
            raise RegistryHTTPError(r, f"start upload {repo}")
        location = urllib.parse.urljoin(r.url, r.headers["Location"])
        sep = "&" if urllib.parse.urlsplit(location).query else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            repo,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=timeout or self.timeout,
        )
        if r.status_code != 201:
            raise RegistryHTTPError(r, f"upload {repo}@{digest}")

    def fetch_blob(self, repo: str, digest: str) -> bytes:
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo)
        if r.status_code != 200:
            raise RegistryHTTPError(r, f"GET blob {repo}@{digest}")
        return r.content

    # -- manifests -------------------------------------------------------------------------------

    def put_manifest(self, repo: str, manifest: Manifest, ref: str | None = None) -> str:
        """PUT only this manifest (its blobs/children must exist). Returns the digest header."""
        ref = ref or manifest.digest
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            repo,
            data=manifest.raw,
            headers={"Content-Type": manifest.media_type},
        )
        if r.status_code != 201:
            raise RegistryHTTPError(r, f"PUT manifest {repo}:{ref}")
        digest = r.headers.get("Docker-Content-Digest", "")
        if digest and digest != manifest.digest:
            raise AssertionError(f"registry computed {digest}, expected {manifest.digest}")
        return digest or manifest.digest

    def push(self, repo: str, manifest: Manifest, tag: str | None = None) -> str:
        """Push blobs, then children (by digest), then ``manifest`` as ``tag`` (or by digest)."""
        for m in manifest.walk():
            for blob in m.blobs:
                self.push_blob(repo, blob)
            if m is not manifest:
                self.put_manifest(repo, m)
        return self.put_manifest(repo, manifest, tag)

    def fetch_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str | None]:
        """``(raw bytes, Content-Type, Docker-Content-Digest header)``."""
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", repo, headers={"Accept": ACCEPT})
        if r.status_code != 200:
            raise RegistryHTTPError(r, f"GET manifest {repo}:{ref}")
        return r.content, r.headers.get("Content-Type", ""), r.headers.get("Docker-Content-Digest")

    def exists_manifest(self, repo: str, ref: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", repo, headers={"Accept": ACCEPT})
        if r.status_code in (200, 404):
            return r.status_code == 200
        raise RegistryHTTPError(r, f"HEAD manifest {repo}:{ref}")

    def delete_manifest(self, repo: str, digest: str) -> None:
        r = self.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo)
        if r.status_code != 202:
            raise RegistryHTTPError(r, f"DELETE manifest {repo}@{digest}")

    # -- listings ---------------------------------------------------------------------------------

    def tags(self, repo: str) -> list[str]:
        """All tags (sorted); ``[]`` if the repository does not exist."""
        r = self.request("GET", f"/v2/{repo}/tags/list", repo)
        if r.status_code == 404:
            return []
        if r.status_code != 200:
            raise RegistryHTTPError(r, f"GET tags {repo}")
        return sorted(r.json().get("tags") or [])

    def catalog(self, page_size: int = 100) -> list[str]:
        """All repositories, following ``Link`` pages (needs ``registry:catalog:*``)."""
        repos: list[str] = []
        url = f"{self.base_url}/v2/_catalog?n={page_size}"
        while url:
            r = self.request("GET", url, None)
            if r.status_code != 200:
                raise RegistryHTTPError(r, "GET catalog")
            repos += r.json().get("repositories") or []
            nxt = r.links.get("next", {}).get("url")
            url = urllib.parse.urljoin(r.url, nxt) if nxt else ""
        return repos

    def wait_for_manifest(self, repo: str, ref: str, timeout: float = 10.0) -> bool:
        """Poll until ``repo:ref`` exists (for asynchronous sync tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exists_manifest(repo, ref):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.session.close()
