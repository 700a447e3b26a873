"""``check`` from the configuration alone, per target: the rules known of its registry and the names
the mapping rules give the selected repositories (path depth, validity, a namespace where the
registry requires one, collisions). No request is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sync_core.config.model import SyncConfig, TargetConfig
from sync_core.config.registries import KnownRegistry
from sync_core.errors import LeftOut, NameRejected
from sync_core.jobs.check_findings import Finding, fail, ok, target_setting, warn
from sync_core.plan.mapping import mapped_name
from sync_core.plan.selection import repository_wanted
from sync_core.registry.names import MAX_REPOSITORY_LENGTH, is_repository

LISTED = 5  # names shown in a finding before "and N more"
MAX_NAMESPACES = 5  # target namespaces whose rights are asked for (one token request each)


@dataclass
class Names:
    """The names the mapping rules give the selected repositories at one target."""

    mapped: dict[str, str] = field(default_factory=dict)  # source repository -> a name the target can hold
    left_out: int = 0  # a rule with template null
    too_deep: list[str] = field(default_factory=list)  # "name (from source)"
    one_level: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    collisions: list[str] = field(default_factory=list)

    @property
    def deepest(self) -> int:
        return max((n.count("/") + 1 for n in self.mapped.values()), default=0)


def map_names(
    config: SyncConfig, target: TargetConfig, repositories: list[str], known: KnownRegistry | None
) -> Names:
    names = Names()
    owner: dict[str, str] = {}
    for repository in repositories:
        if not repository_wanted(config, target, repository):
            continue
        try:
            name = mapped_name(repository, config.source.namespace, target, config.mappings)
        except LeftOut:
            names.left_out += 1
            continue
        except NameRejected:
            continue  # outside the source namespace: never listed
        shown = f"{name} (from {repository})"
        if not is_repository(name) or len(name) > MAX_REPOSITORY_LENGTH:
            names.invalid.append(shown)
        elif target.max_path_depth is not None and name.count("/") + 1 > target.max_path_depth:
            names.too_deep.append(shown)
        elif known is not None and known.namespace_required and "/" not in name:
            names.one_level.append(shown)
        else:
            if name in owner:
                names.collisions.append(f"{owner[name]} and {repository} both map to {name}")
            owner.setdefault(name, repository)
            names.mapped[repository] = name
    return names


def listed(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def rules_findings(target: TargetConfig, known: KnownRegistry | None) -> list[Finding]:
    """What is known of the registry, and where the configuration goes against it."""
    subject, asked = target.name, f"the rules known for {target.host}"
    if known is None:
        return [ok(subject, "rules", asked, f"no registry-specific rules known for {target.host}")]
    listed = "; ".join(f"{r.text} ({r.source})" for r in known.rules)
    findings = [ok(subject, "rules", asked, f"{known.name}: {listed}")]
    if known.path_depth is not None and (target.max_path_depth or 0) > known.path_depth:
        findings.append(
            fail(
                subject,
                "rules",
                target_setting(target, "max_path_depth"),
                f"max_path_depth is {target.max_path_depth}; {known.name} accepts {known.path_depth} path levels",
                f"{target_setting(target, 'max_path_depth')}: remove it ({known.path_depth} is the default here)",
            )
        )
    if known.refuses_attestations and not target.rules.drop_attestations:
        findings.append(
            warn(
                subject,
                "rules",
                target_setting(target, "drop_attestations"),
                f"{known.name} refuses buildx attestation manifests: an image index with them is skipped at this target",
                f"{target_setting(target, 'drop_attestations')}: true (such indexes are rewritten without them: new digests)",
            )
        )
    if known.private_network_only:
        findings.append(
            warn(
                subject,
                "rules",
                target_setting(target, "registry"),
                f"{target.host} is a private endpoint: it answers only inside the provider's network",
                f"{target_setting(target, 'registry')}: the registry's public endpoint, unless this runs inside that network",
            )
        )
    return findings


def names_findings(target: TargetConfig, known: KnownRegistry | None, names: Names) -> list[Finding]:
    subject = target.name
    asked = "the mapping rules applied to every selected repository"
    left_out = f"; {names.left_out} left out by a null rule" if names.left_out else ""
    limit = target.max_path_depth
    where = (
        f"{known.name}, {known.rules[0].source}"
        if known and known.rules
        else target_setting(target, "max_path_depth")
    )
    accepts = (
        f"accepts at most {limit} path levels ({where})"
        if limit
        else "no path-depth limit known (max_path_depth not set)"
    )
    mapping_fix = (
        f"a mappings rule ({target_setting(target, 'mappings')} or the top-level mappings), e.g. "
        "{match: 'charts/giantswarm/(.+)', replace: 'giantswarmcharts/\\1'}, or exclude them "
        f"({target_setting(target, 'repository_exclude')})"
    )
    findings = []
    if names.too_deep:
        findings.append(
            fail(subject, "path-depth", asked, f"{accepts}; deeper: {listed(names.too_deep)}", mapping_fix)
        )
    else:
        deepest = f"up to {names.deepest} levels" if names.mapped else "no names"
        findings.append(
            ok(
                subject,
                "path-depth",
                asked,
                f"{accepts}; the {len(names.mapped)} names have {deepest}{left_out}",
            )
        )
    if names.one_level:
        findings.append(
            fail(
                subject,
                "names",
                asked,
                f"{known.name if known else target.host} needs <namespace>/<name>; one level: {listed(names.one_level)}",
                f"{target_setting(target, 'namespace')}: the namespace (account or organization) to push into",
            )
        )
    if names.invalid:
        findings.append(
            fail(subject, "names", asked, f"not valid repository names: {listed(names.invalid)}", mapping_fix)
        )
    if names.collisions:
        findings.append(
            fail(
                subject,
                "collisions",
                asked,
                listed(names.collisions),
                f"{target_setting(target, 'mappings')}: send one of each pair elsewhere (they would overwrite each other's tags)",
            )
        )
    else:
        findings.append(ok(subject, "collisions", asked, "no two repositories map onto one name"))
    return findings


def representatives(names: Names, preferred: list[str]) -> tuple[list[str], int]:
    """One name per target namespace (a sampled repository's first), at most :data:`MAX_NAMESPACES`;
    and how many namespaces were left out."""
    by_namespace: dict[str, str] = {}
    for name in [*preferred, *sorted(names.mapped.values())]:
        by_namespace.setdefault(name.rpartition("/")[0], name)
    chosen = list(by_namespace.values())
    return chosen[:MAX_NAMESPACES], max(0, len(chosen) - MAX_NAMESPACES)
