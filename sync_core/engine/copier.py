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
   where a target has no referrers API, with the source's bytes when the source's referrers tag
   lists the same referrers (``following.py``, whose one step writes referrers tags);
6. mirror the referrers of every manifest of the tree (signatures, SBOMs, attestations), each
   after its subject, recursively (``referrers.py`` finds them at the source).

A source tag that is a referrers tag by content is mirrored as the referrers it lists
(``following.py``); a tag that is one only by name is copied like any other.

A target that fails does not stop the others: each gets its own :class:`CopyResult`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from sync_core.config.model import ReferrerPolicy
from sync_core.engine import manifests
from sync_core.engine.blobs import BlobPlacer
from sync_core.engine.destination import AtTarget, Placement
from sync_core.engine.following import Following, Listing, Todo, copied_only, listed_subject, pushed
from sync_core.engine.narrowing import check_skip, view
from sync_core.engine.pushing import CONTRADICTION_RETRY, Patience
from sync_core.engine.referrers import ReferrerFinder
from sync_core.engine.results import CopyResult, CopyStatus
from sync_core.engine.tree import ImageTree, SourceTrees
from sync_core.errors import SkipImage, TargetRefused
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Manifest
from sync_core.registry.names import is_digest
from sync_core.registry.retry import RetryPolicy
from sync_core.registry.stream import STALL_SECONDS


class Copier(Following):
    """Copies images from ``source`` to placements at target registries. Thread-safe; one per source.

    ``retry``: blob uploads; ``patience``: writes whose answer contradicts what was verified
    (``pushing.py``); both wait through ``sleep``.
    """

    def __init__(
        self,
        source: RegistryClient,
        *,
        blob_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        referrers: ReferrerPolicy | None = None,
        stall: float = STALL_SECONDS,
        patience: Patience | None = None,
    ):
        self.source = source
        self.patience = patience or Patience(CONTRADICTION_RETRY, sleep)
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
                subject = None if is_digest(reference) else listed_subject(reference, tree)
                if subject is not None:  # a referrers tag at the source, by content
                    self._copy_referrers_tag(src_repo, tree, subject, pending)
                else:
                    self._list_referrers(src_repo, self._copy_tree(src_repo, tree, pending))
                    self._mirror_referrers(src_repo, tree, copied_only(pending), set(), 0)
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
                src_repo,
                [
                    listing
                    for placement, result in everything
                    if result.status is CopyStatus.UNCHANGED and result.error is None
                    for listing in self._unlisted(src_repo, placement, result, digest)
                ],
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
                self._list_referrers(src_repo, self._copy_tree(src_repo, tree, waiting))
                self._mirror_referrers(src_repo, tree, copied_only(waiting), set(), 0)
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
                self.uploads.submit(manifests.push, placement, target_view, missing, result, self.patience),
            )
            for placement, result, target_view, missing in active
            if result.error is None
        ]
        listings: list[Listing] = []
        for placement, result, pushed_now, push in pushes:
            push.result()
            if result.copied:
                listings.extend(listing for m in pushed_now for listing in pushed(placement, result, m))
        return listings

    # -- helpers -----------------------------------------------------------------------------
    def _result(self, src_repo: str, reference: str, placement: Placement) -> CopyResult:
        sep = "@" if is_digest(reference) else ":"
        return CopyResult(f"{self.source.host}/{src_repo}{sep}{reference}", placement.where(reference))
