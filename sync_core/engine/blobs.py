"""Blobs to targets: every blob a target lacks made present, each read from the source once.

Per blob and target, in this order: known (this process verified it), mounted from another
repository that holds it, found by a HEAD, else uploaded from the source; a blob several targets
need is streamed once and teed to all their uploads (:class:`~sync_core.registry.stream.Tee`).
Every path checks the descriptor's size, and an upload its digest, the same way; the blobs below
manifests a target already holds are size-checked too (not placed again). One upload of a digest
per destination at a time: concurrent copies wait for it, then mount or skip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass

import requests

from sync_core.engine.destination import Placement
from sync_core.engine.results import CopyResult
from sync_core.engine.tree import ImageTree
from sync_core.errors import AuthError, InvalidContent, RegistryError, SourceStreamError, is_transient
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor, Manifest
from sync_core.registry.retry import RetryLater, RetryPolicy, retrying
from sync_core.registry.stream import Slice, Tee, TeeBody, VerifyingReader

log = logging.getLogger(__name__)

CHUNK_SIZE = 32 * 1024 * 1024  # for registries that need chunked (PATCH) uploads
FALLBACK_TO_CHUNKED = frozenset({405, 411, 413, 416})


@dataclass(frozen=True)
class Upload:
    """A blob this copy must upload to a target (its upload claim is taken): into ``location``, the
    upload session a refused mount opened, or a new session when None."""

    location: str | None = None


class BlobPlacer:
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
    ):
        self.source = source
        self.pool = pool
        self.uploads = uploads
        self.retry = retry
        self.stall = stall  # how long one target's upload may hold a shared blob read back
        self.sleep = sleep

    def place_all(
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
                    uploads.append((placement, result, settled.location))
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
            if placement.destination.learned.chunked:
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
            chunked = destination.learned.chunked
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
                destination.learned.use_chunked_uploads()
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
