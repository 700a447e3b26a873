"""The request budget settings: defaults per known registry, overrides, bad values, one budget per host."""

from __future__ import annotations

import pytest

from sync_core.config.load import load_config
from sync_core.config.registries import ALIBABA_DEFAULTS, DOCKER_HUB_DEFAULTS, GENERIC_DEFAULTS
from sync_core.errors import ConfigError
from sync_core.jobs.syncer import Syncer
from sync_core.registry.budget import Limits

BASE = {"SOURCE_REGISTRY": "gsoci.azurecr.io", "TARGET_REGISTRY": "docker.io"}


@pytest.mark.parametrize(
    ("host", "defaults"),
    [
        ("docker.io", DOCKER_HUB_DEFAULTS),
        ("index.docker.io", DOCKER_HUB_DEFAULTS),
        ("registry-1.docker.io", DOCKER_HUB_DEFAULTS),
        ("registry.cn-shanghai.aliyuncs.com", ALIBABA_DEFAULTS),
        ("registry-vpc.cn-hangzhou.aliyuncs.com", ALIBABA_DEFAULTS),
        ("registry-intl.ap-southeast-1.aliyuncs.com", ALIBABA_DEFAULTS),
        ("registry-intl-vpc.ap-southeast-1.aliyuncs.com", ALIBABA_DEFAULTS),
        ("crpi-abc123xyz.cn-hangzhou.personal.cr.aliyuncs.com", ALIBABA_DEFAULTS),
        ("crpi-abc123xyz-vpc.cn-hangzhou.personal.cr.aliyuncs.com", ALIBABA_DEFAULTS),
        ("giantswarm-registry.cn-shanghai.cr.aliyuncs.com", ALIBABA_DEFAULTS),
        ("giantswarm-registry-vpc.cn-shanghai.cr.aliyuncs.com", ALIBABA_DEFAULTS),
        ("quay.io", GENERIC_DEFAULTS),
        ("http://127.0.0.1:5000", GENERIC_DEFAULTS),
        ("evil.aliyuncs.com.example.org", GENERIC_DEFAULTS),
    ],
)
def test_each_known_registry_has_its_default_budget(host, defaults):
    config = load_config(dict(BASE, TARGET_REGISTRY=host))
    (target,) = config.targets
    assert (target.requests_per_second, target.concurrent_requests) == (
        defaults.requests_per_second,
        defaults.concurrent_requests,
    )
    assert config.source.requests_per_second is None and config.source.concurrent_requests is None


def test_the_known_defaults_are_a_budget_and_the_rest_has_a_concurrency_cap():
    for defaults in (DOCKER_HUB_DEFAULTS, ALIBABA_DEFAULTS):
        assert defaults.requests_per_second and defaults.fleet_requests_per_second
        assert defaults.requests_per_second < defaults.fleet_requests_per_second
        assert defaults.concurrent_requests
    assert GENERIC_DEFAULTS.requests_per_second is None and GENERIC_DEFAULTS.concurrent_requests


def test_the_environment_sets_the_target_and_the_source_budget():
    config = load_config(
        dict(
            BASE,
            TARGET_REQUESTS_PER_SECOND="2.5",
            TARGET_CONCURRENT_REQUESTS="3",
            SOURCE_REQUESTS_PER_SECOND="40",
            SOURCE_CONCURRENT_REQUESTS="16",
        )
    )
    target = config.targets[0]
    assert (target.requests_per_second, target.concurrent_requests) == (2.5, 3)
    assert (config.source.requests_per_second, config.source.concurrent_requests) == (40.0, 16)


def test_each_target_of_a_file_has_its_own_budget(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        "source_registry: gsoci.azurecr.io\n"
        "source_requests_per_second: 0.5\n"
        "targets:\n"
        "  - {name: hub, registry: docker.io, namespace: a, requests_per_second: 4}\n"
        "  - {name: hub2, registry: docker.io, namespace: b, concurrent_requests: 2}\n"
        "  - {name: quay, registry: quay.io, requests_per_second: 20, concurrent_requests: 64}\n"
    )
    config = load_config({}, str(path))
    budgets = {t.name: (t.requests_per_second, t.concurrent_requests) for t in config.targets}
    assert budgets == {
        "hub": (4.0, DOCKER_HUB_DEFAULTS.concurrent_requests),
        "hub2": (DOCKER_HUB_DEFAULTS.requests_per_second, 2),
        "quay": (20.0, 64),
    }
    assert config.source.requests_per_second == 0.5


def test_bad_budget_values_in_a_file_name_the_target_and_key(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        "source_registry: gsoci.azurecr.io\n"
        "targets:\n"
        "  - {name: hub, registry: docker.io, requests_per_second: true, concurrent_requests: [4]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config({}, str(path))
    problems = info.value.problems
    assert any(p.startswith("targets[hub].requests_per_second:") for p in problems), problems
    assert any(p.startswith("targets[hub].concurrent_requests:") for p in problems), problems


def test_targets_on_one_host_share_one_budget_under_the_strictest_limits(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        "source_registry: http://127.0.0.1:1\n"
        "targets:\n"
        "  - {name: a, registry: 'http://127.0.0.1:2', requests_per_second: 4, concurrent_requests: 9}\n"
        "  - {name: b, registry: 'http://127.0.0.1:2', namespace: x, requests_per_second: 6, concurrent_requests: 3}\n"
        "  - {name: c, registry: 'http://127.0.0.1:3'}\n"
    )
    with Syncer(load_config({}, str(path))) as syncer:
        a, b, c = (syncer.target_clients[n].transport.budget for n in "abc")
        assert a is b and a is not c
        assert a is not None and a.limits == Limits(4.0, 3)
        assert c is not None and c.limits == Limits(None, GENERIC_DEFAULTS.concurrent_requests)
        source = syncer.source_client.transport.budget
        assert source is not None and source.limits == Limits(), "the source: no limits unless configured"
