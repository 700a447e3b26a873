"""The copy engine: one image (all platforms, exact bytes) from a source to a destination.

Order of work for one image:

1. fetch the source manifest (by tag or digest) and, for an index, every child manifest that the
   destination does not already hold;
2. check the target's skip rules against every manifest involved;
3. make every blob present at the destination, in parallel: skipped if already there, mounted
   from another repository that holds it, else streamed from the source while being hashed;
4. push child manifests, then the top manifest, with the exact source bytes: the tag is written
   last, so a destination tag never points at content that is not all there.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from .errors import DigestMismatch, InvalidContent, RegistryError, SkipImage, SourceStreamError, SyncError
from .ledger import BlobLedger
from .manifest import Descriptor, Manifest
from .names import is_digest, new_hasher
from .registry import RegistryClient
from .retry import RetryLater, RetryPolicy, retrying

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
CHUNK_SIZE = 32 * 1024 * 1024  # for registries that need chunked (PATCH) uploads
MAX_INDEX_DEPTH = 4
FALLBACK_TO_CHUNKED = frozenset({405, 411, 413, 416})


class CopyStatus(str, enum.Enum):
    COPIED = "copied"
    UNCHANGED = "unchanged"  # the destination already had it
    SKIPPED = "skipped"  # the target's rules exclude it (reason in the result)


class BlobPlacement(str, enum.Enum):
    UPLOADED = "uploaded"
    MOUNTED = "mounted"
    PRESENT = "present"  # already at the destination


class AtTarget(enum.Enum):
    """What the caller learned about the destination just before asking for a copy.

    The copier trusts it instead of asking again: a planner that listed the destination's tags
    a moment ago need not have each tag HEADed once more.
    """

    UNKNOWN = "unknown"  # nothing: ask the destination (an event, a queued tag, `copy`)
    TAG_ABSENT = "tag absent"  # the repository's tag listing did not have the tag
    TAG_DIFFERS = "tag differs"  # the tag is there with another digest
    REPOSITORY_ABSENT = "repository absent"  # the tag listing answered 404

    @property
    def tag_known_absent(self) -> bool:
        return self is not AtTarget.UNKNOWN

    @property
    def repository_empty(self) -> bool:
        """Nothing to HEAD for: the repository holds only what this copy puts there."""
        return self is AtTarget.REPOSITORY_ABSENT


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
    seconds: float = 0.0


class VerifyingReader:
    """A file-like body that streams a source blob, hashing as it goes.

    The digest is checked when the last byte has been read from the source and *before* that
    byte is handed to the destination upload, so a wrong blob is never completed there.
    """

    def __init__(self, raw: Any, descriptor: Descriptor, where: str):
        self.raw = raw
        self.descriptor = descriptor
        self.where = where
        self.hasher = new_hasher(descriptor.digest)
        self.remaining = descriptor.size
        self.read_bytes = 0

    def __len__(self) -> int:
        return self.descriptor.size

    def read(self, n: int = -1) -> bytes:
        """Read on (at least ``READ_SIZE`` at a time: http.client asks for small blocks)."""
        return self.read_at_most(self.remaining if n is None or n < 0 else max(n, READ_SIZE))

    def read_at_most(self, limit: int) -> bytes:
        """Read at most ``limit`` bytes (a chunk of a chunked upload must not overrun its length)."""
        if self.remaining == 0 or limit <= 0:
            return b""
        want = min(limit, self.remaining)
        try:
            data: bytes = self.raw.read(want, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as exc:
            raise SourceStreamError(f"{self.where}: source stream broke ({type(exc).__name__})") from None
        if not data:
            raise SourceStreamError(
                f"{self.where}: source ended after {self.read_bytes} of {self.descriptor.size} bytes"
            )
        if len(data) > self.remaining:
            raise InvalidContent(
                f"{self.where}: source sent more than the {self.descriptor.size} bytes declared"
            )
        self.hasher.update(data)
        self.remaining -= len(data)
        self.read_bytes += len(data)
        if self.remaining == 0:
            actual = f"{self.descriptor.digest.split(':', 1)[0]}:{self.hasher.hexdigest()}"
            if actual != self.descriptor.digest:
                raise DigestMismatch(
                    f"{self.where}: expected {self.descriptor.digest}, content hashes to {actual}"
                )
        return data


class _Slice:
    """At most ``length`` bytes of a reader, as a file-like body (for chunked uploads)."""

    def __init__(self, reader: VerifyingReader, length: int):
        self.reader = reader
        self.left = length
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.reader.read_at_most(
            min(self.left, READ_SIZE if n is None or n < 0 else max(n, READ_SIZE))
        )
        self.left -= len(data)
        return data


@dataclass
class _Plan:
    top: Manifest
    manifests: list[Manifest]  # children first, to push before the top manifest
    blobs: dict[str, Descriptor]


class Copier:
    """Copies images from ``source`` to ``destination``. Thread-safe; one per (source, target)."""

    def __init__(
        self,
        source: RegistryClient,
        destination: RegistryClient,
        *,
        blob_concurrency: int = 4,
        ledger: BlobLedger | None = None,
        retry: RetryPolicy | None = None,
        chunked: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.source = source
        self.destination = destination
        self.ledger = ledger or BlobLedger()
        self.retry = retry or RetryPolicy(attempts=4)
        self.sleep = sleep
        self.chunked = chunked
        self.pool = ThreadPoolExecutor(max_workers=max(1, blob_concurrency), thread_name_prefix="blob")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one image ------------------------------------------------------------------------
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
        """Copy ``src_repo:reference`` to ``dst_repo`` (tagged ``dst_tag`` or the same tag).

        ``expected_digest`` (known from a listing) lets an up-to-date destination be detected
        with one HEAD and no source request at all; ``at_target`` (what a listing of the
        destination just said) saves that HEAD too.
        """
        started = time.monotonic()
        tag = dst_tag or (None if is_digest(reference) else reference)
        dst_ref = tag or reference
        sep = "@" if is_digest(reference) else ":"
        result = CopyResult(
            f"{self.source.host}/{src_repo}{sep}{reference}",
            f"{self.destination.host}/{dst_repo}{':' + tag if tag else '@' + reference}",
        )
        ask = not at_target.tag_known_absent
        try:
            if expected_digest and ask and self._destination_has(dst_repo, dst_ref, expected_digest, at_target):
                result.digest, result.status = expected_digest, CopyStatus.UNCHANGED
                return result
            top = self.source.get_manifest(src_repo, reference)
            result.digest, result.media_type = top.digest, top.media_type
            if (
                expected_digest != top.digest
                and ask
                and self._destination_has(dst_repo, dst_ref, top.digest, at_target)
            ):
                result.status = CopyStatus.UNCHANGED
                return result
            plan = self._plan(src_repo, top, dst_repo, skip_media_types, at_target)
            self._copy_blobs(src_repo, dst_repo, plan.blobs, result, at_target)
            try:
                self._push_manifests(dst_repo, dst_ref, plan, result)
            except SyncError:
                self.ledger.forget(dst_repo)  # the registry disagrees with what we believed it holds
                raise
            return result
        except SkipImage as exc:
            result.status, result.reason = CopyStatus.SKIPPED, str(exc)
            return result
        finally:
            result.seconds = round(time.monotonic() - started, 3)

    def _push_manifests(self, dst_repo: str, dst_ref: str, plan: _Plan, result: CopyResult) -> None:
        """Children first, then the top manifest under its tag: the tag is written last."""
        for manifest in plan.manifests:
            with self.ledger.manifest_writes(dst_repo):
                if self.ledger.known(dst_repo, manifest.digest):
                    continue  # pushed meanwhile by a concurrent copy of another tag
                self.destination.put_manifest(dst_repo, manifest.digest, manifest)
                self.ledger.record(dst_repo, manifest.digest)
            result.manifests_pushed += 1
        with self.ledger.manifest_writes(dst_repo):
            self.destination.put_manifest(dst_repo, dst_ref, plan.top)
            self.ledger.record(dst_repo, plan.top.digest)
        result.manifests_pushed += 1

    def _destination_has(self, dst_repo: str, dst_ref: str, digest: str, at_target: AtTarget) -> bool:
        if is_digest(dst_ref) and self.ledger.known(dst_repo, dst_ref):
            return True
        if is_digest(dst_ref) and at_target.repository_empty:
            return False  # a repository new in this run holds only what the ledger knows
        info = self.destination.head_manifest(dst_repo, dst_ref)
        return info is not None and info.digest == digest

    # -- planning ---------------------------------------------------------------------------
    def _plan(
        self, src_repo: str, top: Manifest, dst_repo: str, skip: frozenset[str], at_target: AtTarget
    ) -> _Plan:
        plan = _Plan(top, [], {})
        self._check_skip(top, skip, "image")
        self._collect(src_repo, top, dst_repo, skip, plan, 0, at_target)
        return plan

    def _collect(
        self,
        src_repo: str,
        manifest: Manifest,
        dst_repo: str,
        skip: frozenset[str],
        plan: _Plan,
        depth: int,
        at_target: AtTarget,
    ) -> None:
        if not manifest.is_index:
            for blob in manifest.blobs:
                plan.blobs.setdefault(blob.digest, blob)
            return
        if depth >= MAX_INDEX_DEPTH:
            raise InvalidContent(f"index {manifest.digest} nests deeper than {MAX_INDEX_DEPTH} levels")
        for entry in manifest.children:
            if entry.artifact_type and entry.artifact_type in skip:
                raise SkipImage(
                    f"child {entry.digest} has artifact type {entry.artifact_type}, which this target skips"
                )
        # Children not at the destination yet, fetched in parallel (round trips dominate).
        wanted = list(
            self.pool.map(
                lambda c: None if self._destination_has(dst_repo, c.digest, c.digest, at_target) else c,
                manifest.children,
            )
        )
        fetched = list(
            self.pool.map(lambda c: None if c is None else self.source.get_manifest(src_repo, c.digest), wanted)
        )
        for descriptor, child in zip(wanted, fetched, strict=True):
            if child is None or descriptor is None:
                continue
            if child.media_type != descriptor.media_type:
                raise InvalidContent(
                    f"index {manifest.digest} declares {descriptor.digest} as {descriptor.media_type}, "
                    f"the registry serves {child.media_type}"
                )
            self._check_skip(child, skip, f"child manifest {child.digest}")
            self._collect(src_repo, child, dst_repo, skip, plan, depth + 1, at_target)
            plan.manifests.append(child)

    @staticmethod
    def _check_skip(manifest: Manifest, skip: frozenset[str], what: str) -> None:
        hit = sorted(manifest.media_types() & skip)
        if hit:
            raise SkipImage(f"{what} has type {hit[0]}, which this target skips")

    # -- blobs ----------------------------------------------------------------------------
    def _copy_blobs(
        self,
        src_repo: str,
        dst_repo: str,
        blobs: dict[str, Descriptor],
        result: CopyResult,
        at_target: AtTarget,
    ) -> None:
        futures = [
            self.pool.submit(self._copy_blob, src_repo, dst_repo, blob, at_target) for blob in blobs.values()
        ]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        wait(pending)
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if error is not None:
                raise error
            placement, size = future.result()
            if placement is BlobPlacement.UPLOADED:
                result.blobs_uploaded += 1
                result.bytes_uploaded += size
            elif placement is BlobPlacement.MOUNTED:
                result.blobs_mounted += 1
            else:
                result.blobs_skipped += 1

    def _copy_blob(
        self, src_repo: str, dst_repo: str, blob: Descriptor, at_target: AtTarget
    ) -> tuple[BlobPlacement, int]:
        while True:
            if self.ledger.known(dst_repo, blob.digest):
                return BlobPlacement.PRESENT, 0
            if self.ledger.holder(blob.digest, exclude=dst_repo):
                return self._place_blob(src_repo, dst_repo, blob, at_target)
            other = self.ledger.begin_upload(blob.digest)
            if other is None:
                try:
                    return self._place_blob(src_repo, dst_repo, blob, at_target)
                finally:
                    self.ledger.end_upload(blob.digest)
            other.wait(timeout=3600)  # then mount from where it went (or claim it if that failed)

    def _place_blob(
        self, src_repo: str, dst_repo: str, blob: Descriptor, at_target: AtTarget
    ) -> tuple[BlobPlacement, int]:
        location = None
        holder = self.ledger.holder(blob.digest, exclude=dst_repo)
        if holder:
            mounted, location = self.destination.start_upload(dst_repo, mount=blob.digest, mount_from=holder)
            if mounted:
                self.ledger.record(dst_repo, blob.digest)
                return BlobPlacement.MOUNTED, 0
        elif not at_target.repository_empty and self.destination.blob_size(dst_repo, blob.digest) is not None:
            self.ledger.record(dst_repo, blob.digest)
            return BlobPlacement.PRESENT, 0
        self._upload(src_repo, dst_repo, blob, location)
        self.ledger.record(dst_repo, blob.digest)
        return BlobPlacement.UPLOADED, blob.size

    def _upload(self, src_repo: str, dst_repo: str, blob: Descriptor, location: str | None) -> None:
        """Stream one blob from the source into an upload at the destination (restarted if it breaks)."""
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"
        chunked = self.chunked
        session = location  # a refused mount's upload session: the first attempt uses it

        def attempt(number: int) -> None:
            nonlocal chunked, session
            location, session = session, None
            try:
                if location is None:
                    _, location = self.destination.start_upload(dst_repo)
                assert location is not None
                with self.source.open_blob(src_repo, blob.digest) as response:
                    length = response.headers.get("Content-Length", "")
                    if length.isdigit() and int(length) != blob.size:
                        raise InvalidContent(
                            f"{where}: source serves {length} bytes, the manifest says {blob.size}"
                        )
                    reader = VerifyingReader(response.raw, blob, where)
                    if chunked:
                        self._upload_chunked(dst_repo, location, blob, reader)
                    else:
                        self.destination.put_blob(dst_repo, location, blob.digest, reader, blob.size)
            except RegistryError as exc:
                fallback = exc.status in FALLBACK_TO_CHUNKED and not chunked
                if not fallback or number + 1 >= self.retry.attempts:
                    raise
                chunked = True
                log.info(
                    "%s rejected a single-request upload (HTTP %s); using chunked upload",
                    self.destination.host,
                    exc.status,
                )
                raise RetryLater("single-request upload refused", delay=0.0) from None
            except requests.RequestException as exc:
                raise RegistryError(
                    f"{where}: upload to {self.destination.host}/{dst_repo} failed: {type(exc).__name__}"
                ) from None

        def restarting(error: BaseException, attempt: int, delay: float) -> None:
            if not isinstance(error, RetryLater):
                log.warning(
                    "restarting upload of %s to %s/%s after %s (attempt %d/%d)",
                    blob.digest, self.destination.host, dst_repo, type(error).__name__,
                    attempt + 2, self.retry.attempts,
                )  # fmt: skip

        retrying(attempt, self.retry, what=f"upload of {where}", on_retry=restarting, sleep=self.sleep)

    def _upload_chunked(
        self, dst_repo: str, location: str, blob: Descriptor, reader: VerifyingReader
    ) -> None:
        offset = 0
        while offset < blob.size:
            length = min(CHUNK_SIZE, blob.size - offset)
            location = self.destination.patch_blob(dst_repo, location, _Slice(reader, length), offset, length)
            offset += length
        self.destination.put_blob(dst_repo, location, blob.digest, None, 0)
