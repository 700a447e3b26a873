"""Exception types shared by every module of the core.

Messages are written for the person running the sync: they name the registry, repository,
reference or setting concerned, and never contain credentials, tokens or query strings.
"""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(SyncError):
    """Invalid configuration. ``problems`` lists every problem as 'SETTING: what is wrong'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class RegistryError(SyncError):
    """A registry answered something we cannot use (or did not answer at all)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        self.status = status
        self.code = code
        super().__init__(message)


class AuthError(RegistryError):
    """Credentials were refused, or a token could not be obtained."""


class CredentialsRefused(AuthError):
    """The registry's token service refused the credentials themselves (wrong or expired)."""


class NotFound(RegistryError):
    """The manifest, blob or repository does not exist."""


class ForeignHostError(RegistryError):
    """A registry answer pointed us at a host we must not send requests or credentials to."""


class InvalidContent(SyncError):
    """Content failed verification: bad digest, wrong size, malformed or oversized manifest."""


class DigestMismatch(InvalidContent):
    """The bytes received do not hash to the digest that was asked for."""


class SkipImage(SyncError):
    """The image must not be copied to this target (reason in the message)."""
