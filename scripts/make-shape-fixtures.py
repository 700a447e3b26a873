"""Write the real-content shapes of issue 16 as small OCI image layouts under tests/fixtures/shapes.

python scripts/make-shape-fixtures.py          # (re)write tests/fixtures/shapes
python scripts/make-shape-fixtures.py --check  # exit 1 if the committed files differ (tests do the same)

Each shape is one directory, an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256``)
as regclient keeps its test repositories: ``index.json`` lists what a registry holds, tags as
``org.opencontainers.image.ref.name`` annotations, manifests pushed by digest without one, in push
order. The bytes are written the way the tools that made the originals write them (compact JSON,
fields in the order of the Go structs of the OCI image spec), so that a mirror that rewrites
instead of copying shows up as another digest. Deterministic: the same files on every run.

``tests/harness/layouts.py`` pushes a layout into a registry (a blob whose bytes do not hash to
its digest is put into the registry's storage directly, as damaged storage would hold it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "shapes"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-01-01T00:00:00Z"


def compact(document: dict[str, Any]) -> bytes:
    """JSON as Go's encoding/json writes it: no spaces, fields in the order given."""
    return json.dumps(document, separators=(",", ":")).encode()


def text(seed: str, size: int) -> bytes:
    """``size`` bytes of deterministic text (hex digits: layer content a registry does not read)."""
    return hashlib.shake_256(seed.encode()).hexdigest(size // 2 + 1).encode()[:size]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tag_for(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256-<hex>``."""
    return digest.replace(":", "-")


class Layout:
    """One shape: blobs by digest and the ``index.json`` entries, in push order."""

    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description
        self.blobs: dict[str, bytes] = {}
        self.entries: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        """Store ``data``; its descriptor (Go field order: mediaType, digest, size, annotations,
        artifactType)."""
        digest = digest_of(data)
        self.blobs[digest] = data
        descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        descriptor.update(extra)
        return descriptor

    def damaged(self, descriptor: dict[str, Any]) -> None:
        """The stored bytes of ``descriptor`` no longer hash to its digest (same length)."""
        data = bytearray(self.blobs[descriptor["digest"]])
        data[len(data) // 2] = ord("x") if data[len(data) // 2] != ord("x") else ord("y")
        self.blobs[descriptor["digest"]] = bytes(data)

    def manifest(self, document: dict[str, Any], media_type: str) -> dict[str, Any]:
        return self.blob(compact(document), media_type)

    def held(self, descriptor: dict[str, Any], tag: str | None = None) -> None:
        """The registry holds ``descriptor`` (a manifest) under ``tag``, or by digest only."""
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
        if tag is not None:
            entry["annotations"] = {REF_NAME: tag}
        self.entries.append(entry)

    def write(self, root: Path) -> None:
        directory = root / self.name
        (directory / "blobs" / "sha256").mkdir(parents=True)
        (directory / "oci-layout").write_bytes(compact({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (directory / "index.json").write_bytes(compact(index))
        for digest, data in sorted(self.blobs.items()):
            (directory / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)


def oci_image(layout: Layout, seed: str, sizes: tuple[int, ...] = (300, 200)) -> dict[str, Any]:
    """An OCI image manifest (config and layers); its descriptor."""
    layers = [layout.blob(text(f"{seed}:layer{i}", n), OCI_LAYER) for i, n in enumerate(sizes)]
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.blob(compact(config), OCI_CONFIG),
        "layers": layers,
    }
    return layout.manifest(document, OCI_MANIFEST)


def artifact(
    layout: Layout,
    seed: str,
    artifact_type: str,
    content: bytes,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An OCI 1.1 artifact (``artifactType``, the empty config, one layer; oras and regclient
    write these), with a ``subject`` when it refers to a manifest."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": layout.blob(b"{}", OCI_EMPTY),
        "layers": [layout.blob(content, artifact_type, annotations={"org.opencontainers.image.title": seed})],
    }
    if subject is not None:
        document["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
    if annotations:
        document["annotations"] = annotations
    return layout.manifest(document, OCI_MANIFEST)


def referrers_index(layout: Layout, referrers: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The referrers tag schema's index as oras-go and regclient write it: each entry's fields in
    the Go order (annotations before artifactType), compact."""
    entries = []
    for descriptor, manifest in referrers:
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
        if manifest.get("annotations"):
            entry["annotations"] = manifest["annotations"]
        entry["artifactType"] = manifest["artifactType"]
        entries.append(entry)
    return layout.manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, OCI_INDEX)


def document(layout: Layout, descriptor: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(layout.blobs[descriptor["digest"]])
    return parsed


def oras_fallback() -> Layout:
    layout = Layout(
        "oras-fallback",
        "an image with two referrers pushed by digest and the referrers tag oras writes for a "
        "registry without the referrers API (`sha256-<hex of the image>`, compact, Go field order)",
    )
    image = oci_image(layout, "oras-v1")
    layout.held(image, "v1")
    created = {"org.opencontainers.image.created": CREATED}
    referrers = []
    for name, kind in (("signature", "application/vnd.example.signature"), ("sbom", "application/spdx+json")):
        referrer = artifact(layout, f"oras-{name}", kind, text(f"oras-{name}", 120), image, created)
        layout.held(referrer)
        referrers.append((referrer, document(layout, referrer)))
    layout.held(referrers_index(layout, referrers), tag_for(image["digest"]))
    return layout


def regclient_external() -> Layout:
    layout = Layout(
        "external",
        "regclient's `external` repository: two tagged artifacts whose subject is in another "
        "repository, and the referrers tag listing them (regclient's bytes)",
    )
    subject = {"mediaType": OCI_INDEX, "digest": digest_of(b"an index in another repository"), "size": 934}
    referrers = []
    for number in ("1", "2"):
        referrer = artifact(
            layout,
            f"external-{number}",
            "application/example.sbom",
            b"eggs\n",
            subject,
            {"preference": number},
        )
        referrers.append((referrer, document(layout, referrer)))
    layout.held(referrers[0][0], "a3")
    layout.held(referrers_index(layout, referrers), tag_for(subject["digest"]))
    layout.held(referrers[1][0], "a4")
    return layout


def digest_named() -> Layout:
    layout = Layout(
        "digest-named",
        "tags named like referrers tags that are not: regclient's `mirror` artifact also tagged with "
        "its own digest, and an image under the referrers tag name of another image",
    )
    mirror = artifact(layout, "mirror", "application/example.mirror", b"mirror\n")
    layout.held(mirror, "mirror")
    layout.held(mirror, tag_for(mirror["digest"]))
    image = oci_image(layout, "named-v1")
    layout.held(image, "v1")
    layout.held(oci_image(layout, "named-meta", (150,)), tag_for(image["digest"]))
    return layout


def misdescribed_blob() -> Layout:
    layout = Layout(
        "multi-misdescribed",
        "containers/image's `multi:1.0.0` shape: a manifest list whose arm64 image describes a "
        "584-byte layer as 585 bytes (distribution stores it: it checks existence, not size)",
    )
    children = []
    for platform in ("amd64", "arm64"):
        layers = [
            layout.blob(text(f"multi-{platform}-{i}", n), DOCKER_LAYER)
            for i, n in enumerate((1500, 584 if platform == "arm64" else 700, 900))
        ]
        if platform == "arm64":
            layers[1] = {**layers[1], "size": 585}
        config = {
            "architecture": platform,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        image = layout.manifest(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": layout.blob(compact(config), DOCKER_CONFIG),
                "layers": layers,
            },
            DOCKER_MANIFEST,
        )
        children.append({**image, "platform": {"architecture": platform, "os": "linux"}})
    index = layout.manifest(
        {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": children}, DOCKER_LIST
    )
    layout.held(index, "1.0.0")
    return layout


def damaged_blob() -> Layout:
    layout = Layout(
        "damaged",
        "an image one of whose layers the registry serves with bytes that do not hash to its digest "
        "(same length: only the digest tells)",
    )
    image = oci_image(layout, "damaged", (1000, 400))
    layout.damaged(document(layout, image)["layers"][0])
    layout.held(image, "1.0")
    return layout


SHAPES = (oras_fallback, regclient_external, digest_named, misdescribed_blob, damaged_blob)


def readme(layouts: list[Layout]) -> str:
    rows = "\n".join(f"| `{layout.name}` | {layout.description} |" for layout in layouts)
    return (
        "# Real-content shapes (issue 16)\n\n"
        "Written by `scripts/make-shape-fixtures.py` (do not edit; run it again). Each directory is an\n"
        "OCI image layout: `index.json` lists what the source registry holds, in push order (tags as\n"
        "`org.opencontainers.image.ref.name`); `tests/harness/layouts.py` pushes it.\n\n"
        "| shape | what it is |\n| --- | --- |\n" + rows + "\n"
    )


def build(root: Path) -> None:
    layouts = [make() for make in SHAPES]
    for layout in layouts:
        layout.write(root)
    (root / "README.md").write_text(readme(layouts))


def same(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        made = Path(scratch) / "shapes"
        build(made)
        if "--check" in sys.argv[1:]:
            return 0 if OUT.is_dir() and same(made, OUT) else 1
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(made, OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
