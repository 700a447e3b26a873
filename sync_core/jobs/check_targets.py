"""``check`` at each target, asking the registry: what it will accept of this configuration, without writing.

After the findings from the configuration alone (:mod:`~sync_core.jobs.check_names`): whether
it answers and accepts the credentials; the rights a new token's claims grant on one repository
per target namespace (push and pull) and, for a cross-repository mount, pull on another one; the
referrers API (probed, not inferred from a header); the rate-limit headers against the
configured request budget.

Nothing is written: push rights and mounts are read from the token's ``access`` claim where the
registry issues a readable JWT (Docker Hub, ACR, distribution's token servers); with Basic
authentication, an opaque token or no authentication they cannot be told without writing, and
the finding says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sync_core.config.model import TargetConfig
from sync_core.config.registries import (
    ALIBABA_NAMESPACES_DOC,
    DOCKER_PULLS_DOC,
    DOCKER_TOKENS_DOC,
    KnownRegistry,
    known_registry,
)
from sync_core.errors import NotFound, RegistryError, describe
from sync_core.jobs.check_findings import Finding, credentials_setting, fail, ok, reach, target_setting, warn
from sync_core.jobs.check_names import (
    Names,
    listed,
    map_names,
    names_findings,
    representatives,
    rules_findings,
)
from sync_core.jobs.check_rate import rate_limit_finding
from sync_core.jobs.check_source import SourceView
from sync_core.jobs.syncer import Syncer
from sync_core.registry.auth import granted_actions
from sync_core.registry.client import RegistryClient, repository_scope
from sync_core.registry.names import MANIFEST_ACCEPT, digest_of
from sync_core.registry.transport import redact_url

EMPTY_DIGEST = digest_of(b"")  # a digest to ask the referrers API about when no sample is known


def push_fix(
    target: TargetConfig, known: KnownRegistry | None, repository: str, granted: frozenset[str]
) -> str:
    namespace = repository.rpartition("/")[0] or repository
    if "push" in granted:
        return f"the user may push but not pull on {repository}: the copy also reads what the target holds (give pull too)"
    if known is not None and known.name == "Docker Hub":
        return (
            f"Docker Hub grants push on {repository} only when the namespace {namespace!r} exists (the account, or "
            "an organization where the user's team may write) and the access token has 'Read & Write' or more "
            f"({DOCKER_TOKENS_DOC}); or set {target_setting(target, 'namespace')} to one it may write to"
        )
    if known is not None and known.name.startswith("Alibaba"):
        return (
            f"create the namespace {namespace!r} with 'Automatically Create Repository' on and give the user push "
            f"on it ({ALIBABA_NAMESPACES_DOC}); or set {target_setting(target, 'namespace')} to one it may write to"
        )
    return f"give the user pull and push on {namespace}/* at {target.host}, or set {target_setting(target, 'namespace')} to a namespace it may write to"


def _unknowable(client: RegistryClient) -> str | None:
    """Why rights cannot be told without writing at this registry (None: they can)."""
    if client.auth.scheme is None:
        return "the registry asks for no credentials: whether it takes anonymous writes cannot be told without writing"
    if client.auth.scheme == "basic":
        return "Basic authentication: the registry tells its rights only by answering a write; cannot be told without writing"
    return None


def push_findings(
    client: RegistryClient, target: TargetConfig, known: KnownRegistry | None, reps: list[str], more: int
) -> list[Finding]:
    subject = target.name
    if not reps:
        return [
            warn(
                subject,
                "push",
                "nothing",
                "no repository name to ask about (no name maps to this target)",
                "see the names and source findings",
            )
        ]
    why = _unknowable(client)
    if why is not None:
        return [
            warn(
                subject,
                "push",
                f"the rights on {listed(reps)}",
                why,
                "none if the user may push there; the first sync tells (a refused push fails with 'denied')",
            )
        ]
    realm = redact_url(client.auth.challenge.params.get("realm", "") if client.auth.challenge else "")
    findings = []
    for rep in reps:
        asked = f"a new token for repository:{rep}:{client.actions} from {realm} (what its claims grant)"
        try:
            claims = client.auth.new_token_claims(client.scopes(rep))
        except RegistryError as exc:
            findings.append(
                fail(subject, "push", asked, describe(exc), push_fix(target, known, rep, frozenset()))
            )
            continue
        granted = granted_actions(claims, "repository", rep) if claims is not None else None
        if granted is None:
            findings.append(
                warn(
                    subject,
                    "push",
                    asked,
                    "the token is not a JWT that lists its grants: cannot be told without writing",
                    "none if the user may push there; the first sync tells",
                )
            )
        elif "*" in granted or {"pull", "push"} <= granted:
            findings.append(ok(subject, "push", asked, f"granted {','.join(sorted(granted))} on {rep}"))
        else:
            findings.append(
                fail(
                    subject,
                    "push",
                    asked,
                    f"granted {','.join(sorted(granted)) or 'nothing'} on {rep}",
                    push_fix(target, known, rep, granted),
                )
            )
    if more:
        last = findings[-1]
        findings[-1] = replace(last, answered=f"{last.answered} ({more} more namespaces not asked about)")
    return findings


def mount_finding(client: RegistryClient, target: TargetConfig, names: Names, reps: list[str]) -> Finding:
    subject = target.name
    into = reps[0] if reps else None
    other = next((n for n in sorted(names.mapped.values()) if n != into), None)
    effect = "a mount writes a blob link, so whether the registry performs one cannot be told without writing; a refused mount is uploaded instead"
    if into is None or other is None:
        return ok(subject, "mount", "nothing", "fewer than two repositories: nothing to mount from")
    why = _unknowable(client)
    if why is not None:
        return ok(subject, "mount", f"the rights a mount into {into} from {other} needs", f"{why}; {effect}")
    asked = f"a new token for repository:{into}:{client.actions} and repository:{other}:pull (what a mount asks for)"
    try:
        claims = client.auth.new_token_claims((*client.scopes(into), repository_scope(other, "pull")))
    except RegistryError as exc:
        return warn(subject, "mount", asked, describe(exc), "see the push finding")
    granted = granted_actions(claims, "repository", other) if claims is not None else None
    if granted is None:
        return ok(subject, "mount", asked, f"the token does not list its grants; {effect}")
    if "*" in granted or "pull" in granted:
        return ok(subject, "mount", asked, f"pull on {other} granted: mounts can be asked for; {effect}")
    return warn(
        subject,
        "mount",
        asked,
        f"pull on {other} not granted: mounts from it will be refused and each shared blob uploaded to every repository",
        f"give the user pull on the other repositories under {target.namespace or 'its namespace'} (saves uploads; nothing fails without it)",
    )


def referrers_finding(
    syncer: Syncer,
    client: RegistryClient,
    target: TargetConfig,
    names: Names,
    view: SourceView,
    reps: list[str],
) -> Finding:
    subject = target.name
    if not syncer.config.referrers.enabled:
        return ok(subject, "referrers", "nothing: SYNC_REFERRERS=none", "referrers are not mirrored")
    sample = next((s for s in view.samples if s.repository in names.mapped), None)
    repository = names.mapped[sample.repository] if sample else (reps[0] if reps else None)
    if repository is None:
        return warn(
            subject,
            "referrers",
            "nothing",
            "no repository name to ask about",
            "see the names and source findings",
        )
    digest = sample.digest if sample else EMPTY_DIGEST
    asked = f"GET {client.base_url}/v2/{repository}/referrers/{digest}"
    try:
        found = client.referrers(repository, digest)
    except NotFound as exc:
        return ok(
            subject,
            "referrers",
            asked,
            f"served, it seems: an OCI error for a repository not mirrored yet ({exc.code}); a registry "
            "without the API has no such route and answers a plain 404. The first referrer copied confirms it",
        )
    except RegistryError as exc:
        fix = (
            "the user needs pull on the target repositories"
            if exc.status in (401, 403)
            else "see the answer; referrers are kept in referrers tags if the API is not served"
        )
        return fail(subject, "referrers", asked, describe(exc), fix)
    if found is None:
        return ok(
            subject,
            "referrers",
            asked,
            "not served (a plain 404 or not an index): referrers are listed in referrers tags (sha256-<hex>) here, one more write per subject",
        )
    return ok(subject, "referrers", asked, f"served: an OCI index ({len(found)} referrer(s) listed)")


def rate_finding(
    client: RegistryClient,
    target: TargetConfig,
    known: KnownRegistry | None,
    names: Names,
    view: SourceView,
    answers: list[Mapping[str, str]],
    budget: float | None,
) -> Finding:
    probe = known.rate_limit_probe if known else None
    if probe is None:
        sample = next((s for s in view.samples if s.repository in names.mapped), None)
        probe = (names.mapped[sample.repository], sample.tag) if sample else None
    asked = f"GET {client.base_url}/v2/ (its headers)"
    if probe is not None:
        repository, tag = probe
        asked += f" and HEAD /v2/{repository}/manifests/{tag}"
        try:
            response = client.request(
                "HEAD",
                f"/v2/{repository}/manifests/{tag}",
                scopes=(repository_scope(repository, "pull"),)
                if known and known.rate_limit_probe
                else client.scopes(repository),
                headers={"Accept": MANIFEST_ACCEPT},
            )
            response.close()
            answers = [*answers, response.headers]
        except RegistryError:
            pass  # the headers of the other answers still count
    docker_hub = known is not None and known.rate_limit_probe is not None
    return rate_limit_finding(
        target.name,
        asked,
        answers,
        budget,
        pulls_only=docker_hub,
        source=DOCKER_PULLS_DOC if docker_hub else "",
    )


def target_findings(
    syncer: Syncer, target: TargetConfig, view: SourceView, budget: float | None
) -> list[Finding]:
    """Every finding of one target, in order. ``budget``: its request budget (requests/s; None: none)."""
    config, client = syncer.config, syncer.target_clients[target.name]
    known = known_registry(target.registry)
    findings = rules_findings(target, known)
    if view.repositories is None:
        names = Names()
        findings.append(
            warn(
                target.name,
                "names",
                "the mapping rules",
                "not checked: the source's repositories are unknown",
                "see the source findings",
            )
        )
    else:
        names = map_names(config, target, view.repositories, known)
        findings.extend(names_findings(target, known, names))
    spec = target.credentials
    rows, reached = reach(
        client,
        target.name,
        target_setting(target, "registry"),
        spec,
        credentials_setting(spec, source=False, target=target),
    )
    findings.extend(rows)
    if not reached.usable or reached.response is None:
        return findings
    preferred = [names.mapped[s.repository] for s in view.samples if s.repository in names.mapped]
    reps, more = representatives(names, preferred)
    if not reps and target.namespace and view.repositories is None:
        reps = [f"{target.namespace}/registry-sync-check"]  # a name under the namespace, never written
    findings.extend(push_findings(client, target, known, reps, more))
    findings.append(mount_finding(client, target, names, reps))
    findings.append(referrers_finding(syncer, client, target, names, view, reps))
    findings.append(rate_finding(client, target, known, names, view, [reached.response.headers], budget))
    return findings
