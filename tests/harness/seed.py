"""The standard catalog pushed into the source registry of the test session."""

from __future__ import annotations

from . import images
from .images import Blob, Manifest, Pusher

#: Size of the one layer of ``big/blob:large``.
BIG_LAYER_SIZE = 8 * 1024 * 1024


class Seeded(dict):
    """``{(repo, tag): Manifest}`` of everything :func:`seed_standard` pushed, plus:

    ``base_layer`` (the :class:`Blob` shared by ``library/alpine:3.20``, ``team/app:1.0.0`` and
    ``team/legacy:v1``), ``signature`` (the artifact whose subject is ``team/app:1.0.0``),
    :meth:`repos`, :meth:`tags` and :meth:`manifest`.
    """

    base_layer: Blob
    signature: Manifest

    def repos(self) -> list[str]:
        return sorted({repo for repo, _ in self})

    def tags(self, repo: str) -> list[str]:
        return sorted(tag for r, tag in self if r == repo)

    def manifest(self, repo: str, tag: str) -> Manifest:
        return self[(repo, tag)]


def standard_catalog() -> Seeded:
    """Build (without pushing) the standard catalog; deterministic."""
    base = images.layer("shared-base", 4096)
    out = Seeded()
    out.base_layer = base
    out["library/alpine", "3.19"] = images.oci_image("alpine-3.19", (2048, 1024))
    out["library/alpine", "3.20"] = images.oci_image("alpine-3.20", (1024,), base_layer=base)
    app = images.oci_index("app-1.0.0", ("linux/amd64", "linux/arm64"), (1024, 512), base_layer=base)
    out["team/app", "1.0.0"] = app
    out["team/app", "1.1.0"] = images.oci_index("app-1.1.0", ("linux/amd64", "linux/arm64"), (1024, 768))
    sig = images.signature("app-1.0.0-sig", app)
    out.signature = sig
    out["team/app", images.digest_tag(app.digest)] = sig
    out["team/legacy", "v1"] = images.docker_image("legacy-v1", (1536,), base_layer=base)
    out["team/legacy", "v2-multi"] = images.docker_manifest_list(
        "legacy-v2", ("linux/amd64", "linux/arm64/v8")
    )
    out["charts/hello", "0.1.0"] = images.helm_chart("hello-0.1.0", "hello", "0.1.0")
    out["big/blob", "large"] = images.oci_image("big-blob", (BIG_LAYER_SIZE,))
    out["org/team/deep/tool", "2.0"] = images.oci_image("deep-tool-2.0", (700, 300))
    return out


def seed_standard(pusher: Pusher) -> Seeded:
    """Push :func:`standard_catalog` through ``pusher`` and return it.

    Repositories and tags:
      - ``library/alpine``: ``3.19``, ``3.20`` (OCI single-platform; 3.20 has the base layer)
      - ``team/app``: ``1.0.0`` (OCI index amd64+arm64+attestations, base layer),
        ``1.1.0`` (another index), ``sha256-<hex of 1.0.0>.sig`` (cosign-like artifact, subject 1.0.0)
      - ``team/legacy``: ``v1`` (Docker v2 schema2, base layer), ``v2-multi`` (Docker list, 2 platforms)
      - ``charts/hello``: ``0.1.0`` (Helm chart)
      - ``big/blob``: ``large`` (one 8 MiB layer)
      - ``org/team/deep/tool``: ``2.0`` (OCI single-platform)
    """
    catalog = standard_catalog()
    for (repo, tag), manifest in catalog.items():
        pusher.push(repo, manifest, tag)
    return catalog
