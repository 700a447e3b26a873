"""Manifests at a target: what it holds, what it lacks, and the pushes (children first, the tag last).

A manifest is pushed with its exact source bytes (same digest). A push a target refuses is read
for what it means: an immutable tag holding another digest is a conflict, a manifest kind it does
not take (schema 1, Alibaba's "unknown manifest class") a refusal; both are skips, never retried.
Manifest writes to one repository are serialized within the process (the ledger's lock).
"""

from __future__ import annotations

from sync_core.engine.destination import Destination, Placement
from sync_core.engine.narrowing import narrowed_from
from sync_core.engine.pushing import Patience, put_manifest
from sync_core.engine.results import CopyResult, CopyStatus
from sync_core.engine.tree import ImageTree
from sync_core.errors import RegistryError, SkipImage, TagConflict, TargetRefused, describe
from sync_core.logs import InvocationPool
from sync_core.registry.manifest import Manifest
from sync_core.registry.names import is_digest


def holds(placement: Placement, digest: str) -> bool:
    """The target repository holds manifest ``digest`` (this process knows it, or a HEAD says)."""
    ledger = placement.destination.ledger
    if ledger.known(placement.repository, digest):
        return True
    info = placement.destination.client.head_manifest(placement.repository, digest)
    if info is not None:
        ledger.record(placement.repository, digest)
    return info is not None


def up_to_date(placement: Placement, digest: str) -> bool:
    """The placement's tag (or, by digest, the repository) already has ``digest`` (or, at a target
    that narrows indexes, an index narrowed from it)."""
    if placement.tag is None:
        return holds(placement, digest)
    if placement.at_target.tag_known_absent:
        return False
    client = placement.destination.client
    info = client.head_manifest(placement.repository, placement.tag)
    if info is None:
        return False
    if info.digest == digest:
        return True
    # a target that narrows indexes holds its own index, annotated with the source digest
    return (
        placement.rules.rewrites
        and narrowed_from(client.get_manifest(placement.repository, placement.tag), placement.rules) == digest
    )


def not_up_to_date(
    todo: list[tuple[Placement, CopyResult]], digest: str
) -> list[tuple[Placement, CopyResult]]:
    """Mark placements whose tag (or digest) already points at ``digest``; return the others."""
    left = []
    for placement, result in todo:
        try:
            if up_to_date(placement, digest):
                result.digest, result.status = digest, CopyStatus.UNCHANGED
                continue
        except Exception as exc:  # noqa: BLE001
            result.fail(exc)
            continue
        left.append((placement, result))
    return left


def missing_manifests(
    pool: InvocationPool, views: list[tuple[Placement, ImageTree]]
) -> list[list[Manifest] | Exception]:
    """Per placement, the manifests below the top that its target lacks (children first), or
    what stopped the check there.

    A manifest the target holds brings everything below it (a registry accepts an index only
    when its children are there), so its subtree is not looked at. The top's children are
    HEADed at every placement at once: several targets cost one round trip, not one each.
    """
    checks: list[tuple[int, str]] = []  # (index in views, child digest)
    for i, (_, tree) in enumerate(views):
        below = {m.digest for m in tree.manifests}
        checks.extend((i, d) for d in tree.children_of.get(tree.top.digest, ()) if d in below)

    def held(check: tuple[int, str]) -> bool | Exception:
        try:
            return holds(views[check[0]][0], check[1])
        except Exception as exc:  # noqa: BLE001 - that placement's failure, not the others'
            return exc

    answers = list(pool.map(held, checks))
    out: list[list[Manifest] | Exception] = []
    for i, (_, tree) in enumerate(views):
        present: set[str] = set()
        failed: Exception | None = None
        for (j, digest), answer in zip(checks, answers, strict=True):
            if j != i:
                continue
            if isinstance(answer, Exception):
                failed = failed or answer
            elif answer:
                present.update(tree.subtree(digest))
        out.append(failed or [m for m in tree.manifests if m.digest not in present])
    return out


def push(
    placement: Placement, view: ImageTree, missing: list[Manifest], result: CopyResult, patience: Patience
) -> None:
    """Push ``missing`` (children first), then the top under its tag: the tag is written last.

    A refusal by kind or a conflict is a skip of this target; any other failure fails it, and what
    the ledger believed of the repository is forgotten (a retry looks again). An answer that
    contradicts what was verified is tried again (``patience``, see ``pushing.py``).
    """
    try:
        _push_manifests(placement, view, missing, result, patience)
    except SkipImage as exc:
        result.status, result.reason = CopyStatus.SKIPPED, str(exc)
    except Exception as exc:  # noqa: BLE001
        placement.destination.ledger.forget(placement.repository)  # not what we believed
        result.fail(exc)


def _push_manifests(
    placement: Placement, tree: ImageTree, missing: list[Manifest], result: CopyResult, patience: Patience
) -> None:
    destination, repo = placement.destination, placement.repository
    for manifest in missing:
        with destination.ledger.manifest_writes(repo):
            if destination.ledger.known(repo, manifest.digest):
                continue  # pushed meanwhile by a concurrent copy of another tag
            _put(destination, repo, manifest.digest, manifest, patience)
            destination.ledger.record(repo, manifest.digest)
        result.count(manifests_pushed=1)
    with destination.ledger.manifest_writes(repo):
        if placement.tag is None and destination.ledger.known(repo, tree.top.digest):
            # by digest (a referrer), pushed meanwhile by a concurrent copy, which lists it too
            result.status = CopyStatus.UNCHANGED
            return
        _put(destination, repo, placement.tag or tree.top.digest, tree.top, patience)
        destination.ledger.record(repo, tree.top.digest)
    result.count(manifests_pushed=1)


def _put(destination: Destination, repo: str, reference: str, manifest: Manifest, patience: Patience) -> None:
    try:
        answered = put_manifest(destination.client, repo, reference, manifest, patience)
    except RegistryError as exc:
        raise _refusal(destination, repo, reference, manifest, exc) from None
    if manifest.subject is not None:
        destination.learned.answered_subject_push(manifest.subject.digest, answered)


def _refusal(
    destination: Destination, repo: str, reference: str, manifest: Manifest, error: RegistryError
) -> Exception:
    """What a refused manifest PUT means: a conflict or a refused type (skips), or the error.

    Docker Hub's immutable tags answer 403 DENIED ("... cannot be updated due to immutability
    settings"), Alibaba Enterprise "The requested tag already exists and cannot be
    overwritten"; Alibaba personal edition refuses other manifest classes with 403 DENIED
    "unknown manifest class for <config type>". None of these changes by trying again.
    """
    text = str(error).lower()
    if (
        not is_digest(reference)
        and error.status in (400, 403, 409, 500)
        and ("immutab" in text or "cannot be overwritten" in text or error.status == 409)
    ):  # a bare 403 is a refusal of our rights (an AuthError to fix), not of the tag
        held = destination.client.head_manifest(repo, reference)
        if held is not None and held.digest and held.digest != manifest.digest:
            return TagConflict(
                f"conflict: {destination.host}/{repo}:{reference} refuses to be overwritten (immutable tag): "
                f"it holds {held.digest}, the source has {manifest.digest} ({describe(error)})"
            )
    if manifest.is_schema1 and error.status in (400, 415, 500):  # not a network failure, not a 401/403
        # distribution without schema 1 support answers 500 UNKNOWN "unknown error"
        destination.learned.refuse_type(manifest.media_type)
        return TargetRefused(
            f"{destination.host} does not take Docker schema 1 manifests ({describe(error)}); "
            f"{manifest.digest} stays at the source only"
        )
    if error.status in (400, 403, 415, 500) and any(
        marker in text for marker in ("manifest class", "unsupported media type", "schema v1", "schema 1")
    ):
        return TargetRefused(
            f"{destination.host} refuses {manifest.media_type} manifest {manifest.digest} ({describe(error)}); "
            f"skip_artifact_types or drop_attestations can leave such content out for this target"
        )
    return error
