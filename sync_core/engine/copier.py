"""The copy engine: one image (all platforms, exact bytes, its referrers) from the source to its targets.

Order of work for one image and any number of targets (:meth:`Copier.copy_to`):

1. fetch the source manifest (by tag or digest) and every manifest below it, and validate the
   whole tree, whatever the targets already hold: the outcome depends on the source only
   (``tree.py``);
2. per target, its rules: skip types, and the narrowed index of a target that narrows
   (``narrowing.py``);
3. make every blob present at each target that lacks it, each blob read from the source once
   however many targets need it (``blobs.py``);
4. per target, push child manifests, then the top manifest with the exact source bytes: the tag
   is written last, so a target tag never points at content that is not all there (``manifests.py``);
5. list what was pushed with a ``subject`` in its subject's referrers tag, one write per subject,
   where a target has no referrers API (:meth:`Copier._list_referrers`, the one step that writes
   referrers tags);
6. mirror the referrers of every manifest of the tree (signatures, SBOMs, attestations), each
   after its subject, recursively (``referrers.py`` finds them at the source).

A target that fails does not stop the others: each gets its own :class:`CopyResult`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sync_core.config.model import ReferrerPolicy
from sync_core.engine import manifests
from sync_core.engine.blobs import BlobPlacer
from sync_core.engine.destination import AtTarget, Placement
from sync_core.engine.narrowing import check_skip, view
from sync_core.engine.referrers import MAX_REFERRER_DEPTH, ReferrerFinder
from sync_core.engine.results import CopyResult, CopyStatus, ReferrerFailure
from sync_core.engine.tree import ImageTree, SourceTrees
from sync_core.errors import NotFound, SkipImage, TargetRefused
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor, Manifest
from sync_core.registry.names import fallback_tag, is_digest
from sync_core.registry.retry import RetryPolicy
from sync_core.registry.stream import STALL_SECONDS

log = logging.getLogger(__name__)

REFERRER_CONCURRENCY = 4  # referrers of one subject copied side by side

Todo = list[tuple[Placement, CopyResult]]


@dataclass(frozen=True)
class Listing:
    """A manifest with a ``subject`` to list in its subject's referrers tag at one placement.

    ``repair``: it was at the target already, and the referrers tag had left it out (a run that
    died between the two writes, or another writer's lost update).
    """

    placement: Placement
    result: CopyResult
    manifest: Manifest
    repair: bool = False


class Copier:
    """Copies images from ``source`` to placements at target registries. Thread-safe; one per source."""

    def __init__(
        self,
        source: RegistryClient,
        *,
        blob_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        referrers: ReferrerPolicy | None = None,
        stall: float = STALL_SECONDS,
    ):
        self.source = source
        workers = max(1, blob_concurrency)
        self.pool = InvocationPool(max_workers=workers, thread_name_prefix="blob")
        # Each target's manifest pushes (a slow target does not hold the others back). The uploads
        # a Tee feeds get threads of their own for each blob: queued behind other work here, they
        # would count as stalled and be dropped.
        self.uploads = InvocationPool(max_workers=workers * 2, thread_name_prefix="upload")
        self.trees = SourceTrees(source, self.pool)
        self.blobs = BlobPlacer(
            source, self.pool, self.uploads, retry=retry or RetryPolicy(attempts=4), stall=stall, sleep=sleep
        )
        self.finder = ReferrerFinder(source, referrers or ReferrerPolicy())

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.uploads.shutdown(wait=True)

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry points -----------------------------------------------------------------------
    def copy_to(
        self,
        src_repo: str,
        reference: str,
        placements: list[Placement],
        *,
        expected_digest: str | None = None,
    ) -> list[CopyResult]:
        """Copy ``src_repo:reference`` (tag or digest) to every placement; one result each.

        ``expected_digest`` (known from a listing) lets an up-to-date target be detected with one
        HEAD and no source request at all.
        """
        results = [self._result(src_repo, reference, p) for p in placements]
        with self._settling(results) as pending:
            pending[:] = zip(placements, results, strict=True)
            if expected_digest:
                pending[:] = manifests.not_up_to_date(pending, expected_digest)
            if pending:
                tree = self.trees.tree(src_repo, reference)
                if tree.top.digest != expected_digest:
                    pending[:] = manifests.not_up_to_date(pending, tree.top.digest)
                self._list_referrers(self._copy_tree(src_repo, tree, pending))
                self._mirror_referrers(src_repo, tree, _copied(pending), set(), 0)
        return results

    def copy_referrer(self, src_repo: str, digest: str, placements: list[Placement]) -> list[CopyResult]:
        """Mirror the untagged manifest ``digest`` if it is a referrer whose subject a target holds.

        For an untagged ImagePushed event, and for untagged manifests the source changed lately.
        A target that holds it already costs one HEAD and no source request.
        """
        results = [self._result(src_repo, digest, p) for p in placements]
        with self._settling(results) as pending:
            everything = list(zip(placements, results, strict=True))
            pending[:] = manifests.not_up_to_date(everything, digest)
            self._list_referrers(
                listing
                for placement, result in everything
                if result.status is CopyStatus.UNCHANGED and result.error is None
                for listing in self._unlisted(src_repo, placement, result, digest)
            )
            if pending:
                tree = self.trees.tree(src_repo, digest)
                subject = tree.top.subject
                unwanted = self._not_a_wanted_referrer(tree.top)
                waiting = []
                for placement, result in pending:
                    why = unwanted
                    try:
                        if (
                            why is None
                            and subject is not None
                            and not manifests.holds(placement, subject.digest)
                        ):
                            why = f"its subject {subject.digest} is not at the target (a referrer follows its subject)"
                    except Exception as exc:  # noqa: BLE001 - this target only
                        result.fail(exc)
                        continue
                    if why is not None:
                        result.status, result.reason = CopyStatus.IGNORED, why
                    else:
                        waiting.append((placement, result))
                self._list_referrers(self._copy_tree(src_repo, tree, waiting))
                self._mirror_referrers(src_repo, tree, _copied(waiting), set(), 0)
        return results

    def copy_referrers_of(self, src_repo: str, subject: str, placements: list[Placement]) -> list[CopyResult]:
        """Mirror the referrers the source lists for ``subject`` to targets that hold the subject."""
        results = [self._result(src_repo, subject, p) for p in placements]
        for result in results:
            result.status = CopyStatus.UNCHANGED
        with self._settling(results) as pending:
            tree = self.trees.tree(src_repo, subject)  # its children too: their referrers count as well
            held = []
            for placement, result in zip(placements, results, strict=True):
                try:
                    current = placement.at_target is AtTarget.TAG_CURRENT  # the planner just saw it
                    if current or manifests.holds(placement, view(tree, placement.rules).top.digest):
                        held.append((placement, result))
                    else:
                        result.status, result.reason = CopyStatus.IGNORED, "the subject is not at the target"
                except SkipImage as exc:  # this target's platforms leave nothing of it
                    result.status, result.reason = CopyStatus.SKIPPED, str(exc)
                except Exception as exc:  # noqa: BLE001 - this target only
                    result.fail(exc)
            pending[:] = held
            if pending:
                self._mirror_referrers(src_repo, tree, pending, set(), 0)
        for result in results:
            if result.work.referrers_copied:
                result.status = CopyStatus.COPIED
        return results

    def tree(self, src_repo: str, reference: str) -> ImageTree:
        """The source's manifest at ``reference`` and everything below it, validated."""
        return self.trees.tree(src_repo, reference)

    @contextlib.contextmanager
    def _settling(self, results: list[CopyResult]) -> Iterator[Todo]:
        """Run one copy: the block keeps the yielded list at the placements still undecided.

        What the source answers is the same for every target: a skip or a failure raised in the
        block applies to every placement in the list then. Each result gets the elapsed time.
        """
        started = time.monotonic()
        pending: Todo = []
        try:
            yield pending
        except SkipImage as exc:
            for _, result in pending:
                result.status, result.reason = CopyStatus.SKIPPED, str(exc)
        except Exception as exc:  # noqa: BLE001 - the source failed: every target still waiting fails
            for _, result in pending:
                result.fail(exc)
        finally:
            for result in results:
                result.seconds = round(time.monotonic() - started, 3)

    # -- one tree to its placements ---------------------------------------------------------
    def _copy_tree(self, src_repo: str, tree: ImageTree, todo: Todo) -> list[Listing]:
        """Skip rules, blobs, manifests (tag last) for each placement; failures stay per placement.

        Returns what was pushed with a ``subject``, to be listed in referrers tags.
        """
        ready: list[tuple[Placement, CopyResult, ImageTree]] = []
        for placement, result in todo:
            result.digest, result.media_type = tree.top.digest, tree.top.media_type
            result.warnings.extend(tree.warnings)
            try:
                target_view = view(tree, placement.rules)
                check_skip(target_view, placement.rules.skip_types)
                refused = placement.destination.learned.refused(
                    {m.media_type for m in target_view.all_manifests}
                )
                if refused:
                    raise TargetRefused(
                        f"{placement.destination.host} refused {sorted(refused)[0]} manifests earlier in this process"
                    )
                if target_view is not tree:
                    result.digest, result.rewritten_from = target_view.top.digest, tree.top.digest
                    if manifests.up_to_date(placement, target_view.top.digest):
                        result.status = CopyStatus.UNCHANGED
                        continue
                ready.append((placement, result, target_view))
            except SkipImage as exc:
                result.status, result.reason = CopyStatus.SKIPPED, str(exc)
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
        active: list[tuple[Placement, CopyResult, ImageTree, list[Manifest]]] = []
        lacking = manifests.missing_manifests(self.pool, [(placement, v) for placement, _, v in ready])
        for (placement, result, target_view), missing in zip(ready, lacking, strict=True):
            try:
                if isinstance(missing, Exception):
                    raise missing
                again = self.blobs.check_held(placement, target_view, missing)
                if again:  # held manifests whose blobs are gone: placed again, children first
                    again |= {m.digest for m in missing}
                    missing = [m for m in target_view.manifests if m.digest in again]
                active.append((placement, result, target_view, missing))
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
        if not active:
            return []
        self.blobs.place_all(src_repo, active)
        # each target's manifests in parallel: a slow target does not hold the others back
        pushes = [
            (
                placement,
                result,
                [*missing, target_view.top],
                self.uploads.submit(manifests.push, placement, target_view, missing, result),
            )
            for placement, result, target_view, missing in active
            if result.error is None
        ]
        listings: list[Listing] = []
        for placement, result, pushed, push in pushes:
            push.result()
            if result.copied:
                listings.extend(Listing(placement, result, m) for m in pushed if m.subject is not None)
        return listings

    # -- referrers --------------------------------------------------------------------------
    def _not_a_wanted_referrer(self, manifest: Manifest) -> str | None:
        if manifest.subject is None:
            return "not a referrer (no subject): an index child or an untagged image"
        if not self.finder.policy.wants(manifest.referrer_type):
            return f"SYNC_REFERRERS does not include artifact type {manifest.referrer_type}"
        return None

    def _mirror_referrers(
        self, src_repo: str, tree: ImageTree, todo: Todo, seen: set[str], depth: int
    ) -> None:
        """The referrers of every manifest of ``tree`` (placed at each target), recursively.

        A target that narrows indexes gets the referrers of the manifests it holds only: not those
        of the source index (its own index has another digest) or of the platforms it leaves out.
        """
        if not todo or not self.finder.policy.enabled:
            return
        held = [{m.digest for m in view(tree, p.rules).all_manifests} for p, _ in todo]
        for manifest in tree.all_manifests:
            there = [item for item, digests in zip(todo, held, strict=True) if manifest.digest in digests]
            if there:
                self._referrers_of(src_repo, manifest.digest, there, seen, depth)

    def _referrers_of(self, src_repo: str, subject: str, todo: Todo, seen: set[str], depth: int) -> None:
        if depth >= MAX_REFERRER_DEPTH:
            for _, result in todo:
                result.warnings.append(
                    f"referrers nested deeper than {MAX_REFERRER_DEPTH} below {subject}: not followed"
                )
            return
        found = [d for d in self.finder.of(src_repo, subject) if d.digest not in seen]
        seen.update(d.digest for d in found)

        def mirror(descriptor: Descriptor) -> tuple[Todo, list[Listing]]:
            """One referrer (and its own referrers) to every placement: its results, one each, and
            what is to be listed in the subject's referrers tag."""
            subs = [(p.by_digest(), self._result(src_repo, descriptor.digest, p)) for p, _ in todo]
            waiting = manifests.not_up_to_date(subs, descriptor.digest)
            listings = [
                listing
                for placement, sub in subs
                if sub.status is CopyStatus.UNCHANGED and sub.error is None
                for listing in self._unlisted(src_repo, placement, sub, descriptor.digest, subject)
            ]
            try:
                if waiting:
                    tree = self.trees.tree(src_repo, descriptor.digest)
                    listings += self._copy_tree(src_repo, tree, waiting)
                    self._mirror_referrers(src_repo, tree, _copied(waiting), seen, depth + 1)
            except Exception as exc:  # noqa: BLE001 - recorded on the subject's results
                for _, sub in waiting:
                    sub.fail(exc)
            return subs, listings

        if len(found) > 1:  # a subject's referrers are independent of each other: side by side
            with InvocationPool(min(REFERRER_CONCURRENCY, len(found)), thread_name_prefix="referrer") as pool:
                outcomes = list(pool.map(mirror, found))
        else:
            outcomes = [mirror(d) for d in found]
        self._list_referrers(listing for _, listings in outcomes for listing in listings)
        for descriptor, (subs, _) in zip(found, outcomes, strict=True):
            for (_, sub), (_, result) in zip(subs, todo, strict=True):
                if sub.error is not None:
                    result.referrer_errors.append(ReferrerFailure(descriptor.digest, sub.error))
                elif sub.status is CopyStatus.COPIED:
                    result.count(referrers_copied=1)
                    result.absorb(sub)
                result.referrer_errors.extend(sub.referrer_errors)
                if sub.status is CopyStatus.SKIPPED:
                    result.warnings.append(f"referrer {descriptor.digest} not mirrored: {sub.reason}")

    def _list_referrers(self, listings: Iterator[Listing] | list[Listing]) -> None:
        """List each manifest in its subject's referrers tag where the target has no referrers API:
        one write per (target repository, subject) for all of them. A failure is theirs."""
        groups: dict[tuple[int, str, str], list[Listing]] = {}
        for listing in listings:
            assert listing.manifest.subject is not None
            placement = listing.placement
            if placement.destination.learned.referrers_api:
                continue
            key = (id(placement.destination), placement.repository, listing.manifest.subject.digest)
            groups.setdefault(key, []).append(listing)
        for (_, repo, subject), group in groups.items():
            destination = group[0].placement.destination
            try:
                wrote = destination.referrers_tags.add(repo, subject, *(g.manifest for g in group))
            except Exception as exc:  # noqa: BLE001 - these referrers at this target
                for listing in group:
                    listing.result.fail(exc)
                continue
            repairs = [g for g in group if g.repair]
            if wrote and repairs:
                repairs[0].result.count(manifests_pushed=1)
                for listing in repairs:
                    listing.result.status = CopyStatus.COPIED  # the mirror changed: it is visible now
                    log.info(
                        "listed referrer %s in %s/%s:%s (it was missing)",
                        listing.manifest.digest,
                        destination.host,
                        repo,
                        fallback_tag(subject),
                    )

    def _unlisted(
        self,
        src_repo: str,
        placement: Placement,
        result: CopyResult,
        referrer: str,
        subject: str | None = None,
    ) -> list[Listing]:
        """A referrer the target holds already: at a target without the referrers API, whether its
        subject's referrers tag lists it (a run that died between the two PUTs, a failed tag PUT or
        another process's write may have left it out). Reads the tag (once a minute per subject);
        the source is asked only for an entry to add. A failure is this referrer's.
        """
        destination, repo = placement.destination, placement.repository
        if destination.learned.referrers_api:
            return []
        try:
            if subject is None:  # the referrer's own manifest names it: read it where it is
                found = destination.client.get_manifest(repo, referrer).subject
                if found is None:
                    return []  # not a referrer there
                subject = found.digest
            about = subject
            try:
                api = destination.learned.has_referrers_api(
                    lambda: destination.client.referrers(repo, about) is not None
                )
            except NotFound:
                return []
            if api or referrer in destination.referrers_tags.listed(repo, subject):
                return []
            return [Listing(placement, result, self.trees.manifest(src_repo, referrer), repair=True)]
        except Exception as exc:  # noqa: BLE001 - this referrer at this target
            result.fail(exc)
            return []

    # -- helpers -----------------------------------------------------------------------------
    def _result(self, src_repo: str, reference: str, placement: Placement) -> CopyResult:
        sep = "@" if is_digest(reference) else ":"
        return CopyResult(f"{self.source.host}/{src_repo}{sep}{reference}", placement.where(reference))


def _copied(todo: Todo) -> Todo:
    return [(p, r) for p, r in todo if r.copied]
