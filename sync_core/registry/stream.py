"""Streaming blob bytes: verified while they are read, and one source read fanned out to several uploads.

:class:`VerifyingReader` hashes a source stream as it is read and checks the digest when the
last byte has arrived, *before* handing that byte on: a blob that does not match its digest is
never completed at a destination.

:class:`Tee` feeds one :class:`VerifyingReader` to several uploads at once (one per target), so
that a blob several targets need is read from the source once. Memory is bounded (``depth``
blocks of ``READ_SIZE`` per upload). An upload that stops reading (it failed) is dropped at
once. The time the source read spends waiting for each upload's full buffer is added up per
upload; once an upload has held the others back for ``stall`` seconds in all, stalled or merely
slower, it is dropped: one blob's uploads are delayed by a slow or failing target by at most
``stall`` seconds. A dropped upload is then retried on its own (a second source read, for it
alone). When every upload has stopped, the source is not read further.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import requests
import urllib3

from sync_core.errors import DigestMismatch, InvalidContent, SourceStreamError
from sync_core.registry.manifest import Descriptor
from sync_core.registry.names import new_hasher

READ_SIZE = 256 * 1024
TEE_DEPTH = 16  # blocks buffered per upload: 4 MiB
STALL_SECONDS = 30.0  # how long one upload may hold the others back


class VerifyingReader:
    """A file-like body that streams a source blob, hashing as it goes."""

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


class Slice:
    """At most ``length`` bytes of a reader, as a file-like body (one chunk of a chunked upload)."""

    def __init__(self, reader: VerifyingReader | TeeBody, length: int):
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


_END = object()


class Tee:
    """One verified source stream, fanned out to ``count`` uploads (see the module docstring)."""

    def __init__(
        self, reader: VerifyingReader, count: int, *, depth: int = TEE_DEPTH, stall: float = STALL_SECONDS
    ):
        self.reader = reader
        self.stall = stall
        self.queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in range(count)]
        self.dropped = [False] * count  # fell behind, or stopped reading
        self.held_back = [0.0] * count  # seconds the source read waited for each upload
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def body(self, index: int) -> TeeBody:
        return TeeBody(self, index)

    def drop(self, index: int) -> None:
        """Upload ``index`` stopped (it failed, or finished): never wait for it again."""
        with self._lock:
            self.dropped[index] = True
        _drain(self.queues[index])

    def pump(self) -> None:
        """Read the source to the end, handing each block to every upload still reading.

        Raises :class:`SourceStreamError` when every upload has stopped (nobody to read for).
        """
        try:
            while True:
                if all(self.dropped):
                    raise SourceStreamError(
                        f"{self.reader.where}: every upload stopped; the source read ends"
                    )
                data = self.reader.read_at_most(READ_SIZE)
                for index in range(len(self.queues)):
                    self._put(index, data if data else _END)
                if not data:
                    return
        except BaseException as exc:
            self.error = exc
            for index in range(len(self.queues)):
                _drain(self.queues[index])
                self.queues[index].put_nowait(_END)  # wake a reader waiting on an empty queue
            raise

    def _put(self, index: int, item: object) -> None:
        if self.dropped[index]:
            return
        q = self.queues[index]
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            pass
        allowed = self.stall - self.held_back[index]
        started = time.monotonic()
        try:
            if allowed <= 0:
                raise queue.Full
            q.put(item, timeout=allowed)
        except queue.Full:
            self.drop(index)  # held the others back long enough: it starts over on its own
        finally:
            self.held_back[index] += time.monotonic() - started


class TeeBody:
    """One upload's view of a :class:`Tee`: a file-like request body."""

    def __init__(self, tee: Tee, index: int):
        self.tee = tee
        self.index = index
        self.left = b""
        self.length = len(tee.reader)

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        return self.read_at_most(self.length if n is None or n < 0 else max(n, READ_SIZE))

    def read_at_most(self, limit: int) -> bytes:
        if not self.left:
            self.left = self._next()
        data, self.left = self.left[:limit], self.left[limit:]
        return data

    def _next(self) -> bytes:
        # the source read may wait up to ``stall`` for each of the other uploads, then its own read
        patience = self.tee.stall * (len(self.tee.queues) + 1)
        waited = 0.0
        while True:
            if self.tee.dropped[self.index]:
                raise SourceStreamError(f"{self.tee.reader.where}: this upload fell behind the others")
            try:
                item = self.tee.queues[self.index].get(timeout=0.5)
            except queue.Empty:
                waited += 0.5
                if waited > patience:
                    raise SourceStreamError(f"{self.tee.reader.where}: the source stalled") from None
                continue
            if item is _END:
                if self.tee.error is not None:
                    raise SourceStreamError(
                        f"{self.tee.reader.where}: the shared source stream failed ({type(self.tee.error).__name__})"
                    )
                return b""
            assert isinstance(item, bytes)
            return item


def _drain(q: queue.Queue[object]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
