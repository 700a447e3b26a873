"""Uploads of one blob from the source to the targets that lack it, its bytes verified on the way.

The upload half of blob placement (:class:`Uploading`, a base of
:class:`~sync_core.engine.blobs.BlobPlacer`):

* a small blob (up to one read block) is read whole and verified before any blob of the image is
  placed (``BlobPlacer.place_all``): a small blob whose bytes do not match its digest is never
  sent anywhere, and its image writes nothing;
* a larger one is streamed into the uploads while it is hashed (``stream.VerifyingReader``: a
  mismatch is found before the last byte leaves, so no target completes it), one source read teed
  to every target that needs it, then retried target by target;
* after a digest mismatch the blob is read again from the source without uploading; it is
  uploaded again only if that read verifies. A blob that fails verification twice is refused
  (``DigestMismatch``, exhausted) and remembered for :data:`REFUSED_SECONDS` (a run): at most one
  upload attempt of content that does not match its digest per run;
* an upload the target ends with 400 ``DIGEST_INVALID`` after its bytes verified is a
  contradiction (``pushing.py``), tried again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

import requests

from sync_core.engine.destination import Placement
from sync_core.engine.pushing import contradiction
from sync_core.engine.results import CopyResult
from sync_core.errors import (
    Contradicted,
    DigestMismatch,
    InvalidContent,
    RegistryError,
    SourceStreamError,
    is_transient,
)
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor
from sync_core.registry.retry import RetryLater, RetryPolicy, retrying
from sync_core.registry.stream import READ_SIZE, Slice, Tee, TeeBody, VerifyingReader

log = logging.getLogger(__name__)

CHUNK_SIZE = 32 * 1024 * 1024  # for registries that need chunked (PATCH) uploads
FALLBACK_TO_CHUNKED = frozenset({405, 411, 413, 416})
SMALL_BLOB = READ_SIZE  # read whole and verified before any upload opens
REFUSED_SECONDS = 900.0  # a blob refused for its content is not read again for this long

Uploads = list[tuple[Placement, CopyResult, str | None]]  # (placement, its result, a session to use)


class Verification:
    """How the bytes of one blob verified in one copy: a second mismatch refuses it."""

    def __init__(self) -> None:
        self.failures = 0
        self.refusal: DigestMismatch | None = None
        self._lock = threading.Lock()

    def mismatch(self, error: DigestMismatch) -> None:
        """The bytes just read did not hash to the digest: raises the refusal at the second time."""
        with self._lock:
            if self.refusal is None:
                self.failures += 1
                if self.failures < 2:
                    return
                error.exhausted = True  # the content itself: refused, never retried
                self.refusal = error
            raise self.refusal


class _Bytes:
    """Bytes read and verified already, as a source body (``read(n, decode_content=False)``)."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.offset = 0

    def read(self, n: int, decode_content: bool = False) -> bytes:
        chunk = bytes(self.data[self.offset : self.offset + n])
        self.offset += len(chunk)
        return chunk


class Uploading:
    """Uploads for the blob placer (which provides the attributes below)."""

    source: RegistryClient
    uploads: InvocationPool
    retry: RetryPolicy
    stall: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    _refused: dict[str, tuple[float, DigestMismatch]]
    _refused_lock: threading.Lock

    # -- refusals --------------------------------------------------------------------------------
    def refusal(self, digest: str) -> DigestMismatch | None:
        """Why blob ``digest`` was refused for its content in this run (None: it was not)."""
        now = self.clock()
        with self._refused_lock:
            found = self._refused.get(digest)
            if found is not None and now - found[0] >= REFUSED_SECONDS:
                del self._refused[digest]
                found = None
        return None if found is None else found[1]

    def _refuse(self, digest: str, error: DigestMismatch) -> None:
        now = self.clock()
        with self._refused_lock:
            self._refused[digest] = (now, error)
            if len(self._refused) % 64 == 0:  # now and then: forget what has expired
                for old in [d for d, (at, _) in self._refused.items() if now - at >= REFUSED_SECONDS]:
                    del self._refused[old]

    # -- one blob to the targets that lack it ----------------------------------------------------
    def _upload(self, src_repo: str, blob: Descriptor, uploads: Uploads, data: bytes | None = None) -> None:
        """Upload ``blob`` to each target: one source read for all, then retries one by one
        (``data``: a small blob's bytes, verified already)."""
        check = Verification()
        try:
            refused = self.refusal(blob.digest)
            if refused is not None:
                raise refused
            if data is None and blob.size <= SMALL_BLOB:
                data = self._verified(src_repo, blob, check, keep=True)
            alone = uploads
            if data is None and len(uploads) > 1:
                alone = self._upload_together(src_repo, blob, uploads, check)
        except Exception as exc:  # noqa: BLE001 - the source's answer: every target's failure
            for _, result, _ in uploads:
                result.fail(exc)
            return
        for placement, result, location in alone:
            if check.refusal is not None:  # refused on another target's try: not read again
                result.fail(check.refusal)
                continue
            try:
                self._upload_alone(src_repo, blob, placement, location, check, data)
            except Exception as exc:  # noqa: BLE001
                result.fail(exc)
                continue
            self._uploaded(placement, blob, result)

    def _uploaded(self, placement: Placement, blob: Descriptor, result: CopyResult) -> None:
        placement.destination.ledger.record(placement.repository, blob.digest, blob.size)
        result.count(blobs_uploaded=1, bytes_uploaded=blob.size)

    def _verified(self, src_repo: str, blob: Descriptor, check: Verification, keep: bool) -> bytes:
        """Read ``blob`` from the source to the end, its digest verified; the bytes with ``keep``.

        A mismatch is read once more (bytes damaged on the way hash differently); the second
        mismatch refuses the blob for the run. A broken stream is retried as any read.
        """
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"

        def read(number: int) -> bytes:
            got = bytearray()
            try:
                with self._open_source(src_repo, blob, where) as response:
                    reader = VerifyingReader(response.raw, blob, where)
                    while True:
                        block = reader.read_at_most(READ_SIZE)
                        if not block:
                            return bytes(got)
                        if keep:
                            got.extend(block)
            except requests.RequestException as exc:
                raise SourceStreamError(f"{where}: source stream broke ({type(exc).__name__})") from None

        while True:  # ends: the second mismatch raises
            try:
                return retrying(
                    read,
                    self.retry,
                    what=f"read of {where}",
                    transient=lambda e: is_transient(e) and not isinstance(e, DigestMismatch),
                    sleep=self.sleep,
                )
            except DigestMismatch as exc:
                self._mismatch(blob, check, exc)

    def _mismatch(self, blob: Descriptor, check: Verification, error: DigestMismatch) -> None:
        """A read of ``blob`` did not verify: refused the second time (and remembered for the run)."""
        try:
            check.mismatch(error)
        except DigestMismatch as refused:
            self._refuse(blob.digest, refused)
            raise
        log.warning("%s; reading it again from the source before any upload", error)

    def _upload_together(
        self, src_repo: str, blob: Descriptor, uploads: Uploads, check: Verification
    ) -> Uploads:
        """One source stream, teed to every upload. Returns the uploads to retry on their own."""
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"
        try:
            response = self._open_source(src_repo, blob, where)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                return uploads  # each tries again on its own
            raise
        retry: Uploads = []
        with response, InvocationPool(max_workers=len(uploads), thread_name_prefix="tee") as teed:
            tee = Tee(VerifyingReader(response.raw, blob, where), len(uploads), stall=self.stall)
            futures = [
                teed.submit(self._put_teed, placement, blob, location, tee.body(index))
                for index, (placement, _, location) in enumerate(uploads)
            ]
            try:
                tee.pump()
            except DigestMismatch as exc:  # no upload completed; a read without them decides
                wait(futures)
                self._mismatch(blob, check, exc)
                self._verified(src_repo, blob, check, keep=False)
                return [(p, r, None) for p, r, _ in uploads]
            except Exception as exc:  # noqa: BLE001 - the source broke: every upload sees it
                if not is_transient(exc):
                    wait(futures)
                    raise
            for future, (placement, result, _) in zip(futures, uploads, strict=True):
                error = future.exception()
                if error is None:
                    self._uploaded(placement, blob, result)
                elif is_transient(error) or _wants_chunked(error) or _contradicts(error):
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
        self,
        src_repo: str,
        blob: Descriptor,
        placement: Placement,
        location: str | None,
        check: Verification,
        data: bytes | None = None,
    ) -> None:
        """One blob into an upload at one target (restarted if it breaks): ``data`` when it was read
        and verified already, else streamed from the source.

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
            reader: VerifyingReader | None = None
            try:
                with self._body(src_repo, blob, where, data) as raw:
                    if not location:
                        _, location = destination.client.start_upload(repo)
                    assert location is not None
                    reader = VerifyingReader(raw, blob, where)
                    if chunked:
                        self._upload_chunked(placement, location, blob, reader)
                    else:
                        destination.client.put_blob(repo, location, blob.digest, reader, blob.size)
            except DigestMismatch as exc:  # nothing completed at the target; a read without it decides
                self._mismatch(blob, check, exc)
                if number + 1 >= self.retry.attempts:
                    raise  # damaged on the way, it seems; no attempt left to upload it again
                self._verified(src_repo, blob, check, keep=False)
                raise RetryLater("the source read verified: upload again", delay=0.0) from None
            except RegistryError as exc:
                if reader is not None and reader.remaining == 0 and contradiction(exc):
                    raise Contradicted(str(exc), status=exc.status, code=exc.code) from None
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

        try:
            retrying(attempt, self.retry, what=f"upload of {where}", on_retry=restarting, sleep=self.sleep)
        except Contradicted as exc:
            raise RegistryError(
                f"{exc}: the same answer {self.retry.attempts} times, though the bytes sent hash to {blob.digest}",
                status=exc.status,
                code=exc.code,
            ) from None

    def _body(self, src_repo: str, blob: Descriptor, where: str, data: bytes | None) -> Any:
        """The source body of one upload attempt (a context manager): the bytes, or the stream."""
        if data is not None:
            return _Given(_Bytes(data))
        return _Streamed(self._open_source(src_repo, blob, where))

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


class _Given:
    def __init__(self, raw: _Bytes):
        self.raw = raw

    def __enter__(self) -> _Bytes:
        return self.raw

    def __exit__(self, *exc: object) -> None:
        return None


class _Streamed:
    def __init__(self, response: requests.Response):
        self.response = response

    def __enter__(self) -> Any:
        return self.response.raw

    def __exit__(self, *exc: object) -> None:
        self.response.close()


def _wants_chunked(error: BaseException) -> bool:
    """The registry refused a single-request upload (it wants PATCH chunks)."""
    return isinstance(error, RegistryError) and error.status in FALLBACK_TO_CHUNKED


def _contradicts(error: BaseException) -> bool:
    return isinstance(error, RegistryError) and contradiction(error)
