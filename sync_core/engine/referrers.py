"""OCI referrers (signatures, SBOMs, attestations): finding them at the source, listing them at a target.

At the source, :class:`ReferrerFinder` asks the referrers API (``GET /v2/<name>/referrers/<digest>``,
which ACR serves) and falls back to the referrers tag schema (the ``sha256-<hex>`` tag holding an
index of referrers) where a registry has no API, as the distribution spec tells clients to.

At a target, a referrer is pushed like any manifest, after its subject. A registry with the
referrers API answers that push with ``OCI-Subject`` and needs nothing more. Elsewhere
(distribution 2.8, ...) :class:`ReferrersTags` maintains the referrers tag as the distribution
spec describes for clients: read it (404: start empty), add the referrer's descriptor unless it
is there, write it back (and read it again: another writer may have replaced it); entries
already there are kept as they are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, TypeVar

from sync_core.config.model import ReferrerPolicy
from sync_core.engine.ledger import BlobLedger
from sync_core.engine.pushing import Patience, put_manifest
from sync_core.errors import InvalidContent, NotFound, RegistryError
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor, Manifest, parse_manifest
from sync_core.registry.names import OCI_INDEX, digest_of, fallback_tag

MAX_REFERRER_DEPTH = 8  # a signature of an SBOM of an attestation ...: deeper is not real content
READ_LOCKS = 64  # referrers tags read one at a time per lock (keys spread over them by hash)

V = TypeVar("V")


class Expiring(Generic[V]):
    """Answers kept for ``ttl`` seconds. The process lives on between runs (a Functions worker):
    expired answers are dropped as new ones come in, so it holds one ``ttl``'s worth at most."""

    def __init__(self, ttl: float, clock: Callable[[], float]):
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry is not None and self.clock() - entry[0] < self.ttl else None

    def put(self, key: tuple[str, str], value: V) -> V:
        now = self.clock()
        with self._lock:
            self._entries[key] = (now, value)
            if len(self._entries) % 256 == 0:  # now and then: drop what has expired
                for old in [k for k, (at, _) in self._entries.items() if now - at >= self.ttl]:
                    del self._entries[old]
        return value


class ReferrerFinder:
    """The referrers of a manifest at one (source) registry, filtered by a :class:`ReferrerPolicy`.

    Whether the registry has the referrers API is learned from its answers: the first list it
    serves settles "yes" for good, an answer from no such route "no". A repository or manifest
    the API does not know (``NAME_UNKNOWN``: deleted since it was listed) settles nothing.
    Answers are kept for ``ttl`` seconds: tags sharing an index within one run ask once.
    """

    def __init__(
        self,
        client: RegistryClient,
        policy: ReferrerPolicy,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.policy = policy
        self.api: bool | None = None  # None until the registry has answered once
        self._cache: Expiring[list[Descriptor]] = Expiring(ttl, clock)
        self._tags: Expiring[tuple[Manifest | None]] = Expiring(ttl, clock)  # its referrers tags, as read
        self._probing = threading.Lock()  # until the API question is settled, one lookup at a time

    def of(self, repository: str, digest: str) -> list[Descriptor]:
        """The referrers of ``repository@digest`` that the policy wants (none when it wants none)."""
        if not self.policy.enabled:
            return []
        key = (repository, digest)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = [d for d in self._list(repository, digest) if self.policy.wants(d.artifact_type)]
        return self._cache.put(key, found)

    def _list(self, repository: str, digest: str) -> list[Descriptor]:
        if self.api is None:  # lookups that start together would each probe the API
            with self._probing:
                return self._ask(repository, digest)
        return self._ask(repository, digest)

    def _ask(self, repository: str, digest: str) -> list[Descriptor]:
        if self.api is not False:
            try:
                listed = self.client.referrers(repository, digest)
            except NotFound:
                if self.api:
                    return []  # the API, about something it does not know
                listed = None  # not settled: this once, the referrers tag too
            else:
                if listed is not None:
                    self.api = True
                    return listed
                if not self.api:
                    self.api = False
        index = self.listing(repository, digest)
        return [] if index is None else index.children

    def listing(self, repository: str, subject: str) -> Manifest | None:
        """The registry's referrers tag of ``subject`` (None: none, or not an OCI index), exact bytes.

        Read once per ``ttl``: a registry without the referrers API was asked for it to find the
        referrers; the copier asks again to write the same bytes at a target without the API.
        """
        key = (repository, subject)
        cached = self._tags.get(key)
        if cached is not None:
            return cached[0]
        try:
            index: Manifest | None = self.client.get_manifest(repository, fallback_tag(subject))
        except NotFound:
            index = None
        if index is not None and (index.media_type != OCI_INDEX or not index.is_index):
            index = None  # "does not return a valid image index": no referrers (distribution-spec 1.1)
        return self._tags.put(key, (index,))[0]


class ReferrersTags:
    """The referrers tags (``sha256-<hex>``) of one target without the referrers API.

    What a tag lists is read once per ``ttl`` seconds (a run that finds many referrers of one
    subject present reads it once). :meth:`add` is the read-modify-write the distribution spec
    asks of clients, under the process's manifest lock for the repository. When the entries the
    tag is to list are exactly those of the source's referrers tag, the source's bytes are written
    (the mirror's tag has the source digest); else what the tag holds is kept and the new entries
    are added to it (a target that narrows indexes, entries written by others).

    Another process can write between our read and our PUT, so the tag is read again after the
    PUT and the write repeated (after a short, random wait) while an entry we list is gone: a
    lost update. Every writer lists all the referrers of the subject it knows present, not only
    those it adds, so a writer that saw an older tag puts back what it dropped. An entry lost
    anyway is found missing the next time the referrer is seen present, and listed then.
    """

    ATTEMPTS = 5

    def __init__(
        self,
        client: RegistryClient,
        ledger: BlobLedger,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.ledger = ledger
        self._cache: Expiring[frozenset[str]] = Expiring(ttl, clock)
        self._reading = [threading.Lock() for _ in range(READ_LOCKS)]

    def listed(self, repository: str, subject: str) -> frozenset[str]:
        """The digests the referrers tag of ``subject`` lists (none when there is no such tag)."""
        key = (repository, subject)
        with self._reading[
            hash(key) % READ_LOCKS
        ]:  # referrers of one subject checked side by side read it once
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            current = self._current(repository, subject)
            return self._remember(key, _entries(current))

    def add(
        self,
        repository: str,
        subject: str,
        referrers: Sequence[Manifest],
        *,
        keep: Collection[str] = (),
        describe: Callable[[str], Manifest] | None = None,
        source: Callable[[], Manifest | None] = lambda: None,
        exact: bool = False,
        patience: Patience | None = None,
    ) -> bool:
        """List ``referrers`` in the referrers tag of ``subject`` (one write for all of them).
        True when the tag was written.

        ``keep``: digests of referrers held at the target that the tag lists already; a write
        lists them too (``describe`` gives their manifests, when one must be described again).
        ``source``: the source's referrers tag of ``subject`` (None: it has none), asked when a
        write is due, or at once with ``exact``: then the tag is written when its entries are the
        source's but its bytes are not, even when no entry is missing.

        Raises :class:`InvalidContent` when the tag holds something other than an OCI index (it
        is then left alone: it is not ours to overwrite).
        """
        tag = fallback_tag(subject)
        patience = patience or Patience()
        wanted: dict[str, Manifest | None] = dict.fromkeys(keep)
        wanted.update((r.digest, r) for r in referrers)
        theirs: list[Manifest | None] = []  # the source's tag, once asked
        missing: list[str] = []
        wrote = False
        with self.ledger.manifest_writes(repository):
            for attempt in range(self.ATTEMPTS + 1):
                current = self._current(repository, subject)  # after a write: are our entries still there?
                entries = current.document["manifests"] if current is not None else []
                there = _entries(current)
                missing = [d for d in wanted if d not in there]
                if (missing or exact) and not theirs:
                    theirs.append(source())
                original = theirs[0] if theirs else None
                # the source lists exactly what this tag is to list: its bytes, when this tag's differ
                exactly = original is not None and set(_entries(original)) == there | set(wanted)
                behind = exactly and (
                    current is None or original is None or current.digest != original.digest
                )
                if not missing and not (behind and exact):
                    self._remember((repository, subject), there)
                    return wrote
                if attempt == self.ATTEMPTS:
                    break
                if attempt:  # another writer's write undid ours: let the writers drift apart
                    patience.sleep(patience.retry.delay(attempt - 1))
                if exactly and original is not None:
                    index = original
                else:
                    described = [self._described(d, wanted[d], describe) for d in missing]
                    raw = json.dumps(
                        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, *described]},
                        separators=(",", ":"),
                    ).encode()
                    index = parse_manifest(raw, OCI_INDEX, f"referrers tag {tag}", digest_of(raw))
                put_manifest(self.client, repository, tag, index, patience)
                wrote = exact = True  # after a write of the source's bytes, they are checked for too
        if not missing:
            return wrote  # every entry is listed; another writer's bytes stayed
        raise RegistryError(
            f"{self.client.host}/{repository}:{tag} changed under every one of {self.ATTEMPTS} writes; "
            f"not listed there yet: {', '.join(missing)}"
        )

    @staticmethod
    def _described(
        digest: str, manifest: Manifest | None, describe: Callable[[str], Manifest] | None
    ) -> dict[str, Any]:
        if manifest is None:
            assert describe is not None, "kept entries come with a way to describe them"
            manifest = describe(digest)
        return manifest.referrer_descriptor()

    def _current(self, repository: str, subject: str) -> Manifest | None:
        """The referrers tag of ``subject`` at the target (None: there is none)."""
        tag = fallback_tag(subject)
        try:
            current = self.client.get_manifest(repository, tag)
        except NotFound:
            return None
        if current.media_type != OCI_INDEX or not isinstance(current.document.get("manifests"), list):
            raise InvalidContent(
                f"{self.client.host}/{repository}:{tag} is not an OCI image index; referrers are not listed there"
            )
        return current

    def _remember(self, key: tuple[str, str], digests: frozenset[str]) -> frozenset[str]:
        return self._cache.put(key, digests)


def _entries(index: Manifest | None) -> frozenset[str]:
    """The digests an index lists (none for no index)."""
    if index is None:
        return frozenset()
    listed = index.document.get("manifests")
    return frozenset(
        e["digest"]
        for e in (listed if isinstance(listed, list) else ())
        if isinstance(e, dict) and isinstance(e.get("digest"), str)
    )
