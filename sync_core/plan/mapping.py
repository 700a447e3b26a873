"""Name mapping: where a source repository goes at each target (rules, namespaces, the target's path
depth), and the check that no two repositories land on one (pure functions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sync_core.config.model import MappingRule, SyncConfig, TargetConfig
from sync_core.errors import ConfigError, LeftOut, NameRejected
from sync_core.plan.selection import repository_wanted
from sync_core.registry.names import (
    MAX_REPOSITORY_LENGTH,
    is_repository,
    relative_to_namespace,
)


def mapped_name(
    source_repo: str, source_namespace: str, target: TargetConfig, mappings: tuple[MappingRule, ...] = ()
) -> str:
    """The name the rules give ``source_repo`` at ``target``, before asking whether the target can hold it.

    The source repository without the source namespace is matched (in full) against the target's
    mapping rules, then the global ones (``mappings``); the first match's template is the whole
    target repository. Without a match: the target namespace + the source repository without the
    source namespace. Raises :class:`LeftOut` when a rule's template is ``null``, and
    :class:`NameRejected` for a repository outside the source namespace.
    """
    relative = relative_to_namespace(source_repo, source_namespace)
    if relative is None:
        raise NameRejected(f"{source_repo} is outside the source namespace {source_namespace}")
    for rule in (*target.mappings, *mappings):
        match = rule.match.fullmatch(relative)
        if match is None:
            continue
        if rule.replace is None:
            raise LeftOut(
                f"{source_repo}: a mapping rule ({rule.match.pattern!r}: null) leaves it out of {target.name}"
            )
        return match.expand(rule.replace)
    return f"{target.namespace}/{relative}" if target.namespace else relative


def target_repository(
    source_repo: str, source_namespace: str, target: TargetConfig, mappings: tuple[MappingRule, ...] = ()
) -> str:
    """Where ``source_repo`` goes at ``target``: :func:`mapped_name`, if the target can hold it.

    Raises :class:`NameRejected` (a skip) when the target cannot hold the name (invalid, too
    long, more path levels than it accepts) or a rule leaves the repository out.
    """
    name = mapped_name(source_repo, source_namespace, target, mappings)
    if not is_repository(name) or len(name) > MAX_REPOSITORY_LENGTH:
        raise NameRejected(f"{name!r} is not a valid repository name at {target.host}")
    depth = name.count("/") + 1
    if target.max_path_depth is not None and depth > target.max_path_depth:
        raise NameRejected(
            f"{name} has {depth} path levels; {target.name} ({target.host}) accepts at most {target.max_path_depth}"
        )
    return name


def map_repository(config: SyncConfig, target: TargetConfig, repository: str) -> str:
    """:func:`target_repository` with the configuration's namespace and global mapping rules."""
    return target_repository(repository, config.source.namespace, target, config.mappings)


def check_mappings(
    config: SyncConfig,
    repositories: Iterable[str],
    rejected: Callable[[TargetConfig, str, NameRejected], None] | None = None,
) -> dict[str, dict[str, str]]:
    """``{target: {source repository: target repository}}`` for the repositories each target gets.

    Two source repositories mapped to one target repository would overwrite each other's tags:
    that is a configuration error (every such pair is listed), found before anything is copied.
    ``rejected`` hears of each wanted repository whose name a target cannot hold.
    """
    problems = []
    mapped: dict[str, dict[str, str]] = {}
    for target in config.targets:
        seen: dict[str, str] = {}
        for repository in repositories:
            if not repository_wanted(config, target, repository):
                continue
            try:
                name = map_repository(config, target, repository)
            except NameRejected as exc:
                if rejected is not None:
                    rejected(target, repository, exc)
                continue
            if name in seen:
                problems.append(
                    f"targets[{target.name}].mappings: {seen[name]} and {repository} both map to {name}"
                )
            seen.setdefault(name, repository)
            mapped.setdefault(target.name, {})[repository] = name
    if problems:
        raise ConfigError(problems)
    return mapped
