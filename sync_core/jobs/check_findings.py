"""``check``'s findings: one row per thing looked at, and the first question asked of every registry.

A :class:`Finding` says what was asked, what the registry (or Key Vault, or the configuration)
answered, and, unless it is ``ok``, the setting or action that fixes it. :func:`reach` is the
first request to each registry: ``GET /v2/`` with the configured credentials, which tells whether
it answers, which authentication it asks for and whether it accepts the credentials (the token
exchange, or Basic), and carries the ``Date`` and rate-limit headers the later findings read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import requests

from sync_core.config.model import CredentialSpec, TargetConfig
from sync_core.errors import AuthError, CredentialsRefused, RegistryError, SetupError, describe
from sync_core.registry.client import RegistryClient
from sync_core.registry.transport import redact_url


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"  # works, but not as one would expect, or cannot be told without writing
    FAIL = "fail"  # a sync would fail (or leave out what is asked for) until this is fixed


@dataclass(frozen=True)
class Finding:
    """One row of ``check``: where, what, the outcome, what was asked and answered, the fix."""

    subject: str  # "source", "key-vault", or a target's name
    check: str  # what was looked at: "reach", "credentials", "push", ...
    status: Status
    asked: str  # the request(s) sent, or the rule or setting looked at
    answered: str  # what came back
    fix: str = ""  # the setting or action that fixes it (empty when nothing needs fixing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "check": self.check,
            "status": self.status.value,
            "asked": self.asked,
            "answered": self.answered,
            "fix": self.fix,
        }


def ok(subject: str, check: str, asked: str, answered: str, note: str = "") -> Finding:
    return Finding(subject, check, Status.OK, asked, answered, note)


def warn(subject: str, check: str, asked: str, answered: str, fix: str) -> Finding:
    return Finding(subject, check, Status.WARN, asked, answered, fix)


def fail(subject: str, check: str, asked: str, answered: str, fix: str) -> Finding:
    return Finding(subject, check, Status.FAIL, asked, answered, fix)


# -- where a fix goes -------------------------------------------------------------------------------


def target_setting(target: TargetConfig, key: str) -> str:
    """The name of one of ``target``'s settings, as the configuration spells it."""
    name = f"targets[{target.name}].{key}"
    return f"TARGET_{key.upper()} (or {name})" if target.name == "target" else name


def credentials_setting(spec: CredentialSpec, source: bool, target: TargetConfig | None = None) -> str:
    """Where the credentials of the source or a target are configured (names of settings, never values)."""

    def named(key: str) -> str:
        return f"SOURCE_{key.upper()}" if source or target is None else target_setting(target, key)

    if spec.from_key_vault:
        return (
            f"the Key Vault secrets {spec.username_secret!r} / {spec.password_secret!r} "
            f"({named('username_secret')} / {named('password_secret')})"
        )
    if spec.anonymous:
        return f"{named('username_secret')} / {named('password_secret')} (none configured: anonymous)"
    return f"{named('username')} / {named('password')}" + (
        "" if source else " (or username_env / password_env)"
    )


# -- the first request ------------------------------------------------------------------------------


@dataclass
class Reached:
    """What :func:`reach` learned: the registry's answer to ``GET /v2/`` (None: none usable)."""

    response: requests.Response | None

    @property
    def usable(self) -> bool:
        return self.response is not None and self.response.status_code == 200


def scheme_of(client: RegistryClient) -> str:
    """The registry's authentication, as a person reads it."""
    challenge = client.auth.challenge
    if challenge is None:
        return "none asked for (anonymous access)"
    if challenge.scheme == "basic":
        return "Basic"
    realm = challenge.params.get("realm", "")
    service = challenge.params.get("service")
    return f"Bearer tokens from {redact_url(realm)}" + (f" (service {service})" if service else "")


def reach(
    client: RegistryClient, subject: str, registry_setting: str, spec: CredentialSpec, credentials: str
) -> tuple[list[Finding], Reached]:
    """``GET /v2/`` with the configured credentials: findings ``reach`` and ``credentials``."""
    asked = f"GET {client.base_url}/v2/ (then a token from the token service if it asks for one)"
    user = "anonymous access" if spec.anonymous else "the configured credentials"
    try:
        response = client.api_version_check()
    except SetupError as exc:  # the credentials could not be read (Key Vault)
        return [
            fail(
                subject,
                "credentials",
                f"the credentials in {credentials}",
                describe(exc),
                "see the key-vault findings: create the secret or give the identity read access",
            )
        ], Reached(None)
    except CredentialsRefused as exc:
        return [
            ok(subject, "reach", asked, f"answered; authentication: {scheme_of(client)}"),
            fail(
                subject,
                "credentials",
                f"{asked} as {user}",
                describe(exc),
                f"{credentials}: the user name or password is wrong or expired; store valid ones",
            ),
        ], Reached(None)
    except AuthError as exc:
        fix = (
            f"{credentials}: the registry does not allow anonymous access; configure credentials"
            if spec.anonymous
            else f"{credentials}: the registry refuses them; store valid ones"
        )
        return [
            ok(subject, "reach", asked, f"answered; authentication: {scheme_of(client)}"),
            fail(subject, "credentials", f"{asked} as {user}", describe(exc), fix),
        ], Reached(None)
    except (RegistryError, requests.RequestException, OSError) as exc:
        return [
            fail(
                subject,
                "reach",
                asked,
                describe(exc),
                f"{registry_setting}: check the host name and that this machine (or the Function app's "
                "network) may reach it over https",
            )
        ], Reached(None)
    if response.status_code != 200:
        return [
            fail(
                subject,
                "reach",
                asked,
                f"HTTP {response.status_code}: not the answer of an OCI registry's API",
                f"{registry_setting}: name the registry's API host (Docker Hub: docker.io)",
            )
        ], Reached(response)
    scheme = scheme_of(client)
    if spec.anonymous:
        credentials_row = ok(
            subject, "credentials", asked, f"none configured; the registry answered anonymously ({scheme})"
        )
    elif client.auth.challenge is None:
        credentials_row = warn(
            subject,
            "credentials",
            asked,
            "the registry asked for no credentials: the configured ones were never sent",
            f"{credentials}: not needed by this registry (remove them, or check {registry_setting})",
        )
    else:
        credentials_row = ok(subject, "credentials", f"{asked} as {user}", f"accepted ({scheme})")
    return [ok(subject, "reach", asked, f"HTTP 200; authentication: {scheme}"), credentials_row], Reached(
        response
    )
