"""``check`` at the source and in Key Vault: what the source lets this configuration read.

Key Vault: each secret the configuration names (source and checked targets) is read once, fresh
(the value is never shown). The source: :func:`~sync_core.jobs.check_findings.reach` (reachable,
its authentication, the credentials), the clock against its ``Date``, the catalog (or
``SOURCE_REPOSITORIES``), the repositories the filters select, and on a sample of them the tag
listing (metadata rights on ACR), a manifest HEAD (pull rights) and, on the first, the referrers
API. What it learns (the repositories, the sampled tags and digests) is what the target checks use.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass, field

from sync_core.config.model import SourceKind, SyncConfig, TargetConfig
from sync_core.errors import (
    AuthError,
    CatalogForbidden,
    ConfigError,
    NotFound,
    RegistryError,
    SecretUnavailable,
    SetupError,
    describe,
)
from sync_core.jobs.check_findings import Finding, credentials_setting, fail, ok, reach, target_setting, warn
from sync_core.jobs.syncer import Syncer
from sync_core.plan.catalog import TagInfo
from sync_core.plan.selection import repository_wanted, wanted_tags
from sync_core.registry.client import CATALOG_SCOPE

SOURCE = "source"
KEY_VAULT = "key-vault"
CLOCK_OK_SECONDS = 30.0  # the Date header has a resolution of one second, plus the round trip
CLOCK_FAIL_SECONDS = 300.0  # ACR tokens may live five minutes: beyond this every token looks wrong


@dataclass(frozen=True)
class Sampled:
    """A tag read at the source: its repository, name and digest."""

    repository: str
    tag: str
    digest: str


@dataclass
class SourceView:
    """What the source checks learned, for the target checks."""

    repositories: list[str] | None = None  # under the source namespace; None: unknown (a failure)
    samples: list[Sampled] = field(default_factory=list)


# -- Key Vault ----------------------------------------------------------------------------------------


def named_secrets(config: SyncConfig, targets: list[TargetConfig]) -> dict[str, list[str]]:
    """``{secret name: [settings naming it]}`` for the source and ``targets``."""
    named: dict[str, list[str]] = {}
    spec = config.source.credentials
    for key, secret in (
        ("SOURCE_USERNAME_SECRET", spec.username_secret),
        ("SOURCE_PASSWORD_SECRET", spec.password_secret),
    ):
        if secret:
            named.setdefault(secret, []).append(key)
    for target in targets:
        for key in ("username_secret", "password_secret"):
            secret = getattr(target.credentials, key)
            if secret:
                named.setdefault(secret, []).append(target_setting(target, key))
    return named


def secret_findings(syncer: Syncer, targets: list[TargetConfig]) -> list[Finding]:
    """One finding per Key Vault secret named in the configuration: present and readable (fresh)."""
    named = named_secrets(syncer.config, targets)
    if not named:
        return []
    url = syncer.config.key_vault_url or ""
    try:
        vault = syncer.secrets.vault
    except ConfigError as exc:
        return [fail(KEY_VAULT, "secrets", "KEY_VAULT_URL", describe(exc), "KEY_VAULT_URL: name the vault")]
    findings = []
    for name, settings in sorted(named.items()):
        asked = f"GET {url}/secrets/{name} (named by {', '.join(settings)})"
        try:
            vault.get(name, fresh=True)
        except SecretUnavailable as exc:
            fix = f"create the secret {name!r} in {url}, or correct {' / '.join(settings)}"
            findings.append(fail(KEY_VAULT, "secret", asked, describe(exc), fix))
            continue
        except (AuthError, SetupError) as exc:
            fix = (
                "give the identity that runs this (the app's managed identity; locally your az login) "
                f"the role 'Key Vault Secrets User' on the vault, and check KEY_VAULT_URL ({url})"
            )
            findings.append(fail(KEY_VAULT, "secret", asked, describe(exc), fix))
            continue
        findings.append(ok(KEY_VAULT, "secret", asked, "present and readable (the value is not shown)"))
    return findings


# -- the source ---------------------------------------------------------------------------------------


def clock_finding(subject: str, date: str | None, now: dt.datetime, asked: str) -> Finding:
    """This machine's clock against a registry's ``Date`` header."""
    if not date:
        return ok(subject, "clock", asked, "no Date header: the clock was not compared")
    try:
        theirs = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return ok(subject, "clock", asked, f"a Date header that is not a date ({date[:40]!r}): not compared")
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=dt.timezone.utc)
    skew = (now - theirs).total_seconds()
    answered = f"Date: {date}; this machine is {abs(skew):.0f} s {'ahead' if skew > 0 else 'behind'}"
    if abs(skew) <= CLOCK_OK_SECONDS:
        return ok(subject, "clock", asked, answered)
    effect = (
        "token lifetimes are judged by this clock (a token may look expired as soon as it is issued, "
        "or be used after it expired), and so are tag ages (TAG_MIN_AGE_DAYS, TAG_MAX_AGE_DAYS, "
        "SYNC_RECHECK_HOURS) and the mirror lag"
    )
    fix = f"synchronise this machine's clock (NTP): {effect}"
    if abs(skew) <= CLOCK_FAIL_SECONDS:
        return warn(subject, "clock", asked, answered, fix)
    return fail(subject, "clock", asked, answered, fix)


def _catalog(syncer: Syncer) -> tuple[Finding, list[str] | None]:
    config = syncer.config.source
    host = syncer.source_client.host
    if config.repositories:
        asked = "nothing: SOURCE_REPOSITORIES lists the repositories (the catalog is not read)"
    else:
        asked = f"GET {syncer.source_client.base_url}/v2/_catalog, every page (token scope {CATALOG_SCOPE})"
    try:
        names = syncer.source.repositories()
    except CatalogForbidden as exc:
        fix = (
            "SOURCE_REPOSITORIES: list the repositories to sync (an ACR token gets "
            f"{CATALOG_SCOPE} only when its scope map is the root wildcard '*')"
        )
        answered = f"{host} refused the catalog listing (HTTP {exc.status})"
        return fail(SOURCE, "catalog", asked, answered, fix), None
    except SetupError:
        fix = (
            "check the scope map of the source token (ACR answers an empty catalog to a token that "
            "may see no repository) and SOURCE_NAMESPACE; SOURCE_ALLOW_EMPTY=true if the source is "
            "really empty"
        )
        return fail(
            SOURCE, "catalog", asked, f"{host} listed no repository" + _under(config.namespace), fix
        ), None
    except (RegistryError, AuthError) as exc:
        return fail(
            SOURCE, "catalog", asked, describe(exc), "see the answer; the listing is retried by every run"
        ), None
    where = _under(config.namespace)
    if config.repositories:
        return ok(SOURCE, "catalog", asked, f"{len(names)} repositories listed{where}"), names
    return ok(SOURCE, "catalog", asked, f"{len(names)} repositories{where}"), names


def _under(namespace: str) -> str:
    return f" under {namespace}/" if namespace else ""


def _selection(
    config: SyncConfig, targets: list[TargetConfig], names: list[str]
) -> tuple[Finding, list[str]]:
    selected = [n for n in names if any(repository_wanted(config, t, n) for t in targets)]
    asked = "REPOSITORY_INCLUDE / REPOSITORY_EXCLUDE and each target's repository filters"
    if not selected:
        fix = "REPOSITORY_INCLUDE / REPOSITORY_EXCLUDE (or a target's repository_include/_exclude): they match in full"
        return fail(SOURCE, "selection", asked, f"none of the {len(names)} repositories is selected", fix), []
    return ok(SOURCE, "selection", asked, f"{len(selected)} of {len(names)} repositories selected"), selected


def sample_of(repositories: list[str], size: int) -> list[str]:
    """Up to ``size`` repositories spread over the (sorted) list: first, last, and between."""
    if size <= 0 or not repositories:
        return []
    if len(repositories) <= size:
        return list(repositories)
    if size == 1:
        return [repositories[0]]
    step = (len(repositories) - 1) / (size - 1)
    return sorted({repositories[round(i * step)] for i in range(size)})


def _chosen_tag(tags: list[TagInfo], wanted: list[TagInfo]) -> TagInfo | None:
    """The tag whose manifest is HEADed: the newest wanted (or any) readable one."""
    for candidates in (wanted, tags):
        readable = [t for t in candidates if t.readable]
        if readable:
            dated = [t for t in readable if t.updated is not None]
            return max(dated, key=lambda t: t.updated or dt.datetime.min) if dated else readable[0]
    return None


def _rights_fix(kind: SourceKind, repository: str, right: str) -> str:
    if kind is SourceKind.ACR:
        return (
            f"the scope map of the source token: content/read and metadata/read on {repository} "
            f"(ACR actions pull and metadata_read); this request needs {right}"
        )
    return f"the source credentials need {right} on {repository}"


def _sample(
    syncer: Syncer, targets: list[TargetConfig], repository: str, now: dt.datetime
) -> tuple[list[Finding], Sampled | None]:
    config, client = syncer.config, syncer.source_client
    kind = config.source.kind
    listing = (
        f"GET {client.base_url}/acr/v1/{repository}/_tags (scope repository:{repository}:{client.actions})"
        if kind is SourceKind.ACR
        else f"GET {client.base_url}/v2/{repository}/tags/list"
    )
    try:
        tags = syncer.source.tags(repository)
    except AuthError as exc:
        return [
            fail(
                SOURCE,
                "metadata",
                listing,
                describe(exc),
                _rights_fix(kind, repository, "metadata_read" if kind is SourceKind.ACR else "pull"),
            )
        ], None
    except RegistryError as exc:
        return [fail(SOURCE, "metadata", listing, describe(exc), "see the answer")], None
    wanted = {t.name: t for target in targets for t in wanted_tags(config, target, repository, tags, now)}
    chosen = _chosen_tag(tags, list(wanted.values()))
    if chosen is None:
        return [
            warn(
                SOURCE,
                "metadata",
                listing,
                f"{repository}: no tag (a repository that does not exist, is empty, or whose tags are all unreadable)",
                "SOURCE_REPOSITORIES: check the name"
                if config.source.repositories
                else "nothing to mirror from it yet",
            )
        ], None
    findings = [
        ok(
            SOURCE,
            "metadata",
            listing,
            f"{repository}: {len(tags)} tag(s), {len(wanted)} selected by the tag filters",
        )
    ]
    head = f"HEAD {client.base_url}/v2/{repository}/manifests/{chosen.name} (scope pull)"
    try:
        info = client.head_manifest(repository, chosen.name)
    except AuthError as exc:
        findings.append(fail(SOURCE, "pull", head, describe(exc), _rights_fix(kind, repository, "pull")))
        return findings, None
    except RegistryError as exc:
        findings.append(fail(SOURCE, "pull", head, describe(exc), "see the answer"))
        return findings, None
    digest = (info.digest if info else None) or chosen.digest
    if info is None or digest is None:
        findings.append(
            warn(
                SOURCE,
                "pull",
                head,
                f"{repository}:{chosen.name} is listed but not found",
                "none: a tag deleted while listed",
            )
        )
        return findings, None
    findings.append(ok(SOURCE, "pull", head, f"{repository}:{chosen.name} is {digest}"))
    return findings, Sampled(repository, chosen.name, digest)


def _referrers(syncer: Syncer, sampled: Sampled) -> Finding:
    client = syncer.source_client
    asked = f"GET {client.base_url}/v2/{sampled.repository}/referrers/{sampled.digest}"
    if not syncer.config.referrers.enabled:
        return ok(SOURCE, "referrers", "nothing: SYNC_REFERRERS=none", "referrers are not mirrored")
    try:
        found = client.referrers(sampled.repository, sampled.digest)
    except NotFound as exc:
        return warn(
            SOURCE, "referrers", asked, describe(exc), "none: a tag moved while checked; run check again"
        )
    except AuthError as exc:
        return fail(
            SOURCE,
            "referrers",
            asked,
            describe(exc),
            _rights_fix(syncer.config.source.kind, sampled.repository, "pull"),
        )
    except RegistryError as exc:
        return fail(
            SOURCE,
            "referrers",
            asked,
            describe(exc),
            "see the answer: referrers of this registry cannot be listed",
        )
    if found is None:
        return ok(
            SOURCE,
            "referrers",
            asked,
            "not served (a plain 404 or not an index): referrers are found through referrers tags (sha256-<hex>), as clients write them at such a registry",
        )
    return ok(
        SOURCE,
        "referrers",
        asked,
        f"served: an OCI index, {len(found)} referrer(s) of {sampled.repository}:{sampled.tag}",
    )


def source_findings(
    syncer: Syncer, targets: list[TargetConfig], sample_size: int, now: dt.datetime
) -> tuple[list[Finding], SourceView]:
    """Every source finding, in order, and what the target checks need of them."""
    config = syncer.config
    spec = config.source.credentials
    findings, reached = reach(
        syncer.source_client, SOURCE, "SOURCE_REGISTRY", spec, credentials_setting(spec, source=True)
    )
    view = SourceView()
    if reached.response is not None:
        findings.append(
            clock_finding(
                SOURCE,
                reached.response.headers.get("Date"),
                now,
                f"GET {syncer.source_client.base_url}/v2/ (its Date header)",
            )
        )
    if not reached.usable:
        return findings, view
    catalog, names = _catalog(syncer)
    findings.append(catalog)
    if names is None:
        return findings, view
    view.repositories = names
    selection, selected = _selection(config, targets, names)
    findings.append(selection)
    for repository in sample_of(selected, sample_size):
        rows, sampled = _sample(syncer, targets, repository, now)
        findings.extend(rows)
        if sampled is not None:
            view.samples.append(sampled)
    if view.samples:
        findings.append(_referrers(syncer, view.samples[0]))
    return findings, view
