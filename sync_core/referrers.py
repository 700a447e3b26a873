"""OCI referrers (signatures, SBOMs, attestations): finding them at the source, listing them at a target.

At the source, :class:`ReferrerFinder` asks the referrers API (``GET /v2/<name>/referrers/<digest>``,
which ACR serves) and falls back to the referrers tag schema (the ``sha256-<hex>`` tag holding an
index of referrers) where a registry has no API, as the distribution spec tells clients to.

At a target, a referrer is pushed like any manifest, after its subject. A registry with the
referrers API answers that push with ``OCI-Subject`` and needs nothing more. Elsewhere
(distribution 2.8, ...) :func:`list_in_fallback_tag` maintains the referrers tag as the
distribution spec describes for clients: read it (404: start empty), add the referrer's
descriptor unless it is there, write it back; entries already there are kept as they are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import ReferrerPolicy
from .errors import InvalidContent, NotFound
from .ledger import BlobLedger
from .manifest import Descriptor, Manifest, parse_manifest
from .names import OCI_INDEX, digest_of, fallback_tag
from .registry import RegistryClient

MAX_REFERRER_DEPTH = 8  # a signature of an SBOM of an attestation ...: deeper is not real content


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
        self.ttl = ttl
        self.clock = clock
        self.api: bool | None = None  # None until the registry has answered once
        self._cache: dict[tuple[str, str], tuple[float, list[Descriptor]]] = {}
        self._lock = threading.Lock()

    def of(self, repository: str, digest: str) -> list[Descriptor]:
        """The referrers of ``repository@digest`` that the policy wants (none when it wants none)."""
        if not self.policy.enabled:
            return []
        key = (repository, digest)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        found = [d for d in self._list(repository, digest) if self.policy.wants(d.artifact_type)]
        with self._lock:
            self._cache[key] = (now, found)
        return found

    def _list(self, repository: str, digest: str) -> list[Descriptor]:
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


def list_in_fallback_tag(
    client: RegistryClient, ledger: BlobLedger, repository: str, subject: str, referrer: Manifest
) -> bool:
    """Add ``referrer`` to the referrers tag of ``subject`` at a target without the referrers API.

    Returns True when the tag was written, False when the referrer was listed already. Raises
    :class:`InvalidContent` when the tag holds something other than an OCI index (it is then
    left alone: it is not ours to overwrite).
    """
    tag = fallback_tag(subject)
    with ledger.manifest_writes(repository):
        try:
            current: Manifest | None = client.get_manifest(repository, tag)
        except NotFound:
            current = None
        entries: list[Any] = []
        if current is not None:
            listed = current.document.get("manifests")
            if current.media_type != OCI_INDEX or not isinstance(listed, list):
                raise InvalidContent(
                    f"{client.host}/{repository}:{tag} is not an OCI image index; the referrer "
                    f"{referrer.digest} was not listed there"
                )
            entries = listed
        if any(isinstance(e, dict) and e.get("digest") == referrer.digest for e in entries):
            return False
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, referrer.referrer_descriptor()]}
        raw = json.dumps(document, separators=(",", ":")).encode()
        client.put_manifest(repository, tag, parse_manifest(raw, OCI_INDEX, f"referrers tag {tag}", digest_of(raw)))
        return True
