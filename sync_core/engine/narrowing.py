"""A target's rules applied to a source tree: what it skips, and the index it gets when it narrows.

Only a target with ``platforms`` or ``drop_attestations`` gets an index rewritten: a new index (new
digest) holding the kept entries, with the source index's digest and the rules recorded in
annotations, so that later runs and ``verify`` know it is current without reading the source.
Everything else is copied exact.
"""

from __future__ import annotations

import json

from sync_core.config.model import TargetRules
from sync_core.engine.tree import ImageTree
from sync_core.errors import SkipImage
from sync_core.registry.manifest import Manifest, parse_manifest
from sync_core.registry.names import digest_of, is_digest

SOURCE_DIGEST_ANNOTATION = "io.registry-sync.source.digest"  # on a narrowed index: what it was narrowed from
NARROWED_ANNOTATION = "io.registry-sync.narrowed"  # ... and by which rules (TargetRules.narrowing)
ATTESTATION_TYPE = "attestation-manifest"


def view(tree: ImageTree, rules: TargetRules) -> ImageTree:
    """``tree`` as a target with ``platforms``/``drop_attestations`` gets it (usually: itself).

    An index with entries the rules leave out becomes a new index (new digest) holding the kept
    entries, the source index's digest recorded in an annotation; everything else is exact.
    """
    if not rules.rewrites or not tree.top.is_index:
        return tree
    narrowed = narrow_index(tree.top, rules)
    if narrowed is None:
        return tree
    view = ImageTree(narrowed, warnings=list(tree.warnings))
    kept = {c.digest for c in narrowed.children}
    below = {m.digest: m for m in tree.manifests}
    reachable = {d for digest in kept for d in tree.subtree(digest)}
    view.manifests = [m for m in tree.manifests if m.digest in reachable]
    view.children_of = {d: c for d, c in tree.children_of.items() if d in reachable}
    view.children_of[narrowed.digest] = [c.digest for c in narrowed.children]
    for manifest in [narrowed, *(below[d] for d in reachable if d in below)]:
        blobs = manifest.blobs
        view.blobs_of[manifest.digest] = blobs
        for blob in blobs:
            view.blobs.setdefault(blob.digest, blob)
    return view


def check_skip(tree: ImageTree, skip: frozenset[str]) -> None:
    """Raise :class:`SkipImage` when a manifest of ``tree`` has a type the target skips."""
    if not skip:
        return
    for child in tree.top.children:
        if child.artifact_type and child.artifact_type in skip:
            raise SkipImage(
                f"child {child.digest} has artifact type {child.artifact_type}, which this target skips"
            )
    for manifest in tree.all_manifests:
        hit = sorted(manifest.media_types() & skip)
        if hit:
            what = "image" if manifest is tree.top else f"child manifest {manifest.digest}"
            raise SkipImage(f"{what} has type {hit[0]}, which this target skips")


def _platform_name(entry: dict[str, object]) -> str | None:
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


def _is_attestation(entry: dict[str, object]) -> bool:
    annotations = entry.get("annotations")
    if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == ATTESTATION_TYPE:
        return True
    return _platform_name(entry) == "unknown/unknown"


def _platform_kept(name: str | None, platforms: frozenset[str]) -> bool:
    """``linux/arm64`` keeps ``linux/arm64/v8`` too; an entry without a platform is kept."""
    return name is None or any(name == p or name.startswith(p + "/") for p in platforms)


def narrow_index(index: Manifest, rules: TargetRules) -> Manifest | None:
    """``index`` without the entries ``rules`` leave out; None when nothing is left out.

    Raises :class:`SkipImage` when no runnable entry is left (no platform matches).
    """
    entries = index.document.get("manifests")
    assert isinstance(entries, list)
    dropped: set[object] = set()
    kept: list[dict[str, object]] = []
    for entry in entries:
        if not isinstance(entry, dict) or _is_attestation(entry):
            continue
        if rules.platforms is not None and not _platform_kept(_platform_name(entry), rules.platforms):
            dropped.add(entry.get("digest"))
        else:
            kept.append(entry)
    for entry in entries:
        if isinstance(entry, dict) and _is_attestation(entry) and not rules.drop_attestations:
            annotations = entry.get("annotations")
            attests = (
                annotations.get("vnd.docker.reference.digest") if isinstance(annotations, dict) else None
            )
            if attests not in dropped:
                kept.append(entry)
    if len(kept) == len(entries):
        return None
    if not any(not _is_attestation(e) for e in kept):
        raise SkipImage(
            f"index {index.digest} has no entry for the platforms {sorted(rules.platforms or ())} this target takes"
        )
    kept.sort(key=entries.index)  # the source's order
    document = dict(index.document)
    document["manifests"] = kept
    document["annotations"] = {
        **(document.get("annotations") or {}),
        SOURCE_DIGEST_ANNOTATION: index.digest,
        NARROWED_ANNOTATION: rules.narrowing,
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    return parse_manifest(raw, index.media_type, f"narrowed index of {index.digest}", digest_of(raw))


def narrowed_from(manifest: Manifest, rules: TargetRules) -> str | None:
    """The source digest ``manifest`` (at a target) was narrowed from by ``rules``; None when it
    is not such an index (another tool's, or narrowed by rules since changed).

    A target with narrowing rules holds a tag under another digest than the source's: this is
    how the planner, the copier and ``verify`` know it is up to date without the source's tree.
    """
    annotations = manifest.annotations
    if not manifest.is_index or annotations.get(NARROWED_ANNOTATION) != rules.narrowing:
        return None
    source = annotations.get(SOURCE_DIGEST_ANNOTATION)
    return source if source and is_digest(source) else None
