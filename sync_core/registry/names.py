"""Names, references, digests and media types of the OCI distribution spec."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sync_core.errors import DigestMismatch, InvalidContent

if TYPE_CHECKING:
    from _hashlib import HASH

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
MAX_REPOSITORY_LENGTH = 255

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# The OCI 1.1 release candidates' artifact manifest (removed before 1.1.0; ACR still serves old ones).
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"
# Docker image manifest schema 1 (deprecated, still held by old registries): signed or not.
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_TYPES = frozenset({SCHEMA1_SIGNED, SCHEMA1})
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES | {OCI_ARTIFACT} | SCHEMA1_TYPES
# Schema 1 last: a registry that can convert (distribution) only does so for clients that do not
# accept schema 2; we accept every type and always get what the registry holds.
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, OCI_ARTIFACT, SCHEMA1_SIGNED, SCHEMA1]
)
# The referrers tag schema (distribution-spec 1.1): <alg>-<first 64 characters of the digest's hex>.
_FALLBACK_TAG_RE = re.compile(r"(sha256|sha512)-([a-f0-9]{64})")


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for the referrers of ``digest``."""
    algorithm, _, hexdigest = check_digest(digest).partition(":")
    return f"{algorithm}-{hexdigest[:64]}"


def fallback_tag_subject(tag: str) -> str | None:
    """The subject digest a referrers tag (``sha256-<hex>``) stands for, else None.

    Only sha256 subjects can be named exactly (a sha512 tag holds the first 64 of 128 hex digits).
    """
    match = _FALLBACK_TAG_RE.fullmatch(tag)
    if match is None or match.group(1) != "sha256":
        return None
    return f"sha256:{match.group(2)}"


def is_fallback_tag(tag: str) -> bool:
    return _FALLBACK_TAG_RE.fullmatch(tag) is not None


_ATTACHED_TAG_RE = re.compile(r"sha256-([a-f0-9]{64})\.(sig|att|sbom)")


def attached_subject(tag: str) -> str | None:
    """The image a cosign tag (``sha256-<hex>.sig``, ``.att``, ``.sbom``) belongs to, else None."""
    match = _ATTACHED_TAG_RE.fullmatch(tag)
    return f"sha256:{match.group(1)}" if match else None


def relative_to_namespace(repository: str, namespace: str) -> str | None:
    """``repository`` without the ``namespace/`` prefix; None when it is outside the namespace."""
    if not namespace:
        return repository
    prefix = namespace + "/"
    return repository[len(prefix) :] if repository.startswith(prefix) else None


def in_namespace(repository: str, namespace: str) -> bool:
    return relative_to_namespace(repository, namespace) is not None


def is_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and REPOSITORY_RE.fullmatch(name) is not None


def is_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None


def check_repository(name: object, what: str = "repository") -> str:
    if not isinstance(name, str) or not is_repository(name):
        raise InvalidContent(f"invalid {what} name {name!r}")
    return name


def check_reference(ref: object) -> str:
    """A tag or a digest."""
    if not isinstance(ref, str) or not (is_tag(ref) or is_digest(ref)):
        raise InvalidContent(f"invalid tag or digest {ref!r}")
    return ref


def check_digest(value: object) -> str:
    if not isinstance(value, str) or not is_digest(value):
        raise InvalidContent(f"invalid digest {value!r}")
    return value


def new_hasher(digest: str) -> HASH:
    """A hashlib object for the algorithm of ``digest``."""
    algorithm = check_digest(digest).split(":", 1)[0]
    return hashlib.new(algorithm)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, digest: str, what: str) -> None:
    actual = digest_of(data, check_digest(digest).split(":", 1)[0])
    if actual != digest:
        raise DigestMismatch(f"{what}: expected {digest}, content hashes to {actual}")


@dataclass(frozen=True)
class ImageRef:
    """``repository:tag`` or ``repository@digest`` (no registry host)."""

    repository: str
    reference: str

    @property
    def is_digest(self) -> bool:
        return is_digest(self.reference)

    def __str__(self) -> str:
        sep = "@" if self.is_digest else ":"
        return f"{self.repository}{sep}{self.reference}"

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        if "@" in text:
            repo, ref = text.split("@", 1)
            check_digest(ref)
        else:
            slash = text.rfind("/")
            colon = text.rfind(":")
            if colon <= slash:
                raise InvalidContent(f"{text!r} names no tag or digest (expected REPOSITORY:TAG)")
            repo, ref = text[:colon], text[colon + 1 :]
            if not is_tag(ref):
                raise InvalidContent(f"invalid tag {ref!r} in {text!r}")
        check_repository(repo)
        return cls(repo, ref)


def normalize_registry_url(value: str) -> str:
    """``host[:port]`` means https; a URL keeps its scheme. Returns ``scheme://host[:port]``."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = f"https://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_without_userinfo(value)!r} is not a registry host or http(s) URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(
            f"{_without_userinfo(value)!r}: give only scheme, host and port (no path, query or credentials)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _without_userinfo(url: str) -> str:
    """``url`` fit for a message: a ``user:password@`` in it (a pasted URL) is not repeated."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "<credentials removed>@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{tail}"
