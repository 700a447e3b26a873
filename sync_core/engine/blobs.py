"""Blobs to targets: every blob a target lacks made present, each read from the source once.

Every descriptor of an image is checked before the first write at a target (:meth:`BlobPlacer.
place_all`): per blob and target, known (this process verified it; size compared), mountable from
another repository (its verified size compared), found by a HEAD (size compared) or absent; where
absent, its size and presence at the source (a HEAD, once per process, or its refusal earlier in
the run). A placement with any failed check gets no write at all, whatever the order of threads:
a refused image writes nothing, on every run. Then the writes: mounted, or uploaded from the
source (``uploads.py``: one source read for all targets that need it, verified). The blobs below
manifests a target already holds are size-checked too (not placed again). One upload of a digest
per destination at a time: concurrent copies wait for it, then mount or skip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass

from sync_core.engine.destination import Placement
from sync_core.engine.results import CopyResult
from sync_core.engine.tree import ImageTree
from sync_core.engine.uploads import SMALL_BLOB, Uploading, Verification
from sync_core.errors import AuthError, InvalidContent, NotFound, RegistryError, is_transient
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor, Manifest
from sync_core.registry.retry import RetryPolicy

log = logging.getLogger(__name__)

SOURCE_SIZES = 100_000  # blob sizes verified at the source, kept per process (content-addressed)

Targets = list[tuple[Placement, CopyResult]]


@dataclass(frozen=True)
class Upload:
    """A blob this copy must upload to a target (its upload claim is taken): into ``location``, the
    upload session a refused mount opened, or a new session when None."""

    location: str | None = None


class BlobPlacer(Uploading):
    """Makes blobs present at targets (thread-safe; one per copier).

    ``pool`` runs one task per blob; ``uploads`` the uploads a shared source read feeds, and the
    HEADs of one blob at several targets at once.
    """

    def __init__(
        self,
        source: RegistryClient,
        pool: InvocationPool,
        uploads: InvocationPool,
        *,
        retry: RetryPolicy,
        stall: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.pool = pool
        self.uploads = uploads
        self.retry = retry
        self.stall = stall  # how long one target's upload may hold a shared blob read back
        self.sleep = sleep
        self.clock = clock
        self._refused = {}
        self._refused_lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # verified at the source
        self._sizes_lock = threading.Lock()

    def place_all(
        self, src_repo: str, active: list[tuple[Placement, CopyResult, ImageTree, list[Manifest]]]
    ) -> None:
        """Every blob each placement's missing manifests need: all checked, then placed (a task each).

        A placement that fails any check gets no write: the checks of all blobs end before the
        first mount or upload.
        """
        needs: dict[str, Targets] = {}
        blobs: dict[str, Descriptor] = {}
        for placement, result, view, missing in active:
            for manifest in [*missing, view.top]:
                for blob in view.blobs_of.get(manifest.digest, ()):
                    blobs.setdefault(blob.digest, blob)
                    if not any(r is result for _, r in needs.get(blob.digest, ())):
                        needs.setdefault(blob.digest, []).append((placement, result))
        surveys = self.pool.map(lambda d: self._survey(src_repo, blobs[d], needs[d]), needs)
        absent = dict(zip(needs, surveys, strict=True))
        # a small blob a target lacks is read and verified now, before any blob is placed: a
        # damaged one fails its targets before their first write, whatever the order of threads
        small = [d for d in needs if blobs[d].size <= SMALL_BLOB and any(absent[d]) and _live(needs[d])]
        verified = self.pool.map(lambda d: self._read_small(src_repo, blobs[d], needs[d]), small)
        read = dict(zip(small, verified, strict=True))
        futures = [
            self.pool.submit(
                self._place_blob, src_repo, blobs[digest], targets, absent[digest], read.get(digest)
            )
            for digest, targets in needs.items()
            if _live(targets)
        ]
        wait(futures)
        for future in futures:
            future.result()  # _place_blob records failures per target; anything else is a bug

    def check_held(self, placement: Placement, tree: ImageTree, missing: list[Manifest]) -> set[str]:
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

    def _survey(self, src_repo: str, blob: Descriptor, targets: Targets) -> list[bool]:
        """Check ``blob`` at every target, and at the source where one lacks it; writes nothing.

        Per target: known (size compared), mountable (the verified size compared), being uploaded
        by another copy, found by a HEAD (size compared, recorded) or absent. The HEADs of several
        targets go out at once. Where a target lacks it (or waits for another copy's upload), the
        source must hold the blob with the described size (one HEAD per process) and not have
        refused it this run. A failed check fails that target. Returns, per target, whether a HEAD
        just found the blob absent. (A mount the target refuses falls back to an upload, whose
        source read checks the size again.)
        """
        absent = [False] * len(targets)
        upload = [False] * len(targets)

        def look(i: int) -> None:
            placement, result = targets[i]
            destination, repo = placement.destination, placement.repository
            ledger = destination.ledger
            try:
                if ledger.known(repo, blob.digest):
                    _check_size(blob, ledger.size_of(blob.digest), f"{destination.host}/{repo}")
                    return
                holder = ledger.holder(blob.digest, exclude=repo)
                if holder is not None:  # mounted from there: its size there was verified
                    _check_size(blob, ledger.size_of(blob.digest), f"{destination.host}/{holder}")
                    return
                if ledger.uploading(blob.digest):  # another copy's: mounted after it (or uploaded)
                    upload[i] = True
                    return
                size = destination.client.blob_size(repo, blob.digest)
                if size is None:
                    absent[i] = upload[i] = True
                else:
                    _found(placement, blob, size)
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)

        asked = [i for i, (_, result) in enumerate(targets) if result.error is None]
        others = [self.uploads.submit(look, i) for i in asked[1:]]
        if asked:
            look(asked[0])
        wait(others)
        waiting = [targets[i][1] for i in asked if upload[i] and targets[i][1].error is None]
        if waiting:
            try:
                self._at_source(src_repo, blob)
            except Exception as exc:  # noqa: BLE001 - the targets that would read it from there
                for result in waiting:
                    result.fail(exc)
        return absent

    def _at_source(self, src_repo: str, blob: Descriptor) -> None:
        """The source holds ``blob`` with the described size, and this run did not refuse it."""
        refused = self.refusal(blob.digest)
        if refused is not None:
            raise refused
        with self._sizes_lock:
            size = self._sizes.get(blob.digest)
            if size is not None:
                self._sizes.move_to_end(blob.digest)
        if size is None:
            size = self.source.blob_size(src_repo, blob.digest)
            if size is None:
                raise NotFound(
                    f"{self.source.host}: HEAD blob {src_repo}@{blob.digest}: HTTP 404 (not at the source)",
                    status=404,
                )
            if size < 0:
                return  # no size told: the read checks it
            with self._sizes_lock:
                self._sizes[blob.digest] = size
                while len(self._sizes) > SOURCE_SIZES:
                    self._sizes.popitem(last=False)
        if size != blob.size:
            raise InvalidContent(
                f"blob {blob.digest} of {self.source.host}/{src_repo}: source serves {size} bytes, "
                f"the manifest says {blob.size}"
            )

    def _read_small(self, src_repo: str, blob: Descriptor, targets: Targets) -> bytes | None:
        """``blob``'s bytes, verified (None: it could not be read; its targets have failed)."""
        try:
            refused = self.refusal(blob.digest)
            if refused is not None:
                raise refused
            return self._verified(src_repo, blob, Verification(), keep=True)
        except Exception as exc:  # noqa: BLE001 - the source's answer: every target's failure
            for _, result in targets:
                result.fail(exc)
            return None

    def _place_blob(
        self, src_repo: str, blob: Descriptor, targets: Targets, absent: list[bool], data: bytes | None = None
    ) -> None:
        """Make ``blob`` present at each target: known, mounted, found, or uploaded (one source read;
        ``data``: its bytes, read and verified already)."""
        uploads: list[tuple[Placement, CopyResult, str | None]] = []
        try:
            for (placement, result), looked in zip(targets, absent, strict=True):
                if result.error is not None:
                    continue  # this target already failed: do no more work for it
                try:
                    settled = self._settle(placement, blob, result, looked)
                except Exception as exc:  # noqa: BLE001
                    result.fail(exc)
                    continue
                if settled is not None:
                    uploads.append((placement, result, settled.location))
            if uploads:
                self._upload(src_repo, blob, uploads, data)
        finally:
            for placement, _, _ in uploads:
                placement.destination.ledger.end_upload(blob.digest)

    def _settle(
        self, placement: Placement, blob: Descriptor, result: CopyResult, absent: bool = False
    ) -> Upload | None:
        """Known, mounted or found at the target: None. Else the :class:`Upload` to make (its claim is
        ours). ``absent``: a HEAD found the blob missing a moment ago (:meth:`_look_for`); not asked again.
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
                upload = self._mount(placement, blob, holder)
                if upload is None:
                    result.count(blobs_mounted=1)
                    return None
                other = ledger.begin_upload(blob.digest)
                if other is None:
                    return upload
                other.wait(timeout=3600)
                continue
            other = ledger.begin_upload(blob.digest)
            if other is None:
                if absent:
                    return Upload()
                try:
                    size = destination.client.blob_size(repo, blob.digest)
                except BaseException:
                    ledger.end_upload(blob.digest)
                    raise
                if size is None:
                    return Upload()
                ledger.end_upload(blob.digest)
                _found(placement, blob, size)
                result.count(blobs_skipped=1)
                return None
            other.wait(timeout=3600)  # then mount from where it went (or claim it if that failed)

    def _mount(self, placement: Placement, blob: Descriptor, holder: str) -> Upload | None:
        """Mount ``blob`` from ``holder``: None when mounted, else the upload to make instead."""
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
            return Upload()
        if mounted:
            destination.ledger.record(repo, blob.digest, destination.ledger.size_of(blob.digest))
            return None
        return Upload(location or None)


def _check_size(blob: Descriptor, size: int | None, where: str) -> None:
    """A descriptor's size must be the blob's, whichever way the blob reaches the target."""
    if size is not None and size != blob.size:
        raise InvalidContent(f"blob {blob.digest} at {where} is {size} bytes, the manifest says {blob.size}")


def _found(placement: Placement, blob: Descriptor, size: int) -> None:
    """A HEAD found ``blob`` at the target (``size`` -1: no size told): check its size, record it."""
    destination = placement.destination
    _check_size(blob, size if size >= 0 else None, f"{destination.host}/{placement.repository}")
    destination.ledger.record(placement.repository, blob.digest, size if size >= 0 else None)


def _live(targets: Targets) -> bool:
    """Some target still wants the blob (not every one has failed)."""
    return any(result.error is None for _, result in targets)
