"""End-to-end sync from the ACR stand-in to real token-auth registries (sync_core.jobs.syncer.Syncer).

One module-scoped ACR stand-in holds a catalog under the source namespace ``giantswarm`` with
every kind of content the mirror must carry byte for byte: multi-arch OCI indexes with buildx
attestations, a Docker manifest list, Docker v2 and OCI single images, a Helm chart, a
four-level repository name; tags are spread over time with ``set_tag_times`` and the syncer
runs with a fixed clock. Every test mirrors into fresh target registries (they start in
~30 ms) and checks the result with the harness's own independent ``Pusher``.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import json
import logging
import threading
from urllib.parse import urlsplit

import pytest
import yaml

from sync_core.cli import main as cli
from sync_core.config.load import load_config
from sync_core.config.secrets import KeyVaultSecrets, SecretStore
from sync_core.errors import CatalogForbidden
from sync_core.jobs.syncer import Syncer
from sync_core.registry.retry import RetryPolicy
from sync_core.report.summary import Summary
from tests.harness import images
from tests.harness.acr import AcrStandIn, classify
from tests.harness.faultproxy import FaultProxy
from tests.harness.images import HELM_CONFIG, Manifest, Pusher
from tests.harness.keyvault import ACCESS_TOKEN, FakeAzureCredential, KeyVaultStub

NS = "giantswarm"
MIRROR = "mirror"
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)

ROOT = ("sync-root", "root-token-pw-5c1d")  # scope map: the root wildcard (may list the catalog)
SCOPED = ("sync-scoped", "scoped-token-pw-88a0")  # two repositories only, no catalog
KV_USER = ("sync-kv", "kv-held-acr-pw-Zq8xV3")  # its password lives only in the Key Vault stub
HELLO_ONLY = ("sync-hello", "hello-only-pw-31b7")  # may list the catalog, read only giantswarm/hello
READ = ["pull", "metadata_read"]
USERS = {
    ROOT[0]: (ROOT[1], {"*": READ}),
    SCOPED[0]: (SCOPED[1], {f"{NS}/app": READ, f"{NS}/alpine": READ}),
    KV_USER[0]: (KV_USER[1], {"*": READ}),
    HELLO_ONLY[0]: (HELLO_ONLY[1], {"*": [], f"{NS}/hello": READ}),
}
PUSHER = ("pusher", "pusher-pass")  # session token issuer user: pull,push on every repository


def _build_catalog() -> dict[tuple[str, str], tuple[Manifest, float]]:
    """``{(source repo, tag): (manifest, age in days at NOW)}``. No blob is shared between
    repositories, so bytes uploaded per run can be computed exactly."""
    app = {
        v: images.oci_index(f"gs-app-{v}", layer_sizes=(300,))
        for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0")
    }
    shared = images.oci_index("gs-multi-shared", layer_sizes=(90,))
    arch_list = images.docker_manifest_list("gs-multi-list", layer_sizes=(80,))
    return {
        # many tags on one index, and a list whose platform images are tagged too: copied
        # concurrently, they push the same manifests at the same time
        **{(f"{NS}/multi", f"s{i}"): (shared, 30 + i) for i in range(8)},
        (f"{NS}/multi", "2.0"): (arch_list, 20),
        (f"{NS}/multi", "2.0-amd64"): (arch_list.children[0], 20),
        (f"{NS}/multi", "2.0-arm64"): (arch_list.children[1], 20),
        (f"{NS}/app", "1.0.0"): (app["1.0.0"], 400),  # older than TAG_MAX_AGE_DAYS
        (f"{NS}/app", "1.1.0"): (app["1.1.0"], 100),  # passes, but not among the 2 latest
        (f"{NS}/app", "1.2.0"): (app["1.2.0"], 30),
        (f"{NS}/app", "1.3.0"): (app["1.3.0"], 10),
        (f"{NS}/app", "1.3.1-rc1"): (app["1.3.0"], 5),  # TAG_EXCLUDE
        (f"{NS}/app", "1.4.0"): (app["1.4.0"], 0.1),  # younger than TAG_MIN_AGE_DAYS
        (f"{NS}/app", "latest"): (app["1.4.0"], 2),  # not a version: TAG_INCLUDE
        (f"{NS}/app", "build-1.2.3"): (app["1.2.0"], 3),  # only a partial match of TAG_INCLUDE
        (f"{NS}/legacy", "v0.9"): (images.docker_image("gs-legacy-0.9", (350,)), 200),
        (f"{NS}/legacy", "v1.0"): (images.docker_image("gs-legacy-1.0", (400, 200)), 50),
        (f"{NS}/legacy", "v2.0"): (images.docker_manifest_list("gs-legacy-2.0", layer_sizes=(250,)), 20),
        (f"{NS}/alpine", "3.19"): (images.oci_image("gs-alpine-3.19", (500,)), 60),
        (f"{NS}/alpine", "3.20"): (images.oci_image("gs-alpine-3.20", (600,)), 15),
        (f"{NS}/hello", "0.1.0"): (images.helm_chart("gs-hello-0.1.0", "hello", "0.1.0"), 40),
        (f"{NS}/team/deep/tool", "2.0"): (images.oci_image("gs-tool-2.0", (320, 180)), 7),
        (f"{NS}/team/deep/tool", "1.0"): (images.oci_image("gs-tool-1.0", (310,)), 500),
        (f"{NS}/app-extra", "1.0"): (images.oci_image("gs-app-extra-1.0", (128,)), 10),
        (f"{NS}/excluded/thing", "1.0"): (images.oci_image("gs-excluded-1.0", (128,)), 10),
        ("other/outside", "1.0"): (images.oci_image("other-outside-1.0", (128,)), 10),
    }


CATALOG = _build_catalog()

# The filters of the issue, all at once, and exactly what they must select.
FILTERS = {
    # full match: giantswarm/app-extra contains "giantswarm/app" but does not match
    "REPOSITORY_INCLUDE": rf"{NS}/(app|legacy|alpine|hello|team/.+|excluded/.+)",
    "REPOSITORY_EXCLUDE": rf"{NS}/excluded/.*",
    "TAG_INCLUDE": r"v?\d+(\.\d+)+(-rc\d+)?",  # full match: build-1.2.3 is out
    "TAG_EXCLUDE": r".*-rc\d+",
    "TAG_MIN_AGE_DAYS": "1",
    "TAG_MAX_AGE_DAYS": "365",
    "TAG_KEEP_LATEST": "2",  # after the other filters: 1.4.0 (too young) does not take a place
}
FILTERED = {
    (f"{NS}/app", "1.2.0"),
    (f"{NS}/app", "1.3.0"),
    (f"{NS}/legacy", "v1.0"),
    (f"{NS}/legacy", "v2.0"),
    (f"{NS}/alpine", "3.19"),
    (f"{NS}/alpine", "3.20"),
    (f"{NS}/hello", "0.1.0"),
    (f"{NS}/team/deep/tool", "2.0"),
}
NAMESPACE_REPOS = sorted({repo for repo, _ in CATALOG if repo.startswith(f"{NS}/")})
ALL_NS_TAGS = {key for key in CATALOG if key[0].startswith(f"{NS}/")}


@pytest.fixture(scope="module")
def acr(token_issuer):
    with AcrStandIn(users=USERS, issuer=token_issuer, name="acr-sync") as stand_in:
        pusher = stand_in.pusher(direct=True)  # times are set explicitly below
        for (repo, tag), (manifest, age) in CATALOG.items():
            pusher.push(repo, manifest, tag)
            stand_in.set_tag_times(repo, tag, NOW - dt.timedelta(days=age + 1), NOW - dt.timedelta(days=age))
        pusher.close()
        yield stand_in


# -- helpers ----------------------------------------------------------------------------------


def mirrored(repo: str, namespace: str = MIRROR) -> str:
    return f"{namespace}/{repo[len(NS) + 1 :]}"


def env_for(acr: AcrStandIn, dst, user=ROOT, target_user=PUSHER, **extra: str) -> dict[str, str]:
    env = {
        "SOURCE_REGISTRY": acr.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": NS,
        "SOURCE_USERNAME": user[0],
        "SOURCE_PASSWORD": user[1],
    }
    if dst is not None:
        env.update(
            TARGET_REGISTRY=dst.url,
            TARGET_NAMESPACE=MIRROR,
            TARGET_USERNAME=target_user[0],
            TARGET_PASSWORD=target_user[1],
        )
    env.update(extra)
    return env


def syncer_for(env: dict[str, str], path: str | None = None, **kwargs) -> Syncer:
    return Syncer(load_config(env, path), clock=lambda: NOW, **kwargs)


def state(pusher: Pusher) -> dict[str, dict[str, str]]:
    """``{repository: {tag: digest}}`` of everything a registry holds."""
    out: dict[str, dict[str, str]] = {}
    for repo in pusher.catalog():
        tags = pusher.tags(repo)
        if tags:
            out[repo] = {tag: pusher.fetch_manifest(repo, tag)[2] for tag in tags}
    return out


def expected_state(keys, namespace: str = MIRROR) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for repo, tag in keys:
        out.setdefault(mirrored(repo, namespace), {})[tag] = CATALOG[(repo, tag)][0].digest
    return out


def assert_identical(pusher: Pusher, keys, namespace: str = MIRROR) -> None:
    """Every image arrived with the source bytes: manifest, every child, every blob."""
    for repo, tag in keys:
        manifest = CATALOG[(repo, tag)][0]
        dst_repo = mirrored(repo, namespace)
        raw, _, digest = pusher.fetch_manifest(dst_repo, tag)
        assert raw == manifest.raw and digest == manifest.digest, f"{dst_repo}:{tag}"
        for child in manifest.walk():
            assert pusher.exists_manifest(dst_repo, child.digest), f"{dst_repo}@{child.digest}"
        for blob in manifest.all_blobs():
            assert pusher.blob_exists(dst_repo, blob.digest), f"{dst_repo} blob {blob.digest}"


def unique_blobs(keys) -> dict[tuple[str, str], int]:
    """``{(source repo, blob digest): size}`` the images of ``keys`` need."""
    return {(repo, b.digest): b.size for repo, tag in keys for b in CATALOG[(repo, tag)][0].all_blobs()}


def manifests_of(keys) -> int:
    return sum(len(list(CATALOG[k][0].walk())) for k in keys)


class TargetRequests:
    """Counts what a syncer sends to its targets (and their token services), per repository."""

    def __init__(self, syncer: Syncer):
        self.entries: list[tuple[str, str, str, str | None, int]] = []  # target, method, kind, repo, status
        self._lock = threading.Lock()
        for name, client in syncer.target_clients.items():
            self._wrap(name, client.transport.session, client.host)

    def _wrap(self, name: str, session, host: str) -> None:
        original = session.request

        def request(method, url, *args, **kwargs):
            response = original(method, url, *args, **kwargs)
            parts = urlsplit(url)
            kind, repo, _ = classify(parts.path) if parts.netloc == host else ("token", None, None)
            with self._lock:
                self.entries.append((name, method, kind, repo, response.status_code))
            return response

        session.request = request

    def per_repository(self) -> dict[str, collections.Counter]:
        out: dict[str, collections.Counter] = {}
        for _, method, kind, repo, status in self.entries:
            out.setdefault(repo or "-", collections.Counter())[f"{method} {kind} {status}"] += 1
        return out


# -- the full sync with every filter, then the no-op run --------------------------------------


def test_filtered_sync_copies_exactly_the_selected_tags_then_a_second_run_touches_nothing(
    acr, fresh_registry
):
    dst = fresh_registry()
    env = env_for(acr, dst, **FILTERS)
    with syncer_for(env) as syncer:
        first = syncer.run()

    check = dst.pusher()
    assert state(check) == expected_state(FILTERED)
    assert_identical(check, FILTERED)
    assert first.ok, first.failures
    assert (first.repositories, first.tags_considered, first.tags_missing, first.tags_copied) == (
        len(NAMESPACE_REPOS),
        len(FILTERED),
        len(FILTERED),
        len(FILTERED),
    )
    assert (first.tags_unchanged, first.tags_skipped, first.tags_failed) == (0, 0, 0)
    assert first.work.manifests_pushed == manifests_of(FILTERED)
    needed = unique_blobs(FILTERED)
    assert first.work.blobs_uploaded == len(needed) and first.work.bytes_uploaded == sum(needed.values())
    assert first.targets["target"].tags() == {
        "considered": 8,
        "missing": 8,
        "copied": 8,
        "unchanged": 0,
        "skipped": 0,
        "failed": 0,
    }

    # Second run, as a new process would do it (fresh tokens): nothing to copy, and the source
    # is only listed -- the digests come with the ACR tag listing, no manifest or blob request.
    acr.reset_log()
    with syncer_for(env) as syncer:
        counter = TargetRequests(syncer)
        second = syncer.run()
    assert second.ok
    assert (second.tags_considered, second.tags_missing, second.tags_copied) == (len(FILTERED), 0, 0)
    assert (second.work.manifests_pushed, second.work.blobs_uploaded, second.work.bytes_uploaded) == (0, 0, 0)
    assert acr.count(("manifest", "blob", "upload", "referrers", "tags_list")) == 0
    kinds = collections.Counter(entry.kind for entry in acr.log)
    assert set(kinds) <= {"token", "catalog", "acr_tags", "acr_manifests"}, kinds
    assert acr.count("catalog", status=200) == 1
    selected_repos = {repo for repo, _ in FILTERED}
    for repo in selected_repos:
        assert acr.count("acr_tags", repo=repo, status=200) == 1, repo
        # untagged manifests changed lately (referrers added to mirrored images): one listing
        assert acr.count("acr_manifests", repo=repo, status=200) == 1, repo
    # repositories no filter selects are not even listed
    assert acr.count("acr_tags") == len(selected_repos), sorted(
        e.repo for e in acr.log if e.kind == "acr_tags"
    )

    # At the target: one tag listing per mirrored repository, nothing else (bar auth).
    per_repo = counter.per_repository()
    for repo in selected_repos:
        seen = per_repo.pop(mirrored(repo))
        assert seen["GET tags_list 200"] == 1, seen
        assert set(seen) <= {"GET tags_list 200", "GET tags_list 401"}, seen
    assert set(per_repo) <= {"-"}  # token requests only
    print("\nno-op run, source:", dict(kinds), "\nno-op run, target:", counter.per_repository())


def test_a_repository_no_filter_selects_is_never_read_so_it_cannot_fail_the_run(acr, fresh_registry):
    # A user that may list the catalog but read only giantswarm/hello (as on an OCI registry with
    # per-repository rights): the filters are what keeps the unreadable repositories out.
    dst = fresh_registry()
    env = env_for(acr, dst, user=HELLO_ONLY, REPOSITORY_INCLUDE=rf"{NS}/hello")
    acr.reset_log()
    with syncer_for(env) as syncer:
        summary = syncer.run()
    assert summary.ok, summary.failures
    assert (summary.repositories, summary.tags_considered, summary.tags_copied) == (
        len(NAMESPACE_REPOS),
        1,
        1,
    )
    assert {e.repo for e in acr.log if e.kind in ("acr_tags", "manifest", "blob")} == {f"{NS}/hello"}
    assert state(dst.pusher()) == expected_state({(f"{NS}/hello", "0.1.0")})

    # Control: without the filter every other repository fails to list, and hello is still fine.
    with syncer_for(env_for(acr, dst, user=HELLO_ONLY)) as syncer:
        unfiltered = syncer.run()
    assert not unfiltered.ok
    assert sorted(f.item for f in unfiltered.failures) == [r for r in NAMESPACE_REPOS if r != f"{NS}/hello"]
    assert unfiltered.tags_considered == 1 and unfiltered.tags_missing == 0


def test_two_targets_depth_limit_and_skipped_artifact_type(acr, fresh_registry, tmp_path):
    hub, full = fresh_registry(name="hub"), fresh_registry(name="full")
    config = {
        "targets": [
            {
                "name": "hub",
                "registry": hub.url,
                "namespace": MIRROR,
                "username_env": "MIRROR_USER",
                "password_env": "MIRROR_PASS",
                "max_path_depth": 2,
                "skip_artifact_types": [HELM_CONFIG],
            },
            {
                "name": "full",
                "registry": full.url,
                "namespace": MIRROR,
                "username_env": "MIRROR_USER",
                "password_env": "MIRROR_PASS",
            },
        ]
    }
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(config))
    env = env_for(
        acr,
        None,
        MIRROR_USER=PUSHER[0],
        MIRROR_PASS=PUSHER[1],
        REPOSITORY_INCLUDE=rf"{NS}/(alpine|hello|team/deep/tool)",
    )
    with syncer_for(env, str(path)) as syncer:
        summary = syncer.run()

    chosen = {k for k in ALL_NS_TAGS if k[0] in {f"{NS}/alpine", f"{NS}/hello", f"{NS}/team/deep/tool"}}
    hub_keys = {k for k in chosen if k[0] == f"{NS}/alpine"}
    assert state(full.pusher()) == expected_state(chosen)
    assert_identical(full.pusher(), chosen)
    assert state(hub.pusher()) == expected_state(hub_keys)  # neither the deep name nor the chart
    assert_identical(hub.pusher(), hub_keys)
    assert hub.pusher().catalog() == [f"{MIRROR}/alpine"]  # the deep repository was never created

    assert summary.ok, summary.failures
    skipped = {(s.target, s.item): s.reason for s in summary.skipped}
    assert set(skipped) == {("hub", f"{NS}/team/deep/tool"), ("hub", f"{NS}/hello:0.1.0")}
    assert "4 path levels" in skipped[("hub", f"{NS}/team/deep/tool")]
    assert "at most 2" in skipped[("hub", f"{NS}/team/deep/tool")]
    assert HELM_CONFIG in skipped[("hub", f"{NS}/hello:0.1.0")]
    assert summary.targets["hub"].tags() == {
        "considered": 5,
        "missing": 3,
        "copied": 2,
        "unchanged": 0,
        "skipped": 3,
        "failed": 0,
    }
    assert summary.targets["full"].tags() == {
        "considered": 5,
        "missing": 5,
        "copied": 5,
        "unchanged": 0,
        "skipped": 0,
        "failed": 0,
    }
    assert (summary.tags_copied, summary.tags_skipped) == (7, 3)


# -- repository-scoped tokens -----------------------------------------------------------------


def test_repository_scoped_token_cannot_list_the_catalog_and_needs_source_repositories(
    acr, fresh_registry, capsys
):
    dst = fresh_registry()
    env = env_for(acr, dst, user=SCOPED)
    with syncer_for(env) as syncer, pytest.raises(CatalogForbidden) as caught:
        syncer.run()
    assert "SOURCE_REPOSITORIES" in str(caught.value)
    assert dst.pusher().catalog() == []

    capsys.readouterr()
    assert cli.main(["sync"], environ=env) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "SOURCE_REPOSITORIES" in err and "catalog" in err
    assert SCOPED[1] not in err

    acr.reset_log()
    listed = dict(env, SOURCE_REPOSITORIES=f"{NS}/app, {NS}/alpine", TAG_INCLUDE=r"1\.3\.0|3\.20")
    with syncer_for(listed) as syncer:
        summary = syncer.run()
    keys = {(f"{NS}/app", "1.3.0"), (f"{NS}/alpine", "3.20")}
    assert summary.ok and summary.tags_copied == 2, summary.failures
    assert state(dst.pusher()) == expected_state(keys)
    assert_identical(dst.pusher(), keys)
    assert acr.catalog_calls() == 0
    # the scoped user never got (nor needed) a scope outside its two repositories
    granted = {s for g in acr.grants for s in g.granted}
    assert granted and all(s.split(":")[1] in (f"{NS}/app", f"{NS}/alpine") for s in granted), granted


# -- Key Vault credentials, and no secret in any output ---------------------------------------


def test_key_vault_credentials_reach_the_registries_and_no_secret_is_ever_shown(
    acr, token_issuer, fresh_issuer, fresh_registry, monkeypatch, caplog, capsys
):
    target_pw = "mirror-bot-pw-Kk29Lq"
    target_issuer = fresh_issuer(users={"mirror-bot": (target_pw, {"*": ["pull", "push"]})})
    dst = fresh_registry(token_issuer=target_issuer)
    tokens: list[str] = []
    for issuer in (token_issuer, target_issuer):  # every JWT minted for the stand-in or the target
        original = issuer._sign

        def sign(*args, _original=original, **kwargs):
            token = _original(*args, **kwargs)
            tokens.append(token)
            return token

        monkeypatch.setattr(issuer, "_sign", sign)

    caplog.set_level(logging.DEBUG)
    with KeyVaultStub({"acr-user": KV_USER[0], "acr-pass": KV_USER[1]}) as vault:
        env = env_for(
            acr,
            dst,
            user=("", ""),
            target_user=("mirror-bot", target_pw),
            KEY_VAULT_URL=vault.url,
            SOURCE_USERNAME_SECRET="acr-user",
            SOURCE_PASSWORD_SECRET="acr-pass",
            TAG_INCLUDE=r"1\.3\.0|v2\.0|0\.1\.0",
        )
        del env["SOURCE_USERNAME"], env["SOURCE_PASSWORD"]
        config = load_config(env)
        store = SecretStore(
            config.key_vault_url,
            vault=KeyVaultSecrets(vault.url, credential=FakeAzureCredential(), **vault.client_kwargs()),
        )
        with Syncer(config, secrets=store, clock=lambda: NOW) as syncer:
            summary = syncer.run()
            acr.fail_next(1, 403, kinds="acr_tags")
            failing = syncer.run(repositories=[f"{NS}/app"])  # an error path, logged too
        assert vault.secret_reads("acr-user") == 1 and vault.secret_reads("acr-pass") == 1

        # the same through the CLI (which builds its own SecretStore from KEY_VAULT_URL)
        monkeypatch.setattr("sync_core.jobs.syncer.SecretStore", lambda url: store)
        assert cli.main(["-vv", "sync", "--dry-run"], environ=env) == 0
        assert cli.main(["plan", "--json"], environ=env) == 0

    keys = {(f"{NS}/app", "1.3.0"), (f"{NS}/legacy", "v2.0"), (f"{NS}/hello", "0.1.0")}
    assert summary.ok and summary.tags_copied == 3, summary.failures
    assert state(dst.pusher()) == expected_state(keys)
    assert any(g.user == KV_USER[0] for g in acr.grants)  # the source was read as the Key Vault user
    assert not failing.ok  # the listing error is in the output below

    out, err = capsys.readouterr()
    outputs = {
        "summary": json.dumps(summary.to_dict()) + json.dumps(failing.to_dict()),
        "rendered": cli.render_summary(summary) + cli.render_summary(failing),
        "stdout": out,
        "stderr": err,
    }
    for record in caplog.records:
        outputs[f"log {record.name}"] = (
            outputs.get(f"log {record.name}", "")
            + "\n"
            + (record.getMessage() + " " + json.dumps({k: str(v) for k, v in vars(record).items()}))
        )
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert len(tokens) >= 4  # source and target tokens were really issued
    secrets = {
        "source password": KV_USER[1],
        "target password": target_pw,
        "source basic auth": base64.b64encode(f"{KV_USER[0]}:{KV_USER[1]}".encode()).decode(),
        "target basic auth": base64.b64encode(f"mirror-bot:{target_pw}".encode()).decode(),
        "key vault token": ACCESS_TOKEN,
    }
    secrets.update({f"token {i}": t for i, t in enumerate(tokens)})
    secrets.update({f"token {i} signature": t.rsplit(".", 1)[1] for i, t in enumerate(tokens)})
    leaks = [
        (what, where) for what, value in secrets.items() for where, text in outputs.items() if value in text
    ]
    assert not leaks


# -- interruption and resumption ----------------------------------------------------------------


def test_target_dying_mid_run_records_failures_and_a_rerun_finishes_only_the_rest(acr, fresh_registry):
    dst = fresh_registry()
    env = env_for(acr, dst, SYNC_CONCURRENCY="1", **FILTERS)
    kill_at = CATALOG[(f"{NS}/app", "1.2.0")][0].children[-1].blobs[1].digest  # mid-image (10 blobs)
    with syncer_for(env) as syncer:
        client = syncer.target_clients["target"]
        client.transport.sleep = lambda seconds: None  # the dead target is retried, without waiting
        syncer.copier.blobs.retry = RetryPolicy(attempts=2, backoff_base=0.0)
        put_blob = client.put_blob

        def put_blob_then_die(repository, location, digest, body, size):
            put_blob(repository, location, digest, body, size)
            if digest == kill_at:
                dst._kill()  # the registry process dies right after storing this blob

        client.put_blob = put_blob_then_die
        first = syncer.run()

    assert not first.ok
    assert first.tags_copied + first.tags_failed == len(FILTERED)  # every item was attempted
    assert first.tags_copied == 3  # alpine 3.20, 3.19, app 1.3.0 (sorted repositories, newest first)
    assert {f.item.split(" ->")[0] for f in first.failures} == {
        f"{repo}:{tag}" for repo, tag in FILTERED if repo not in (f"{NS}/alpine",)
    } - {f"{NS}/app:1.3.0"}

    dst.start()  # same port, same storage
    check = dst.pusher()
    done = {k for k in FILTERED if check.exists_manifest(mirrored(k[0]), k[1])}
    rest = FILTERED - done
    assert len(done) == first.tags_copied
    needed = unique_blobs(rest)
    present = {k for k in needed if check.blob_exists(mirrored(k[0]), k[1])}
    assert present  # the interrupted image left blobs behind: they must not be uploaded again

    with syncer_for(env) as syncer:
        second = syncer.run()
    assert second.ok, second.failures
    assert (second.tags_missing, second.tags_copied) == (len(rest), len(rest))
    assert second.work.blobs_skipped == len(present)
    assert second.work.blobs_uploaded == len(needed) - len(present)
    assert second.work.bytes_uploaded == sum(size for k, size in needed.items() if k not in present)
    assert state(check) == expected_state(FILTERED)
    assert_identical(check, FILTERED)


# -- SYNC_COMPARE ----------------------------------------------------------------------------------


def test_digest_compare_recopies_a_retagged_tag_name_compare_does_not(token_issuer, fresh_registry):
    old, new = images.oci_image("moving-old", (200,)), images.oci_index("moving-new", layer_sizes=(150,))
    with AcrStandIn(users=USERS, issuer=token_issuer, name="acr-retag") as acr:
        pusher = acr.pusher()
        pusher.push(f"{NS}/moving", old, "stable")
        pusher.push(f"{NS}/moving", old, "edge")
        dst = fresh_registry()
        env = env_for(acr, dst)
        with syncer_for(env) as syncer:
            assert syncer.run().tags_copied == 2

        pusher.push(f"{NS}/moving", new, "edge")  # retagged at the source
        check = dst.pusher()
        with syncer_for(dict(env, SYNC_COMPARE="name")) as syncer:
            by_name = syncer.run()
        assert by_name.ok and (by_name.tags_missing, by_name.tags_copied) == (0, 0)
        assert check.fetch_manifest(f"{MIRROR}/moving", "edge")[2] == old.digest
        # the default (recent): a tag the source changed within SYNC_RECHECK_HOURS is compared
        with syncer_for(env) as syncer:
            recent = syncer.run(dry_run=True)
        assert [(w.tag, w.digest, w.reason) for w in recent.planned] == [
            ("edge", new.digest, "digest differs")
        ]

        acr.reset_log()
        digest_env = dict(env, SYNC_COMPARE="digest")
        with syncer_for(digest_env) as syncer:
            plan = syncer.run(dry_run=True)
            by_digest = syncer.run()
        assert [(w.tag, w.digest, w.reason) for w in plan.planned] == [("edge", new.digest, "digest differs")]
        assert by_digest.ok and (by_digest.tags_missing, by_digest.tags_copied) == (1, 1)
        assert check.fetch_manifest(f"{MIRROR}/moving", "edge")[2] == new.digest
        assert check.fetch_manifest(f"{MIRROR}/moving", "stable")[2] == old.digest
        assert acr.manifest_heads() == 0  # the source digests came from the tag listing

        with syncer_for(digest_env) as syncer:
            again = syncer.run()
        assert (again.tags_considered, again.tags_missing, again.tags_copied) == (2, 0, 0)


# -- concurrency ------------------------------------------------------------------------------------


def test_concurrency_one_and_eight_give_the_same_end_state(acr, fresh_registry):
    results: dict[str, tuple[Summary, dict]] = {}
    for concurrency in ("1", "8"):
        dst = fresh_registry(name=f"conc-{concurrency}")
        with FaultProxy(dst.url) as proxy:
            # a tag is pushed last, once per copy: with 8, the first tag push waits (30 s at most)
            # until another copy's is in flight too; with 1, nothing waits and none ever overlap
            tag_pushes = proxy.rendezvous(
                2 if concurrency == "8" else 1, method="PUT", path=r"^/v2/.+/manifests/(?!sha256:)[^/]+$"
            )
            with syncer_for(env_for(acr, proxy, SYNC_CONCURRENCY=concurrency)) as syncer:
                assert syncer.config.concurrency == int(concurrency)
                summary = syncer.run()
        assert summary.ok, summary.failures
        if concurrency == "8":
            assert tag_pushes.met and tag_pushes.max_in_flight >= 2, f"no two copies overlapped: {tag_pushes}"
        else:
            assert tag_pushes.max_in_flight == 1, f"copies overlapped with concurrency 1: {tag_pushes}"
        assert_identical(dst.pusher(), ALL_NS_TAGS)
        results[concurrency] = (summary, state(dst.pusher()))
    (one, state_one), (eight, state_eight) = results["1"], results["8"]
    assert state_one == state_eight == expected_state(ALL_NS_TAGS)
    assert one.tags_copied == eight.tags_copied == len(ALL_NS_TAGS)
    assert one.work.bytes_uploaded == eight.work.bytes_uploaded == sum(unique_blobs(ALL_NS_TAGS).values())
    assert one.work.blobs_uploaded == eight.work.blobs_uploaded == len(unique_blobs(ALL_NS_TAGS))


def test_module_catalog_is_what_the_tests_assume(acr):
    """Guards the fixture: tag times as set, namespace contents, every manifest kind present."""
    kinds = {CATALOG[k][0].media_type for k in ALL_NS_TAGS}
    assert kinds == {images.OCI_INDEX, images.OCI_MANIFEST, images.DOCKER_LIST, images.DOCKER_MANIFEST}
    assert any(
        c.platform == {"os": "unknown", "architecture": "unknown"}
        for c in CATALOG[(f"{NS}/app", "1.3.0")][0].children
    )
    created, updated = acr.tag_times(f"{NS}/app", "1.4.0")
    assert NOW - updated == dt.timedelta(days=0.1)
