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
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sync_core.config.model import ReferrerPolicy
from sync_core.engine.ledger import BlobLedger
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
        try:
            index = self.client.get_manifest(repository, fallback_tag(digest))
        except NotFound:
            return []
        if index.media_type != OCI_INDEX:
            return []  # "does not return a valid image index": no referrers (distribution-spec 1.1)
        return index.children


class ReferrersTags:
    """The referrers tags (``sha256-<hex>``) of one target without the referrers API.

    What a tag lists is read once per ``ttl`` seconds (a run that finds many referrers of one
    subject present reads it once). :meth:`add` is the read-modify-write the distribution spec
    asks of clients, under the process's manifest lock for the repository; another process can
    still write between our read and our PUT, so the tag is read again after the PUT and the
    merge repeated when our entry is gone (a lost update). An entry lost anyway is found missing
    the next time the referrer is seen present, and listed then.
    """

    ATTEMPTS = 3

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
            return self._remember(key, self._entries(repository, subject))

    def add(self, repository: str, subject: str, *referrers: Manifest) -> bool:
        """List ``referrers`` in the referrers tag of ``subject`` (one write for all of them).
        True when the tag was written.

        Raises :class:`InvalidContent` when the tag holds something other than an OCI index (it
        is then left alone: it is not ours to overwrite).
        """
        tag = fallback_tag(subject)
        wanted = {r.digest: r for r in referrers}
        missing = list(wanted.values())
        wrote = False
        with self.ledger.manifest_writes(repository):
            for attempt in range(self.ATTEMPTS + 1):
                entries = self._entries(repository, subject)  # after a write: are our entries still there?
                there = {e.get("digest") for e in entries if isinstance(e, dict)}
                missing = [r for digest, r in wanted.items() if digest not in there]
                if not missing:
                    self._remember((repository, subject), entries)
                    return wrote
                if attempt == self.ATTEMPTS:
                    break
                document = {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [*entries, *(r.referrer_descriptor() for r in missing)],
                }
                raw = json.dumps(document, separators=(",", ":")).encode()
                self.client.put_manifest(
                    repository, tag, parse_manifest(raw, OCI_INDEX, f"referrers tag {tag}", digest_of(raw))
                )
                wrote = True
        raise RegistryError(
            f"{self.client.host}/{repository}:{tag} changed under every one of {self.ATTEMPTS} writes; "
            f"not listed there yet: {', '.join(r.digest for r in missing)}"
        )

    def _entries(self, repository: str, subject: str) -> list[Any]:
        tag = fallback_tag(subject)
        try:
            current = self.client.get_manifest(repository, tag)
        except NotFound:
            return []
        listed = current.document.get("manifests")
        if current.media_type != OCI_INDEX or not isinstance(listed, list):
            raise InvalidContent(
                f"{self.client.host}/{repository}:{tag} is not an OCI image index; referrers are not listed there"
            )
        return listed

    def _remember(self, key: tuple[str, str], entries: list[Any]) -> frozenset[str]:
        digests = frozenset(
            e["digest"] for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)
        )
        return self._cache.put(key, digests)
