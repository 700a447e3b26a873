"""What one process knows about the blobs and manifests at one destination registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BlobLedger:
    """What a destination registry is known to hold, and which uploads are under way.

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
        self._sizes: dict[str, int] = {}  # verified sizes: a digest's size is the same everywhere
        self._uploading: dict[str, threading.Event] = {}
        self._manifest_locks: dict[str, threading.Lock] = {}

    def begin_upload(self, digest: str) -> threading.Event | None:
        """Claim the upload of ``digest``: None if ours, else an event set when the owner ends.

        Concurrent copies of images sharing a layer upload it once; the others then mount it.
        """
        with self._lock:
            event = self._uploading.get(digest)
            if event is None:
                self._uploading[digest] = threading.Event()
            return event

    def uploading(self, digest: str) -> bool:
        """Whether an upload of ``digest`` is claimed (:meth:`begin_upload`) and not ended yet."""
        with self._lock:
            return digest in self._uploading

    def end_upload(self, digest: str) -> None:
        with self._lock:
            event = self._uploading.pop(digest, None)
        if event is not None:
            event.set()

    def record(self, repository: str, digest: str, size: int | None = None) -> None:
        """``repository`` holds ``digest`` (of ``size`` bytes, when that was verified)."""
        now = self.clock()
        with self._lock:
            self._present[(repository, digest)] = now
            if size is not None:
                self._sizes[digest] = size
            held = self._holders.get(digest)
            if held is None or now - held[1] >= self.ttl:
                self._holders[digest] = (repository, now)

    def known(self, repository: str, digest: str) -> bool:
        with self._lock:
            seen = self._present.get((repository, digest))
        return seen is not None and self.clock() - seen < self.ttl

    def size_of(self, digest: str) -> int | None:
        """The verified size of blob ``digest``, if this process has seen it verified."""
        with self._lock:
            return self._sizes.get(digest)

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

    def manifest_writes(self, repository: str) -> threading.Lock:
        """Held around every manifest PUT to ``repository``.

        distribution rewrites a manifest's link file in place on every PUT of it (by digest or by
        tag); an index PUT that verifies that manifest meanwhile fails with 400 DIGEST_INVALID /
        MANIFEST_BLOB_UNKNOWN. Concurrent copies of tags sharing an index (``latest`` and
        ``1.4.0``) did exactly that. Manifest PUTs are small; blob uploads stay parallel.
        """
        with self._lock:
            return self._manifest_locks.setdefault(repository, threading.Lock())
