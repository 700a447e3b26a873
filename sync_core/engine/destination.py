"""Where a copy goes: a target registry (its client, what this process learned of it) and a placement in it.

A :class:`Destination` lives as long as the process (the Functions host keeps it between
invocations): what the registry has shown about itself is learned once, in :class:`Learned`,
through named methods, and what it holds is in its :class:`~sync_core.engine.ledger.BlobLedger`.
A :class:`Placement` is one copy's repository (and tag) at a destination, with the target's rules.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sync_core.config.model import TargetRules
from sync_core.engine.ledger import BlobLedger
from sync_core.engine.referrers import ReferrersTags
from sync_core.registry.client import RegistryClient


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


@dataclass
class Learned:
    """What a target registry has shown about itself in this process (thread-safe).

    * chunked uploads: it refused a single-request upload once (then every upload is chunked);
    * the referrers API: whether it serves it (None: not known yet): a PUT of a manifest with a
      ``subject`` answered without ``OCI-Subject`` says no; yes takes a probe of the referrers
      endpoint (a header alone is not enough);
    * refused manifest types: media types it refused by kind (schema 1), not offered again.
    """

    chunked: bool = False
    referrers_api: bool | None = None
    _refused: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _probing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def use_chunked_uploads(self) -> None:
        self.chunked = True

    def answered_subject_push(self, subject: str, answered: str | None) -> None:
        """A manifest with ``subject`` was pushed and the registry answered ``OCI-Subject: answered``.

        No header: no referrers API (a registry that serves it must send one). The header alone
        proves nothing (Amazon ECR sends it without serving the API): a probe decides then
        (:meth:`has_referrers_api`)."""
        with self._lock:
            if self.referrers_api is None and answered != subject:
                self.referrers_api = False

    def has_referrers_api(self, probe: Callable[[], bool]) -> bool:
        """Whether it serves the referrers API; ``probe`` asks it, once per process, when no push told."""
        known = self.referrers_api
        if known is not None:
            return known
        with self._probing:  # lookups that start together probe once
            if self.referrers_api is None:
                found = probe()
                with self._lock:
                    if self.referrers_api is None:
                        self.referrers_api = found
            return bool(self.referrers_api)

    def refuse_type(self, media_type: str) -> None:
        with self._lock:
            self._refused.add(media_type)

    def refused(self, media_types: set[str]) -> set[str]:
        """Which of ``media_types`` it refused earlier in this process."""
        with self._lock:
            return media_types & self._refused


class Destination:
    """One target registry as the copier sees it: its client, its ledger, what it showed of itself."""

    def __init__(self, name: str, client: RegistryClient, *, ledger: BlobLedger | None = None):
        self.name = name
        self.client = client
        self.ledger = ledger or BlobLedger()
        self.learned = Learned()
        self.referrers_tags = ReferrersTags(client, self.ledger)  # where it has no referrers API

    @property
    def host(self) -> str:
        return self.client.host


@dataclass(frozen=True)
class Placement:
    """Where one copy goes: a repository (and tag) at a destination, and that target's rules."""

    destination: Destination
    repository: str
    tag: str | None = None  # None: by digest (a referrer)
    at_target: AtTarget = AtTarget.UNKNOWN
    rules: TargetRules = TargetRules()

    def by_digest(self) -> Placement:
        """The same target repository and rules, without a tag (referrers are pushed by digest)."""
        return Placement(self.destination, self.repository, None, AtTarget.UNKNOWN, self.rules)

    def where(self, reference: str) -> str:
        """``host/repository:tag`` (or ``@reference`` when by digest), as results name it."""
        ref = f":{self.tag}" if self.tag else f"@{reference}"
        return f"{self.destination.host}/{self.repository}{ref}"
