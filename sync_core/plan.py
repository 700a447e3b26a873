"""Deciding what to copy: filters, name mapping, and the diff between source and target."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .catalog import TagInfo
from .config import Filters, SyncConfig, TargetConfig
from .names import MAX_REPOSITORY_LENGTH, is_repository


def repository_selected(repository: str, filters: Filters) -> bool:
    if filters.repository_include and not filters.repository_include.fullmatch(repository):
        return False
    return not (filters.repository_exclude and filters.repository_exclude.fullmatch(repository))


def select_tags(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
    """The tags that pass ``filters``; keep-latest applies after the name and age filters."""
    chosen = []
    for tag in tags:
        if filters.tag_include and not filters.tag_include.fullmatch(tag.name):
            continue
        if filters.tag_exclude and filters.tag_exclude.fullmatch(tag.name):
            continue
        if filters.min_age_days is not None or filters.max_age_days is not None:
            if tag.updated is None:
                continue  # age unknown: never guess
            age_days = (now - tag.updated).total_seconds() / 86400
            if filters.min_age_days is not None and age_days < filters.min_age_days:
                continue
            if filters.max_age_days is not None and age_days > filters.max_age_days:
                continue
        chosen.append(tag)
    if filters.keep_latest is not None:
        dated = [t for t in chosen if t.updated is not None]
        dated.sort(key=lambda t: (t.updated, t.name), reverse=True)
        chosen = dated[: filters.keep_latest]
    return chosen


class NameRejected(ValueError):
    """The target cannot hold this repository name (reason in the message)."""


def target_repository(source_repo: str, source_namespace: str, target: TargetConfig) -> str:
    """Target namespace + source repository without the source namespace."""
    relative = source_repo
    if source_namespace:
        prefix = source_namespace + "/"
        if not source_repo.startswith(prefix):
            raise NameRejected(f"{source_repo} is outside the source namespace {source_namespace}")
        relative = source_repo[len(prefix) :]
    name = f"{target.namespace}/{relative}" if target.namespace else relative
    if not is_repository(name) or len(name) > MAX_REPOSITORY_LENGTH:
        raise NameRejected(f"{name!r} is not a valid repository name at {target.host}")
    depth = name.count("/") + 1
    if target.max_path_depth is not None and depth > target.max_path_depth:
        raise NameRejected(
            f"{name} has {depth} path levels; {target.name} ({target.host}) accepts at most {target.max_path_depth}"
        )
    return name


def wanted_tags(
    config: SyncConfig, target: TargetConfig, repository: str, tags: list[TagInfo], now: dt.datetime
) -> list[TagInfo]:
    """Tags of ``repository`` that ``target`` should have (global and target filters both apply)."""
    if not (
        repository_selected(repository, config.filters) and repository_selected(repository, target.filters)
    ):
        return []
    return select_tags(select_tags(tags, config.filters, now), target.filters, now)


@dataclass(frozen=True)
class TagWork:
    """One tag to copy to one target."""

    target: str
    source_repository: str
    target_repository: str
    tag: str
    digest: str | None
    reason: str  # "missing" or "digest differs"
