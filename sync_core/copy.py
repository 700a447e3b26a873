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

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import asdict, dataclass

import requests
import urllib3

from .errors import AuthError, DigestMismatch, InvalidContent, RegistryError, SkipImage, SyncError
from .logs import InvocationPool
from .manifest import Descriptor, Manifest
from .names import is_digest, new_hasher
from .registry import RegistryClient
from .transport import RetryPolicy

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
CHUNK_SIZE = 32 * 1024 * 1024  # for registries that need chunked (PATCH) uploads
MAX_INDEX_DEPTH = 4
FALLBACK_TO_CHUNKED = frozenset({405, 411, 413, 416})


class SourceStreamError(RegistryError):
    """The source blob stream broke, or ended early (transient: the upload is restarted)."""


@dataclass
class CopyResult:
    source: str
    destination: str
    digest: str | None = None
    media_type: str | None = None
    status: str = "copied"  # copied | unchanged | skipped
    reason: str | None = None
    manifests_pushed: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class BlobLedger:
    """What one run knows about blobs and manifests at one destination registry.

    Lets later copies skip HEAD requests for content already verified present, and mount a blob
    from any repository that is known to hold it instead of uploading it again.

    Knowledge expires after ``ttl`` seconds (the Functions host keeps one per process across
    invocations, and content can be deleted at a target meanwhile), and a repository whose
    manifest push fails is forgotten, so that the retry looks again instead of trusting it.
    """

    def __init__(self, ttl: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self.ttl = ttl
        self.clock = clock
        self._present: dict[tuple[str, str], float] = {}
        self._holders: dict[str, tuple[str, float]] = {}
        self._uploading: dict[str, threading.Event] = {}
        self._manifest_locks: dict[str, threading.Lock] = {}
        self._new: set[str] = set()

    def begin_upload(self, digest: str) -> threading.Event | None:
        """Claim the upload of ``digest``: None if ours, else an event set when the owner ends.

        Concurrent copies of images sharing a layer upload it once; the others then mount it.
        """
        with self._lock:
            event = self._uploading.get(digest)
            if event is None:
                self._uploading[digest] = threading.Event()
            return event

    def end_upload(self, digest: str) -> None:
        with self._lock:
            event = self._uploading.pop(digest, None)
        if event is not None:
            event.set()

    def record(self, repository: str, digest: str) -> None:
        now = self.clock()
        with self._lock:
            self._present[(repository, digest)] = now
            held = self._holders.get(digest)
            if held is None or now - held[1] >= self.ttl:
                self._holders[digest] = (repository, now)

    def known(self, repository: str, digest: str) -> bool:
        with self._lock:
            seen = self._present.get((repository, digest))
        return seen is not None and self.clock() - seen < self.ttl

    def holder(self, digest: str, exclude: str) -> str | None:
        with self._lock:
            held = self._holders.get(digest)
        if held is None or held[0] == exclude or self.clock() - held[1] >= self.ttl:
            return None
        return held[0]

    def forget(self, repository: str) -> None:
        """Drop what is known about ``repository`` (its content may not be what we believed)."""
        with self._lock:
            self._present = {k: t for k, t in self._present.items() if k[0] != repository}
            self._holders = {d: h for d, h in self._holders.items() if h[0] != repository}
            self._new.discard(repository)

    def set_new_repository(self, repository: str, new: bool) -> None:
        """Note whether ``repository`` did not exist at the destination when the run listed it.

        Until then a new repository holds only what this run put there (which the ledger
        records), so copies into it need no HEAD request to find out what is already there.
        Only a time saving: were anything else to write there meanwhile, it would be pushed again.
        """
        with self._lock:
            if new:
                self._new.add(repository)
            else:
                self._new.discard(repository)

    def is_new_repository(self, repository: str) -> bool:
        with self._lock:
            return repository in self._new

    def manifest_writes(self, repository: str) -> threading.Lock:
        """Held around every manifest PUT to ``repository``.

        distribution rewrites a manifest's link file in place on every PUT of it (by digest or by
        tag); an index PUT that verifies that manifest meanwhile fails with 400 DIGEST_INVALID /
        MANIFEST_BLOB_UNKNOWN. Concurrent copies of tags sharing an index (``latest`` and
        ``1.4.0``) did exactly that. Manifest PUTs are small; blob uploads stay parallel.
        """
        with self._lock:
            return self._manifest_locks.setdefault(repository, threading.Lock())


class VerifyingReader:
    """A file-like body that streams a source blob, hashing as it goes.

    The digest is checked when the last byte has been read from the source and *before* that
    byte is handed to the destination upload, so a wrong blob is never completed there.
    """

    def __init__(self, raw, descriptor: Descriptor, where: str):
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
            data = self.raw.read(want, decode_content=False)
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
    ):
        self.source = source
        self.destination = destination
        self.ledger = ledger or BlobLedger()
        self.retry = retry or RetryPolicy(attempts=4)
        self.chunked = chunked
        self.pool = InvocationPool(max_workers=max(1, blob_concurrency), thread_name_prefix="blob")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc) -> None:
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
        tag_absent: bool = False,
    ) -> CopyResult:
        """Copy ``src_repo:reference`` to ``dst_repo`` (tagged ``dst_tag`` or the same tag).

        ``expected_digest`` (known from a listing) lets an up-to-date destination be detected
        with one HEAD and no source request at all. ``tag_absent``: the caller has just listed
        the destination's tags and this tag was not among them, so there is nothing to HEAD.
        """
        started = time.monotonic()
        tag = dst_tag or (None if is_digest(reference) else reference)
        dst_ref = tag or reference
        sep = "@" if is_digest(reference) else ":"
        result = CopyResult(
            f"{self.source.host}/{src_repo}{sep}{reference}",
            f"{self.destination.host}/{dst_repo}{':' + tag if tag else '@' + reference}",
        )
        try:
            if (
                expected_digest
                and not tag_absent
                and self._destination_has(dst_repo, dst_ref, expected_digest)
            ):
                result.digest, result.status = expected_digest, "unchanged"
                return result
            top = self.source.get_manifest(src_repo, reference)
            result.digest, result.media_type = top.digest, top.media_type
            if (
                expected_digest != top.digest
                and not tag_absent
                and self._destination_has(dst_repo, dst_ref, top.digest)
            ):
                result.status = "unchanged"
                return result
            plan = self._plan(src_repo, top, dst_repo, skip_media_types)
            self._copy_blobs(src_repo, dst_repo, plan.blobs, result)
            try:
                self._push_manifests(dst_repo, dst_ref, plan, result)
            except SyncError:
                self.ledger.forget(dst_repo)  # the registry disagrees with what we believed it holds
                raise
            return result
        except SkipImage as exc:
            result.status, result.reason = "skipped", str(exc)
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

    def _destination_has(self, dst_repo: str, dst_ref: str, digest: str) -> bool:
        if is_digest(dst_ref) and self.ledger.known(dst_repo, dst_ref):
            return True
        if is_digest(dst_ref) and self.ledger.is_new_repository(dst_repo):
            return False  # a repository new in this run holds only what the ledger knows
        info = self.destination.head_manifest(dst_repo, dst_ref)
        return info is not None and info.digest == digest

    # -- planning ---------------------------------------------------------------------------
    def _plan(self, src_repo: str, top: Manifest, dst_repo: str, skip: frozenset[str]) -> _Plan:
        plan = _Plan(top, [], {})
        self._check_skip(top, skip, "image")
        self._collect(src_repo, top, dst_repo, skip, plan, depth=0)
        return plan

    def _collect(self, src_repo, manifest: Manifest, dst_repo, skip, plan: _Plan, depth: int) -> None:
        if not manifest.is_index:
            for blob in manifest.blobs:
                plan.blobs.setdefault(blob.digest, blob)
            return
        if depth >= MAX_INDEX_DEPTH:
            raise InvalidContent(f"index {manifest.digest} nests deeper than {MAX_INDEX_DEPTH} levels")
        for child in manifest.children:
            if child.artifact_type and child.artifact_type in skip:
                raise SkipImage(
                    f"child {child.digest} has artifact type {child.artifact_type}, which this target skips"
                )
        # Children not at the destination yet, fetched in parallel (round trips dominate).
        wanted = list(
            self.pool.map(
                lambda c: None if self._destination_has(dst_repo, c.digest, c.digest) else c,
                manifest.children,
            )
        )
        fetched = list(self.pool.map(lambda c: c and self.source.get_manifest(src_repo, c.digest), wanted))
        for descriptor, child in zip(wanted, fetched, strict=True):
            if child is None:
                continue
            if child.media_type != descriptor.media_type:
                raise InvalidContent(
                    f"index {manifest.digest} declares {descriptor.digest} as {descriptor.media_type}, "
                    f"the registry serves {child.media_type}"
                )
            self._check_skip(child, skip, f"child manifest {child.digest}")
            self._collect(src_repo, child, dst_repo, skip, plan, depth + 1)
            plan.manifests.append(child)

    @staticmethod
    def _check_skip(manifest: Manifest, skip: frozenset[str], what: str) -> None:
        hit = sorted(manifest.media_types() & skip)
        if hit:
            raise SkipImage(f"{what} has type {hit[0]}, which this target skips")

    # -- blobs ----------------------------------------------------------------------------
    def _copy_blobs(
        self, src_repo: str, dst_repo: str, blobs: dict[str, Descriptor], result: CopyResult
    ) -> None:
        futures = [self.pool.submit(self._copy_blob, src_repo, dst_repo, blob) for blob in blobs.values()]
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
            kind, size = future.result()
            if kind == "uploaded":
                result.blobs_uploaded += 1
                result.bytes_uploaded += size
            elif kind == "mounted":
                result.blobs_mounted += 1
            else:
                result.blobs_skipped += 1

    def _copy_blob(self, src_repo: str, dst_repo: str, blob: Descriptor) -> tuple[str, int]:
        while True:
            if self.ledger.known(dst_repo, blob.digest):
                return "skipped", 0
            if self.ledger.holder(blob.digest, exclude=dst_repo):
                return self._place_blob(src_repo, dst_repo, blob)
            other = self.ledger.begin_upload(blob.digest)
            if other is None:
                try:
                    return self._place_blob(src_repo, dst_repo, blob)
                finally:
                    self.ledger.end_upload(blob.digest)
            other.wait(timeout=3600)  # then mount from where it went (or claim it if that failed)

    def _place_blob(self, src_repo: str, dst_repo: str, blob: Descriptor) -> tuple[str, int]:
        location = None
        holder = self.ledger.holder(blob.digest, exclude=dst_repo)
        if holder:
            mounted, location = self.destination.start_upload(dst_repo, mount=blob.digest, mount_from=holder)
            if mounted:
                self.ledger.record(dst_repo, blob.digest)
                return "mounted", 0
        elif (
            not self.ledger.is_new_repository(dst_repo)
            and self.destination.blob_size(dst_repo, blob.digest) is not None
        ):
            self.ledger.record(dst_repo, blob.digest)
            return "skipped", 0
        self._upload(src_repo, dst_repo, blob, location)
        self.ledger.record(dst_repo, blob.digest)
        return "uploaded", blob.size

    def _upload(self, src_repo: str, dst_repo: str, blob: Descriptor, location: str | None) -> None:
        where = f"blob {blob.digest} of {self.source.host}/{src_repo}"
        chunked = self.chunked
        attempts = self.retry.attempts
        refusals = 0
        for attempt in range(attempts):
            try:
                if location is None:
                    _, location = self.destination.start_upload(dst_repo)
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
                return
            except (
                SourceStreamError,
                DigestMismatch,
                AuthError,
                RegistryError,
                requests.RequestException,
            ) as exc:
                location = None
                if isinstance(exc, RegistryError) and exc.status == 401:
                    refusals += 1  # a token expiring mid-stream is worth one restart, a refusal is not
                if isinstance(exc, RegistryError) and exc.status in FALLBACK_TO_CHUNKED and not chunked:
                    chunked = True
                    log.info(
                        "%s rejected a single-request upload (HTTP %s); using chunked upload",
                        self.destination.host,
                        exc.status,
                    )
                    continue
                transient = (
                    not isinstance(exc, RegistryError)
                    or exc.status is None
                    or exc.status in (408, 429)
                    or (exc.status == 401 and refusals == 1)
                    or exc.status >= 500
                    or isinstance(exc, (SourceStreamError, DigestMismatch))
                )
                if not transient or attempt + 1 >= attempts:
                    if isinstance(exc, SyncError):
                        raise
                    raise RegistryError(
                        f"{where}: upload to {self.destination.host}/{dst_repo} failed: {type(exc).__name__}"
                    ) from None
                delay = self.retry.delay(attempt)
                log.warning(
                    "restarting upload of %s to %s/%s after %s (attempt %d/%d)",
                    blob.digest,
                    self.destination.host,
                    dst_repo,
                    type(exc).__name__,
                    attempt + 2,
                    attempts,
                )
                time.sleep(delay)

    def _upload_chunked(
        self, dst_repo: str, location: str, blob: Descriptor, reader: VerifyingReader
    ) -> None:
        offset = 0
        while offset < blob.size:
            length = min(CHUNK_SIZE, blob.size - offset)
            location = self.destination.patch_blob(dst_repo, location, _Slice(reader, length), offset, length)
            offset += length
        self.destination.put_blob(dst_repo, location, blob.digest, None, 0)
