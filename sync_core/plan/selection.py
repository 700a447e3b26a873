"""Selection: which repositories and tags each target should have (the filters; pure functions)."""

from __future__ import annotations

import datetime as dt

from sync_core.config.model import Filters, SyncConfig, TargetConfig
from sync_core.plan.catalog import TagInfo
from sync_core.registry.names import attached_subject, fallback_tag_subject

# -- selection ----------------------------------------------------------------------------------


def repository_selected(repository: str, filters: Filters) -> bool:
    if filters.repository_include and not filters.repository_include.fullmatch(repository):
        return False
    return not (filters.repository_exclude and filters.repository_exclude.fullmatch(repository))


def repository_wanted(config: SyncConfig, target: TargetConfig, repository: str) -> bool:
    """Both the global and the target's repository filters let ``repository`` through."""
    return repository_selected(repository, config.filters) and repository_selected(repository, target.filters)


def select_tags(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
    """The tags that pass ``filters``; keep-latest applies after the name, age and version filters.

    Cosign tags (``sha256-<hex>.sig``, ``.att``, ``.sbom``) are not releases: where the listing
    has digests (ACR) they follow the image they belong to, whatever the filters; elsewhere the
    name filters decide as for any tag. A tag named like a referrers tag (``sha256-<hex>``, the
    referrers tag schema) follows the image ``<hex>`` names the same way when the listing has that
    image under a tag; else the filters decide. A name is not a kind: whether such a tag lists
    referrers is decided by its content when it is copied (one that only looks like a referrers
    tag is copied as the tag it is).
    """
    digests = {t.digest for t in tags if t.digest}
    attached = [
        t for t in tags if digests and (attached_subject(t.name) or fallback_tag_subject(t.name) in digests)
    ]
    chosen = _filtered([t for t in tags if t not in attached], filters, now)
    if attached:
        images = {t.digest for t in chosen if t.digest}
        chosen.extend(
            t for t in attached if (attached_subject(t.name) or fallback_tag_subject(t.name)) in images
        )
    return chosen


def _filtered(tags: list[TagInfo], filters: Filters, now: dt.datetime) -> list[TagInfo]:
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
        if filters.semver is not None and not filters.semver.matches(tag.name):
            continue
        chosen.append(tag)
    if filters.keep_latest is not None:
        dated = [t for t in chosen if t.updated is not None]
        dated.sort(key=lambda t: (t.updated, t.name), reverse=True)
        chosen = dated[: filters.keep_latest]
    return chosen


def wanted_tags(
    config: SyncConfig, target: TargetConfig, repository: str, tags: list[TagInfo], now: dt.datetime
) -> list[TagInfo]:
    """Tags of ``repository`` that ``target`` should have (global and target filters both apply)."""
    if not repository_wanted(config, target, repository):
        return []
    return select_tags(select_tags(tags, config.filters, now), target.filters, now)
