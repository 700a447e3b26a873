"""Reading the source catalog: repositories and their tags (with digests and times on ACR), and
the fingerprint of a repository that tells the timer whether it changed."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import quote

from sync_core.config.model import SourceConfig, SourceKind
from sync_core.errors import (
    AuthError,
    CatalogForbidden,
    CredentialsRefused,
    InvalidContent,
    NotFound,
    SetupError,
)
from sync_core.registry.client import CATALOG_SCOPE, RegistryClient, repository_scope
from sync_core.registry.names import check_repository, in_namespace, is_digest, is_repository, is_tag

_ISO_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?")


@dataclass(frozen=True)
class TagInfo:
    name: str
    digest: str | None = None  # known from an ACR listing; None from a plain OCI listing
    updated: dt.datetime | None = None  # last time the tag was pushed (ACR lastUpdateTime)
    readable: bool = True  # ACR changeableAttributes.readEnabled: false means pulls are refused


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest of an ACR ``_manifests`` listing (untagged ones included)."""

    digest: str
    tags: tuple[str, ...] = ()
    references: tuple[str, ...] = ()  # the children of an index
    media_type: str | None = None
    updated: dt.datetime | None = None
    readable: bool = True


@dataclass(frozen=True)
class Fingerprint:
    """What the source says of a repository as a whole, from ACR's metadata (two requests).

    From ``GET /acr/v1/<repo>`` (Repository_GetAttributes): ``lastUpdateTime``, ``manifestCount``,
    ``tagCount``; from ``GET /acr/v1/<repo>/_tags?orderby=timedesc&n=1``: the tag changed last,
    its digest and time. A new tag changes ``tagCount`` and the newest tag; a moved tag the newest
    tag (its digest and ``lastUpdateTime``) and, when it moved to a new manifest,
    ``manifestCount``; a referrer or any manifest pushed by digest ``manifestCount``; a deleted
    tag ``tagCount``, a deleted manifest ``manifestCount``. ``lastUpdateTime`` (which writes
    bump it is not documented) is compared as well, never relied on alone. What none of these
    shows (a manifest deleted and another pushed by digest between two reads, with the
    repository's time unchanged) waits for the periodic full check.
    """

    updated: dt.datetime | None
    manifests: int
    tags: int
    newest: str  # "<tag>@<digest>@<lastUpdateTime>" of the tag changed last ("" without tags)

    def text(self) -> str:
        """The form kept in the state and carried in queue messages (compared as a whole)."""
        when = self.updated.isoformat() if self.updated else ""
        return f"{when}|{self.manifests}|{self.tags}|{self.newest}"


def parse_time(value: object) -> dt.datetime | None:
    """ISO 8601 as ACR writes it (up to 7 fractional digits, ``Z``), as an aware datetime."""
    if not isinstance(value, str):
        return None
    match = _ISO_RE.fullmatch(value.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return dt.datetime.fromisoformat(f"{base}.{micro}{zone}")
    except ValueError:
        return None


class Source:
    """The source registry's listing API. ``client`` does the pulls as well."""

    def __init__(self, config: SourceConfig, client: RegistryClient):
        self.config = config
        self.client = client

    def repositories(self) -> list[str]:
        """Every repository under the source namespace (or the configured list)."""
        if self.config.repositories:
            names = list(self.config.repositories)
        else:
            try:
                names = self._catalog()
            except CredentialsRefused:
                raise  # wrong credentials: not a question of catalog rights
            except AuthError as exc:
                raise CatalogForbidden(
                    f"SOURCE_REPOSITORIES: the source credentials may not list the catalog of {self.client.host} "
                    f"({exc}). On ACR only a token whose scope map is the root wildcard '*' gets "
                    f"{CATALOG_SCOPE}; list the repositories to sync in SOURCE_REPOSITORIES instead.",
                    status=exc.status,
                ) from None
        found = sorted({n for n in names if is_repository(n) and in_namespace(n, self.config.namespace)})
        if not found and not self.config.allow_empty:
            where = f" under {self.config.namespace}/" if self.config.namespace else ""
            raise SetupError(
                f"SOURCE_ALLOW_EMPTY: {self.client.host} listed no repository{where}. ACR answers HTTP 200 "
                "with an empty catalog when the token's scope map covers no repository: check the scope map "
                "of the source token (and SOURCE_NAMESPACE); set SOURCE_ALLOW_EMPTY=true if the source is "
                "really empty"
            )
        return found

    def _catalog(self) -> list[str]:
        return self.client.list_repositories()

    def tags(self, repository: str) -> list[TagInfo]:
        return [TagInfo(t) for t in self.client.list_tags(repository) or () if is_tag(t)]

    def manifests(self, repository: str, since: dt.datetime | None) -> list[ManifestEntry] | None:
        """Manifests changed since ``since`` (None: all), untagged ones included; None: no such listing."""
        return None

    #: Whether :meth:`fingerprint` tells changes (a plain OCI registry has no such metadata:
    #: every timer run looks at every repository).
    fingerprints = False

    def fingerprint(self, repository: str) -> Fingerprint | None:
        """What tells whether ``repository`` changed at the source; None: it is gone."""
        raise NotImplementedError(f"{self.client.host} has no repository metadata (not ACR)")


class AcrSource(Source):
    """ACR: tags with digest and timestamps from ``/acr/v1/<repo>/_tags`` (no manifest requests)."""

    fingerprints = True

    def tags(self, repository: str) -> list[TagInfo]:
        check_repository(repository)
        found: list[TagInfo] = []
        path = f"/acr/v1/{quote(repository, safe='/')}/_tags?n=100&orderby=timedesc"
        scopes = (repository_scope(repository, self.client.actions),)
        try:
            for page in self.client.paginate(path, "tags", scopes, f"list tags of {repository}"):
                entries = page.get("tags") or []
                if not isinstance(entries, list):
                    raise InvalidContent(f"{self.client.host}: tags of {repository}: 'tags' is not a list")
                for entry in entries:
                    info = _acr_tag(entry)
                    if info is not None:
                        found.append(info)
        except NotFound:
            return []
        return found

    def fingerprint(self, repository: str) -> Fingerprint | None:
        """The repository's attributes and its newest tag (two requests; scope ``metadata_read``).

        None when the repository is gone (404): it is not in the catalog any more either.
        """
        check_repository(repository)
        name = quote(repository, safe="/")
        scopes = (repository_scope(repository, self.client.actions),)
        try:
            attributes = self.client.get_json(f"/acr/v1/{name}", scopes, f"attributes of {repository}")
            newest = self.client.get_json(
                f"/acr/v1/{name}/_tags?n=1&orderby=timedesc", scopes, f"newest tag of {repository}"
            )
        except NotFound:
            return None
        manifests, tags = attributes.get("manifestCount"), attributes.get("tagCount")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in (manifests, tags)):
            raise InvalidContent(
                f"{self.client.host}: attributes of {repository}: manifestCount/tagCount are not counts: "
                f"{str([manifests, tags])[:100]}"
            )
        assert isinstance(manifests, int) and isinstance(tags, int)
        entries = newest.get("tags") or []
        first = _acr_tag(entries[0]) if isinstance(entries, list) and entries else None
        label = ""
        if first is not None:
            label = f"{first.name}@{first.digest or ''}@{first.updated.isoformat() if first.updated else ''}"
        return Fingerprint(parse_time(attributes.get("lastUpdateTime")), manifests, tags, label)

    def manifests(self, repository: str, since: dt.datetime | None) -> list[ManifestEntry]:
        """``/acr/v1/<repo>/_manifests``, newest first, read until entries are older than ``since``."""
        check_repository(repository)
        found: list[ManifestEntry] = []
        path = f"/acr/v1/{quote(repository, safe='/')}/_manifests?n=100&orderby=timedesc"
        scopes = (repository_scope(repository, self.client.actions),)
        try:
            for page in self.client.paginate(path, "manifests", scopes, f"list manifests of {repository}"):
                entries = page.get("manifests") or []
                if not isinstance(entries, list):
                    raise InvalidContent(
                        f"{self.client.host}: manifests of {repository}: 'manifests' is not a list"
                    )
                older = False
                for raw in entries:
                    entry = _acr_manifest(raw)
                    if entry is None:
                        continue
                    if since is not None and entry.updated is not None and entry.updated < since:
                        older = True
                        continue
                    found.append(entry)
                if older:
                    break  # newest first: the rest is older still
        except NotFound:
            return []
        return found


def _readable(entry: dict[str, object]) -> bool:
    attributes = entry.get("changeableAttributes")
    return not (isinstance(attributes, dict) and attributes.get("readEnabled") is False)


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _acr_manifest(entry: object) -> ManifestEntry | None:
    if not isinstance(entry, dict):
        return None
    digest = entry.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return None
    references = entry.get("references")
    children = (
        tuple(r["digest"] for r in references if isinstance(r, dict) and isinstance(r.get("digest"), str))
        if isinstance(references, list)
        else ()
    )
    media_type = entry.get("mediaType")
    return ManifestEntry(
        digest,
        tuple(t for t in _strings(entry.get("tags")) if is_tag(t)),
        children,
        media_type if isinstance(media_type, str) else None,
        parse_time(entry.get("lastUpdateTime")) or parse_time(entry.get("createdTime")),
        _readable(entry),
    )


def _acr_tag(entry: object) -> TagInfo | None:
    if not isinstance(entry, dict):
        return None
    name, digest = entry.get("name"), entry.get("digest")
    if not isinstance(name, str) or not is_tag(name):
        return None
    return TagInfo(
        name,
        digest if isinstance(digest, str) and is_digest(digest) else None,
        parse_time(entry.get("lastUpdateTime")) or parse_time(entry.get("createdTime")),
        _readable(entry),
    )


def make_source(config: SourceConfig, client: RegistryClient) -> Source:
    return AcrSource(config, client) if config.kind is SourceKind.ACR else Source(config, client)


def source_actions(config: SourceConfig) -> str:
    """What the source token must allow on each repository."""
    return "pull,metadata_read" if config.kind is SourceKind.ACR else "pull"
