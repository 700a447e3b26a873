"""The pure selection logic of ``sync_core.plan.planner``, table by table (no registry, no network).

Each row is one case and its expected result: ``select_tags`` (name and age filters,
keep-latest), ``wanted_tags`` (global and target filters together), ``interleave`` (the copy
order) and ``target_repository`` (the name mapping). Ages are days before ``NOW``.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from sync_core.config import parsers
from sync_core.config.model import Filters, SourceConfig, SourceKind, SyncConfig, TargetConfig
from sync_core.config.parsers import Problems
from sync_core.errors import NameRejected
from sync_core.plan.catalog import TagInfo
from sync_core.plan.mapping import target_repository
from sync_core.plan.selection import select_tags, wanted_tags
from sync_core.plan.work import Reason, WorkItem, WorkKind, interleave

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def tags(spec: str = "") -> list[TagInfo]:
    """``tags("a=3 b=?")``: tag ``a`` pushed 3 days before NOW, ``b`` at an unknown time."""
    out = []
    for item in spec.split():
        name, age = item.split("=")
        out.append(TagInfo(name, None, None if age == "?" else NOW - dt.timedelta(days=float(age))))
    return out


def filters(include=None, exclude=None, **kwargs) -> Filters:
    return Filters(
        tag_include=re.compile(include) if include else None,
        tag_exclude=re.compile(exclude) if exclude else None,
        **kwargs,
    )


# -- select_tags -----------------------------------------------------------------------------------

SELECT = [
    # (tags, filters, expected names in order)
    pytest.param(tags("a=1 b=? c=3"), filters(), ["a", "b", "c"], id="no-filters-keep-all-in-order"),
    pytest.param(tags(), filters(include=r".*", keep_latest=3), [], id="no-tags"),
    # include / exclude are full matches
    pytest.param(
        tags("v1.0=1 v1.0-rc1=1 build-1.0=1"),
        filters(include=r"v\d+\.\d+"),
        ["v1.0"],
        id="include-full-match-only",
    ),
    pytest.param(tags("v1.0=1 v1.0-rc1=1"), filters(include=r"v1"), [], id="include-prefix-is-not-a-match"),
    pytest.param(
        tags("v1.0=1 v1.0-rc1=1 rc=1"),
        filters(exclude=r"rc\d*"),
        ["v1.0", "v1.0-rc1"],
        id="exclude-full-match-only",
    ),
    pytest.param(tags("v1.0=1 v1.0-rc1=1"), filters(exclude=r".*-rc\d+"), ["v1.0"], id="exclude-pattern"),
    pytest.param(
        tags("v1.0=1 v1.0-rc1=1 latest=1"),
        filters(include=r"v.*", exclude=r".*rc.*"),
        ["v1.0"],
        id="include-then-exclude",
    ),
    # age: min_age_days <= age <= max_age_days, boundaries included
    pytest.param(
        tags("young=0.5 edge=1 old=2"), filters(min_age_days=1), ["edge", "old"], id="min-age-boundary-kept"
    ),
    pytest.param(tags("young=0.999 edge=1"), filters(min_age_days=1), ["edge"], id="min-age-just-under"),
    pytest.param(
        tags("new=1 edge=30 old=30.001"),
        filters(max_age_days=30),
        ["new", "edge"],
        id="max-age-boundary-kept",
    ),
    pytest.param(
        tags("a=0.5 b=5 c=50"), filters(min_age_days=1, max_age_days=10), ["b"], id="min-and-max-age"
    ),
    pytest.param(
        tags("future=-1 now=0"), filters(min_age_days=0), ["now"], id="future-time-is-younger-than-zero"
    ),
    pytest.param(tags("future=-1"), filters(max_age_days=1), ["future"], id="future-time-passes-max-age"),
    pytest.param(
        tags("known=2 unknown=?"), filters(min_age_days=1), ["known"], id="unknown-time-min-age-dropped"
    ),
    pytest.param(
        tags("known=2 unknown=?"), filters(max_age_days=10), ["known"], id="unknown-time-max-age-dropped"
    ),
    pytest.param(
        tags("known=2 unknown=?"),
        filters(include=r".*"),
        ["known", "unknown"],
        id="unknown-time-kept-without-age-filter",
    ),
    # keep_latest: the N newest, newest first, after the other filters
    pytest.param(tags("a=3 b=1 c=2"), filters(keep_latest=2), ["b", "c"], id="keep-latest-newest-first"),
    pytest.param(
        tags("a=3 b=1 c=2"), filters(keep_latest=5), ["b", "c", "a"], id="keep-latest-more-than-there-are"
    ),
    pytest.param(
        tags("a=3 b=? c=2"), filters(keep_latest=5), ["c", "a"], id="keep-latest-drops-unknown-times"
    ),
    pytest.param(
        tags("a=1 c=1 b=1 old=2"),
        filters(keep_latest=2),
        ["c", "b"],
        id="keep-latest-tie-broken-by-name-descending",
    ),
    pytest.param(
        tags("rc=0.1 v2=0.2 v1=5 v0=9"),
        filters(exclude=r"rc", keep_latest=2),
        ["v2", "v1"],
        id="keep-latest-after-exclude",
    ),
    pytest.param(
        tags("v3=0.1 v2=2 v1=5 v0=9"),
        filters(min_age_days=1, keep_latest=2),
        ["v2", "v1"],
        id="keep-latest-after-min-age",
    ),
    pytest.param(
        tags("1.0.0=400 1.1.0=100 1.2.0=30 1.3.0=10 1.3.1-rc1=5 1.4.0=0.1 latest=2 build-1.2.3=3"),
        filters(
            include=r"v?\d+(\.\d+)+(-rc\d+)?",
            exclude=r".*-rc\d+",
            min_age_days=1,
            max_age_days=365,
            keep_latest=2,
        ),
        ["1.3.0", "1.2.0"],
        id="all-filters-together",
    ),
]


@pytest.mark.parametrize("given, how, expected", SELECT)
def test_select_tags(given, how, expected):
    assert [t.name for t in select_tags(given, how, NOW)] == expected


def semver(text: str) -> Filters:
    problems = Problems()
    parsed = parsers.semver(text, "TAG_SEMVER", problems)
    assert parsed is not None, problems.items
    return Filters(semver=parsed)


SEMVER = [
    # (range, tags, selected)
    pytest.param(">=1.2.0 <2", "1.1.9 1.2.0 1.9.9 2.0.0 latest", ["1.2.0", "1.9.9"], id="and-range"),
    pytest.param(
        ">=1.2.0 <2", "v1.2.0 v1.3 1.4", ["v1.2.0", "v1.3", "1.4"], id="v-prefix-and-short-versions"
    ),
    pytest.param(">=v1.2.0 <v2", "1.5.0 2.1.0", ["1.5.0"], id="v-prefix-in-the-range"),
    pytest.param(">=1.2.0 <2", "1.3.0-rc.1 1.3.0-alpine 1.3.0", ["1.3.0"], id="pre-releases-excluded"),
    pytest.param(
        ">=1.3.0-rc.0 <2",
        "1.3.0-rc.1 1.4.0-rc.1 1.3.0",
        ["1.3.0-rc.1", "1.3.0"],
        id="pre-releases-of-the-version-the-range-names",
    ),
    pytest.param("^1.2.0 || >=3", "1.1.0 1.2.5 2.0.0 3.1.0", ["1.2.5", "3.1.0"], id="or-and-caret"),
    pytest.param(
        ">=1.0.0", "1.0.0.1 1.0.0-x.y+build sha256-abc", [], id="four-parts-and-non-versions-never-match"
    ),
]


@pytest.mark.parametrize("text, names, expected", SEMVER)
def test_semver_selection(text, names, expected):
    given = [TagInfo(n, None, NOW) for n in names.split()]
    assert [t.name for t in select_tags(given, semver(text), NOW)] == expected


DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_cosign_and_referrers_tags_follow_their_image_and_do_not_count_for_keep_latest():
    listed = [
        TagInfo("1.0", DIGEST_A, NOW - dt.timedelta(days=3)),
        TagInfo("2.0", DIGEST_B, NOW - dt.timedelta(days=2)),
        TagInfo(f"sha256-{'a' * 64}.sig", "sha256:" + "c" * 64, NOW),  # signature of 1.0, pushed last
        TagInfo(f"sha256-{'b' * 64}.att", "sha256:" + "d" * 64, NOW),
        TagInfo(f"sha256-{'b' * 64}", "sha256:" + "e" * 64, NOW),  # named like 2.0's referrers tag
        TagInfo(f"sha256-{'f' * 64}", "sha256:" + "e" * 64, NOW),  # names no image of the listing
    ]
    chosen = select_tags(listed, Filters(keep_latest=1, tag_include=re.compile(r"\d+\.\d+")), NOW)
    assert [t.name for t in chosen] == ["2.0", f"sha256-{'b' * 64}.att", f"sha256-{'b' * 64}"]
    # a name is not a kind: a sha256-<hex> tag that names no image of the listing is a tag like any
    # other (the copier decides by its content whether it lists referrers)
    everything = select_tags(listed, Filters(keep_latest=2), NOW)
    assert [t.name for t in everything] == [
        f"sha256-{'f' * 64}",
        "2.0",
        f"sha256-{'b' * 64}.att",
        f"sha256-{'b' * 64}",
    ]
    # without digests (a plain OCI listing) the name filters decide, as for any tag
    bare = [TagInfo(t.name, None, t.updated) for t in listed]
    assert [t.name for t in select_tags(bare, Filters(tag_include=re.compile(r"\d+\.\d+")), NOW)] == [
        "1.0",
        "2.0",
    ]
    assert len(select_tags(bare, Filters(), NOW)) == len(listed)  # referrers tags too: decided by content


# -- wanted_tags ---------------------------------------------------------------------------------


def config(global_filters: Filters, target_filters: Filters) -> tuple[SyncConfig, TargetConfig]:
    target = TargetConfig("target", "https://mirror.example", "mirror", filters=target_filters)
    source = SourceConfig("https://src.example", SourceKind.ACR, "gs")
    return SyncConfig(source, (target,), filters=global_filters), target


def repos(include=None, exclude=None, **kwargs) -> Filters:
    return Filters(
        repository_include=re.compile(include) if include else None,
        repository_exclude=re.compile(exclude) if exclude else None,
        **kwargs,
    )


APP_TAGS = tags("v1=10 v2=5 v3=1 v3-rc=0.5 dev=?")

WANTED = [
    # (repository, global filters, target filters, expected names)
    pytest.param("gs/app", Filters(), Filters(), ["v1", "v2", "v3", "v3-rc", "dev"], id="no-filters"),
    pytest.param(
        "gs/app",
        filters(include=r"v\d+"),
        filters(exclude=r"v1"),
        ["v2", "v3"],
        id="global-include-and-target-exclude",
    ),
    pytest.param(
        "gs/app",
        filters(exclude=r"v2"),
        filters(exclude=r"v3"),
        ["v1", "v3-rc", "dev"],
        id="both-excludes-apply",
    ),
    pytest.param(
        "gs/app",
        filters(keep_latest=3),
        filters(include=r"v\d+"),
        ["v3", "v2"],
        id="global-keep-latest-then-target-include",
    ),
    pytest.param(
        "gs/app",
        filters(include=r"v\d+"),
        filters(keep_latest=1),
        ["v3"],
        id="global-include-then-target-keep-latest",
    ),
    pytest.param(
        "gs/app", filters(min_age_days=2), filters(max_age_days=7), ["v2"], id="global-and-target-ages"
    ),
    pytest.param(
        "gs/app",
        repos(include=r"gs/app"),
        Filters(),
        ["v1", "v2", "v3", "v3-rc", "dev"],
        id="repository-include-matches",
    ),
    pytest.param(
        "gs/app-extra", repos(include=r"gs/app"), Filters(), [], id="repository-include-full-match-only"
    ),
    pytest.param("gs/app", repos(exclude=r"gs/.*"), Filters(), [], id="global-repository-exclude"),
    pytest.param("gs/app", Filters(), repos(exclude=r"gs/app"), [], id="target-repository-exclude"),
    pytest.param(
        "gs/app",
        repos(include=r"gs/.*"),
        repos(include=r"gs/other"),
        [],
        id="target-repository-include-also-applies",
    ),
    pytest.param(
        "gs/app", repos(include=r"gs/.*", exclude=r"gs/app"), Filters(), [], id="exclude-wins-over-include"
    ),
]


@pytest.mark.parametrize("repository, global_filters, target_filters, expected", WANTED)
def test_wanted_tags(repository, global_filters, target_filters, expected):
    sync_config, target = config(global_filters, target_filters)
    assert [t.name for t in wanted_tags(sync_config, target, repository, APP_TAGS, NOW)] == expected


# -- interleave ----------------------------------------------------------------------------------


def work(*items: str) -> list[WorkItem]:
    """``work("t1 r/a 1", ...)``: target, target repository, tag."""
    out = []
    for item in items:
        target, repository, tag = item.split()
        out.append(WorkItem(target, f"gs/{repository}", repository, WorkKind.TAG, tag, None, Reason.MISSING))
    return out


def labels(groups: list[list[WorkItem]]) -> list[list[str]]:
    return [[f"{w.target} {w.target_repository} {w.tag}" for w in group] for group in groups]


INTERLEAVE = [
    # (work in planning order, expected copy order: one group per source image, all its targets)
    pytest.param([], [], id="empty"),
    pytest.param(["t r/a 1"], [["t r/a 1"]], id="one"),
    pytest.param(
        ["t r/a 1", "t r/a 2", "t r/a 3"],
        [["t r/a 1"], ["t r/a 2"], ["t r/a 3"]],
        id="one-repository-order-kept",
    ),
    pytest.param(
        ["t r/a 1", "t r/a 2", "t r/a 3", "t r/b 1", "t r/c 1", "t r/c 2"],
        [["t r/a 1"], ["t r/b 1"], ["t r/c 1"], ["t r/a 2"], ["t r/c 2"], ["t r/a 3"]],
        id="round-robin-over-repositories",
    ),
    pytest.param(
        ["t r/b 9", "t r/a 1", "t r/b 1", "t r/a 0"],
        [["t r/b 9"], ["t r/a 1"], ["t r/b 1"], ["t r/a 0"]],
        id="repositories-in-order-of-first-appearance-tags-in-given-order",
    ),
    pytest.param(
        ["t1 r/a 1", "t1 r/a 2", "t2 r/a 1", "t2 r/a 2"],
        [["t1 r/a 1", "t2 r/a 1"], ["t1 r/a 2", "t2 r/a 2"]],
        id="one-source-image-for-two-targets-is-one-group",
    ),
]


@pytest.mark.parametrize("given, expected", INTERLEAVE)
def test_interleave(given, expected):
    planned = work(*given)
    result = interleave(planned)
    assert labels(result) == expected
    flat = sorted(x for group in labels(result) for x in group)
    assert flat == sorted(labels([planned])[0])  # nothing lost, nothing doubled


def test_interleave_without_round_robin_keeps_the_planned_order():
    planned = work("t r/a 1", "t r/a 2", "t r/b 1", "t2 r/a 1")
    assert labels(interleave(planned, round_robin=False)) == [
        ["t r/a 1", "t2 r/a 1"],
        ["t r/a 2"],
        ["t r/b 1"],
    ]


# -- target_repository ---------------------------------------------------------------------------

LONG = "a" * 248  # "mirror/" + 248 characters: 255, the longest repository name

TARGET_REPOSITORY = [
    # (source repository, source namespace, target namespace, max path depth, expected name or (error, match))
    pytest.param("gs/app", "gs", "mirror", None, "mirror/app", id="namespace-replaced"),
    pytest.param("gs/team/deep/tool", "gs", "mirror", None, "mirror/team/deep/tool", id="nested-kept"),
    pytest.param("gs/app", "gs", "", None, "app", id="no-target-namespace"),
    pytest.param("app", "", "mirror", None, "mirror/app", id="no-source-namespace"),
    pytest.param("team/app", "", "", None, "team/app", id="no-namespaces"),
    pytest.param("gs/a/b/app", "gs/a", "m", None, "m/b/app", id="multi-level-source-namespace"),
    pytest.param(
        "other/app",
        "gs",
        "mirror",
        None,
        (NameRejected, "outside the source namespace gs"),
        id="outside-namespace",
    ),
    pytest.param(
        "gsx/app",
        "gs",
        "mirror",
        None,
        (NameRejected, "outside the source namespace"),
        id="namespace-is-a-path-prefix-not-a-string-prefix",
    ),
    pytest.param(
        "gs", "gs", "mirror", None, (NameRejected, "outside the source namespace"), id="the-namespace-itself"
    ),
    pytest.param("gs/app", "gs", "mirror", 2, "mirror/app", id="depth-at-the-limit"),
    pytest.param(
        "gs/team/app",
        "gs",
        "mirror",
        2,
        (NameRejected, "3 path levels.*at most 2"),
        id="depth-over-the-limit",
    ),
    pytest.param("gs/team/app", "gs", "", 2, "team/app", id="depth-counts-the-target-name"),
    pytest.param("gs/" + LONG, "gs", "mirror", None, "mirror/" + LONG, id="255-characters"),
    pytest.param(
        "gs/" + LONG + "a",
        "gs",
        "mirror",
        None,
        (NameRejected, "not a valid repository name"),
        id="256-characters",
    ),
    pytest.param(
        "gs/App", "gs", "mirror", None, (NameRejected, "not a valid repository name"), id="upper-case"
    ),
    pytest.param(
        "gs/a//b", "gs", "mirror", None, (NameRejected, "not a valid repository name"), id="empty-component"
    ),
    pytest.param(
        "gs/", "gs", "mirror", None, (NameRejected, "not a valid repository name"), id="nothing-after-ns"
    ),
    pytest.param(
        "gs/../x", "gs", "mirror", None, (NameRejected, "not a valid repository name"), id="dot-dot"
    ),
]


@pytest.mark.parametrize("source, source_ns, target_ns, depth, expected", TARGET_REPOSITORY)
def test_target_repository(source, source_ns, target_ns, depth, expected):
    target = TargetConfig("target", "https://mirror.example", target_ns, max_path_depth=depth)
    if isinstance(expected, tuple):
        error, match = expected
        with pytest.raises(error, match=match):
            target_repository(source, source_ns, target)
    else:
        assert target_repository(source, source_ns, target) == expected
