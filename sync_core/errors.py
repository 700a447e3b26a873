"""Every exception type the core raises on purpose, and which of them are worth a retry.

Messages are written for the person running the sync: they name the registry, repository,
reference or setting concerned, and never contain credentials, tokens or query strings.

Each error says whether it is :attr:`~SyncError.transient`: the same request (or the same work)
may succeed if it is simply tried again (a broken connection, 429, 5xx, a token that expired on
the way). :func:`is_transient` is the one predicate every retrying loop uses (transport, manifest
refetch, blob uploads); the queue worker uses it too, to tell work worth a redelivery from work
that can only be reported.
"""

from __future__ import annotations

import requests
import urllib3


def transient_status(status: int) -> bool:
    """An HTTP status worth sending the same request again: 408, 429 and every 5xx but what the
    server says it cannot do at all (501 Not Implemented, 505 HTTP Version Not Supported)."""
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


class SyncError(Exception):
    """Base class of every error the core raises on purpose."""

    @property
    def transient(self) -> bool:
        return False


class ConfigError(SyncError):
    """Invalid configuration. ``problems`` lists every problem as 'SETTING: what is wrong'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class SetupError(SyncError):
    """The configuration is valid, but the world does not match it (found at run time).

    A Key Vault secret that does not exist, credentials without a right the configuration
    relies on: fixed by changing settings or permissions, not by trying again.
    """


class SecretUnavailable(SetupError):
    """A Key Vault secret named in the configuration is missing or empty."""


class RegistryError(SyncError):
    """A registry answered something we cannot use (or did not answer at all).

    ``exhausted``: the request was already retried as often as the transport allows; a loop
    around it (manifest refetch, upload restart) must not multiply those retries. The failure
    stays transient for whoever decides about trying the work again later (the queue).
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, exhausted: bool = False
    ):
        self.status = status
        self.code = code
        self.exhausted = exhausted
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return self.status is None or transient_status(self.status)


class Contradicted(RegistryError):
    """An answer that contradicts what this copy just verified: worth the same request again.

    distribution's filesystem storage rewrites a blob's or manifest's link file in place when a
    client pushes it again; a request that reads it meanwhile sees it half-written and answers
    400 ``DIGEST_INVALID`` for bytes that hash to the digest sent, or ``MANIFEST_BLOB_UNKNOWN``
    for a blob or child manifest that is there. Concurrent copies of one repository (an event
    and the timer, a redelivered message) meet it. Retried a few times, with backoff; a registry
    that keeps answering so refuses (the last answer is then raised as the error it is).
    """

    @property
    def transient(self) -> bool:
        return True


class AuthError(RegistryError):
    """Credentials were refused, or a token could not be obtained."""

    @property
    def transient(self) -> bool:
        return self.status is not None and transient_status(self.status)


class CredentialsRefused(AuthError):
    """The registry's token service refused the credentials themselves (wrong or expired)."""


class TokenExpired(AuthError):
    """A request whose body cannot be replayed met a 401 with a token cached before it.

    The token most likely expired on the way (or the registry rotated its keys): the whole
    operation (an upload) is worth one restart with a new token.
    """

    @property
    def transient(self) -> bool:
        return True


class CatalogForbidden(SetupError, AuthError):
    """The source credentials may not list the catalog (the fix: SOURCE_REPOSITORIES)."""


class NotFound(RegistryError):
    """The manifest, blob or repository does not exist."""

    @property
    def transient(self) -> bool:
        return False


class ProtocolError(RegistryError):
    """A registry's answer breaks the protocol (a redirect or paging loop, no upload Location)."""

    @property
    def transient(self) -> bool:
        return False


class ForeignHostError(RegistryError):
    """A registry answer pointed us at a host we must not send requests or credentials to."""

    @property
    def transient(self) -> bool:
        return False


class SourceStreamError(RegistryError):
    """The source blob stream broke, or ended early (the upload is restarted)."""

    @property
    def transient(self) -> bool:
        return True


class InvalidContent(SyncError):
    """Content failed verification: bad digest, wrong size, malformed or oversized manifest."""


class DigestMismatch(InvalidContent):
    """The bytes received do not hash to the digest that was asked for.

    Transient: bytes damaged on the way hash differently; a few retries tell that apart from a
    source that really stores damaged content. When every attempt gave a mismatch
    (``exhausted``, set by :func:`~sync_core.registry.retry.retrying`) it is the content itself: refused.
    """

    exhausted = False

    @property
    def transient(self) -> bool:
        return not self.exhausted


class SkipImage(SyncError):
    """The image must not be copied to this target (reason in the message)."""


class NameRejected(SkipImage):
    """The target cannot hold this repository name (reason in the message)."""


class LeftOut(NameRejected):
    """A mapping rule (template ``null``) leaves the repository out of a target, on purpose."""


class SourceGone(SkipImage):
    """What was listed (or pushed) is no longer at the source: nothing to mirror."""


class TagConflict(SkipImage):
    """The target refuses to move a tag it holds (immutable tags): reported, not retried."""


class TargetRefused(SkipImage):
    """The target refuses this kind of content (a manifest class, schema 1): reported, not retried."""


# Exceptions of the HTTP stack itself: the connection broke, timed out, or a body ended early.
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    """True when trying the same thing again may succeed (see the module docstring)."""
    if isinstance(error, SyncError):
        return error.transient
    return isinstance(error, _NETWORK_ERRORS)


def refused(error: BaseException) -> bool:
    """Content that cannot be copied exactly, for good: reported as a skip, never retried."""
    return isinstance(error, InvalidContent) and not is_transient(error)


def worth_redelivering(error: BaseException) -> bool:
    """Whether a queue message that failed this way should come back (and end in the poison queue).

    Transient failures, and refusals of our credentials or rights (fixed by an operator, after
    which the poisoned message is replayed). Conditions of the content itself (a refused media
    type, an immutable tag, content that cannot be copied exactly, a tag gone from the source) are
    reported as skips and never redelivered: trying again cannot change them.
    """
    return is_transient(error) or isinstance(error, (AuthError, SetupError))


def describe(error: BaseException) -> str:
    """A one-line reason for summaries and logs (our errors are written to be shown as they are)."""
    if isinstance(error, ConfigError):
        return "; ".join(error.problems)
    if isinstance(error, SyncError):
        lines = str(error).splitlines()
        return lines[0] if lines else type(error).__name__
    return f"unexpected {type(error).__name__}"
