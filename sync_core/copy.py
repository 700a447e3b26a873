"""The copy engine: one image (all platforms, exact bytes, its referrers) from the source to its targets.

Order of work for one image and any number of targets (:meth:`Copier.copy_to`):

1. fetch the source manifest (by tag or digest) and every manifest below it, and validate the
   whole tree, whatever the targets already hold: the outcome depends on the source only;
2. per target, check its skip rules against every manifest of the tree;
3. make every blob present at each target that lacks it: known (this process verified it),
   mounted from another repository that holds it, found by a HEAD, else uploaded from the
   source; a blob several targets need is read from the source once (:class:`~.stream.Tee`).
   Every path checks the descriptor's size (and an upload its digest) the same way, and the
   blobs below manifests a target already holds are size-checked too (not placed again);
4. per target, push child manifests, then the top manifest with the exact source bytes: the tag
   is written last, so a target tag never points at content that is not all there;
5. mirror the referrers of every manifest of the tree (signatures, SBOMs, attestations), each
   after its subject, recursively (see ``referrers.py``).

A target that fails does not stop the others: each gets its own :class:`CopyResult`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import wait
from dataclasses import dataclass, field

import requests

from .config import ReferrerPolicy, TargetConfig
from .errors import (
    AuthError,
    InvalidContent,
    NotFound,
    RegistryError,
    SkipImage,
    SourceGone,
    SourceStreamError,
    TagConflict,
    TargetRefused,
    describe,
    is_transient,
)
from .ledger import BlobLedger
from .logs import InvocationPool
from .manifest import UNKNOWN_SIZE, Descriptor, Manifest, parse_manifest
from .names import digest_of, fallback_tag, is_digest
from .referrers import MAX_REFERRER_DEPTH, ReferrerFinder, ReferrersTags
from .registry import RegistryClient
from .retry import RetryLater, RetryPolicy, retrying
from .stream import STALL_SECONDS, Slice, Tee, TeeBody, VerifyingReader

log = logging.getLogger(__name__)

CHUNK_SIZE = 32 * 1024 * 1024  # for registries that need chunked (PATCH) uploads
MAX_INDEX_DEPTH = 8  # indexes of indexes: real content nests one or two levels
FALLBACK_TO_CHUNKED = frozenset({405, 411, 413, 416})
REFERRER_CONCURRENCY = 4  # referrers of one subject copied side by side
MANIFEST_CACHE_BYTES = 64 * 1024 * 1024


class CopyStatus(str, enum.Enum):
    COPIED = "copied"
    UNCHANGED = "unchanged"  # the target already had it
    SKIPPED = "skipped"  # the target's rules exclude it (reason in the result)
    IGNORED = "ignored"  # an untagged manifest that is not a referrer to mirror (reason in the result)


class AtTarget(enum.Enum):
    """What the caller learned about the target just before asking for a copy.

    The copier trusts it instead of asking again: a planner that listed the target's tags a
    moment ago need not have each tag HEADed once more.
    """

    UNKNOWN = "unknown"  # nothing: ask the target (an event, a queued tag, `copy`)
    TAG_ABSENT = "tag absent"  # the repository's tag listing did not have the tag
    TAG_DIFFERS = "tag differs"  # the tag is there with another digest
    TAG_CURRENT = "tag current"  # the tag is there with the source's digest (or an index narrowed from it)
    # The tag listing answered 404. Not proof of an empty repository: distribution answers 404
    # for one that holds blobs or untagged manifests (a failed copy's), so blobs and manifests
    # are still HEADed before they are placed.
    REPOSITORY_ABSENT = "repository absent"

    @property
    def tag_known_absent(self) -> bool:
        return self in (AtTarget.TAG_ABSENT, AtTarget.REPOSITORY_ABSENT)


@dataclass(frozen=True)
class ReferrerFailure:
    """A referrer that could not be mirrored with its subject, and why (the class decides retries)."""

    digest: str
    error: BaseException

    def __str__(self) -> str:
        return f"referrer {self.digest}: {describe(self.error)}"


@dataclass
class CopyResult:
    source: str
    destination: str
    digest: str | None = None
    media_type: str | None = None
    status: CopyStatus = CopyStatus.COPIED
    reason: str | None = None
    manifests_pushed: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0
    referrers_copied: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rewritten_from: str | None = None  # the source index digest, when this target got a narrowed index
    error: BaseException | None = field(default=None, repr=False)  # what stopped this target
    referrer_errors: list[ReferrerFailure] = field(
        default_factory=list
    )  # referrers that could not be mirrored
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def count(self, **figures: int) -> None:
        """Add to the work counts (the blob threads of one copy share a result)."""
        with self._lock:
            for name, n in figures.items():
                setattr(self, name, getattr(self, name) + n)


class Destination:
    """One target registry as the copier sees it: its client and what is known about it."""

    def __init__(
        self, name: str, client: RegistryClient, *, ledger: BlobLedger | None = None, chunked: bool = False
    ):
        self.name = name
        self.client = client
        self.ledger = ledger or BlobLedger()
        self.chunked = chunked  # learned when a single-request upload is refused
        self.referrers_api: bool | None = None  # learned from the first OCI-Subject answer
        self.referrers_tags = ReferrersTags(client, self.ledger)  # where it has no referrers API
        self.probing = threading.Lock()  # one referrers API probe at a time
        self.refused_types: set[str] = set()  # manifest media types it refused (schema 1)

    @property
    def host(self) -> str:
        return self.client.host


@dataclass(frozen=True)
class TargetRules:
    """What a target must not receive, and how its indexes may be narrowed (opt-in)."""

    skip_types: frozenset[str] = frozenset()
    platforms: frozenset[str] | None = None  # None: every platform
    drop_attestations: bool = False

    @classmethod
    def of(cls, target: TargetConfig) -> TargetRules:
        return cls(target.skip_artifact_types, target.platforms, target.drop_attestations)

    @property
    def rewrites(self) -> bool:
        """Whether this target may get indexes rewritten to fewer entries (never by default)."""
        return self.platforms is not None or self.drop_attestations

    @property
    def narrowing(self) -> str:
        """The narrowing rules as a narrowed index records them (:data:`NARROWED_ANNOTATION`)."""
        platforms = ",".join(sorted(self.platforms)) if self.platforms is not None else "all"
        return f"platforms={platforms};attestations={'dropped' if self.drop_attestations else 'kept'}"


@dataclass(frozen=True)
class Placement:
    """Where one copy goes: a repository (and tag) at a destination, and that target's rules."""

    destination: Destination
    repository: str
    tag: str | None = None  # None: by digest (a referrer)
    at_target: AtTarget = AtTarget.UNKNOWN
    rules: TargetRules = TargetRules()
    # A referrer copied with its siblings: the caller lists them all in the subject's referrers
    # tag at once (a target without the referrers API), instead of each writing it.
    list_later: bool = False


@dataclass
class ImageTree:
    """A manifest and everything below it, fetched from the source and validated."""

    top: Manifest
    manifests: list[Manifest] = field(default_factory=list)  # below the top, children first
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # blobs of every manifest
    blobs_of: dict[str, list[Descriptor]] = field(default_factory=dict)  # manifest digest -> its blobs
    children_of: dict[str, list[str]] = field(default_factory=dict)  # index digest -> child digests
    warnings: list[str] = field(default_factory=list)

    @property
    def all_manifests(self) -> list[Manifest]:
        return [self.top, *self.manifests]


class ManifestCache:
    """Source manifests by digest (content-addressed: never stale), bounded in bytes."""

    def __init__(self, limit: int = MANIFEST_CACHE_BYTES):
        self.limit = limit
        self._items: OrderedDict[str, Manifest] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> Manifest | None:
        with self._lock:
            manifest = self._items.get(digest)
            if manifest is not None:
                self._items.move_to_end(digest)
            return manifest

    def put(self, manifest: Manifest) -> None:
        with self._lock:
            if manifest.digest in self._items:
                return
            self._items[manifest.digest] = manifest
            self._bytes += manifest.size
            while self._bytes > self.limit and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.size


class Copier:
    """Copies images from ``source`` to destinations. Thread-safe; one per source registry.

    ``destination`` (a client) makes a single-target copier for :meth:`copy`; a multi-target
    caller passes :class:`Placement` values to :meth:`copy_to`.
    """

    def __init__(
        self,
        source: RegistryClient,
        destination: RegistryClient | None = None,
        *,
        blob_concurrency: int = 4,
        ledger: BlobLedger | None = None,
        retry: RetryPolicy | None = None,
        chunked: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        referrers: ReferrerPolicy | None = None,
        stall: float = STALL_SECONDS,
    ):
        self.source = source
        self.stall = stall  # how long one target's upload may hold a shared blob read back
        self.destination = (
            Destination("target", destination, ledger=ledger, chunked=chunked) if destination else None
        )
        self.retry = retry or RetryPolicy(attempts=4)
        self.sleep = sleep
        self.finder = ReferrerFinder(source, referrers or ReferrerPolicy())
        self.manifests = ManifestCache()
        workers = max(1, blob_concurrency)
        self.pool = InvocationPool(max_workers=workers, thread_name_prefix="blob")
        # Each target's manifest pushes (a slow target does not hold the others back). The uploads
        # a Tee feeds get threads of their own for each blob (_upload_together): queued behind
        # other work here, they would count as stalled and be dropped.
        self.uploads = InvocationPool(max_workers=workers * 2, thread_name_prefix="upload")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.uploads.shutdown(wait=True)

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry points -----------------------------------------------------------------------
    def copy(
        self,
        src_repo: str,
        reference: str,
        dst_repo: str,
        dst_tag: str | None = None,
        *,
        expected_digest: str | None = None,
        skip_media_types: frozenset[str] = frozenset(),
        at_target: AtTarget = AtTarget.UNKNOWN,
    ) -> CopyResult:
        """Copy ``src_repo:reference`` to ``dst_repo`` at the single destination; raise on failure."""
        assert self.destination is not None, "Copier(source, destination) for copy(); else copy_to()"
        tag = dst_tag or (None if is_digest(reference) else reference)
        placement = Placement(self.destination, dst_repo, tag, at_target, TargetRules(skip_media_types))
        (result,) = self.copy_to(src_repo, reference, [placement], expected_digest=expected_digest)
        if result.error is not None:
            raise result.error
        return result

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
                pending[:] = self._not_up_to_date(pending, expected_digest)
            if pending:
                tree = self.tree(src_repo, reference)
                if tree.top.digest != expected_digest:
                    pending[:] = self._not_up_to_date(pending, tree.top.digest)
                self._copy_tree(src_repo, tree, pending)
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
            pending[:] = self._not_up_to_date(everything, digest)
            for placement, result in everything:
                if result.status is CopyStatus.UNCHANGED and result.error is None:
                    self._keep_listed(src_repo, placement, result, digest)
            if pending:
                tree = self.tree(src_repo, digest)
                subject = tree.top.subject
                unwanted = self._not_a_wanted_referrer(tree.top)
                waiting = []
                for placement, result in pending:
                    why = unwanted
                    try:
                        if why is None and subject is not None and not self._holds(placement, subject.digest):
                            why = f"its subject {subject.digest} is not at the target (a referrer follows its subject)"
                    except Exception as exc:  # noqa: BLE001 - this target only
                        result.fail(exc)
                        continue
                    if why is not None:
                        result.status, result.reason = CopyStatus.IGNORED, why
                    else:
                        waiting.append((placement, result))
                self._copy_tree(src_repo, tree, waiting)
                self._mirror_referrers(src_repo, tree, _copied(waiting), set(), 0)
        return results

    def copy_referrers_of(self, src_repo: str, subject: str, placements: list[Placement]) -> list[CopyResult]:
        """Mirror the referrers the source lists for ``subject`` to targets that hold the subject."""
        results = [self._result(src_repo, subject, p) for p in placements]
        for result in results:
            result.status = CopyStatus.UNCHANGED
        with self._settling(results) as pending:
            tree = self.tree(src_repo, subject)  # its children too: their referrers count as well
            held = []
            for placement, result in zip(placements, results, strict=True):
                try:
                    current = placement.at_target is AtTarget.TAG_CURRENT  # the planner just saw it
                    if current or self._holds(placement, self._view(tree, placement.rules).top.digest):
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
            if result.referrers_copied:
                result.status = CopyStatus.COPIED
        return results

    @contextlib.contextmanager
    def _settling(self, results: list[CopyResult]) -> Iterator[list[tuple[Placement, CopyResult]]]:
        """Run one copy: the block keeps the yielded list at the placements still undecided.

        What the source answers is the same for every target: a skip or a failure raised in the
        block applies to every placement in the list then. Each result gets the elapsed time.
        """
        started = time.monotonic()
        pending: list[tuple[Placement, CopyResult]] = []
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

    # -- the source tree --------------------------------------------------------------------
    def tree(self, src_repo: str, reference: str) -> ImageTree:
        """The manifest at ``reference`` and everything below it, validated (bytes verified)."""
        try:
            top = self._manifest(src_repo, reference)
        except NotFound:
            raise SourceGone(
                f"{self.source.host}/{src_repo}{'@' if is_digest(reference) else ':'}{reference} is not at the "
                "source (deleted since it was listed or pushed?)"
            ) from None
        tree = ImageTree(top)
        self._walk(src_repo, tree.top, tree, 0, {tree.top.digest})
        return tree

    def _manifest(self, src_repo: str, reference: str) -> Manifest:
        if is_digest(reference):
            cached = self.manifests.get(reference)
            if cached is not None:
                return cached
        manifest = self.source.get_manifest(src_repo, reference)
        self.manifests.put(manifest)
        return manifest

    def _walk(self, src_repo: str, manifest: Manifest, tree: ImageTree, depth: int, seen: set[str]) -> None:
        blobs = manifest.blobs
        if any(b.size == UNKNOWN_SIZE for b in blobs):  # schema 1: no sizes in the manifest
            blobs = list(self.pool.map(lambda b: self._sized(src_repo, b), blobs))
        tree.blobs_of[manifest.digest] = blobs
        for blob in blobs:
            # one descriptor per blob is placed and checked: the others must say the same size
            first = tree.blobs.setdefault(blob.digest, blob)
            if first.size != blob.size:
                raise InvalidContent(
                    f"manifest {manifest.digest} describes blob {blob.digest} as {blob.size} bytes, "
                    f"another descriptor in the same image as {first.size} bytes"
                )
        if not manifest.is_index:
            return
        if depth >= MAX_INDEX_DEPTH:
            raise InvalidContent(f"index {manifest.digest} nests deeper than {MAX_INDEX_DEPTH} levels")
        children = [c for c in manifest.children if c.digest not in seen]
        tree.children_of[manifest.digest] = [c.digest for c in manifest.children]
        seen.update(c.digest for c in children)
        # fetched in parallel (round trips dominate); the walk goes on in this thread
        fetched = list(self.pool.map(lambda c: self._manifest(src_repo, c.digest), children))
        sizes = {c.digest: c.size for c in fetched}
        for descriptor in manifest.children:  # every descriptor, also of a child met before
            known = self.manifests.get(descriptor.digest)
            size = sizes.get(descriptor.digest, known.size if known is not None else None)
            if size is not None and size != descriptor.size:
                raise InvalidContent(
                    f"index {manifest.digest} describes manifest {descriptor.digest} as "
                    f"{descriptor.size} bytes, the manifest is {size} bytes"
                )
        for descriptor, child in zip(children, fetched, strict=True):
            if child.media_type != descriptor.media_type:
                tree.warnings.append(
                    f"index {manifest.digest} declares {descriptor.digest} as {descriptor.media_type}, "
                    f"the registry serves {child.media_type} (copied as served)"
                )
            self._walk(src_repo, child, tree, depth + 1, seen)
            tree.manifests.append(child)

    def _sized(self, src_repo: str, blob: Descriptor) -> Descriptor:
        if blob.size != UNKNOWN_SIZE:
            return blob
        size = self.source.blob_size(src_repo, blob.digest)
        if size is None or size < 0:
            raise InvalidContent(
                f"schema 1 layer {blob.digest} is {'not at the source' if size is None else 'of unknown size there'}"
            )
        return Descriptor(blob.media_type, blob.digest, size)

    # -- one tree to its placements ---------------------------------------------------------
    def _copy_tree(self, src_repo: str, tree: ImageTree, todo: list[tuple[Placement, CopyResult]]) -> None:
        """Skip rules, blobs, manifests (tag last) for each placement; failures stay per placement."""
        ready: list[tuple[Placement, CopyResult, ImageTree]] = []
        for placement, result in todo:
            result.digest, result.media_type = tree.top.digest, tree.top.media_type
            result.warnings.extend(tree.warnings)
            try:
                view = self._view(tree, placement.rules)
                self._check_skip(view, placement.rules.skip_types)
                refused = {m.media_type for m in view.all_manifests} & placement.destination.refused_types
                if refused:
                    raise TargetRefused(
                        f"{placement.destination.host} refused {sorted(refused)[0]} manifests earlier in this process"
                    )
                if view is not tree:
                    result.digest, result.rewritten_from = view.top.digest, tree.top.digest
                    if self._up_to_date(placement, view.top.digest):
                        result.status = CopyStatus.UNCHANGED
                        continue
                ready.append((placement, result, view))
            except SkipImage as exc:
                result.status, result.reason = CopyStatus.SKIPPED, str(exc)
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
        active: list[tuple[Placement, CopyResult, ImageTree, list[Manifest]]] = []
        lacking = self._missing_manifests([(placement, view) for placement, _, view in ready])
        for (placement, result, view), missing in zip(ready, lacking, strict=True):
            try:
                if isinstance(missing, Exception):
                    raise missing
                again = self._check_held(placement, view, missing)
                if again:  # held manifests whose blobs are gone: placed again, children first
                    again |= {m.digest for m in missing}
                    missing = [m for m in view.manifests if m.digest in again]
                active.append((placement, result, view, missing))
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
        if not active:
            return
        self._copy_blobs(src_repo, active)
        # each target's manifests in parallel: a slow target does not hold the others back
        pushes = [
            self.uploads.submit(self._push_all, placement, view, missing, result)
            for placement, result, view, missing in active
            if result.error is None
        ]
        for push in pushes:
            push.result()

    def _push_all(
        self, placement: Placement, view: ImageTree, missing: list[Manifest], result: CopyResult
    ) -> None:
        try:
            self._push_manifests(placement, view, missing, result)
        except SkipImage as exc:
            result.status, result.reason = CopyStatus.SKIPPED, str(exc)
        except Exception as exc:  # noqa: BLE001
            placement.destination.ledger.forget(placement.repository)  # not what we believed
            result.fail(exc)

    def _view(self, tree: ImageTree, rules: TargetRules) -> ImageTree:
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
        reachable = {d for digest in kept for d in _subtree(tree, digest)}
        view.manifests = [m for m in tree.manifests if m.digest in reachable]
        view.children_of = {d: c for d, c in tree.children_of.items() if d in reachable}
        view.children_of[narrowed.digest] = [c.digest for c in narrowed.children]
        for manifest in [narrowed, *(below[d] for d in reachable if d in below)]:
            blobs = manifest.blobs
            view.blobs_of[manifest.digest] = blobs
            for blob in blobs:
                view.blobs.setdefault(blob.digest, blob)
        return view

    @staticmethod
    def _check_skip(tree: ImageTree, skip: frozenset[str]) -> None:
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

    def _missing_manifests(
        self, views: list[tuple[Placement, ImageTree]]
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
                return self._holds(views[check[0]][0], check[1])
            except Exception as exc:  # noqa: BLE001 - that placement's failure, not the others'
                return exc

        answers = list(self.pool.map(held, checks))
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
                    present.update(_subtree(tree, digest))
            out.append(failed or [m for m in tree.manifests if m.digest not in present])
        return out

    def _check_held(self, placement: Placement, tree: ImageTree, missing: list[Manifest]) -> set[str]:
        """Check the size of every blob below the manifests the target already holds.

        Those blobs are not placed again, but their descriptors are checked as if they were: a
        manifest at the target with a wrong-size descriptor (put there by another client, or by
        a mount that did not check) must not make the outcome differ from an empty target's.
        A size this process verified costs nothing; else one HEAD per blob, in parallel.
        Returns the held manifests with a blob the target lacks (deleted, garbage-collected):
        the tag must not be written over them, so they are placed again with their blobs.
        """
        placed = {b.digest for m in [*missing, tree.top] for b in tree.blobs_of.get(m.digest, ())}
        below = {m.digest for m in missing}
        held = {
            b.digest: b
            for m in tree.manifests
            if m.digest not in below
            for b in tree.blobs_of.get(m.digest, ())
            if b.digest not in placed
        }
        if not held:
            return set()
        destination, repo = placement.destination, placement.repository

        def size(blob: Descriptor) -> int | None:
            """The blob's size at the target (-1: there, size not told), None: not there."""
            known = destination.ledger.size_of(blob.digest)
            if known is not None:
                return known
            found = destination.client.blob_size(repo, blob.digest)
            if found is not None and found >= 0:
                destination.ledger.record(repo, blob.digest, found)
            return found

        absent = set()
        for blob, found in zip(held.values(), self.pool.map(size, held.values()), strict=True):
            if found is None:
                absent.add(blob.digest)
            elif found >= 0:
                _check_size(blob, found, f"{destination.host}/{repo}")
        return {
            m.digest
            for m in tree.manifests
            if m.digest not in below and any(b.digest in absent for b in tree.blobs_of.get(m.digest, ()))
        }

    def _holds(self, placement: Placement, digest: str) -> bool:
        """The target repository holds manifest ``digest`` (this process knows it, or a HEAD says)."""
        ledger = placement.destination.ledger
        if ledger.known(placement.repository, digest):
            return True
        info = placement.destination.client.head_manifest(placement.repository, digest)
        if info is not None:
            ledger.record(placement.repository, digest)
        return info is not None

    def _not_up_to_date(
        self, todo: list[tuple[Placement, CopyResult]], digest: str
    ) -> list[tuple[Placement, CopyResult]]:
        """Mark placements whose tag (or digest) already points at ``digest``; return the others."""
        left = []
        for placement, result in todo:
            try:
                if self._up_to_date(placement, digest):
                    result.digest, result.status = digest, CopyStatus.UNCHANGED
                    continue
            except Exception as exc:  # noqa: BLE001
                result.fail(exc)
                continue
            left.append((placement, result))
        return left

    def _up_to_date(self, placement: Placement, digest: str) -> bool:
        if placement.tag is None:
            return self._holds(placement, digest)
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
            and narrowed_from(client.get_manifest(placement.repository, placement.tag), placement.rules)
            == digest
        )

    def _push_manifests(
        self, placement: Placement, tree: ImageTree, missing: list[Manifest], result: CopyResult
    ) -> None:
        """Children first, then the top manifest under its tag: the tag is written last."""
        destination, repo = placement.destination, placement.repository
        for manifest in missing:
            with destination.ledger.manifest_writes(repo):
                if destination.ledger.known(repo, manifest.digest):
                    continue  # pushed meanwhile by a concurrent copy of another tag
                self._put(destination, repo, manifest.digest, manifest)
                destination.ledger.record(repo, manifest.digest)
            result.manifests_pushed += 1
        with destination.ledger.manifest_writes(repo):
            self._put(destination, repo, placement.tag or tree.top.digest, tree.top)
            destination.ledger.record(repo, tree.top.digest)
        result.manifests_pushed += 1
        for manifest in [*missing, tree.top]:
            if manifest is tree.top and placement.list_later:
                continue
            if manifest.subject is not None and not destination.referrers_api:
                destination.referrers_tags.add(repo, manifest.subject.digest, manifest)

    def _put(self, destination: Destination, repo: str, reference: str, manifest: Manifest) -> None:
        try:
            answered = destination.client.put_manifest(repo, reference, manifest)
        except RegistryError as exc:
            raise self._refusal(destination, repo, reference, manifest, exc) from None
        if manifest.subject is not None and destination.referrers_api is None:
            destination.referrers_api = answered == manifest.subject.digest

    def _refusal(
        self, destination: Destination, repo: str, reference: str, manifest: Manifest, error: RegistryError
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
            destination.refused_types.add(manifest.media_type)
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

    # -- blobs ------------------------------------------------------------------------------
    def _copy_blobs(
        self, src_repo: str, active: list[tuple[Placement, CopyResult, ImageTree, list[Manifest]]]
    ) -> None:
        """Every blob each placement's missing manifests need, each blob in its own task."""
        needs: dict[str, list[tuple[Placement, CopyResult]]] = {}
        blobs: dict[str, Descriptor] = {}
        for placement, result, view, missing in active:
            for manifest in [*missing, view.top]:
                for blob in view.blobs_of.get(manifest.digest, ()):
                    blobs.setdefault(blob.digest, blob)
                    if not any(r is result for _, r in needs.get(blob.digest, ())):
                        needs.setdefault(blob.digest, []).append((placement, result))
        futures = [
            self.pool.submit(self._place_blob, src_repo, blobs[digest], targets)
            for digest, targets in needs.items()
        ]
        wait(futures)
        for future in futures:
            future.result()  # _place_blob records failures per target; anything else is a bug

    def _place_blob(
        self, src_repo: str, blob: Descriptor, targets: list[tuple[Placement, CopyResult]]
    ) -> None:
        """Make ``blob`` present at each target: known, mounted, found, or uploaded (one source read)."""
        uploads: list[tuple[Placement, CopyResult, str | None]] = []
        try:
            absent = self._look_for(blob, targets)
            for (placement, result), looked in zip(targets, absent, strict=True):
                if result.error is not None:
                    continue  # this target already failed: do no more work for it
                try:
                    settled = self._settle(placement, blob, result, looked)
                except Exception as exc:  # noqa: BLE001
                    result.fail(exc)
                    continue
                if settled is not None:
                    uploads.append((placement, result, settled or None))
            if uploads:
                self._upload(src_repo, blob, uploads)
        finally:
            for placement, _, _ in uploads:
                placement.destination.ledger.end_upload(blob.digest)

    def _look_for(self, blob: Descriptor, targets: list[tuple[Placement, CopyResult]]) -> list[bool]:
        """HEAD ``blob`` at once at every target that would otherwise HEAD it in turn (several
        targets: one round trip, not one each). Per target: whether it was just found absent.

        What is found is recorded (size checked) as :meth:`_settle` would; a failure fails that
        target only. Targets that know the blob, could mount it, or wait for its upload by another
        copy are not asked. No upload claim is taken here: holding one target's claim while
        waiting for another target's could deadlock two copies.
        """
        absent = [False] * len(targets)

        def unknown(placement: Placement, result: CopyResult) -> bool:
            ledger, repo = placement.destination.ledger, placement.repository
            return (
                result.error is None
                and not ledger.known(repo, blob.digest)
                and not ledger.uploading(blob.digest)
                and ledger.holder(blob.digest, exclude=repo) is None
            )

        asked = [i for i, (placement, result) in enumerate(targets) if unknown(placement, result)]
        if len(asked) < 2:
            return absent  # one HEAD at most: _settle asks, under its upload claim

        def look(i: int) -> None:
            placement, result = targets[i]
            destination, repo = placement.destination, placement.repository
            try:
                size = destination.client.blob_size(repo, blob.digest)
                if size is None:
                    absent[i] = True
                else:
                    _found(placement, blob, size)
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)

        others = [self.uploads.submit(look, i) for i in asked[1:]]
        look(asked[0])
        wait(others)
        return absent

    def _settle(
        self, placement: Placement, blob: Descriptor, result: CopyResult, absent: bool = False
    ) -> str | None:
        """Known, mounted or found at the target: None. Else the upload is claimed for us: an
        upload session's location if a refused mount opened one, or "" (start a new session).
        ``absent``: a HEAD found the blob missing a moment ago (:meth:`_look_for`); not asked again.
        """
        destination, repo = placement.destination, placement.repository
        ledger = destination.ledger
        while True:
            if ledger.known(repo, blob.digest):
                _check_size(blob, ledger.size_of(blob.digest), f"{destination.host}/{repo}")
                result.count(blobs_skipped=1)
                return None
            holder = ledger.holder(blob.digest, exclude=repo)
            if holder is not None:
                location = self._mount(placement, blob, holder)
                if location is None:
                    result.count(blobs_mounted=1)
                    return None
                other = ledger.begin_upload(blob.digest)
                if other is None:
                    return location
                other.wait(timeout=3600)
                continue
            other = ledger.begin_upload(blob.digest)
            if other is None:
                if absent:
                    return ""
                try:
                    size = destination.client.blob_size(repo, blob.digest)
                except BaseException:
                    ledger.end_upload(blob.digest)
                    raise
                if size is None:
                    return ""
                ledger.end_upload(blob.digest)
                _found(placement, blob, size)
                result.count(blobs_skipped=1)
                return None
            other.wait(timeout=3600)  # then mount from where it went (or claim it if that failed)

    def _mount(self, placement: Placement, blob: Descriptor, holder: str) -> str | None:
        """Mount ``blob`` from ``holder``: None when mounted, else an upload location (or "")."""
        destination, repo = placement.destination, placement.repository
        _check_size(blob, destination.ledger.size_of(blob.digest), f"{destination.host}/{holder}")
        try:
            mounted, location = destination.client.start_upload(repo, mount=blob.digest, mount_from=holder)
        except RegistryError as exc:
            # Docker Hub answers 401/403 when the token may not pull from the other repository
            # (its token service 400 when it dislikes the other name): upload like any other blob.
            if is_transient(exc) or not (isinstance(exc, AuthError) or exc.status == 400):
                raise
            log.info(
                "%s refused to mount %s from %s (%s); uploading it",
                destination.host,
                blob.digest,
                holder,
                exc,
            )
            return ""
        if mounted:
            destination.ledger.record(repo, blob.digest, destination.ledger.size_of(blob.digest))
            return None
        return location or ""

    def _upload(
        self, src_repo: str, blob: Descriptor, uploads: list[tuple[Placement, CopyResult, str | None]]
    ) -> None:
        """Upload ``blob`` to each target: one source read for all (a Tee), then retries one by one."""
        retry_alone = uploads
        if len(uploads) > 1:
            retry_alone = self._upload_together(src_repo, blob, uploads)
        for placement, result, location in retry_alone:
            try:
                self._upload_alone(src_repo, blob, placement, location)
            except Exception as exc:  # noqa: BLE001
                result.fail(exc)
                continue
            self._uploaded(placement, blob, result)

    def _uploaded(self, placement: Placement, blob: Descriptor, result: CopyResult) -> None:
        placement.destination.ledger.record(placement.repository, blob.digest, blob.size)
        result.count(blobs_uploaded=1, bytes_uploaded=blob.size)

    def _upload_together(
        self, src_repo: str, blob: Descriptor, uploads: list[tuple[Placement, CopyResult, str | None]]
    ) -> list[tuple[Placement, CopyResult, str | None]]:
        """One source stream, teed to every upload. Returns the uploads to retry on their own."""
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"
        try:
            response = self._open_source(src_repo, blob, where)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                return uploads  # each tries again on its own
            for _, result, _ in uploads:
                result.fail(exc)
            return []
        retry: list[tuple[Placement, CopyResult, str | None]] = []
        with response, InvocationPool(max_workers=len(uploads), thread_name_prefix="tee") as teed:
            tee = Tee(VerifyingReader(response.raw, blob, where), len(uploads), stall=self.stall)
            futures = [
                teed.submit(self._put_teed, placement, blob, location, tee.body(index))
                for index, (placement, _, location) in enumerate(uploads)
            ]
            try:
                tee.pump()
            except Exception as exc:  # noqa: BLE001 - the source broke: every upload sees it
                if not is_transient(exc):
                    wait(futures)
                    for _, result, _ in uploads:
                        result.fail(exc)
                    return []
            for future, (placement, result, _) in zip(futures, uploads, strict=True):
                error = future.exception()
                if error is None:
                    self._uploaded(placement, blob, result)
                elif is_transient(error) or _wants_chunked(error):
                    retry.append((placement, result, None))
                else:
                    result.fail(error)
        return retry

    def _put_teed(self, placement: Placement, blob: Descriptor, location: str | None, body: TeeBody) -> None:
        try:
            client, repo = placement.destination.client, placement.repository
            if body.tee.dropped[body.index]:  # already dropped: open no session to abandon
                raise SourceStreamError(
                    f"blob {blob.digest}: the upload to {placement.destination.host} fell behind"
                )
            if not location:
                _, location = client.start_upload(repo)
            assert location is not None
            if placement.destination.chunked:
                self._upload_chunked(placement, location, blob, body)
            else:
                client.put_blob(repo, location, blob.digest, body, blob.size)
        finally:
            body.tee.drop(body.index)  # stopped reading: never wait for it

    def _open_source(self, src_repo: str, blob: Descriptor, where: str) -> requests.Response:
        response = self.source.open_blob(src_repo, blob.digest)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) != blob.size:
            response.close()
            raise InvalidContent(f"{where}: source serves {length} bytes, the manifest says {blob.size}")
        return response

    def _upload_alone(
        self, src_repo: str, blob: Descriptor, placement: Placement, location: str | None
    ) -> None:
        """Stream one blob from the source into an upload at one target (restarted if it breaks).

        The source stream is opened first: a blob the source cannot serve leaves no abandoned
        upload session at the target.
        """
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"
        destination, repo = placement.destination, placement.repository
        session = location  # a refused mount's upload session: the first attempt uses it

        def attempt(number: int) -> None:
            nonlocal session
            location, session = session, None
            chunked = destination.chunked
            try:
                with self._open_source(src_repo, blob, where) as response:
                    if not location:
                        _, location = destination.client.start_upload(repo)
                    assert location is not None
                    reader = VerifyingReader(response.raw, blob, where)
                    if chunked:
                        self._upload_chunked(placement, location, blob, reader)
                    else:
                        destination.client.put_blob(repo, location, blob.digest, reader, blob.size)
            except RegistryError as exc:
                if chunked or not _wants_chunked(exc) or number + 1 >= self.retry.attempts:
                    raise
                destination.chunked = True
                log.info(
                    "%s rejected a single-request upload (HTTP %s); using chunked upload",
                    destination.host,
                    exc.status,
                )
                raise RetryLater("single-request upload refused", delay=0.0) from None
            except requests.RequestException as exc:
                raise RegistryError(
                    f"{where}: upload to {destination.host}/{repo} failed: {type(exc).__name__}"
                ) from None

        def restarting(error: BaseException, attempt: int, delay: float) -> None:
            if not isinstance(error, RetryLater):
                log.warning(
                    "restarting upload of %s to %s/%s after %s (attempt %d/%d)",
                    blob.digest,
                    destination.host,
                    repo,
                    type(error).__name__,
                    attempt + 2,
                    self.retry.attempts,
                )

        retrying(attempt, self.retry, what=f"upload of {where}", on_retry=restarting, sleep=self.sleep)

    def _upload_chunked(
        self, placement: Placement, location: str, blob: Descriptor, reader: VerifyingReader | TeeBody
    ) -> None:
        client, repo = placement.destination.client, placement.repository
        offset = 0
        while offset < blob.size:
            length = min(CHUNK_SIZE, blob.size - offset)
            location = client.patch_blob(repo, location, Slice(reader, length), offset, length)
            offset += length
        client.put_blob(repo, location, blob.digest, None, 0)

    # -- referrers --------------------------------------------------------------------------
    def _not_a_wanted_referrer(self, manifest: Manifest) -> str | None:
        if manifest.subject is None:
            return "not a referrer (no subject): an index child or an untagged image"
        if not self.finder.policy.wants(manifest.referrer_type):
            return f"SYNC_REFERRERS does not include artifact type {manifest.referrer_type}"
        return None

    def _mirror_referrers(
        self,
        src_repo: str,
        tree: ImageTree,
        todo: list[tuple[Placement, CopyResult]],
        seen: set[str],
        depth: int,
    ) -> None:
        """The referrers of every manifest of ``tree`` (placed at each target), recursively.

        A target that narrows indexes gets the referrers of the manifests it holds only: not those
        of the source index (its own index has another digest) or of the platforms it leaves out.
        """
        if not todo or not self.finder.policy.enabled:
            return
        held = [{m.digest for m in self._view(tree, p.rules).all_manifests} for p, _ in todo]
        for manifest in tree.all_manifests:
            there = [item for item, digests in zip(todo, held, strict=True) if manifest.digest in digests]
            if there:
                self._referrers_of(src_repo, manifest.digest, there, seen, depth)

    def _referrers_of(
        self,
        src_repo: str,
        subject: str,
        todo: list[tuple[Placement, CopyResult]],
        seen: set[str],
        depth: int,
    ) -> None:
        if depth >= MAX_REFERRER_DEPTH:
            for _, result in todo:
                result.warnings.append(
                    f"referrers nested deeper than {MAX_REFERRER_DEPTH} below {subject}: not followed"
                )
            return
        found = [d for d in self.finder.of(src_repo, subject) if d.digest not in seen]
        seen.update(d.digest for d in found)

        def mirror(descriptor: Descriptor) -> tuple[list[tuple[Placement, CopyResult]], ImageTree | None]:
            """One referrer (and its own referrers) to every placement: its results, one each,
            and its tree when it was pushed somewhere (to be listed in the referrers tag)."""
            subs = [
                (_by_digest(p, list_later=True), self._result(src_repo, descriptor.digest, p))
                for p, _ in todo
            ]
            waiting = self._not_up_to_date(subs, descriptor.digest)
            for placement, sub in subs:
                if sub.status is CopyStatus.UNCHANGED and sub.error is None:
                    self._keep_listed(src_repo, placement, sub, descriptor.digest, subject)
            tree = None
            try:
                if waiting:
                    tree = self.tree(src_repo, descriptor.digest)
                    self._copy_tree(src_repo, tree, waiting)
                    self._mirror_referrers(src_repo, tree, _copied(waiting), seen, depth + 1)
            except Exception as exc:  # noqa: BLE001 - recorded on the subject's results
                for _, sub in waiting:
                    sub.fail(exc)
            return subs, tree

        if len(found) > 1:  # a subject's referrers are independent of each other: side by side
            with InvocationPool(min(REFERRER_CONCURRENCY, len(found)), thread_name_prefix="referrer") as pool:
                outcomes = list(pool.map(mirror, found))
        else:
            outcomes = [mirror(d) for d in found]
        for i, (placement, _) in enumerate(todo):  # one referrers tag write for all of them
            pushed = [
                (self._view(tree, placement.rules).top, subs[i][1])  # what this target got
                for subs, tree in outcomes
                if tree is not None and _copied([(placement, subs[i][1])])
            ]
            self._list_referrers(placement, pushed)
        for descriptor, (subs, _) in zip(found, outcomes, strict=True):
            for (_, sub), (_, result) in zip(subs, todo, strict=True):
                if sub.error is not None:
                    result.referrer_errors.append(ReferrerFailure(descriptor.digest, sub.error))
                elif sub.status is CopyStatus.COPIED:
                    result.count(referrers_copied=1 + sub.referrers_copied)
                    _absorb(result, sub)
                result.referrer_errors.extend(sub.referrer_errors)
                if sub.status is CopyStatus.SKIPPED:
                    result.warnings.append(f"referrer {descriptor.digest} not mirrored: {sub.reason}")

    def _list_referrers(self, placement: Placement, pushed: list[tuple[Manifest, CopyResult]]) -> None:
        """List the referrers just pushed to ``placement`` (by :meth:`_referrers_of`, with
        ``list_later``) in their subject's referrers tag, one write for all, where the target has
        no referrers API. A failure is each of these referrers'."""
        destination, repo = placement.destination, placement.repository
        listed = [(m, sub) for m, sub in pushed if m.subject is not None]
        if not listed or destination.referrers_api:
            return
        by_subject: dict[str, list[tuple[Manifest, CopyResult]]] = {}
        for manifest, sub in listed:
            assert manifest.subject is not None
            by_subject.setdefault(manifest.subject.digest, []).append((manifest, sub))
        for subject, entries in by_subject.items():
            try:
                destination.referrers_tags.add(repo, subject, *(m for m, _ in entries))
            except Exception as exc:  # noqa: BLE001 - these referrers at this target
                for _, sub in entries:
                    sub.fail(exc)

    def _keep_listed(
        self,
        src_repo: str,
        placement: Placement,
        result: CopyResult,
        referrer: str,
        subject: str | None = None,
    ) -> None:
        """A referrer the target holds already: at a target without the referrers API, make sure
        its subject's referrers tag lists it (a run that died between the two PUTs, a failed tag
        PUT or another process's write may have left it out). Reads the tag (once a minute per
        subject); the source is asked only for an entry to add. A failure is this referrer's.
        """
        destination, repo = placement.destination, placement.repository
        if destination.referrers_api:
            return
        try:
            if subject is None:  # the referrer's own manifest names it: read it where it is
                found = destination.client.get_manifest(repo, referrer).subject
                if found is None:
                    return  # not a referrer there
                subject = found.digest
            api: bool | None = destination.referrers_api  # read once: another thread may learn it meanwhile
            if api is None:  # nothing pushed there yet: ask (once)
                with destination.probing:
                    api = destination.referrers_api
                    if api is None:
                        try:
                            api = destination.referrers_api = (
                                destination.client.referrers(repo, subject) is not None
                            )
                        except NotFound:
                            return
            if api:
                return
            if referrer in destination.referrers_tags.listed(repo, subject):
                return
            if destination.referrers_tags.add(repo, subject, self._manifest(src_repo, referrer)):
                result.count(manifests_pushed=1)
                result.status = CopyStatus.COPIED  # the mirror changed: the referrer is visible now
                log.info(
                    "listed referrer %s in %s/%s:%s (it was missing)",
                    referrer,
                    destination.host,
                    repo,
                    fallback_tag(subject),
                )
        except Exception as exc:  # noqa: BLE001 - this referrer at this target
            result.fail(exc)

    # -- helpers -----------------------------------------------------------------------------
    def _result(self, src_repo: str, reference: str, placement: Placement) -> CopyResult:
        sep = "@" if is_digest(reference) else ":"
        dst_ref = f":{placement.tag}" if placement.tag else f"@{reference}"
        return CopyResult(
            f"{self.source.host}/{src_repo}{sep}{reference}",
            f"{placement.destination.host}/{placement.repository}{dst_ref}",
        )


SOURCE_DIGEST_ANNOTATION = "io.registry-sync.source.digest"  # on a narrowed index: what it was narrowed from
NARROWED_ANNOTATION = "io.registry-sync.narrowed"  # ... and by which rules (TargetRules.narrowing)
ATTESTATION_TYPE = "attestation-manifest"


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


def _copied(todo: list[tuple[Placement, CopyResult]]) -> list[tuple[Placement, CopyResult]]:
    return [(p, r) for p, r in todo if r.error is None and r.status is CopyStatus.COPIED]


def _by_digest(placement: Placement, *, list_later: bool = False) -> Placement:
    """The same target repository and rules, without a tag (referrers are pushed by digest)."""
    return Placement(
        placement.destination, placement.repository, None, AtTarget.UNKNOWN, placement.rules, list_later
    )


# The work a copy did, as CopyResult and Summary both count it.
WORK_COUNTS = ("manifests_pushed", "blobs_uploaded", "blobs_mounted", "blobs_skipped", "bytes_uploaded")


def add_work(into: object, work: CopyResult) -> None:
    """Add ``work``'s counts (:data:`WORK_COUNTS`) to ``into`` (a result or a summary)."""
    for name in WORK_COUNTS:
        setattr(into, name, getattr(into, name) + getattr(work, name))


def _absorb(result: CopyResult, sub: CopyResult) -> None:
    result.count(**{name: getattr(sub, name) for name in WORK_COUNTS})
    result.warnings.extend(w for w in sub.warnings if w not in result.warnings)


def _subtree(tree: ImageTree, digest: str) -> Iterable[str]:
    yield digest
    for child in tree.children_of.get(digest, ()):
        yield from _subtree(tree, child)


def _check_size(blob: Descriptor, size: int | None, where: str) -> None:
    """A descriptor's size must be the blob's, whichever way the blob reaches the target."""
    if size is not None and size != blob.size:
        raise InvalidContent(f"blob {blob.digest} at {where} is {size} bytes, the manifest says {blob.size}")


def _found(placement: Placement, blob: Descriptor, size: int) -> None:
    """A HEAD found ``blob`` at the target (``size`` -1: no size told): check its size, record it."""
    destination = placement.destination
    _check_size(blob, size if size >= 0 else None, f"{destination.host}/{placement.repository}")
    destination.ledger.record(placement.repository, blob.digest, size if size >= 0 else None)


def _wants_chunked(error: BaseException) -> bool:
    """The registry refused a single-request upload (it wants PATCH chunks)."""
    return isinstance(error, RegistryError) and error.status in FALLBACK_TO_CHUNKED
