"""An independent check that a tag at a registry resolves fully (no ``sync_core`` code).

:func:`deep_verify` fetches a tag with the harness :class:`~.images.Pusher`, then every child
manifest and every blob it references, and checks their digests and sizes; :func:`verify_present`
does that for every tag of some repositories. Both raise :class:`Incomplete` naming what is
missing or wrong: "a tag at the target never references missing content".
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .images import Pusher, RegistryHTTPError, sha256_digest


class Incomplete(AssertionError):
    """A tag at the target references content that is missing or wrong."""


def deep_verify(pusher: Pusher, repo: str, ref: str, *, _seen: set | None = None) -> str:
    """Fetch ``repo:ref`` and everything it references; check every digest and size.

    Returns the manifest digest. Raises :class:`Incomplete` naming what is missing or wrong.
    """
    seen = set() if _seen is None else _seen
    try:
        raw, _, header_digest = pusher.fetch_manifest(repo, ref)
    except RegistryHTTPError as exc:
        raise Incomplete(f"{repo}:{ref}: manifest not fetchable ({exc.status_code})") from None
    digest = sha256_digest(raw)
    if ref.startswith("sha256:") and digest != ref:
        raise Incomplete(f"{repo}@{ref}: content hashes to {digest}")
    if header_digest and header_digest != digest:
        raise Incomplete(f"{repo}:{ref}: Docker-Content-Digest {header_digest}, content {digest}")
    doc = json.loads(raw)
    if "manifests" in doc:
        for child in doc["manifests"]:
            got = deep_verify(pusher, repo, child["digest"], _seen=seen)
            if got != child["digest"]:  # pragma: no cover - deep_verify checked it already
                raise Incomplete(f"{repo}@{child['digest']}: got {got}")
        return digest
    for desc in [doc["config"], *(doc.get("layers") or [])]:
        if desc.get("urls") or (repo, desc["digest"]) in seen:
            continue
        try:
            data = pusher.fetch_blob(repo, desc["digest"])
        except RegistryHTTPError as exc:
            raise Incomplete(
                f"{repo}:{ref}: blob {desc['digest']} not fetchable ({exc.status_code})"
            ) from None
        if len(data) != desc["size"] or sha256_digest(data) != desc["digest"]:
            raise Incomplete(
                f"{repo}:{ref}: blob {desc['digest']} is {len(data)} bytes hashing to {sha256_digest(data)}"
            )
        seen.add((repo, desc["digest"]))
    return digest


def verify_present(pusher: Pusher, repos: Iterable[str]) -> dict[tuple[str, str], str]:
    """Deep-verify every tag present in ``repos``; ``{(repo, tag): digest}``.

    Raises :class:`Incomplete` if any present tag does not resolve fully: "a tag at the target
    never references missing content".
    """
    found: dict[tuple[str, str], str] = {}
    seen: set = set()
    for repo in repos:
        for tag in pusher.tags(repo):
            found[(repo, tag)] = deep_verify(pusher, repo, tag, _seen=seen)
    return found
