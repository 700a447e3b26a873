"""A client for one registry, speaking the OCI Distribution API with ``requests``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from sync_core.errors import AuthError, InvalidContent, NotFound, ProtocolError, RegistryError
from sync_core.registry.auth import ANONYMOUS, Authenticator, CredentialSource
from sync_core.registry.budget import Budget, Limits, shared_budget
from sync_core.registry.jsondoc import parse_json
from sync_core.registry.manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest, parse_manifest
from sync_core.registry.names import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    check_digest,
    check_reference,
    check_repository,
    is_digest,
    normalize_registry_url,
)
from sync_core.registry.retry import retrying
from sync_core.registry.transport import Body, Readable, Transport, exhausted, resolve_on_host

log = logging.getLogger(__name__)

CATALOG_SCOPE = "registry:catalog:*"
# Listing pages hold ~100 entries: 10,000 pages are a million repositories or tags, far beyond any
# real registry, yet a bound a misbehaving one reaches in minutes rather than days.
MAX_PAGES = 10_000


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def error_detail(response: requests.Response) -> tuple[str | None, str]:
    """(code, short message) from an OCI error body, if there is one."""
    try:
        errors = parse_json(response.content, "error body", dict).get("errors")
    except (InvalidContent, requests.RequestException):
        return None, ""
    error = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(error, dict):
        return None, ""
    code = str(error.get("code", ""))[:64] or None
    message = str(error.get("message", ""))[:200]
    return code, f"{code}: {message}" if code else message


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest HEAD tells (each None when the registry did not say)."""

    digest: str | None
    media_type: str | None
    size: int | None


class RegistryClient:
    """One registry. Thread-safe; share one per registry across a run.

    ``actions`` are asked for on every repository scope: ``pull,push`` at a destination, so reads
    and writes share one token per repository; ``pull,metadata_read`` at an ACR source, so one
    token serves both the tag listing and the pulls.

    ``limits``: the request budget of this process at this registry; the budget is the process's
    one for this host (:func:`~sync_core.registry.budget.shared_budget`: every client of the host
    shares it, under the strictest limits), slowed by 429s even without limits. ``budget`` gives
    one instead; a ``transport`` given is used as it is, with the budget it has (or none).
    """

    def __init__(
        self,
        url: str,
        credentials: CredentialSource = ANONYMOUS,
        *,
        actions: str = "pull",
        transport: Transport | None = None,
        pool_size: int = 16,
        clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        budget: Budget | None = None,
    ):
        self.base_url = normalize_registry_url(url)
        self.host = urlsplit(self.base_url).netloc
        self.actions = actions
        if transport is None:
            transport = Transport(
                pool_size=pool_size, budget=budget or shared_budget(self.host, limits or Limits())
            )
        self.transport = transport
        self.auth = Authenticator(self.base_url, self.transport, credentials, clock=clock)

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    # -- scopes ---------------------------------------------------------------------------
    def scopes(self, repository: str, *extra: str) -> tuple[str, ...]:
        return (repository_scope(repository, self.actions), *extra)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        data: Body = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> requests.Response:
        """Send an authenticated request to this registry (a path, or a URL on its host)."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        return self.auth.send(
            method,
            url,
            scopes=scopes,
            headers=headers,
            data=data,
            stream=stream,
            follow_redirects=follow_redirects,
        )

    def fail(self, response: requests.Response, what: str) -> RegistryError:
        """The error to raise for an unexpected answer (closes the response)."""
        code, detail = error_detail(response)
        response.close()
        status = response.status_code
        message = f"{self.host}: {what}: HTTP {status}" + (f" ({detail})" if detail else "")
        if status == 404:
            return NotFound(message, status=status, code=code)
        if status in (401, 403):
            return AuthError(message, status=status, code=code)
        # a 5xx/429 the transport already retried is not worth retrying around it again
        return RegistryError(message, status=status, code=code, exhausted=exhausted(response))

    def api_version_check(self) -> requests.Response:
        """``GET /v2/``, authenticated as any request is: the registry's answer (closed; status and
        headers readable). A registry asking for credentials answers 401 first; the answer
        returned is the one after authentication, so :attr:`auth` then knows its scheme."""
        response = self.request("GET", "/v2/", scopes=())
        response.close()
        return response

    # -- manifests ------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch and verify a manifest (at most ``MAX_MANIFEST_BYTES``).

        The body is streamed, so the transport cannot retry a connection that breaks in the
        middle of it; that, and bytes that do not hash to the digest asked for or announced
        (damaged on the way), are retried here with the transport's policy.
        """
        check_repository(repository)
        check_reference(reference)
        where = (
            f"{self.host}/{repository}:{reference}"
            if not is_digest(reference)
            else f"{self.host}/{repository}@{reference}"
        )

        def attempt(number: int) -> Manifest:
            try:
                return self._get_manifest_once(repository, reference, where)
            except (requests.RequestException, OSError) as exc:
                raise RegistryError(
                    f"{where}: the manifest could not be read in {number + 1} attempt(s) "
                    f"(connection broke mid-body: {type(exc).__name__})"
                ) from None

        return retrying(attempt, self.transport.retry, what=f"manifest {where}", sleep=self.transport.sleep)

    def _get_manifest_once(self, repository: str, reference: str, where: str) -> Manifest:
        response = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository),
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        with response:
            if response.status_code != 200:
                raise self.fail(response, f"GET manifest {repository}:{reference}")
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise InvalidContent(
                    f"{where}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} byte limit"
                )
            raw = bytearray()
            for chunk in response.iter_content(65536):
                raw.extend(chunk)
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise InvalidContent(f"{where}: manifest is over the {MAX_MANIFEST_BYTES} byte limit")
            content_type = response.headers.get("Content-Type")
            header_digest = response.headers.get("Docker-Content-Digest")
        expected = reference if is_digest(reference) else None
        if expected is None and header_digest and header_digest.startswith("sha256:"):
            expected = check_digest(header_digest)
        return parse_manifest(bytes(raw), content_type, where, expected)

    def head_manifest(self, repository: str, reference: str) -> ManifestInfo | None:
        """Digest, media type and size of a manifest, or None if it does not exist."""
        check_repository(repository)
        check_reference(reference)
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise self.fail(response, f"HEAD manifest {repository}:{reference}")
            digest = response.headers.get("Docker-Content-Digest")
            length = response.headers.get("Content-Length", "")
            return ManifestInfo(
                digest if digest and is_digest(digest) else None,
                (response.headers.get("Content-Type") or "").split(";")[0].strip() or None,
                int(length) if length.isdigit() else None,
            )

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str | None:
        """Store ``manifest`` (its exact bytes) under ``reference``.

        Returns the registry's ``OCI-Subject`` answer: a registry with the referrers API names
        the subject of a manifest that has one (distribution-spec 1.1); None otherwise.
        """
        check_repository(repository)
        check_reference(reference)
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=self.scopes(repository),
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
        )
        with response:
            if response.status_code not in (200, 201, 202):
                raise self.fail(response, f"PUT manifest {repository}:{reference}")
            stored = response.headers.get("Docker-Content-Digest")
            subject = response.headers.get("OCI-Subject")
        if stored and is_digest(stored) and stored != manifest.digest:
            raise ProtocolError(
                f"{self.host}: stored {repository}:{reference} as {stored}, expected {manifest.digest}"
            )
        return subject if subject and is_digest(subject) else None

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        """The referrers API's list for ``digest``; None when the registry has no referrers API.

        Every page is read (``Link``); ``artifactType`` filtering is left to the caller (registries
        may ignore the filter). A 404 without an OCI error code (no such route), or an answer that
        is not an index, means "no API". A 404 with ``NAME_UNKNOWN`` / ``MANIFEST_UNKNOWN`` is the
        API answering about a repository or manifest it does not know: :class:`NotFound`.
        """
        check_repository(repository)
        where = f"referrers of {repository}@{check_digest(digest)}"
        pages = self.paginate(
            f"/v2/{repository}/referrers/{digest}", "manifests", self.scopes(repository), where, OCI_INDEX
        )
        entries: list[Any] = []
        try:
            for page in pages:
                listed = page.get("manifests")
                if not isinstance(listed, list):
                    return None  # not an index: whatever answered there is not the referrers API
                entries.extend(listed)
        except InvalidContent:
            return None  # not JSON: not the referrers API either
        except RegistryError as exc:
            if isinstance(exc, NotFound) and exc.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN"):
                raise
            if exc.status in (400, 404, 405, 406):
                return None
            raise
        return [Descriptor.parse(e, f"{self.host}: {where}: manifests[{i}]") for i, e in enumerate(entries)]

    # -- blobs ----------------------------------------------------------------------------
    def blob_size(self, repository: str, digest: str) -> int | None:
        """Size of a blob in ``repository``, or None if it is not there."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/blobs/{check_digest(digest)}",
            scopes=self.scopes(repository),
            follow_redirects=True,
        )
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise self.fail(response, f"HEAD blob {repository}@{digest}")
            length = response.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else -1

    def open_blob(self, repository: str, digest: str) -> requests.Response:
        """A streaming response for a blob (redirects followed without credentials). Close it."""
        response = self.request(
            "GET",
            f"/v2/{repository}/blobs/{check_digest(digest)}",
            scopes=self.scopes(repository),
            stream=True,
            follow_redirects=True,
        )
        if response.status_code != 200:
            raise self.fail(response, f"GET blob {repository}@{digest}")
        return response

    def start_upload(
        self, repository: str, *, mount: str | None = None, mount_from: str | None = None
    ) -> tuple[bool, str | None]:
        """Open an upload session, or mount ``mount`` from ``mount_from``.

        Returns ``(True, None)`` when the blob was mounted, else ``(False, location)``.
        """
        path = f"/v2/{repository}/blobs/uploads/"
        scopes = self.scopes(repository)
        if mount and mount_from:
            path += f"?mount={quote(check_digest(mount))}&from={quote(check_repository(mount_from))}"
            scopes = (*scopes, repository_scope(mount_from, "pull"))
        response = self.request("POST", path, scopes=scopes, headers={"Content-Length": "0"}, data=b"")
        with response:
            if response.status_code == 201 and mount:
                return True, None
            if response.status_code != 202:
                raise self.fail(response, f"start blob upload to {repository}")
            location = response.headers.get("Location")
        if not location:
            raise ProtocolError(f"{self.host}: upload to {repository} started without a Location")
        return False, resolve_on_host(self.base_url + path, location, "upload Location")

    def put_blob(self, repository: str, location: str, digest: str, body: Readable | None, size: int) -> None:
        """Finish an upload: PUT the whole body (or none after PATCHes) with ``?digest=``."""
        url = location + ("&" if "?" in location else "?") + "digest=" + quote(check_digest(digest))
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size if body else 0)}
        response = self.request(
            "PUT", url, scopes=self.scopes(repository), headers=headers, data=body if body else b""
        )
        with response:
            if response.status_code not in (201, 204):
                raise self.fail(response, f"upload blob {digest} to {repository}")

    def patch_blob(self, repository: str, location: str, body: Readable, start: int, length: int) -> str:
        """Send one chunk of a chunked upload; returns the next Location."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{start}-{start + length - 1}",
        }
        response = self.request("PATCH", location, scopes=self.scopes(repository), headers=headers, data=body)
        with response:
            if response.status_code not in (202, 204):
                raise self.fail(response, f"upload chunk to {repository}")
            next_location = response.headers.get("Location") or location
        return resolve_on_host(location, next_location, "upload Location")

    # -- listing --------------------------------------------------------------------------
    def paginate(
        self, path: str, key: str, scopes: tuple[str, ...], what: str, accept: str = "application/json"
    ) -> Iterator[dict[str, Any]]:
        """Yield every JSON page of a listing, following ``Link: <...>; rel="next"`` on this host."""
        url = self.base_url + path
        seen: set[str] = set()
        previous: object = None
        repeats = 0
        for number in range(MAX_PAGES):
            seen.add(url)
            response = self.request("GET", url, scopes=scopes, headers={"Accept": accept})
            with response:
                if response.status_code != 200:
                    raise self.fail(response, what)
                page = parse_json(response.content, f"{self.host}: {what}: answer", dict)
                next_link = response.links.get("next", {}).get("url")
            yield page
            if not next_link:
                return
            url = resolve_on_host(url, next_link, f"{what} Link header")
            if url in seen:
                raise ProtocolError(f"{self.host}: {what}: Link header loops back to a page already read")
            entries = page.get(key)
            repeats = repeats + 1 if number > 0 and entries == previous else 0
            if repeats >= 2:
                # a new URL every time but the same (or no) entries: it would never end
                raise ProtocolError(
                    f"{self.host}: {what}: pages {number - 1} to {number + 1} repeat the same entries "
                    "and link on; giving up"
                )
            previous = entries
        raise ProtocolError(f"{self.host}: {what}: more than {MAX_PAGES} pages; giving up")

    def get_json(self, path: str, scopes: tuple[str, ...], what: str) -> dict[str, Any]:
        """One JSON object from this registry (an ACR metadata answer)."""
        response = self.request("GET", path, scopes=scopes, headers={"Accept": "application/json"})
        with response:
            if response.status_code != 200:
                raise self.fail(response, what)
            document: dict[str, Any] = parse_json(response.content, f"{self.host}: {what}: answer", dict)
            return document

    def list_repositories(self, page_size: int = 100) -> list[str]:
        names: list[str] = []
        for page in self.paginate(
            f"/v2/_catalog?n={page_size}", "repositories", (CATALOG_SCOPE,), "list catalog"
        ):
            names.extend(_string_list(page, "repositories", f"{self.host} catalog"))
        return names

    def list_tags(self, repository: str) -> list[str] | None:
        """Every tag of a repository, or None when the registry answers 404.

        A 404 does not prove that the repository holds nothing: distribution answers 404 for a
        repository that holds blobs (or untagged manifests) but no tag.
        """
        check_repository(repository)
        tags: list[str] = []
        try:
            for page in self.paginate(
                f"/v2/{repository}/tags/list", "tags", self.scopes(repository), f"list tags of {repository}"
            ):
                tags.extend(_string_list(page, "tags", f"{self.host}/{repository} tags"))
        except NotFound:
            return None
        return tags


def _string_list(page: dict[str, Any], key: str, what: str) -> list[str]:
    values = page.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidContent(f"{what}: {key!r} is not a list of strings")
    return values
