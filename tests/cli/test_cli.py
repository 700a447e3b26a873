"""The command line (sync_core.cli.main): called in-process with ``main(argv, environ=...)``, as the
operator would run it, against a module-scoped ACR stand-in and fresh token-auth targets."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sync_core.cli import main as cli
from sync_core.registry.retry import RetryPolicy
from tests.harness import images
from tests.harness.acr import AcrStandIn
from tests.harness.images import HELM_CONFIG
from tests.harness.paths import ROOT as ROOT_DIR

NS = "giantswarm"
SOURCE = ("cli-root", "cli-root-pw")
PUSHER = ("pusher", "pusher-pass")  # session token issuer: pull,push everywhere
IMAGES = {
    (f"{NS}/app", "1.0.0"): images.oci_index("cli-app-1.0.0", layer_sizes=(256,)),
    (f"{NS}/app", "1.1.0"): images.oci_index("cli-app-1.1.0", layer_sizes=(256,)),
    (f"{NS}/legacy", "v1"): images.docker_image("cli-legacy-v1", (300, 100)),
    (f"{NS}/legacy", "v2-multi"): images.docker_manifest_list("cli-legacy-v2", layer_sizes=(200,)),
    (f"{NS}/legacy", "v3"): images.docker_image("cli-legacy-v3", (150,)),
    (f"{NS}/hello", "0.1.0"): images.helm_chart("cli-hello-0.1.0", "hello", "0.1.0"),
    (f"{NS}/team/deep/tool", "2.0"): images.oci_image("cli-tool-2.0", (200,)),
}


@pytest.fixture(scope="module")
def acr(token_issuer):
    users = {SOURCE[0]: (SOURCE[1], {"*": ["pull", "metadata_read"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="acr-cli") as stand_in:
        pusher = stand_in.pusher(direct=True)
        for (repo, tag), manifest in IMAGES.items():
            pusher.push(repo, manifest, tag)
        pusher.close()
        yield stand_in


def environ(acr: AcrStandIn, dst=None, **extra: str) -> dict[str, str]:
    env = {
        "SOURCE_REGISTRY": acr.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_USERNAME": SOURCE[0],
        "SOURCE_PASSWORD": SOURCE[1],
    }
    if dst is not None:
        env.update(
            TARGET_REGISTRY=dst.url,
            TARGET_NAMESPACE="mirror",
            TARGET_USERNAME=PUSHER[0],
            TARGET_PASSWORD=PUSHER[1],
        )
    env.update(extra)
    return env


def run(capsys, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv, environ=env)
    out, err = capsys.readouterr()
    return code, out, err


def two_targets(tmp_path: Path, hub, full) -> str:
    path = tmp_path / "targets.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {
                        "name": "hub",
                        "registry": hub.url,
                        "namespace": "mirror",
                        "max_path_depth": 2,
                        "skip_artifact_types": [HELM_CONFIG],
                        "username_env": "MIRROR_USER",
                        "password_env": "MIRROR_PASS",
                    },
                    {
                        "name": "full",
                        "registry": full.url,
                        "namespace": "mirror",
                        "username_env": "MIRROR_USER",
                        "password_env": "MIRROR_PASS",
                    },
                ]
            }
        )
    )
    return str(path)


def state(registry) -> dict[str, dict[str, str]]:
    pusher = registry.pusher()
    return {
        repo: {tag: pusher.fetch_manifest(repo, tag)[2] for tag in pusher.tags(repo)}
        for repo in pusher.catalog()
        if pusher.tags(repo)
    }


def expected(keys) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for repo, tag in keys:
        out.setdefault("mirror/" + repo[len(NS) + 1 :], {})[tag] = IMAGES[(repo, tag)].digest
    return out


# -- help and configuration errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (
            ["--help"],
            ["sync", "plan", "copy", "event", "--verbose", "SOURCE_REGISTRY", "SOURCE_REPOSITORIES"],
        ),
        (["sync", "--help"], ["--dry-run", "--json", "--repository", "--target", "--config", "SYNC_COMPARE"]),
        (["plan", "--help"], ["--repository", "--json", "--target", "--config"]),
        (["copy", "--help"], ["REPOSITORY:TAG", "--json", "--target", "--config"]),
        (["event", "--help"], ["FILE", "--json", "--target", "--config"]),
    ],
)
def test_help_of_every_command_exits_0_and_names_its_options(capsys, argv, mentions):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv, environ={})
    assert exited.value.code == 0
    out = capsys.readouterr().out
    missing = [m for m in mentions if m not in out]
    assert not missing, out


def test_python_m_sync_core_help_runs_as_a_program():
    done = subprocess.run(
        [sys.executable, "-m", "sync_core", "--help"],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m sync_core" in done.stdout
    assert all(word in done.stdout for word in ("sync", "plan", "copy", "event", "TARGET_REGISTRY"))


def test_configuration_errors_exit_2_and_list_every_setting(acr, fresh_registry, capsys, tmp_path):
    bad = {"SYNC_COMPARE": "fuzzy", "TAG_KEEP_LATEST": "0", "SYNC_CONCURRENCY": "many", "TAG_INCLUDE": "("}
    code, out, err = run(capsys, ["sync"], bad)
    assert code == cli.EXIT_CONFIG and out == ""
    for setting in (
        "SOURCE_REGISTRY",
        "TARGET_REGISTRY",
        "SYNC_COMPARE",
        "TAG_KEEP_LATEST",
        "SYNC_CONCURRENCY",
        "TAG_INCLUDE",
    ):
        assert setting in err, (setting, err)

    dst = fresh_registry()
    good = environ(acr, dst)
    code, _, err = run(capsys, ["sync", "--target", "nope"], good)
    assert code == cli.EXIT_CONFIG and "'nope' is not configured" in err
    code, _, err = run(capsys, ["copy", "giantswarm/App:1.0"], good)
    assert code == cli.EXIT_CONFIG and "REPOSITORY:TAG" in err
    with_password = tmp_path / "sync.yaml"
    with_password.write_text(yaml.safe_dump({"targets": [{"registry": dst.url, "password": "inline"}]}))
    code, _, err = run(capsys, ["sync", "--config", str(with_password)], environ(acr))
    assert code == cli.EXIT_CONFIG and "password" in err and "inline" not in err
    assert dst.pusher().catalog() == []  # nothing ran


# -- sync, plan, dry run, copy ----------------------------------------------------------------


def test_sync_json_prints_the_summary_and_copies_every_tag(acr, fresh_registry, capsys):
    dst = fresh_registry()
    env = environ(acr, dst)
    code, out, err = run(capsys, ["sync", "--json"], env)
    assert code == cli.EXIT_OK, err
    summary = json.loads(out)  # stdout holds the JSON document and nothing else
    assert summary["ok"] is True and summary["dry_run"] is False
    assert summary["repositories"] == 4
    assert summary["tags"] == {
        "considered": 7,
        "missing": 7,
        "copied": 7,
        "unchanged": 0,
        "skipped": 0,
        "failed": 0,
    }
    assert summary["bytes_uploaded"] > 0 and summary["failures"] == [] and summary["planned"] == []
    assert state(dst) == expected(IMAGES)

    code, out, _ = run(capsys, ["sync", "--json"], env)
    again = json.loads(out)
    assert code == 0 and again["tags"]["missing"] == 0 and again["bytes_uploaded"] == 0

    code, out, _ = run(capsys, ["sync"], env)  # the human-readable form
    assert code == 0 and "sync succeeded" in out and "tags copied        0" in out


def test_plan_prints_a_table_per_target_and_copies_nothing(acr, fresh_registry, capsys, tmp_path):
    hub, full = fresh_registry(name="hub"), fresh_registry(name="full")
    config = two_targets(tmp_path, hub, full)
    env = environ(acr, MIRROR_USER=PUSHER[0], MIRROR_PASS=PUSHER[1])
    code, out, err = run(capsys, ["plan", "--config", config], env)
    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert "target full: 7 tag(s) to copy" in lines
    assert "target hub: 6 tag(s) to copy" in lines  # deep name skipped; the chart is only known at copy
    hub_part = out[out.index("target hub:") :]
    full_part = out[out.index("target full:") : out.index("target hub:")]
    for repo, tag in IMAGES:
        row = f"{repo}:{tag}"
        assert row in full_part, row
        assert (row in hub_part) == (repo != f"{NS}/team/deep/tool"), row
    assert any(
        line.split() == [f"{NS}/legacy:v2-multi", "mirror/legacy:v2-multi", "missing"] for line in lines
    ), out
    assert f"skipped [hub] {NS}/team/deep/tool" in out
    assert hub.pusher().catalog() == [] and full.pusher().catalog() == []

    code, out, _ = run(
        capsys, ["plan", "--config", config, "--target", "hub", "--repository", f"{NS}/app"], env
    )
    assert code == 0 and "target hub: 2 tag(s) to copy" in out and "target full" not in out


def test_dry_run_plans_without_copying(acr, fresh_registry, capsys):
    dst = fresh_registry()
    env = environ(acr, dst)
    acr.reset_log()
    code, out, _ = run(capsys, ["sync", "--dry-run", "--json"], env)
    summary = json.loads(out)
    assert code == 0 and summary["dry_run"] is True
    assert (
        summary["tags"]["missing"] == 7 and summary["tags"]["copied"] == 0 and summary["bytes_uploaded"] == 0
    )
    assert {(w["source_repository"], w["tag"]) for w in summary["planned"]} == set(IMAGES)
    code, out, _ = run(capsys, ["sync", "--dry-run"], env)
    assert code == 0 and out.startswith("dry run succeeded")
    assert dst.pusher().catalog() == []
    assert acr.count(("manifest", "blob", "upload")) == 0  # planning reads only listings


def test_copy_one_image_to_every_target(acr, fresh_registry, capsys, tmp_path):
    hub, full = fresh_registry(name="hub"), fresh_registry(name="full")
    config = two_targets(tmp_path, hub, full)
    env = environ(acr, MIRROR_USER=PUSHER[0], MIRROR_PASS=PUSHER[1])
    code, out, err = run(capsys, ["copy", f"{NS}/app:1.1.0", "--config", config, "--json"], env)
    assert code == cli.EXIT_OK, err
    summary = json.loads(out)
    assert summary["tags"]["copied"] == 2 and summary["targets"]["hub"]["copied"] == 1
    one = expected({(f"{NS}/app", "1.1.0")})
    assert state(hub) == one and state(full) == one

    # by digest: every platform arrives, no tag is written
    index = IMAGES[(f"{NS}/legacy", "v2-multi")]
    code, _, _ = run(capsys, ["copy", f"{NS}/legacy@{index.digest}", "--config", config], env)
    assert code == 0
    for registry in (hub, full):
        pusher = registry.pusher()
        assert all(pusher.exists_manifest("mirror/legacy", m.digest) for m in index.walk())
        assert pusher.tags("mirror/legacy") == []

    # a deep name cannot go to the two-level target: skipped there, copied to the other
    code, out, _ = run(capsys, ["copy", f"{NS}/team/deep/tool:2.0", "--config", config], env)
    assert code == 0 and f"skipped [hub] {NS}/team/deep/tool:2.0" in out
    assert "mirror/team/deep/tool" in full.pusher().catalog()
    assert "mirror/team/deep/tool" not in hub.pusher().catalog()


# -- failures: exit 1, and the re-run finishes the job ------------------------------------------


def test_a_failing_target_repository_fails_the_run_and_the_rerun_copies_only_the_rest(
    acr, fresh_issuer, fresh_registry, capsys, monkeypatch
):
    # Refused uploads are retried (4 attempts per blob, randomized backoff up to seconds); the
    # retry timing is not what this test is about, so no waiting between the attempts.
    monkeypatch.setattr(
        "sync_core.engine.copier.RetryPolicy", functools.partial(RetryPolicy, backoff_base=0.0)
    )
    # The target token service will not grant push on mirror/legacy (pull only).
    perms = {
        "mirror/*": ["pull"],
        **{f"mirror/{r}": ["pull", "push"] for r in ("app", "hello", "team/deep/tool")},
    }
    issuer = fresh_issuer(users={"bot": ("bot-pw", perms)})
    dst = fresh_registry(token_issuer=issuer)
    env = environ(acr, dst, TARGET_USERNAME="bot", TARGET_PASSWORD="bot-pw")

    code, out, _ = run(capsys, ["sync", "--json"], env)
    first = json.loads(out)
    assert code == cli.EXIT_FAILED and first["ok"] is False
    legacy = {k for k in IMAGES if k[0] == f"{NS}/legacy"}
    others = set(IMAGES) - legacy
    assert first["tags"]["copied"] == len(others) and first["tags"]["failed"] == len(legacy)
    assert sorted(f["item"] for f in first["failures"]) == sorted(f"{r}:{t} -> target" for r, t in legacy)
    assert state(dst) == expected(others)  # the other repositories were still copied

    issuer.users["bot"] = ("bot-pw", {"mirror/*": ["pull", "push"]})  # fixed
    code, out, _ = run(capsys, ["sync", "--json"], env)
    second = json.loads(out)
    assert code == cli.EXIT_OK and second["ok"] is True
    assert second["tags"]["missing"] == second["tags"]["copied"] == len(legacy)
    legacy_blobs = {b.digest: b.size for k in legacy for b in IMAGES[k].all_blobs()}
    assert second["bytes_uploaded"] == sum(legacy_blobs.values())  # nothing of the others again
    assert second["blobs"]["uploaded"] == len(legacy_blobs)
    assert state(dst) == expected(IMAGES)

    code, out, _ = run(capsys, ["sync"], env)
    assert code == 0 and "tags missing       0" in out
