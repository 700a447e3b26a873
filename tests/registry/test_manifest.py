"""``sync_core.registry.manifest.parse_manifest`` and ``Manifest``, table by table (no registry, no network).

Each row is one document as a registry could answer it (bytes and ``Content-Type``) and what
must come of it: the media type, the blobs a target must hold, the child manifests, the digest,
or the error. Descriptors are made from a label: ``desc(type, "layer-1")`` has the digest and size
of the bytes ``b"layer-1"``.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from sync_core.errors import DigestMismatch, InvalidContent
from sync_core.registry.manifest import MAX_MANIFEST_BYTES, parse_manifest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
COSIGN_SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM = "application/spdx+json"
URLS = ["https://storage.example/layer"]
WHERE = "registry.example/team/app:1.0"


def digest(label: str, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, label.encode()).hexdigest()}"


def desc(media_type: str, label: str, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest(label), "size": len(label), **extra}


def image(media_type: str | None = OCI_MANIFEST, config: str = OCI_CONFIG, layers=None, **extra) -> dict:
    """An image manifest; ``media_type=None`` leaves ``mediaType`` out of the document."""
    doc: dict = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    doc["config"] = desc(config, "config")
    doc["layers"] = [desc(OCI_LAYER, "layer-1"), desc(OCI_LAYER, "layer-2")] if layers is None else layers
    doc.update(extra)
    return doc


def index(media_type: str | None = OCI_INDEX, child: str = OCI_MANIFEST, children=None, **extra) -> dict:
    doc: dict = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    doc["manifests"] = (
        [
            desc(child, "amd64", platform={"os": "linux", "architecture": "amd64"}),
            desc(child, "arm64", platform={"os": "linux", "architecture": "arm64"}),
        ]
        if children is None
        else children
    )
    doc.update(extra)
    return doc


def without(doc: dict, key: str) -> dict:
    return {k: v for k, v in doc.items() if k != key}


def with_layer(**fields) -> dict:
    """An OCI image whose one layer has ``fields`` replaced (a value of ``...`` removes the field)."""
    layer = desc(OCI_LAYER, "layer-1")
    for key, value in fields.items():
        if value is ...:
            layer.pop(key)
        else:
            layer[key] = value
    return image(layers=[layer])


def encode(doc) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode()


def padded(size: int) -> bytes:
    """A valid OCI image manifest of exactly ``size`` bytes (padded with an annotation)."""
    doc = image(annotations={"pad": ""})
    pad = size - len(encode(doc))
    doc["annotations"]["pad"] = "x" * pad
    raw = encode(doc)
    assert len(raw) == size
    return raw


# -- documents that parse ---------------------------------------------------------------------------

VALID = [
    # (document, Content-Type, media type, blob labels, child labels)
    pytest.param(image(), OCI_MANIFEST, OCI_MANIFEST, ["config", "layer-1", "layer-2"], [], id="oci-image"),
    pytest.param(
        image(DOCKER_MANIFEST, DOCKER_CONFIG, [desc(DOCKER_LAYER, "layer-1")]),
        DOCKER_MANIFEST,
        DOCKER_MANIFEST,
        ["config", "layer-1"],
        [],
        id="docker-image",
    ),
    pytest.param(index(), OCI_INDEX, OCI_INDEX, [], ["amd64", "arm64"], id="oci-index"),
    pytest.param(
        index(DOCKER_LIST, DOCKER_MANIFEST),
        DOCKER_LIST,
        DOCKER_LIST,
        [],
        ["amd64", "arm64"],
        id="docker-manifest-list",
    ),
    pytest.param(
        index(children=[desc(OCI_INDEX, "nested")]),
        OCI_INDEX,
        OCI_INDEX,
        [],
        ["nested"],
        id="index-of-an-index",
    ),
    pytest.param(index(children=[]), OCI_INDEX, OCI_INDEX, [], [], id="empty-index"),
    # where the media type comes from
    pytest.param(index(None), OCI_INDEX, OCI_INDEX, [], ["amd64", "arm64"], id="type-from-content-type"),
    pytest.param(
        image(None),
        f"{OCI_MANIFEST}; charset=utf-8",
        OCI_MANIFEST,
        ["config", "layer-1", "layer-2"],
        [],
        id="content-type-parameters-ignored",
    ),
    pytest.param(
        index(), OCI_MANIFEST, OCI_INDEX, [], ["amd64", "arm64"], id="document-type-wins-over-header"
    ),
    pytest.param(
        image(),
        "application/json",
        OCI_MANIFEST,
        ["config", "layer-1", "layer-2"],
        [],
        id="document-type-wins-over-generic-header",
    ),
    pytest.param(image(), None, OCI_MANIFEST, ["config", "layer-1", "layer-2"], [], id="no-content-type"),
    # layers
    pytest.param(
        without(image(), "layers"),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config"],
        [],
        id="oci-artifact-without-layers",
    ),
    pytest.param(image(layers=[]), OCI_MANIFEST, OCI_MANIFEST, ["config"], [], id="empty-layers"),
    pytest.param(
        image(OCI_MANIFEST, HELM_CONFIG, [desc(HELM_CHART, "chart")]),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config", "chart"],
        [],
        id="helm-chart",
    ),
    pytest.param(
        image(layers=[desc(OCI_LAYER, "layer-1"), desc(OCI_NONDISTRIBUTABLE, "foreign", urls=URLS)]),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config", "layer-1"],
        [],
        id="non-distributable-layer-excluded",
    ),
    pytest.param(
        image(
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            [desc(DOCKER_FOREIGN, "windows", urls=URLS), desc(DOCKER_LAYER, "layer-1")],
        ),
        DOCKER_MANIFEST,
        DOCKER_MANIFEST,
        ["config", "layer-1"],
        [],
        id="docker-foreign-layer-excluded",
    ),
    pytest.param(
        image(layers=[desc(OCI_NONDISTRIBUTABLE, "foreign")]),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config", "foreign"],
        [],
        id="non-distributable-type-without-urls-is-a-blob",
    ),
    pytest.param(
        image(layers=[desc(OCI_LAYER, "layer-1", urls=URLS)]),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config", "layer-1"],
        [],
        id="urls-on-a-normal-layer-still-a-blob",
    ),
    pytest.param(with_layer(urls=[]), OCI_MANIFEST, OCI_MANIFEST, ["config", "layer-1"], [], id="empty-urls"),
    pytest.param(with_layer(size=0), OCI_MANIFEST, OCI_MANIFEST, ["config", "layer-1"], [], id="size-zero"),
    pytest.param(
        image(manifests=[]),
        OCI_MANIFEST,
        OCI_MANIFEST,
        ["config", "layer-1", "layer-2"],
        [],
        id="image-with-layers-and-a-manifests-key",
    ),
]


@pytest.mark.parametrize("doc, content_type, media_type, blobs, children", VALID)
def test_parse_manifest(doc, content_type, media_type, blobs, children):
    raw = encode(doc)
    manifest = parse_manifest(raw, content_type, WHERE)
    assert manifest.raw == raw  # the exact bytes, never re-serialized
    assert manifest.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest.media_type == media_type
    assert manifest.is_index == (media_type in (OCI_INDEX, DOCKER_LIST))
    assert [b.digest for b in manifest.blobs] == [digest(label) for label in blobs]
    assert [c.digest for c in manifest.children] == [digest(label) for label in children]
    assert (manifest.config is None) == manifest.is_index


# -- the digest -------------------------------------------------------------------------------------

RAW = encode(image())

DIGESTS = [
    # (expected digest passed in, the digest of the result or (error, match))
    pytest.param(None, "sha256:" + hashlib.sha256(RAW).hexdigest(), id="computed-when-not-given"),
    pytest.param(
        "sha256:" + hashlib.sha256(RAW).hexdigest(),
        "sha256:" + hashlib.sha256(RAW).hexdigest(),
        id="sha256-matches",
    ),
    pytest.param(
        "sha512:" + hashlib.sha512(RAW).hexdigest(),
        "sha512:" + hashlib.sha512(RAW).hexdigest(),
        id="sha512-matches-and-is-kept",
    ),
    pytest.param(
        digest("something else"),
        (DigestMismatch, "expected sha256:.*content hashes to sha256:"),
        id="mismatch",
    ),
    pytest.param("sha256:" + "A" * 64, (InvalidContent, "invalid digest"), id="upper-case-hex"),
    pytest.param("sha256:zz", (InvalidContent, "invalid digest"), id="malformed"),
    pytest.param(
        "md5:" + hashlib.md5(RAW).hexdigest(), (InvalidContent, "invalid digest"), id="unsupported-algorithm"
    ),
]


@pytest.mark.parametrize("expected_digest, outcome", DIGESTS)
def test_parse_manifest_checks_the_expected_digest(expected_digest, outcome):
    if isinstance(outcome, tuple):
        error, match = outcome
        with pytest.raises(error, match=match):
            parse_manifest(RAW, OCI_MANIFEST, WHERE, expected_digest)
    else:
        assert parse_manifest(RAW, OCI_MANIFEST, WHERE, expected_digest).digest == outcome


def test_a_digest_mismatch_is_invalid_content_and_transient():
    with pytest.raises(InvalidContent) as info:
        parse_manifest(RAW, OCI_MANIFEST, WHERE, digest("something else"))
    assert isinstance(info.value, DigestMismatch) and info.value.transient


def test_damaged_bytes_that_look_like_a_nested_schema_1_manifest_are_a_digest_mismatch():
    # a mismatch first tries the signed schema 1 payload digest: its parse must refuse the nesting too
    raw = b'{"signatures":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidContent) as info:
        parse_manifest(raw, None, WHERE, digest("something else"))
    assert isinstance(info.value, DigestMismatch) and info.value.transient


# -- documents that are refused -----------------------------------------------------------------------

INVALID = [
    # (document or bytes, Content-Type, error match); every one is InvalidContent
    pytest.param(b"<html>busy</html>", OCI_MANIFEST, "not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe{}", OCI_MANIFEST, "not valid JSON", id="not-utf-8"),
    pytest.param(b"", OCI_MANIFEST, "not valid JSON", id="empty"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, OCI_MANIFEST, "not valid JSON", id="absurdly-nested"),
    pytest.param(b"[]", OCI_MANIFEST, "not a JSON object", id="json-array"),
    pytest.param(b'"manifest"', OCI_MANIFEST, "not a JSON object", id="json-string"),
    pytest.param(
        padded(MAX_MANIFEST_BYTES + 1),
        OCI_MANIFEST,
        f"over the {MAX_MANIFEST_BYTES} byte limit",
        id="one-byte-over-the-size-limit",
    ),
    # schemaVersion
    pytest.param({**image(), "schemaVersion": 3}, OCI_MANIFEST, "schemaVersion 3", id="schema-version-3"),
    pytest.param({**image(), "schemaVersion": 1}, OCI_MANIFEST, "no fsLayers", id="schema-1-without-layers"),
    pytest.param(
        {**image(), "schemaVersion": "2"}, OCI_MANIFEST, "schemaVersion '2'", id="schema-version-string"
    ),
    pytest.param(
        without(image(), "schemaVersion"), OCI_MANIFEST, "schemaVersion None", id="schema-version-missing"
    ),
    # media type
    pytest.param(
        image(DOCKER_SCHEMA1), DOCKER_SCHEMA1, "but is schemaVersion 2", id="docker-schema1-type-on-schema-2"
    ),
    pytest.param(image(None), None, "unsupported manifest media type ''", id="no-type-anywhere"),
    pytest.param(
        image(None),
        "application/json",
        "unsupported manifest media type 'application/json'",
        id="generic-json-header-only",
    ),
    pytest.param(
        image(OCI_CONFIG), OCI_MANIFEST, "unsupported manifest media type", id="document-type-not-a-manifest"
    ),
    # an image type on an index body, an index type on an image body
    pytest.param(
        without(index(OCI_MANIFEST), "layers"),
        OCI_MANIFEST,
        "declares .*manifest.* looks like an index",
        id="image-type-that-looks-like-an-index",
    ),
    pytest.param(index(None), DOCKER_MANIFEST, "looks like an index", id="image-header-on-an-index-body"),
    pytest.param(image(OCI_INDEX), OCI_INDEX, "has no manifests list", id="index-type-on-an-image-body"),
    pytest.param(
        index(children=[{**desc(OCI_MANIFEST, "x"), "digest": "sha256:zz"}]),
        OCI_INDEX,
        r"manifests\[0\]: invalid digest",
        id="index-child-bad-digest",
    ),
    pytest.param(
        index(children={"amd64": desc(OCI_MANIFEST, "x")}),
        OCI_INDEX,
        "has no manifests list",
        id="index-manifests-not-a-list",
    ),
    # image contents
    pytest.param(
        without(image(DOCKER_MANIFEST), "layers"),
        DOCKER_MANIFEST,
        "has no layers list",
        id="docker-image-without-layers",
    ),
    pytest.param(
        image(layers={"0": desc(OCI_LAYER, "l")}), OCI_MANIFEST, "has no layers list", id="layers-not-a-list"
    ),
    pytest.param(
        without(image(), "config"), OCI_MANIFEST, "config: descriptor is not an object", id="no-config"
    ),
    pytest.param(
        image(layers=["sha256:" + "0" * 64]),
        OCI_MANIFEST,
        r"layers\[0\]: descriptor is not an object",
        id="layer-not-an-object",
    ),
    # descriptors
    pytest.param(
        with_layer(mediaType=...), OCI_MANIFEST, "has no mediaType", id="descriptor-without-media-type"
    ),
    pytest.param(
        with_layer(mediaType=""), OCI_MANIFEST, "has no mediaType", id="descriptor-empty-media-type"
    ),
    pytest.param(
        with_layer(mediaType=5), OCI_MANIFEST, "has no mediaType", id="descriptor-media-type-not-text"
    ),
    pytest.param(with_layer(digest=...), OCI_MANIFEST, "invalid digest None", id="descriptor-without-digest"),
    pytest.param(
        with_layer(digest="sha256:zz"), OCI_MANIFEST, "invalid digest", id="descriptor-digest-not-hex"
    ),
    pytest.param(
        with_layer(digest="sha256:../../etc/passwd"),
        OCI_MANIFEST,
        "invalid digest",
        id="descriptor-digest-path",
    ),
    pytest.param(
        with_layer(digest="md5:" + "0" * 32), OCI_MANIFEST, "invalid digest", id="descriptor-digest-md5"
    ),
    pytest.param(with_layer(size=...), OCI_MANIFEST, "invalid size None", id="descriptor-without-size"),
    pytest.param(with_layer(size=-1), OCI_MANIFEST, "invalid size -1", id="descriptor-negative-size"),
    pytest.param(with_layer(size="7"), OCI_MANIFEST, "invalid size '7'", id="descriptor-size-string"),
    pytest.param(with_layer(size=7.0), OCI_MANIFEST, "invalid size 7.0", id="descriptor-size-float"),
    pytest.param(with_layer(size=True), OCI_MANIFEST, "invalid size True", id="descriptor-size-bool"),
    pytest.param(
        with_layer(urls="https://storage.example/layer"),
        OCI_MANIFEST,
        "invalid urls",
        id="descriptor-urls-a-string",
    ),
    pytest.param(with_layer(urls=[1]), OCI_MANIFEST, "invalid urls", id="descriptor-urls-not-strings"),
]


@pytest.mark.parametrize("doc, content_type, match", INVALID)
def test_parse_manifest_refuses(doc, content_type, match):
    with pytest.raises(InvalidContent, match=match):
        parse_manifest(encode(doc), content_type, WHERE)


def test_the_size_limit_is_inclusive():
    raw = padded(MAX_MANIFEST_BYTES)
    assert parse_manifest(raw, OCI_MANIFEST, WHERE).raw == raw


@pytest.mark.parametrize(
    "doc, match",
    [
        pytest.param(b"{", "not valid JSON", id="json"),
        pytest.param({**image(), "schemaVersion": 3}, "schemaVersion", id="schema-version"),
        pytest.param(image(None), "media type", id="media-type"),
        pytest.param(padded(MAX_MANIFEST_BYTES + 1), "byte limit", id="size"),
    ],
)
def test_document_errors_name_where_the_manifest_came_from(doc, match):
    with pytest.raises(InvalidContent, match=match) as info:
        parse_manifest(encode(doc), None, WHERE)
    assert str(info.value).startswith(f"{WHERE}: ")


# -- media_types ---------------------------------------------------------------------------------------

MEDIA_TYPES = [
    # (document, Content-Type, every media/artifact type the manifest declares)
    pytest.param(image(), OCI_MANIFEST, {OCI_MANIFEST, OCI_CONFIG, OCI_LAYER}, id="oci-image"),
    pytest.param(
        image(DOCKER_MANIFEST, DOCKER_CONFIG, [desc(DOCKER_LAYER, "l")]),
        DOCKER_MANIFEST,
        {DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER},
        id="docker-image",
    ),
    pytest.param(
        image(config=HELM_CONFIG, layers=[desc(HELM_CHART, "chart")]),
        OCI_MANIFEST,
        {OCI_MANIFEST, HELM_CONFIG, HELM_CHART},
        id="helm-chart",
    ),
    pytest.param(
        image(config=OCI_EMPTY, layers=[desc(COSIGN_SIMPLESIGNING, "sig")], artifactType=COSIGN_SIG),
        OCI_MANIFEST,
        {OCI_MANIFEST, COSIGN_SIG, OCI_EMPTY, COSIGN_SIMPLESIGNING},
        id="artifact-type-of-the-manifest",
    ),
    pytest.param(
        image(artifactType=7),
        OCI_MANIFEST,
        {OCI_MANIFEST, OCI_CONFIG, OCI_LAYER},
        id="artifact-type-not-text-ignored",
    ),
    pytest.param(
        image(layers=[desc(OCI_NONDISTRIBUTABLE, "foreign", urls=URLS)]),
        OCI_MANIFEST,
        {OCI_MANIFEST, OCI_CONFIG, OCI_NONDISTRIBUTABLE},
        id="non-distributable-layers-count",
    ),
    pytest.param(index(), OCI_INDEX, {OCI_INDEX}, id="index-not-its-children-types"),
    pytest.param(
        index(children=[desc(OCI_MANIFEST, "amd64"), desc(OCI_MANIFEST, "sbom", artifactType=SBOM)]),
        OCI_INDEX,
        {OCI_INDEX, SBOM},
        id="index-children-artifact-types",
    ),
]


@pytest.mark.parametrize("doc, content_type, expected", MEDIA_TYPES)
def test_media_types(doc, content_type, expected):
    assert parse_manifest(encode(doc), content_type, WHERE).media_types() == expected


def test_index_entries_that_are_not_manifests_are_blobs():
    # a BuildKit registry-cache index lists its layers and cache config in manifests[]
    raw = encode(index(children=[desc(OCI_LAYER, "layer"), desc(OCI_MANIFEST, "child")]))
    manifest = parse_manifest(raw, OCI_INDEX, "cache")
    assert [c.media_type for c in manifest.children] == [OCI_MANIFEST]
    assert [b.media_type for b in manifest.blobs] == [OCI_LAYER]
