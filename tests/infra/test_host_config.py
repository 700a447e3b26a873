"""host.json, local.settings.json.example and .funcignore: the Functions host configuration."""

from __future__ import annotations

import json
import re

import pytest

from sync_core.config.load import load_config
from sync_core.config.model import Compare
from sync_core.config.settings import APP_SETTINGS, LOCAL_ONLY_SETTINGS
from tests.harness.paths import ROOT
from tests.harness.secret_values import looks_like_secret


def parse_timespan(text: str) -> int:
    """hh:mm:ss (optionally d.hh:mm:ss) -> seconds."""
    m = re.fullmatch(r"(?:(\d+)\.)?(\d{2}):(\d{2}):(\d{2})", text)
    assert m, f"not a timespan: {text!r}"
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@pytest.fixture(scope="module")
def host() -> dict:
    return json.loads((ROOT / "host.json").read_text())


@pytest.fixture(scope="module")
def local_values() -> dict[str, str]:
    data = json.loads((ROOT / "local.settings.json.example").read_text())
    assert data["IsEncrypted"] is False
    values = data["Values"]
    assert all(isinstance(v, str) for v in values.values()), "app settings are strings"
    return values


def test_host_json_version_and_bundle(host: dict) -> None:
    assert host["version"] == "2.0"
    bundle = host["extensionBundle"]
    assert bundle["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    assert bundle["version"] == "[4.*, 5.0.0)"


def test_host_json_timeout_fits_flex_and_time_budget(host: dict, local_values: dict[str, str]) -> None:
    timeout = parse_timespan(host["functionTimeout"])
    assert 5 * 60 <= timeout <= 2 * 60 * 60
    # The worker stops starting copies after SYNC_TIME_BUDGET_SECONDS: it must leave headroom.
    budget = int(local_values["SYNC_TIME_BUDGET_SECONDS"])
    assert budget <= timeout - 120


def test_host_json_queue_settings(host: dict) -> None:
    queues = host["extensions"]["queues"]
    assert queues["maxDequeueCount"] == 5
    assert 1 <= queues["batchSize"] <= 8, "modest batch: each message may copy large images"
    assert 0 <= queues["newBatchThreshold"] < queues["batchSize"] + 1
    parse_timespan(queues["visibilityTimeout"])
    assert parse_timespan(queues["maxPollingInterval"]) <= 60
    assert queues.get("messageEncoding", "base64") == "base64"


def test_host_json_logging(host: dict) -> None:
    logging = host["logging"]
    sampling = logging["applicationInsights"]["samplingSettings"]
    assert sampling["isEnabled"] is True
    assert "Request" in sampling["excludedTypes"].split(";")
    levels = logging["logLevel"]
    assert "default" in levels
    assert levels.get("Function") in {"Information", "Debug", "Trace"}, "sync decisions are logged at INFO"


def test_local_settings_have_every_setting(local_values: dict[str, str]) -> None:
    missing = [s for s in (*APP_SETTINGS, *LOCAL_ONLY_SETTINGS) if s not in local_values]
    assert not missing, f"local.settings.json.example lacks {missing}"
    assert local_values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    # The host indexes v2-model Python apps through the worker without it: the flag is obsolete.
    assert "AzureWebJobsFeatureFlags" not in local_values
    assert local_values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert local_values["SYNC_QUEUE"] == "sync-work"
    assert local_values["SOURCE_KIND"] in {"acr", "oci"}
    assert local_values["SYNC_COMPARE"] in {c.value for c in Compare}
    assert len(local_values["SYNC_SCHEDULE"].split()) == 6, "NCRONTAB has six fields (seconds first)"
    assert local_values["SYNC_CONCURRENCY"].isdigit()
    # Empty means "not set" to the app (no limit); TAG_KEEP_LATEST=0 would be rejected.
    for name in ("TAG_MIN_AGE_DAYS", "TAG_MAX_AGE_DAYS", "TAG_KEEP_LATEST"):
        assert local_values[name] == "" or float(local_values[name]) > 0, name


def test_local_settings_load_with_the_app_config(local_values: dict[str, str]) -> None:
    """The example is a working local configuration (direct credentials, no Key Vault)."""
    config = load_config(local_values)
    assert config.queue == local_values["SYNC_QUEUE"]
    assert config.source.registry.endswith(local_values["SOURCE_REGISTRY"])
    assert len(config.targets) == 1
    # Either Key Vault (URL + secret names) or direct values: the example uses direct values.
    secret_names = [
        local_values[f"{s}_{p}_SECRET"] for s in ("SOURCE", "TARGET") for p in ("USERNAME", "PASSWORD")
    ]
    assert (local_values["KEY_VAULT_URL"] == "") == all(n == "" for n in secret_names)


def test_local_settings_hold_no_secrets(local_values: dict[str, str]) -> None:
    for name, value in local_values.items():
        assert not looks_like_secret(value), f"{name} looks like a real secret"
    for name in LOCAL_ONLY_SETTINGS:
        assert local_values[name] == "", f"{name} must be an empty placeholder in the example"


def test_secret_detector_catches_real_looking_values() -> None:
    assert looks_like_secret("DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc==")
    assert looks_like_secret("dckr_pat_0123456789abcdef")
    assert looks_like_secret("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig")
    assert looks_like_secret("q8Zr2uYt6Vb9Xw3Lk1Mn0Pq7Rs5Tu4Vw")
    assert not looks_like_secret("source-password")
    assert not looks_like_secret("UseDevelopmentStorage=true")
    assert not looks_like_secret("0 */15 * * * *")
    assert not looks_like_secret("4633458b-17de-408a-b874-0445c86b69e6")


def test_local_settings_is_not_committed() -> None:
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "local.settings.json" in gitignore


def test_funcignore_keeps_app_code_and_drops_dev_files() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".funcignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for dropped in (".venv/", ".venv-tools/", "tests/", "infra/", "local.settings.json"):
        assert dropped in patterns
    for kept in ("function_app.py", "host.json", "requirements.txt", "sync_core/", "sync_core"):
        assert kept not in patterns
