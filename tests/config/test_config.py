"""Configuration: environment and file, every problem listed by setting name."""

from __future__ import annotations

import json

import pytest

from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.config.registries import DOCKER_HUB
from sync_core.config.settings import APP_SETTINGS, LOCAL_ONLY_SETTINGS, SETTINGS, settings_markdown
from sync_core.errors import ConfigError
from tests.harness.paths import ROOT

BASE = {
    "SOURCE_REGISTRY": "gsoci.azurecr.io",
    "TARGET_REGISTRY": "docker.io",
    "TARGET_NAMESPACE": "giantswarm",
}


def test_minimal_environment():
    config = load_config(BASE)
    assert config.source.registry == "https://gsoci.azurecr.io"
    assert config.source.kind == "acr"  # default for *.azurecr.io
    (target,) = config.targets
    assert target.registry == DOCKER_HUB
    assert target.max_path_depth == 2  # Docker Hub holds namespace/repo only
    assert config.compare == "recent" and config.concurrency == 8  # moved tags followed by default


def test_url_registry_and_oci_kind():
    config = load_config(
        {"SOURCE_REGISTRY": "http://127.0.0.1:5000", "TARGET_REGISTRY": "registry.cn-shanghai.aliyuncs.com"}
    )
    assert config.source.registry == "http://127.0.0.1:5000"
    assert config.source.kind == "oci"
    assert config.targets[0].max_path_depth == 2


def test_every_problem_is_listed_by_setting_name():
    env = {
        "SOURCE_REGISTRY": "ftp://x",
        "SOURCE_KIND": "gcr",
        "TAG_INCLUDE": "([",
        "TAG_MIN_AGE_DAYS": "soon",
        "TAG_KEEP_LATEST": "0",
        "SYNC_COMPARE": "size",
        "SYNC_CONCURRENCY": "-1",
        "TARGET_USERNAME": "bob",
        "SOURCE_REPOSITORIES": "Bad Name",
    }
    with pytest.raises(ConfigError) as info:
        load_config(env)
    text = str(info.value)
    for setting in (
        "SOURCE_REGISTRY",
        "SOURCE_KIND",
        "TAG_INCLUDE",
        "TAG_MIN_AGE_DAYS",
        "TAG_KEEP_LATEST",
        "SYNC_COMPARE",
        "SYNC_CONCURRENCY",
        "TARGET_REGISTRY",
        "SOURCE_REPOSITORIES",
    ):
        assert any(p.startswith(setting) for p in info.value.problems), (setting, text)


def test_age_filters_refused_for_oci_source():
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "SOURCE_REGISTRY": "http://127.0.0.1:5000",
                "TARGET_REGISTRY": "x.example",
                "TAG_MAX_AGE_DAYS": "3",
            }
        )
    assert "ACR" in str(info.value) and "TAG_MIN_AGE_DAYS" in str(info.value)


def test_key_vault_secret_names_need_vault_url():
    env = dict(BASE, SOURCE_USERNAME_SECRET="u", SOURCE_PASSWORD_SECRET="p")
    with pytest.raises(ConfigError, match="KEY_VAULT_URL"):
        load_config(env)
    config = load_config(dict(env, KEY_VAULT_URL="https://v.vault.azure.net"))
    assert config.source.credentials.from_key_vault


def test_yaml_file_with_several_targets(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        """
source_registry: gsoci.azurecr.io
source_namespace: giantswarm
tag_exclude: ".*-dev"
sync_compare: digest
key_vault_url: https://v.vault.azure.net
targets:
  - name: dockerhub
    registry: docker.io
    namespace: giantswarm
    username_secret: hub-user
    password_secret: hub-pass
    skip_artifact_types: [application/vnd.cncf.helm.config.v1+json]
  - name: aliyun
    registry: giantswarm-registry.cn-shanghai.cr.aliyuncs.com
    namespace: giantswarm
    max_path_depth: 3
    tag_include: "v?[0-9.]+"
"""
    )
    config = load_config({}, str(path))
    assert [t.name for t in config.targets] == ["dockerhub", "aliyun"]
    hub, ali = config.targets
    assert hub.max_path_depth == 2 and "application/vnd.cncf.helm.config.v1+json" in hub.rules.skip_types
    assert ali.max_path_depth == 3 and ali.filters.tag_include.pattern == "v?[0-9.]+"
    assert config.compare == "digest" and config.source.namespace == "giantswarm"


def test_file_problems_name_the_target_field_and_refuse_passwords(tmp_path):
    path = tmp_path / "sync.json"
    path.write_text(
        json.dumps(
            {
                "source_registry": "gsoci.azurecr.io",
                "targets": [
                    {
                        "name": "hub",
                        "registry": "docker.io",
                        "password": "hunter2",
                        "username": "x",
                        "colour": 1,
                    },
                    {"registry": "", "tag_include": "("},
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config({}, str(path))
    problems = info.value.problems
    assert any(p.startswith("targets[hub].password") for p in problems)
    assert any(p.startswith("targets[hub].colour") for p in problems)
    assert any(p.startswith("targets[target2].registry") for p in problems)
    assert any(p.startswith("targets[target2].tag_include") for p in problems)
    assert "hunter2" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="SYNC_CONFIG: cannot read"):
        load_config({"SYNC_CONFIG": str(tmp_path / "missing.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [unclosed")
    with pytest.raises(ConfigError, match="SYNC_CONFIG: .*not valid YAML"):
        load_config({"SYNC_CONFIG": str(bad)})


# -- the declaration is the one source of the settings ----------------------------------------------


def test_readme_tables_are_generated_from_the_declaration():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- settings:start -->\n", "\n<!-- settings:end -->"
    assert start in readme and end in readme
    documented = readme.split(start, 1)[1].split(end, 1)[0]
    assert documented == settings_markdown(), "README tables are stale: run python scripts/readme-settings.py"
    for setting in SETTINGS:
        assert f"`{setting.env_name}`" in documented or f"`{setting.key}`" in documented, setting.key


def test_cli_help_names_every_environment_setting():
    text = cli._parser().format_help()
    for name in (*APP_SETTINGS, *LOCAL_ONLY_SETTINGS):
        assert name in text, name


@pytest.mark.parametrize(
    "setting, value, problem",
    [
        ("SYNC_SCHEDULE", "*/5 * * * *", "six-field CRON"),
        ("SYNC_QUEUE", "Sync_Work", "not a valid Storage queue name"),
        ("SYNC_CONCURRENCY", "65", "at most 64"),
        ("SYNC_TIME_BUDGET_SECONDS", "5", "at least 10"),
        ("KEY_VAULT_URL", "http://v.vault.azure.net", "https://"),
        ("SOURCE_NAMESPACE", "Not/Valid", "not a valid repository path"),
        ("TAG_MAX_AGE_DAYS", "inf", "at least 0"),
        ("TARGET_REQUESTS_PER_SECOND", "0", "must be greater than 0"),
        ("TARGET_REQUESTS_PER_SECOND", "-3", "must be greater than 0"),
        ("TARGET_REQUESTS_PER_SECOND", "fast", "must be a number, got 'fast'"),
        ("TARGET_REQUESTS_PER_SECOND", "nan", "must be greater than 0"),
        ("TARGET_CONCURRENT_REQUESTS", "0", "at least 1"),
        ("TARGET_CONCURRENT_REQUESTS", "2.5", "whole number"),
        ("SOURCE_REQUESTS_PER_SECOND", "0", "must be greater than 0"),
        ("SOURCE_CONCURRENT_REQUESTS", "none", "whole number"),
    ],
)
def test_each_parser_names_its_setting(setting, value, problem):
    with pytest.raises(ConfigError) as info:
        load_config(dict(BASE, **{setting: value}))
    assert any(p.startswith(setting) and problem in p for p in info.value.problems), info.value.problems


def test_unknown_and_misplaced_file_keys_are_reported(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        "source_registry: gsoci.azurecr.io\ntag_inclde: x\nsync_config: other.yaml\n"
        "target_registry: docker.io\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config({}, str(path))
    assert "SYNC_CONFIG tag_inclde: unknown setting" in info.value.problems
    assert any(p.startswith("SYNC_CONFIG sync_config") for p in info.value.problems)
    assert not any("target_registry" in p for p in info.value.problems)  # one target, no list


def test_app_settings_are_every_declared_environment_setting_but_local_credentials():
    assert "SYNC_SCHEDULE" in APP_SETTINGS and "TARGET_SKIP_ARTIFACT_TYPES" in APP_SETTINGS
    assert set(LOCAL_ONLY_SETTINGS) == {
        "SOURCE_USERNAME",
        "SOURCE_PASSWORD",
        "TARGET_USERNAME",
        "TARGET_PASSWORD",
    }
    assert not set(APP_SETTINGS) & set(LOCAL_ONLY_SETTINGS)
    assert len(set(APP_SETTINGS)) == len(APP_SETTINGS)


@pytest.mark.parametrize(
    "host, depth",
    [
        ("docker.io", 2),
        ("registry.cn-shanghai.aliyuncs.com", 2),
        ("registry-vpc.cn-hangzhou.aliyuncs.com", 2),
        ("registry-intl.ap-southeast-1.aliyuncs.com", 2),
        ("registry-intl-vpc.ap-southeast-1.aliyuncs.com", 2),
        ("crpi-abc123xyz.cn-hangzhou.personal.cr.aliyuncs.com", 2),
        ("crpi-abc123xyz-vpc.cn-hangzhou.personal.cr.aliyuncs.com", 2),
        ("giantswarm-registry.cn-shanghai.cr.aliyuncs.com", 2),
        ("giantswarm-registry-vpc.cn-shanghai.cr.aliyuncs.com", 2),
        ("quay.io", None),
        ("evil.aliyuncs.com.example.org", None),
    ],
)
def test_two_level_registries_are_recognised_in_every_host_form(host, depth):
    assert load_config(dict(BASE, TARGET_REGISTRY=host)).targets[0].max_path_depth == depth


def test_target_rules_from_the_file(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text(
        r"""
source_registry: gsoci.azurecr.io
tag_semver: ">=1.2.0 <2"
mappings:
  - {match: 'charts/giantswarm/(.+)', replace: 'giantswarmcharts/\1'}
targets:
  - name: ali
    registry: registry.cn-shanghai.aliyuncs.com
    platforms: [linux/amd64, linux/arm64]
    drop_attestations: true
    mappings:
      - {match: "charts/.*", replace: null}
"""
    )
    config = load_config({}, str(path))
    (ali,) = config.targets
    assert (
        ali.rules.platforms == {"linux/amd64", "linux/arm64"}
        and ali.rules.drop_attestations
        and ali.rules.rewrites
    )
    assert [(r.match.pattern, r.replace) for r in ali.mappings] == [("charts/.*", None)]
    assert [(r.match.pattern, r.replace) for r in config.mappings] == [
        ("charts/giantswarm/(.+)", r"giantswarmcharts/\1")
    ]
    assert config.filters.semver is not None and config.filters.semver.matches("v1.4.0")


def test_bad_target_rules_name_the_field(tmp_path):
    path = tmp_path / "sync.json"
    path.write_text(
        json.dumps(
            {
                "source_registry": "gsoci.azurecr.io",
                "tag_semver": ">=banana",
                "mappings": [
                    {"match": "(", "replace": "x"},
                    {"match": "a/(.+)", "replace": r"b/\2"},
                    {"match": "x"},
                ],
                "targets": [
                    {
                        "name": "t",
                        "registry": "docker.io",
                        "platforms": ["amd64"],
                        "drop_attestations": "maybe",
                        "mappings": "charts",
                    }
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config({}, str(path))
    problems = "\n".join(info.value.problems)
    for field in (
        "TAG_SEMVER",
        "mappings[0].match",
        "mappings[1].replace",
        "mappings[2]",
        "targets[t].platforms",
        "targets[t].drop_attestations",
        "targets[t].mappings",
    ):
        assert field in problems, (field, problems)
