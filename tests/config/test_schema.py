"""The configuration file's JSON Schema (config.schema.json) against the declaration and the loader.

The shipped file is the generated one; it is a valid draft-07 schema; the documentation's YAML
configuration examples pass both the schema and the loader; what the loader refuses for a type, a
choice, a range or a key the schema refuses too, at the same setting; the forms the loader takes
(lists or comma-separated strings, the one-target keys) the schema takes too; and a key is in the
schema exactly when the loader reads it from a file.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from sync_core.config.load import load_config
from sync_core.config.parsers import Problems
from sync_core.config.schema import SCHEMA_FILE, file_default, schema_text
from sync_core.config.settings import GLOBAL_BY_KEY, SETTINGS, TARGET_BY_KEY, TARGET_SETTINGS, Scope
from sync_core.errors import ConfigError
from tests.harness.paths import ROOT

SCHEMA = json.loads((ROOT / SCHEMA_FILE).read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
TARGET_SCHEMA = SCHEMA["properties"]["targets"]["items"]

BASE = {"source_registry": "gsoci.azurecr.io", "targets": [{"name": "hub", "registry": "docker.io"}]}


def load(tmp_path, config: dict, env: dict | None = None):
    """The loader's verdict on ``config`` written as a JSON file: the configuration or the ConfigError."""
    path = tmp_path / "sync.json"
    path.write_text(json.dumps(config))
    try:
        return load_config(env or {}, str(path))
    except ConfigError as exc:
        return exc


def schema_errors(config: dict) -> list[str]:
    """Each schema error as ``path: message`` (``targets.0.registry: ...``)."""
    return [
        ".".join(str(p) for p in e.absolute_path) + f": {e.message}" for e in VALIDATOR.iter_errors(config)
    ]


def with_target(**fields) -> dict:
    """BASE with these fields in its target (None: the field left out)."""
    target = {k: v for k, v in {**BASE["targets"][0], **fields}.items() if v is not None}
    return {**BASE, "targets": [target]}


def test_shipped_schema_is_generated_from_the_declaration():
    shipped = (ROOT / SCHEMA_FILE).read_text(encoding="utf-8")
    assert shipped == schema_text(), f"{SCHEMA_FILE} is stale: run python scripts/config-schema.py"


def test_schema_is_a_valid_draft7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


# -- the documentation's examples -----------------------------------------------------------------


def yaml_examples() -> list[tuple[str, dict]]:
    """Every ```yaml block of README.md and docs/*.md that is a configuration file (it holds a setting)."""
    keys = set(SCHEMA["properties"])
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            data = yaml.safe_load(block.group(1))
            if isinstance(data, dict) and keys & set(data):
                line = text[: block.start()].count("\n") + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", data))
    return found


EXAMPLES = yaml_examples()


def test_the_readme_has_a_configuration_example():
    assert any(where.startswith("README.md:") for where, _ in EXAMPLES), EXAMPLES


@pytest.mark.parametrize("where, config", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_documented_examples_pass_the_schema_and_the_loader(where, config, tmp_path):
    assert schema_errors(config) == [], where
    named_env = [t[k] for t in config.get("targets", []) for k in ("username_env", "password_env") if k in t]
    result = load(tmp_path, config, env={name: "x" for name in named_env})
    assert not isinstance(result, ConfigError), (where, result)


# -- refused by both, at the same setting -----------------------------------------------------------


def test_the_base_of_the_tables_passes_both():
    assert schema_errors(BASE) == []
    assert schema_errors(with_target(namespace="giantswarm")) == []


REFUSED = [
    # (the configuration, the loader's problem begins with, the schema's error path or message holds)
    # unknown or misplaced keys
    ({**BASE, "tag_inclde": "x"}, "SYNC_CONFIG tag_inclde: unknown setting", "tag_inclde"),
    ({**BASE, "sync_config": "other.yaml"}, "SYNC_CONFIG sync_config", "sync_config"),
    ({**BASE, "source_password": "x"}, "SYNC_CONFIG source_password", "source_password"),
    ({**BASE, "target_password": "x"}, "SYNC_CONFIG target_password", "target_password"),
    ({**BASE, "target_name": "x"}, "SYNC_CONFIG target_name: unknown setting", "target_name"),
    (with_target(colour=1), "targets[hub].colour: unknown setting", "colour"),
    (with_target(password="x", username="u"), "targets[hub].password", "password"),
    # required, and the list of targets itself
    (with_target(registry=None), "targets[hub].registry: is required", "registry"),
    ({**BASE, "targets": []}, "targets: must be a non-empty list", "targets"),
    ({**BASE, "targets": {"hub": {"registry": "docker.io"}}}, "targets: must be a non-empty list", "targets"),
    ({**BASE, "targets": ["docker.io"]}, "targets[0]: must be a mapping", "targets.0"),
    # types
    ({**BASE, "source_registry": 5}, "SOURCE_REGISTRY: must be a registry host", "source_registry"),
    ({**BASE, "tag_include": ["a"]}, "TAG_INCLUDE: must be a regular expression", "tag_include"),
    ({**BASE, "sync_concurrency": "many"}, "SYNC_CONCURRENCY: must be a whole number", "sync_concurrency"),
    ({**BASE, "tag_keep_latest": 2.5}, "TAG_KEEP_LATEST: must be a whole number", "tag_keep_latest"),
    (
        {**BASE, "source_allow_empty": "maybe"},
        "SOURCE_ALLOW_EMPTY: must be true or false",
        "source_allow_empty",
    ),
    ({**BASE, "source_repositories": {"a": 1}}, "SOURCE_REPOSITORIES: must be a list", "source_repositories"),
    ({**BASE, "mappings": "charts"}, "mappings: must be a list", "mappings"),
    ({**BASE, "mappings": [{"match": "x"}]}, "mappings[0]: must be {match", "mappings.0"),
    ({**BASE, "mappings": [{"match": "x", "replace": "y", "to": 1}]}, "mappings[0]: must be", "mappings.0"),
    ({**BASE, "mappings": [{"match": "x", "replace": " "}]}, "mappings[0].replace", "mappings.0.replace"),
    (with_target(drop_attestations="maybe"), "targets[hub].drop_attestations", "drop_attestations"),
    (with_target(name="bad name"), "targets[0].name: 'bad name' must be letters", "name"),
    # choices
    (
        {**BASE, "sync_compare": "size"},
        "SYNC_COMPARE: must be 'name' or 'recent' or 'digest'",
        "sync_compare",
    ),
    ({**BASE, "source_kind": "gcr"}, "SOURCE_KIND: must be 'acr' or 'oci'", "source_kind"),
    ({**BASE, "sync_referrers": []}, "SYNC_REFERRERS: must be 'all', 'none'", "sync_referrers"),
    # ranges
    ({**BASE, "sync_concurrency": 0}, "SYNC_CONCURRENCY: must be at least 1", "sync_concurrency"),
    ({**BASE, "sync_concurrency": 65}, "SYNC_CONCURRENCY: at most 64", "sync_concurrency"),
    ({**BASE, "sync_time_budget_seconds": 5}, "SYNC_TIME_BUDGET_SECONDS: must be at least 10", "sync_time"),
    ({**BASE, "tag_min_age_days": -1}, "TAG_MIN_AGE_DAYS: must be at least 0", "tag_min_age_days"),
    (with_target(max_path_depth=0), "targets[hub].max_path_depth: must be at least 1", "max_path_depth"),
    # names and patterns
    (
        {**BASE, "source_registry": "ftp://x"},
        "SOURCE_REGISTRY: 'ftp://x' is not a registry",
        "source_registry",
    ),
    (
        {**BASE, "source_registry": "r.io/v2"},
        "SOURCE_REGISTRY: 'https://r.io/v2': give only",
        "source_registry",
    ),
    ({**BASE, "source_namespace": "Not/Valid"}, "SOURCE_NAMESPACE: 'Not/Valid' is not", "source_namespace"),
    ({**BASE, "source_repositories": ["Bad"]}, "SOURCE_REPOSITORIES: 'Bad' is not", "source_repositories"),
    ({**BASE, "source_repositories": "a, B"}, "SOURCE_REPOSITORIES: 'B' is not", "source_repositories"),
    (with_target(platforms=["amd64"]), "targets[hub].platforms: must list platforms", "platforms"),
    (with_target(platforms="linux/amd64 arm64"), "targets[hub].platforms: must list", "platforms"),
    (with_target(platforms=[]), "targets[hub].platforms: must list platforms", "platforms"),
    (
        {**BASE, "key_vault_url": "http://v.vault.azure.net"},
        "KEY_VAULT_URL: must be an https://",
        "key_vault",
    ),
    ({**BASE, "sync_queue": "Sync_Work"}, "SYNC_QUEUE: 'Sync_Work' is not a valid", "sync_queue"),
    ({**BASE, "sync_schedule": "*/5 * * * *"}, "SYNC_SCHEDULE: must be a six-field CRON", "sync_schedule"),
]


@pytest.mark.parametrize("config, problem, where", REFUSED, ids=[problem for _, problem, _ in REFUSED])
def test_what_the_loader_refuses_the_schema_refuses_at_the_same_setting(config, problem, where, tmp_path):
    result = load(tmp_path, config)
    assert isinstance(result, ConfigError), result
    assert any(p.startswith(problem) for p in result.problems), result.problems
    errors = schema_errors(config)
    assert any(where in error for error in errors), errors


# -- taken by both ----------------------------------------------------------------------------------


def described(config: dict) -> str:
    """A test id: what ``config`` sets beyond BASE."""
    target = config.get("targets", [{}])[0]
    changed = [k for k in config if k not in BASE or config[k] != BASE[k]] + [
        f"targets[0].{k}" for k in target if k not in BASE["targets"][0] or target[k] != BASE["targets"][0][k]
    ]
    return ",".join(k for k in changed if k != "targets")


@pytest.mark.parametrize(
    "config",
    [
        {**BASE, "source_repositories": "giantswarm/a, giantswarm/b giantswarm/c"},
        {**BASE, "source_repositories": ["giantswarm/a", "charts/giantswarm/b"]},
        {**BASE, "source_namespace": "/giantswarm/"},
        {**BASE, "source_registry": "http://127.0.0.1:5000"},
        {**BASE, "source_registry": "https://[::1]:5000/"},
        {**BASE, "sync_referrers": "none"},
        {**BASE, "sync_referrers": "application/spdx+json, application/vnd.dev.cosign.artifact.sig.v1+json"},
        {**BASE, "sync_referrers": ["application/spdx+json"]},
        {**BASE, "sync_concurrency": 64, "sync_time_budget_seconds": 10, "sync_recheck_hours": 0},
        {**BASE, "tag_min_age_days": 0.5, "tag_max_age_days": 30, "tag_keep_latest": 3},
        {
            **BASE,
            "mappings": [{"match": "charts/(.+)", "replace": r"charts-\1"}, {"match": "x", "replace": None}],
        },
        with_target(platforms="linux/amd64,linux/arm64/v8", skip_artifact_types="a/b, c/d"),
        with_target(max_path_depth=3, tag_semver=">=1.2.0 <2", name="mirror.eu-1"),
        {
            "source_registry": "gsoci.azurecr.io",
            "key_vault_url": "https://v.vault.azure.net",
            "target_registry": "docker.io",
            "target_namespace": "giantswarm",
            "target_skip_artifact_types": ["application/vnd.cncf.helm.config.v1+json"],
            "target_username_secret": "hub-user",
            "target_password_secret": "hub-token",
        },
    ],
    ids=described,
)
def test_forms_the_loader_takes_the_schema_takes(config, tmp_path):
    assert not isinstance(load(tmp_path, config), ConfigError)
    assert schema_errors(config) == []


# -- the same keys ----------------------------------------------------------------------------------


def refused_key(problems: list[str], where: str) -> bool:
    """Whether a problem says the key at ``where`` is not one a file may hold."""
    return any(
        p.startswith(f"{where}: ") and ("unknown setting" in p or "not read from the configuration file" in p)
        for p in problems
    )


TOP_LEVEL_KEYS = sorted(
    {s.key for s in SETTINGS if s.scope & Scope.GLOBAL}
    | {f"target_{s.key}" for s in TARGET_SETTINGS}
    | {"targets", "target", "colour"}
)


@pytest.mark.parametrize("key", TOP_LEVEL_KEYS)
def test_a_top_level_key_is_in_the_schema_exactly_when_the_loader_reads_it(key, tmp_path):
    result = load(tmp_path, {key: "x"}, env={"SOURCE_REGISTRY": "r.io", "TARGET_REGISTRY": "docker.io"})
    problems = result.problems if isinstance(result, ConfigError) else []
    assert refused_key(problems, f"SYNC_CONFIG {key}") == (key not in SCHEMA["properties"]), problems


@pytest.mark.parametrize("key", sorted({s.key for s in TARGET_SETTINGS} | {"targets", "source_registry"}))
def test_a_target_key_is_in_the_schema_exactly_when_the_loader_reads_it(key, tmp_path):
    result = load(tmp_path, {"source_registry": "r.io", "targets": [{"registry": "docker.io", key: "x"}]})
    problems = result.problems if isinstance(result, ConfigError) else []
    assert refused_key(problems, f"targets[target1].{key}") == (key not in TARGET_SCHEMA["properties"]), (
        problems
    )


def test_every_setting_a_file_may_hold_is_described_with_its_parsers_schema():
    for setting in SETTINGS:
        places = []
        if setting.scope & Scope.GLOBAL:
            places.append(SCHEMA["properties"])
        if setting.scope & Scope.TARGET:
            places.append(TARGET_SCHEMA["properties"])
        for properties in places:
            if not setting.in_file:
                assert setting.key not in properties, setting.key
                continue
            described = properties[setting.key]
            assert setting.help in described["description"], setting.key
            assert described.items() >= dict(setting.parse.schema).items(), setting.key
    assert TARGET_SCHEMA["required"] == ["registry"]


DEFAULTS = [
    (by_key[key], described["default"])
    for properties, by_key in (
        (SCHEMA["properties"], GLOBAL_BY_KEY),
        (TARGET_SCHEMA["properties"], TARGET_BY_KEY),
    )
    for key, described in properties.items()
    if "default" in described
]


@pytest.mark.parametrize("setting, default", DEFAULTS, ids=[s.key for s, _ in DEFAULTS])
def test_each_default_in_the_schema_reads_as_the_declared_default(setting, default):
    assert default == file_default(setting)
    problems = Problems()
    assert setting.parse(default, setting.key, problems) == setting.default and not problems.items
