"""Work items: one thing to copy to one target, its kind and why; and the order in which to copy them.

The one place that says what a queue message, an event, a CLI request and the planner's diff
turn into. May import the engine's result types, the configuration and the registry names.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sync_core.engine.destination import AtTarget


class WorkKind(str, enum.Enum):
    """What a work item copies; each kind travels in a queue message of the same name (``messages.py``)."""

    TAG = "tag"  # an image by tag (by digest from `copy REPO@DIGEST`), and the referrers of what it points at
    REFERRER = "referrer"  # an untagged manifest: mirrored if it is a referrer of mirrored content
    REFERRERS = "referrers"  # the referrers the source lists for a manifest (by digest)


class Reason(str, enum.Enum):
    """Why something is to be copied (shown by ``plan``)."""

    MISSING = "missing"  # the target's tag listing does not have it
    DIGEST_DIFFERS = "digest differs"  # the target's tag points elsewhere (a moved tag)
    PUSHED = "pushed"  # an ImagePushed event
    QUEUED = "queued"  # a queue message for one tag
    REQUESTED = "requested"  # `copy REPOSITORY:TAG`
    RECENT = "changed recently"  # an untagged manifest the source changed within the recheck window
    FULL_CHECK = "full check"  # the periodic full check looks at everything


class Check(str, enum.Enum):
    """How much of what a target already has a run looks at again (see ``SYNC_COMPARE``)."""

    NAME = "name"  # nothing: only what is missing by name
    RECENT = "recent"  # what the source changed within the recheck window
    FULL = "full"  # everything


@dataclass(frozen=True)
class WorkItem:
    """One thing to copy to one target (see :class:`WorkKind`).

    A TAG item names its ``tag`` (None: an image by digest) and the ``digest`` a listing or an
    event said it has (None: not known); REFERRER and REFERRERS items name the manifest by
    ``digest`` and have no tag."""

    target: str
    source_repository: str
    target_repository: str
    kind: WorkKind
    tag: str | None
    digest: str | None
    reason: Reason
    at_target: AtTarget = AtTarget.UNKNOWN
    pushed: dt.datetime | None = None  # when the source got it (listing time or event time): mirror lag

    def __post_init__(self) -> None:
        if self.kind is WorkKind.TAG:
            assert self.tag is not None or self.digest is not None, "a TAG item names a tag or a digest"
        else:
            assert self.tag is None and self.digest is not None, (
                f"a {self.kind.value} item names a digest only"
            )

    @property
    def is_tag(self) -> bool:
        return self.kind is WorkKind.TAG

    @property
    def reference(self) -> str:
        """What is asked of the source: the tag, else the digest."""
        reference = self.tag or self.digest
        assert reference is not None
        return reference

    @property
    def item(self) -> str:
        """The source reference as summaries name it (``repo:tag`` or ``repo@digest``)."""
        sep = ":" if self.tag is not None else "@"
        return f"{self.source_repository}{sep}{self.reference}"


def interleave(work: list[WorkItem], round_robin: bool = True) -> list[list[WorkItem]]:
    """Work grouped per source image; with ``round_robin``, the groups alternate repositories.

    A group is one source tag (or digest) with every target that needs it: copied together, its
    blobs are read from the source once. Manifest pushes to one repository are serialized (see
    ``BlobLedger.manifest_writes``), so concurrent copies should be of different repositories,
    not five tags of one. Order within a repository is kept; without ``round_robin`` (one copy
    at a time) the planned order is kept.
    """
    images: dict[tuple[WorkKind, str, str], list[WorkItem]] = {}
    for item in work:
        images.setdefault((item.kind, item.source_repository, item.reference), []).append(item)
    if not round_robin:
        return list(images.values())
    repositories: dict[str, list[list[WorkItem]]] = {}
    for (_, repository, _), group in images.items():
        repositories.setdefault(repository, []).append(group)
    out: list[list[WorkItem]] = []
    queues = list(repositories.values())
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out
