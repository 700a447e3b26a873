"""What a copy came to at one target: its status, the work it did, what stopped it.

:class:`Work` is the one count of work done (manifests, blobs by how they got there, bytes,
referrers): a copy's result, a run's summary (per target and in total) and the metrics' figures
all add up :class:`Work` values, never fields of their own.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field, fields

from sync_core.errors import describe


class CopyStatus(str, enum.Enum):
    COPIED = "copied"
    UNCHANGED = "unchanged"  # the target already had it
    SKIPPED = "skipped"  # the target's rules exclude it (reason in the result)
    IGNORED = "ignored"  # an untagged manifest that is not a referrer to mirror (reason in the result)


@dataclass
class Work:
    """Work done by copies: added up by results, summaries and the metrics alike."""

    manifests_pushed: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0  # present already (known, or found by a HEAD)
    bytes_uploaded: int = 0
    referrers_copied: int = 0

    def add(self, other: Work) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ReferrerFailure:
    """A referrer that could not be mirrored with its subject, and why (the class decides retries)."""

    digest: str
    error: BaseException

    def __str__(self) -> str:
        return f"referrer {self.digest}: {describe(self.error)}"


@dataclass
class CopyResult:
    """One copy at one target. The blob threads of one copy share it: counts go through :meth:`count`."""

    source: str
    destination: str
    digest: str | None = None
    media_type: str | None = None
    status: CopyStatus = CopyStatus.COPIED
    reason: str | None = None
    work: Work = field(default_factory=Work)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    rewritten_from: str | None = None  # the source index digest, when this target got a narrowed index
    error: BaseException | None = field(default=None, repr=False)  # what stopped this target
    referrer_errors: list[ReferrerFailure] = field(default_factory=list)  # referrers not mirrored
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def copied(self) -> bool:
        """It ended copied, without an error."""
        return self.error is None and self.status is CopyStatus.COPIED

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def count(self, **figures: int) -> None:
        """Add to the work counts (names of :class:`Work`)."""
        with self._lock:
            for name, n in figures.items():
                setattr(self.work, name, getattr(self.work, name) + n)

    def absorb(self, sub: CopyResult) -> None:
        """Take in a referrer's copy (its work and warnings) as part of this one."""
        with self._lock:
            self.work.add(sub.work)
            self.warnings.extend(w for w in sub.warnings if w not in self.warnings)
