"""``python -m sync_core check`` (sync_core.jobs.check): the source, Key Vault, the CLI, the demo's world.

The source is the ACR stand-in (``_tags``, the referrers API, ACR token scope maps) or a plain
``distribution`` registry; Key Vault is the stand-in the real ``azure-keyvault-secrets`` SDK talks
to. Each misconfiguration is made on purpose and ``check`` must name it, with its fix, while
neither the source nor any target sees a write (the registries' access logs). The target findings
are in test_check_targets.py, the findings from the configuration alone in test_check_rules.py.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import pytest

from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.config.secrets import KeyVaultSecrets, SecretStore
from sync_core.jobs.check import Checker, Report
from sync_core.jobs.check_findings import Finding, Status
from sync_core.jobs.syncer import Syncer
from sync_core.report import metrics
from tests.harness import PUSHER, images, oci_env
from tests.harness.acr import AcrStandIn
from tests.harness.keyvault import FakeAzureCredential, KeyVaultStub
from tests.harness.paths import ROOT

NS = "gs"
SRC = ("check-src", "check-src-pw-4Fw")  # the root wildcard: may list the catalog
SCOPED = ("check-scoped", "check-scoped-pw-9Tq")  # gs/* only: no catalog
NO_META = ("check-nometa", "check-nometa-pw-2Hd")  # pull only: no _tags
NO_PULL = ("check-nopull", "check-nopull-pw-7Lc")  # metadata_read only: no manifest
READ = ["pull", "metadata_read"]


@pytest.fixture(scope="module")
def source(token_issuer):
    users = {
        SRC[0]: (SRC[1], {"*": READ}),
        SCOPED[0]: (SCOPED[1], {f"{NS}/*": READ}),
        NO_META[0]: (NO_META[1], {"*": ["pull"]}),
        NO_PULL[0]: (NO_PULL[1], {"*": ["metadata_read"]}),
    }
    with AcrStandIn(users=users, issuer=token_issuer, name="check-src") as acr:
        pusher = acr.pusher()
        app = images.oci_index("check-app", layer_sizes=(200,), attestations=False)
        pusher.push(f"{NS}/app", app, "1.0")
        pusher.push(f"{NS}/app", images.signature("check-app-sig", app))
        pusher.push(f"{NS}/tool", images.oci_image("check-tool", (150,)), "2.0")
        acr.seeded = app
        yield acr


def env(source: AcrStandIn, target, user: tuple[str, str] = SRC, **extra: str) -> dict[str, str]:
    return {
        "SOURCE_REGISTRY": source.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_USERNAME": user[0],
        "SOURCE_PASSWORD": user[1],
        "TARGET_REGISTRY": target.url,
        "TARGET_NAMESPACE": "mirror",
        "TARGET_USERNAME": PUSHER[0],
        "TARGET_PASSWORD": PUSHER[1],
        **extra,
    }


def run(settings: dict[str, str], config: str | None = None, **kwargs) -> Report:
    clock = kwargs.pop("clock", None)
    secrets = kwargs.pop("secrets", None)
    with Syncer(
        load_config(settings, config), clock=clock, secrets=secrets, metrics=metrics.Metrics()
    ) as syncer:
        return Checker(syncer, **kwargs).run()


def rows(report: Report, subject: str, check: str) -> list[Finding]:
    return [f for f in report.findings if f.subject == subject and f.check == check]


def one(report: Report, subject: str, check: str) -> Finding:
    (found,) = rows(report, subject, check)
    return found


class NoWrites:
    """Marks the access logs of registries; :meth:`assert_none` fails on any write since."""

    def __init__(self, *registries):
        self.registries = registries
        self.marks = [len(r.access_log()) for r in registries]

    def assert_none(self) -> None:
        for registry, mark in zip(self.registries, self.marks, strict=True):
            assert registry.writes(mark) == [], f"{registry.name} saw writes"


# -- a world where everything is in order --------------------------------------------------------


def test_a_world_in_order_has_no_failure_and_sees_no_write(source, token_registry_dst):
    quiet = NoWrites(source.backend, token_registry_dst)
    report = run(env(source, token_registry_dst))
    assert report.ok and report.counts()["fail"] == 0, [
        f for f in report.findings if f.status is not Status.OK
    ]
    assert report.counts()["warn"] == 0
    assert [f.check for f in report.findings if f.subject == "source"] == [
        "reach",
        "credentials",
        "clock",
        "catalog",
        "selection",
        "metadata",
        "pull",
        "metadata",
        "pull",
        "referrers",
    ]
    assert one(report, "source", "catalog").answered == "2 repositories under gs/"
    assert "served: an OCI index, 1 referrer(s) of gs/app:1.0" in one(report, "source", "referrers").answered
    assert "Bearer tokens from " + source.realm in one(report, "source", "reach").answered
    assert report.sampled == ["gs/app", "gs/tool"]
    quiet.assert_none()


def test_the_demo_world_passes_check(capsys):
    """``make demo``'s own world (scripts/demo.py) passes ``check``: exit 0, no warning, no write."""
    spec = importlib.util.spec_from_file_location("registry_sync_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with demo.demo_world({}) as (acr, mirror, settings):
        quiet = NoWrites(acr.backend, mirror)
        capsys.readouterr()
        assert cli.main(["check", "--json"], environ=settings) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["counts"]["fail"] == 0 and report["counts"]["warn"] == 0, report
        quiet.assert_none()
    assert 'run_cli(env, "check")' in (ROOT / "scripts" / "demo.py").read_text()


# -- the source --------------------------------------------------------------------------------


def test_refused_source_credentials_are_named_with_the_settings_to_fix(source, token_registry_dst):
    quiet = NoWrites(source.backend, token_registry_dst)
    report = run(env(source, token_registry_dst, user=(SRC[0], "a-wrong-password")))
    finding = one(report, "source", "credentials")
    assert finding.status is Status.FAIL
    assert "refused user 'check-src' (HTTP 401)" in finding.answered
    assert finding.fix.startswith(
        "SOURCE_USERNAME / SOURCE_PASSWORD: the user name or password is wrong or expired"
    )
    assert "a-wrong-password" not in json.dumps(report.to_dict())
    assert not rows(report, "source", "catalog"), "nothing more is asked with refused credentials"
    # the target is still checked, on a name under its namespace (the source's are unknown)
    assert one(report, "target", "names").answered == "not checked: the source's repositories are unknown"
    assert one(report, "target", "push").answered == "granted pull,push on mirror/registry-sync-check"
    assert not report.ok
    quiet.assert_none()


def test_a_token_that_may_not_list_the_catalog_is_told_to_use_source_repositories(source, token_registry_dst):
    report = run(env(source, token_registry_dst, user=SCOPED))
    finding = one(report, "source", "catalog")
    assert finding.status is Status.FAIL
    assert "refused the catalog listing (HTTP 401)" in finding.answered
    assert finding.fix.startswith("SOURCE_REPOSITORIES: list the repositories")
    # the fix, applied
    fixed = run(env(source, token_registry_dst, user=SCOPED, SOURCE_REPOSITORIES="gs/app,gs/tool"))
    assert one(fixed, "source", "catalog").status is Status.OK
    assert one(fixed, "source", "catalog").asked.startswith("nothing: SOURCE_REPOSITORIES")
    assert fixed.ok, [f for f in fixed.findings if f.status is Status.FAIL]


def test_an_empty_catalog_is_told_to_check_the_scope_map(token_issuer, token_registry_dst):
    """ACR answers HTTP 200 with an empty catalog to a token whose scope map covers no repository."""
    users = {"check-other": ("check-other-pw-3Mx", {"other/*": READ})}
    with AcrStandIn(users=users, issuer=token_issuer, name="check-empty") as acr:
        acr.catalog_filtered = True
        acr.pusher().push(f"{NS}/app", images.oci_image("check-empty-app", (90,)), "1.0")
        report = run(env(acr, token_registry_dst, user=("check-other", "check-other-pw-3Mx")))
    finding = one(report, "source", "catalog")
    assert (finding.status, finding.answered) == (Status.FAIL, f"{acr.host} listed no repository under gs/")
    assert "scope map" in finding.fix and "SOURCE_ALLOW_EMPTY=true" in finding.fix


def test_metadata_and_pull_rights_are_asked_on_a_sample(source, token_registry_dst):
    no_meta = run(env(source, token_registry_dst, user=NO_META))
    assert [f.status for f in rows(no_meta, "source", "metadata")] == [Status.FAIL, Status.FAIL]
    finding = rows(no_meta, "source", "metadata")[0]
    assert "/acr/v1/gs/app/_tags" in finding.asked and "HTTP 401" in finding.answered
    assert "metadata/read on gs/app" in finding.fix

    no_pull = run(env(source, token_registry_dst, user=NO_PULL))
    assert [f.status for f in rows(no_pull, "source", "metadata")] == [Status.OK, Status.OK]
    finding = rows(no_pull, "source", "pull")[0]
    assert finding.status is Status.FAIL and "HEAD" in finding.asked and "content/read" in finding.fix
    assert not rows(no_pull, "source", "referrers"), "no digest was read: no referrers request"


def test_the_sample_size_is_the_number_of_repositories_read(source, token_registry_dst):
    report = run(env(source, token_registry_dst), sample=1)
    assert report.sampled == ["gs/app"] and len(rows(report, "source", "pull")) == 1
    assert not rows(run(env(source, token_registry_dst), sample=0), "source", "pull")


def test_filters_that_select_nothing_fail(source, token_registry_dst):
    report = run(env(source, token_registry_dst, REPOSITORY_INCLUDE="gs/nothing-.*"))
    finding = one(report, "source", "selection")
    assert finding.status is Status.FAIL and "none of the 2 repositories" in finding.answered
    assert "REPOSITORY_INCLUDE" in finding.fix


@pytest.mark.parametrize(("ahead", "status"), [(0, Status.OK), (120, Status.WARN), (900, Status.FAIL)])
def test_the_clock_is_compared_with_the_registry_date(source, token_registry_dst, ahead, status):
    def clock() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=ahead)

    finding = one(run(env(source, token_registry_dst), clock=clock), "source", "clock")
    assert finding.status is status, finding
    if ahead:
        seconds = int(finding.answered.split("this machine is ")[1].split(" s ")[0])
        assert abs(seconds - ahead) <= 2 and finding.answered.endswith("s ahead")
        assert "NTP" in finding.fix and "token lifetimes" in finding.fix


def test_the_source_referrers_api_is_probed(source, token_registry_dst, fresh_registry):
    served = one(run(env(source, token_registry_dst)), "source", "referrers")
    assert served.status is Status.OK and served.answered.startswith("served: an OCI index")

    plain = fresh_registry(name="check-oci-src")
    plain.pusher().push("gs/app", images.oci_image("check-oci-app", (80,)), "1.0")
    settings = oci_env(plain, token_registry_dst, "gs/app")
    not_served = one(run(settings), "source", "referrers")
    assert not_served.status is Status.OK and not_served.answered.startswith("not served")
    assert one(run(settings), "source", "metadata").asked.endswith("/v2/gs/app/tags/list")

    source.fail_next(1, 403, kinds="referrers")
    refused = one(run(env(source, token_registry_dst)), "source", "referrers")
    assert refused.status is Status.FAIL and "HTTP 403" in refused.answered
    none = one(run(env(source, token_registry_dst, SYNC_REFERRERS="none")), "source", "referrers")
    assert none.status is Status.OK and none.asked == "nothing: SYNC_REFERRERS=none"


# -- Key Vault -----------------------------------------------------------------------------------


def test_each_key_vault_secret_is_read_and_a_typo_is_named(source, token_registry_dst):
    values = {"src-user": SRC[0], "src-pass": SRC[1], "mirror-user": PUSHER[0], "mirror-pass": PUSHER[1]}
    with KeyVaultStub(values) as vault:
        settings = {
            k: v
            for k, v in env(source, token_registry_dst).items()
            if not k.endswith(("USERNAME", "PASSWORD"))
        }
        settings.update(
            KEY_VAULT_URL=vault.url,
            SOURCE_USERNAME_SECRET="src-user",
            SOURCE_PASSWORD_SECRET="src-pass",
            TARGET_USERNAME_SECRET="mirror-user",
            TARGET_PASSWORD_SECRET="mirror-pasw",  # the typo
        )

        def store() -> SecretStore:
            client = KeyVaultSecrets(vault.url, credential=FakeAzureCredential(), **vault.client_kwargs())
            return SecretStore(vault.url, vault=client)

        quiet = NoWrites(source.backend, token_registry_dst)
        report = run(settings, secrets=store())
        secrets = rows(report, "key-vault", "secret")
        assert [(f.status, f.asked.split(" (")[0]) for f in secrets] == [
            (Status.FAIL, f"GET {vault.url}/secrets/mirror-pasw"),
            (Status.OK, f"GET {vault.url}/secrets/mirror-user"),
            (Status.OK, f"GET {vault.url}/secrets/src-pass"),
            (Status.OK, f"GET {vault.url}/secrets/src-user"),
        ]
        assert vault.secret_reads("src-pass") == 1, "read once, then the registry client uses that read"
        typo = secrets[0]
        assert "not found" in typo.answered
        assert "create the secret 'mirror-pasw'" in typo.fix and "TARGET_PASSWORD_SECRET" in typo.fix
        target = one(report, "target", "credentials")
        assert target.status is Status.FAIL and "key-vault findings" in target.fix
        assert one(report, "source", "credentials").status is Status.OK
        shown = json.dumps(report.to_dict())
        assert all(value not in shown for value in (SRC[1], PUSHER[1])), "a secret value was shown"
        quiet.assert_none()

        settings["TARGET_PASSWORD_SECRET"] = "mirror-pass"
        fixed = run(settings, secrets=store())
        assert fixed.ok and all(f.status is Status.OK for f in rows(fixed, "key-vault", "secret"))


# -- the command line ----------------------------------------------------------------------------


def test_the_cli_exit_codes_json_and_text(source, token_registry_dst, capsys):
    good = env(source, token_registry_dst)
    capsys.readouterr()
    assert cli.main(["check", "--json"], environ=good) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and set(report["counts"]) == {"ok", "warn", "fail"}
    assert set(report["findings"][0]) == {"subject", "check", "status", "asked", "answered", "fix"}

    bad = env(source, token_registry_dst, user=(SRC[0], "wrong-password-x"))
    assert cli.main(["check"], environ=bad) == 1
    text = capsys.readouterr().out
    assert text.startswith("check: FAILED: 1 failure(s)")
    assert "[FAIL] source credentials: " in text and "    fix: SOURCE_USERNAME / SOURCE_PASSWORD" in text
    assert "wrong-password-x" not in text

    assert cli.main(["check"], environ={**good, "TARGET_REGISTRY": ""}) == 2
    assert cli.main(["check", "--target", "nope"], environ=good) == 2
    assert cli.main(["check", "--sample", "-1"], environ=good) == 2
    assert "TARGET_REGISTRY" in capsys.readouterr().err


def test_help_states_the_requests_and_that_nothing_is_written(capsys):
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    text = capsys.readouterr().out
    assert "nothing is written: no POST, PUT, PATCH or DELETE" in text
    for request in (
        "GET /v2/",
        "/acr/v1/<repo>/_tags",
        "GET /v2/<repo>/referrers/<digest>",
        "ratelimitpreview/test",
    ):
        assert request in text


def test_a_config_file_target_is_checked_by_name(source, token_registry_dst, fresh_registry, tmp_path: Path):
    other = fresh_registry(name="check-second")
    config = tmp_path / "targets.json"
    config.write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "name": "one",
                        "registry": token_registry_dst.url,
                        "namespace": "m1",
                        "username_env": "U",
                        "password_env": "P",
                    },
                    {
                        "name": "two",
                        "registry": other.url,
                        "namespace": "m2",
                        "username_env": "U",
                        "password_env": "P",
                    },
                ]
            }
        )
    )
    settings = {**env(source, token_registry_dst), "U": PUSHER[0], "P": PUSHER[1]}
    with Syncer(load_config(settings, str(config)), metrics=metrics.Metrics()) as syncer:
        report = Checker(syncer).run(["two"])
    assert {f.subject for f in report.findings} == {"source", "two"}
    assert one(report, "two", "push").answered.startswith("granted pull,push on m2/")
