"""``check``'s findings from the configuration alone and from headers (no registry needed).

The rules known of Docker Hub and of every Alibaba host form (sync_core.config.registries), the
names the mapping rules give (sync_core.jobs.check_names), the rate-limit header forms
(sync_core.jobs.check_rate) and the clock comparison: each shown both ways.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from requests.structures import CaseInsensitiveDict

from sync_core.config.load import load_config
from sync_core.config.registries import ALIBABA_ATTESTATIONS_REPORT, DOCKER_PUSH_DOC, known_registry
from sync_core.jobs.check_findings import Status
from sync_core.jobs.check_names import map_names, names_findings, rules_findings
from sync_core.jobs.check_rate import RateLimit, parse_rate_limit, rate_limit_finding
from sync_core.jobs.check_source import clock_finding, sample_of
from sync_core.jobs.check_targets import push_fix

BASE = {"SOURCE_REGISTRY": "gsoci.azurecr.io", "SOURCE_NAMESPACE": "giantswarm"}


def target(registry: str, tmp_path, **keys):
    path = tmp_path / "sync.json"
    path.write_text(json.dumps({"targets": [{"name": "t", "registry": registry, **keys}]}))
    config = load_config(BASE, str(path))
    return config, config.targets[0]


# -- the rules known of a registry ---------------------------------------------------------------


def test_docker_hub_rules_come_with_their_documentation(tmp_path):
    _, hub = target("docker.io", tmp_path, namespace="giantswarm")
    (rules,) = rules_findings(hub, known_registry(hub.registry))
    assert rules.status is Status.OK and rules.answered.startswith(
        "Docker Hub: repositories are <namespace>/<name>"
    )
    assert DOCKER_PUSH_DOC in rules.answered and "docs.docker.com/security/access-tokens" in rules.answered
    _, deep = target("docker.io", tmp_path, namespace="giantswarm", max_path_depth=3)
    findings = rules_findings(deep, known_registry(deep.registry))
    assert [f.status for f in findings] == [Status.OK, Status.FAIL]
    assert findings[1].answered == "max_path_depth is 3; Docker Hub accepts 2 path levels"
    assert findings[1].fix == "targets[t].max_path_depth: remove it (2 is the default here)"


@pytest.mark.parametrize(
    ("host", "edition", "private"),
    [
        ("registry.cn-shanghai.aliyuncs.com", "Alibaba Cloud ACR Personal Edition", False),
        ("registry-intl.ap-southeast-1.aliyuncs.com", "Alibaba Cloud ACR Personal Edition", False),
        (
            "registry-vpc.cn-hangzhou.aliyuncs.com",
            "Alibaba Cloud ACR Personal Edition (VPC/internal endpoint)",
            True,
        ),
        (
            "registry-intl-vpc.ap-southeast-1.aliyuncs.com",
            "Alibaba Cloud ACR Personal Edition (VPC/internal endpoint)",
            True,
        ),
        (
            "crpi-abc123.cn-hangzhou.personal.cr.aliyuncs.com",
            "Alibaba Cloud ACR Personal Edition instance endpoint (crpi-)",
            False,
        ),
        (
            "crpi-abc123-vpc.cn-hangzhou.personal.cr.aliyuncs.com",
            "Alibaba Cloud ACR Personal Edition instance endpoint (crpi-) (VPC endpoint)",
            True,
        ),
        ("gs-registry.cn-shanghai.cr.aliyuncs.com", "Alibaba Cloud ACR Enterprise Edition", False),
        (
            "gs-registry-vpc.cn-shanghai.cr.aliyuncs.com",
            "Alibaba Cloud ACR Enterprise Edition (VPC endpoint)",
            True,
        ),
    ],
)
def test_every_alibaba_host_form_and_edition(tmp_path, host, edition, private):
    _, ali = target(host, tmp_path, namespace="giantswarm")
    known = known_registry(ali.registry)
    assert known is not None and known.name == edition and known.path_depth == 2
    findings = rules_findings(ali, known)
    assert findings[0].answered.startswith(edition + ": ") and "alibabacloud.com/help" in findings[0].answered
    warned = {f.asked: f for f in findings[1:]}
    assert ("targets[t].registry" in warned) is private
    if private:
        assert "answers only inside the provider's network" in warned["targets[t].registry"].answered
    personal = "Personal" in edition
    assert ("targets[t].drop_attestations" in warned) is personal, "Personal Edition refuses attestations"
    if personal:
        assert ALIBABA_ATTESTATIONS_REPORT in findings[0].answered
        _, dropping = target(host, tmp_path, namespace="giantswarm", drop_attestations=True)
        assert "targets[t].drop_attestations" not in {f.asked for f in rules_findings(dropping, known)}


def test_an_unknown_registry_has_no_rules(tmp_path):
    _, quay = target("quay.io", tmp_path)
    (rules,) = rules_findings(quay, known_registry(quay.registry))
    assert (rules.status, rules.answered) == (Status.OK, "no registry-specific rules known for quay.io")


# -- names --------------------------------------------------------------------------------------


def test_docker_hub_needs_a_namespace_and_two_levels(tmp_path):
    repositories = ["giantswarm/app", "giantswarm/charts/giantswarm/hello"]
    config, hub = target("docker.io", tmp_path)
    known = known_registry(hub.registry)
    names = map_names(config, hub, repositories, known)
    findings = {(f.check, f.status): f for f in names_findings(hub, known, names)}
    one_level = findings[("names", Status.FAIL)]
    assert one_level.answered == "Docker Hub needs <namespace>/<name>; one level: app (from giantswarm/app)"
    assert one_level.fix.startswith("targets[t].namespace")
    deep = findings[("path-depth", Status.FAIL)]
    assert deep.answered.startswith(f"accepts at most 2 path levels (Docker Hub, {DOCKER_PUSH_DOC}); deeper:")
    assert "charts/giantswarm/hello (from giantswarm/charts/giantswarm/hello)" in deep.answered

    config, fixed = target(
        "docker.io",
        tmp_path,
        namespace="giantswarm",
        mappings=[{"match": "charts/giantswarm/(.+)", "replace": "giantswarmcharts/\\1"}],
    )
    names = map_names(config, fixed, repositories[:2], known)
    assert names.mapped == {
        "giantswarm/app": "giantswarm/app",
        "giantswarm/charts/giantswarm/hello": "giantswarmcharts/hello",
    }
    assert all(f.status is Status.OK for f in names_findings(fixed, known, names))


def test_invalid_names_are_named(tmp_path):
    config, plain = target(
        "registry.example.org", tmp_path, mappings=[{"match": "(.+)", "replace": "UPPER/\\1"}]
    )
    names = map_names(config, plain, ["giantswarm/app"], None)
    (invalid,) = [f for f in names_findings(plain, None, names) if f.check == "names"]
    assert (
        invalid.status is Status.FAIL
        and invalid.answered == "not valid repository names: UPPER/app (from giantswarm/app)"
    )


def test_the_push_fix_names_what_each_registry_needs(tmp_path):
    _, hub = target("docker.io", tmp_path, namespace="giantswarm")
    fix = push_fix(hub, known_registry(hub.registry), "giantswarm/app", frozenset({"pull"}))
    assert "the namespace 'giantswarm' exists" in fix and "'Read & Write'" in fix
    _, ali = target("registry.cn-shanghai.aliyuncs.com", tmp_path, namespace="giantswarm")
    fix = push_fix(ali, known_registry(ali.registry), "giantswarm/app", frozenset())
    assert "'Automatically Create Repository' on" in fix
    assert "give pull too" in push_fix(
        ali, known_registry(ali.registry), "giantswarm/app", frozenset({"push"})
    )


def test_the_sample_is_spread_over_the_repositories():
    names = [f"r{i:02d}" for i in range(10)]
    assert sample_of(names, 3) == ["r00", "r04", "r09"]
    assert (
        sample_of(names[:2], 3) == ["r00", "r01"]
        and sample_of(names, 0) == []
        and sample_of(names, 1) == ["r00"]
    )


# -- rate-limit headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}, RateLimit(100, 76, 21600)),
        (
            {"RateLimit-Limit": "10, 10;w=1, 50;w=60", "RateLimit-Remaining": "9", "RateLimit-Reset": "1"},
            RateLimit(10, 9, None, 1),
        ),
        ({"RateLimit-Limit": "50", "RateLimit-Policy": "50;w=60"}, RateLimit(50, None, 60)),
        (
            {"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"default";r=40;t=30'},
            RateLimit(100, 40, 60, 30),
        ),
        ({"RateLimit-Limit": "many"}, None),
        ({"Content-Type": "application/json"}, None),
    ],
)
def test_rate_limit_header_forms(headers, expected):
    assert parse_rate_limit(CaseInsensitiveDict(headers)) == expected


def test_a_pull_limit_is_not_compared_with_the_request_budget():
    hub = CaseInsensitiveDict({"ratelimit-limit": "200;w=21600", "ratelimit-remaining": "150;w=21600"})
    finding = rate_limit_finding("hub", "HEAD", [hub], 20.0, pulls_only=True, source="doc")
    assert finding.status is Status.OK and "counts manifest GETs only" in finding.answered
    over = rate_limit_finding("any", "HEAD", [hub], 20.0)
    assert over.status is Status.WARN and over.fix.startswith(
        "requests_per_second of this target: at most 0.00926"
    )


# -- the clock ----------------------------------------------------------------------------------


def test_the_clock_without_or_with_a_bad_date():
    now = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert clock_finding("source", None, now, "GET").answered == "no Date header: the clock was not compared"
    assert clock_finding("source", "yesterday", now, "GET").status is Status.OK
    behind = clock_finding("source", "Mon, 01 Jun 2026 12:10:00 GMT", now, "GET")
    assert behind.status is Status.FAIL and behind.answered.endswith("this machine is 600 s behind")
