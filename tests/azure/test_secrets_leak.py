"""Secrets: never in logs, summaries, exception texts or argument lists; credentials only where asked.

* The sync, copy, event and queue paths run with known secret values (source password from the
  environment, target password from a Key Vault stub, the Key Vault access token, a wrong
  password, and every registry token issued during the runs); every log record (DEBUG, all
  loggers, urllib3 and azure included), summary (dict and text), exception text (str, repr and
  traceback) and the CLI's output and ``/proc/<pid>/cmdline`` are searched for each secret and
  its Basic-auth and URL encodings.
* ``Authorization`` goes only to the host that challenged for it: Basic credentials to the
  registry or its token realm, the token to the registry, nothing to the storage host a blob
  download is redirected to; credentials (and tokens obtained with them) never travel over plain
  http except to loopback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets as pysecrets
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

import pytest

from sync_core.azure import handlers, messages
from sync_core.cli.main import copy_events, read_events
from sync_core.cli.render import render_summary
from sync_core.config.load import load_config
from sync_core.config.secrets import KeyVaultSecrets, SecretStore
from sync_core.errors import AuthError, SyncError
from sync_core.jobs.syncer import Syncer
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import ImageRef
from sync_core.registry.retry import RetryPolicy
from sync_core.registry.transport import Transport
from sync_core.report.summary import Summary
from tests.harness import images
from tests.harness.acr import AcrStandIn
from tests.harness.copying import OneTarget
from tests.harness.fakeregistry import FakeRegistry, storage_server
from tests.harness.keyvault import ACCESS_TOKEN, FakeAzureCredential, KeyVaultStub
from tests.harness.paths import ROOT
from tests.harness.scripted import Reply, ScriptedServer

EVENTS = ROOT / "tests" / "fixtures" / "events"
FAST = RetryPolicy(attempts=2, backoff_base=0.0, backoff_cap=0.0, retry_after_cap=0.0)

SRC_USER, SRC_SECRET = "acr-sync-token", "src-Pa55-" + pysecrets.token_hex(8)
DST_USER, DST_SECRET = "mirror-bot", "dst-Pa55-" + pysecrets.token_hex(8)
WRONG_SECRET = "wrong-Pa55-" + pysecrets.token_hex(8)


def encodings(secret: str, user: str | None = None) -> set[str]:
    """The forms a secret could leak in: as is, URL-encoded, inside a Basic header."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for u in {user, SRC_USER, DST_USER} - {None}:
        forms.add(base64.b64encode(f"{u}:{secret}".encode()).decode())
    return forms


class Capture(logging.Handler):
    """Every record of every logger, formatted with its exception and every attribute."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(record.__dict__))


@pytest.fixture
def capture():
    root = logging.getLogger()
    handler = Capture()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def assert_no_secret(texts: list[str], secrets: dict[str, set[str]], where: str) -> None:
    blob = "\n".join(texts)
    for name, forms in secrets.items():
        for form in forms:
            assert form not in blob, f"{name} appears in {where}"


@pytest.fixture(scope="module")
def acr(token_issuer):
    users = {SRC_USER: (SRC_SECRET, {"*": ["pull", "metadata_read"]})}
    with AcrStandIn(users=users, issuer=token_issuer, name="secrets-acr") as stand_in:
        pusher = stand_in.pusher()
        pusher.push("gs/app", images.oci_index("secrets-app", ("linux/amd64", "linux/arm64"), (512,)), "1.0")
        pusher.push("gs/tool", images.oci_image("secrets-tool", (256,)), "2.0")
        pusher.close()
        yield stand_in


@pytest.fixture
def target(fresh_issuer, fresh_registry):
    issuer = fresh_issuer(users={DST_USER: (DST_SECRET, {"*": ["pull", "push"]})})
    return fresh_registry(auth="token", token_issuer=issuer, name="secrets-dst")


def test_no_secret_in_logs_summaries_or_exceptions_on_the_sync_copy_event_and_queue_paths(
    acr, target, capture, tmp_path
):
    texts: list[str] = []
    issued_tokens: set[str] = set()
    with KeyVaultStub({"dst-user": DST_USER, "dst-pass": DST_SECRET}) as vault:
        env = {
            "SOURCE_REGISTRY": acr.url,
            "SOURCE_KIND": "acr",
            "SOURCE_NAMESPACE": "gs",
            "SOURCE_USERNAME": SRC_USER,
            "SOURCE_PASSWORD": SRC_SECRET,
            "TARGET_REGISTRY": target.url,
            "TARGET_NAMESPACE": "mirror",
            "KEY_VAULT_URL": vault.url,
            "TARGET_USERNAME_SECRET": "dst-user",
            "TARGET_PASSWORD_SECRET": "dst-pass",
        }

        def syncer_for(environment: dict) -> Syncer:
            store = SecretStore(
                vault.url,
                vault=KeyVaultSecrets(vault.url, credential=FakeAzureCredential(), **vault.client_kwargs()),
            )
            syncer = Syncer(load_config(environment), secrets=store)
            for c in (syncer.source_client, *syncer.target_clients.values()):
                c.transport.retry = FAST
            syncer.copier.blobs.retry = FAST
            return syncer

        def tokens_of(syncer: Syncer) -> None:
            for c in (syncer.source_client, *syncer.target_clients.values()):
                issued_tokens.update(t.value for t in c.auth._tokens.values())

        def record(summary: Summary) -> None:
            texts.append(json.dumps(summary.to_dict(), default=str))
            texts.append(render_summary(summary))

        with syncer_for(env) as syncer:
            texts.append(repr(syncer.config))
            # sync
            summary = syncer.run()
            assert summary.ok and summary.tags_copied == 2, summary.failures
            record(summary)
            # copy (tag already there: nothing to do; then a tag that does not exist: skipped)
            summary = Summary()
            syncer.copy_image(ImageRef.parse("gs/app:1.0"), summary)
            syncer.copy_image(ImageRef.parse("gs/app:nope"), summary)
            assert len(summary.skipped) == 1 and not summary.failures
            record(summary)
            # event (inline, as the CLI does)
            event = json.loads((EVENTS / "image-pushed.eventgrid.json").read_text())
            event["data"]["target"].update(repository="gs/tool", tag="2.0", digest=None)
            event["data"]["request"]["host"] = acr.host
            path = tmp_path / "event.json"
            path.write_text(json.dumps(event))
            summary = Summary()
            decisions = copy_events(read_events(str(path)), syncer, summary)
            assert [d.action for d in decisions] == ["copy"] and summary.ok
            record(summary)
            # queue worker: success, and a (transient) failure raised for the host to retry
            message = messages.WorkMessage("repository", "gs/app", "target").dumps()
            summary, _ = handlers.process_message(message, syncer)
            record(summary)
            acr.fail_next(4, 503, kinds="manifest")
            with pytest.raises(SyncError) as failed:
                handlers.process_message(
                    messages.WorkMessage("tag", "gs/app", "target", "1.1").dumps(), syncer
                )
            texts.extend(exception_texts(failed.value))
            tokens_of(syncer)

        # the same with wrong passwords: refusals are reported without the values tried
        vault.secrets["dst-pass"] = WRONG_SECRET
        with syncer_for({**env, "SOURCE_PASSWORD": WRONG_SECRET, "TARGET_NAMESPACE": "mirror2"}) as syncer:
            with pytest.raises(SyncError, match="refused user") as failed:
                syncer.run()  # the source's token service refuses the password: the run cannot start
            assert "SOURCE_REPOSITORIES" not in str(failed.value)  # not a catalog-rights problem
            texts.extend(exception_texts(failed.value))
            summary = syncer.run(repositories=["gs/tool"])  # repository-level failure, recorded
            assert not summary.ok and "refused" in summary.failures[0].reason, summary.failures
            record(summary)
            summary = Summary()
            syncer.copy_image(ImageRef.parse("gs/tool:2.0"), summary)
            record(summary)
            with pytest.raises(SyncError) as failed:
                handlers.process_message(
                    messages.WorkMessage("tag", "gs/tool", "target", "2.0").dumps(), syncer
                )
            texts.extend(exception_texts(failed.value))
            tokens_of(syncer)

    assert len(issued_tokens) >= 3
    secrets = {
        "source password": encodings(SRC_SECRET, SRC_USER),
        "target password": encodings(DST_SECRET, DST_USER),
        "wrong password": encodings(WRONG_SECRET),
        "Key Vault access token": {ACCESS_TOKEN},
        "registry token": issued_tokens,
    }
    assert capture.texts, "nothing was logged: the capture is broken"
    assert any("urllib3" in t for t in capture.texts), "DEBUG records of urllib3 were not captured"
    assert_no_secret(capture.texts, secrets, "a log record")
    assert_no_secret(texts, secrets, "a summary, configuration repr or exception text")
    # and the capture would have seen them: the same check finds a planted one
    with pytest.raises(AssertionError):
        assert_no_secret(
            [f"x {base64.b64encode(f'{DST_USER}:{DST_SECRET}'.encode()).decode()}"], secrets, "plant"
        )


def test_cli_output_and_argument_lists_hold_no_secret(acr, target, tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "SOURCE_REGISTRY": acr.url,
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": "gs",
        "SOURCE_USERNAME": SRC_USER,
        "SOURCE_PASSWORD": SRC_SECRET,
        "TARGET_REGISTRY": target.url,
        "TARGET_NAMESPACE": "cli",
        "TARGET_USERNAME": DST_USER,
        "TARGET_PASSWORD": DST_SECRET,
    }
    event = json.loads((EVENTS / "image-pushed.eventgrid.json").read_text())
    event["data"]["target"].update(repository="gs/tool", tag="2.0", digest=None)
    event["data"]["request"]["host"] = acr.host
    (tmp_path / "event.json").write_text(json.dumps(event))
    runs = [
        (["-vv", "sync"], env),
        (["-vv", "copy", "gs/app:1.0"], {**env, "TARGET_NAMESPACE": "cli-copy"}),
        (["-vv", "event", str(tmp_path / "event.json")], {**env, "TARGET_NAMESPACE": "cli-event"}),
        (
            ["-vv", "sync", "--json"],
            {**env, "TARGET_PASSWORD": WRONG_SECRET, "TARGET_NAMESPACE": "cli-wrong"},
        ),
        (
            ["-vv", "sync"],
            {**env, "SOURCE_REGISTRY": f"https://{SRC_USER}:{SRC_SECRET}@{acr.host}"},
        ),  # a typo
    ]
    outputs: list[str] = []
    argv_seen: list[str] = []
    for args, run_env in runs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sync_core", *args],
            cwd=ROOT,
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        sampler = threading.Thread(target=sample_cmdlines, args=(proc, argv_seen), daemon=True)
        sampler.start()
        out, err = proc.communicate(timeout=120)
        sampler.join(5)
        outputs += [out.decode(errors="replace"), err.decode(errors="replace")]
        assert proc.returncode in (0, 1, 2), err.decode()[-2000:]
    assert argv_seen, "no argument list was sampled"
    assert "sync_core" in "\n".join(argv_seen)
    assert "DEBUG" in "\n".join(outputs)  # -vv really logged at debug level
    secrets = {
        "source password": encodings(SRC_SECRET, SRC_USER),
        "target password": encodings(DST_SECRET, DST_USER),
        "wrong password": encodings(WRONG_SECRET),
    }
    assert_no_secret(argv_seen, secrets, "a process argument list")
    assert_no_secret(outputs, secrets, "the CLI output")


def sample_cmdlines(proc: subprocess.Popen, seen: list[str]) -> None:
    """Read /proc/<pid>/cmdline of the process and its children while it runs."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        pids = [proc.pid]
        try:
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                seen.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                pass
        time.sleep(0.02)


# -- where credentials go ----------------------------------------------------------------------------


def test_authorization_goes_only_to_the_host_that_challenged_for_it(tmp_path):
    """Source: Basic auth, blobs redirected to a storage host. Target: Bearer via a token service
    on another port. Each host must see exactly its own credentials, the storage host none."""
    image = images.oci_index("where-app", ("linux/amd64", "linux/arm64"), (700, 300))
    src = FakeRegistry(basic=(SRC_USER, SRC_SECRET))
    src.push("gs/app", image, "1.0")
    storage = storage_server(src.blobs)
    src.redirect_blobs_to = storage.url
    dst_token = "dst-token-" + pysecrets.token_hex(8)
    token_server = ScriptedServer(
        lambda r: (
            Reply.json({"token": dst_token, "expires_in": 300})
            if r.headers.get("authorization")
            == "Basic " + base64.b64encode(f"{DST_USER}:{DST_SECRET}".encode()).decode()
            else Reply.json({"errors": [{"code": "UNAUTHORIZED"}]}, 401)
        )
    )
    dst = FakeRegistry(bearer=(f"{token_server.url}/token", dst_token))
    try:
        source = RegistryClient(
            src.url, StaticCredentials(Credentials(SRC_USER, SRC_SECRET)), transport=Transport(retry=FAST)
        )
        destination = RegistryClient(
            dst.url,
            StaticCredentials(Credentials(DST_USER, DST_SECRET)),
            actions="pull,push",
            transport=Transport(retry=FAST),
        )
        with OneTarget(source, destination, retry=FAST) as copier:
            result = copier.copy("gs/app", "1.0", "mirror/app")
        assert result.status == "copied" and result.work.blobs_uploaded == len(image.all_blobs())

        src_basic = "Basic " + base64.b64encode(f"{SRC_USER}:{SRC_SECRET}".encode()).decode()
        dst_basic = "Basic " + base64.b64encode(f"{DST_USER}:{DST_SECRET}".encode()).decode()
        seen = {
            "source": {r.headers.get("authorization") for r in src.server.requests},
            "storage": {r.headers.get("authorization") for r in storage.requests},
            "token service": {r.headers.get("authorization") for r in token_server.requests},
            "target": {r.headers.get("authorization") for r in dst.server.requests},
        }
        assert storage.requests and len(storage.requests) == len(image.all_blobs())  # redirects followed
        assert seen["source"] <= {None, src_basic} and src_basic in seen["source"]
        assert seen["storage"] == {None}, "the source's credentials went to the storage host"
        assert seen["token service"] == {dst_basic}
        assert seen["target"] <= {None, f"Bearer {dst_token}"} and f"Bearer {dst_token}" in seen["target"]
    finally:
        for server in (src, dst):
            server.stop()
        storage.stop()
        token_server.stop()


class MappedTransport(Transport):
    """Stands a made-up, non-loopback ``http://`` host in for a local server, recording what
    would have been sent to which URL (the check must happen before anything is sent)."""

    def __init__(self, mapping: dict[str, str]):
        super().__init__(retry=FAST)
        self.mapping = mapping
        self.sent: list[tuple[str, str, dict]] = []

    def _send_following(self, method, url, headers, data, stream, follow_redirects):
        self.sent.append((method, url, dict(headers)))
        for origin, local in self.mapping.items():
            if url.startswith(origin):
                url = local + url[len(origin) :]
                break
        else:
            raise AssertionError(f"unexpected request to {url}")
        return super()._send_following(method, url, headers, data, stream, follow_redirects)


CREDS = StaticCredentials(Credentials(DST_USER, DST_SECRET))
TOKEN = "bearer-" + pysecrets.token_hex(6)


@pytest.fixture
def token_service():
    with ScriptedServer(lambda r: Reply.json({"token": TOKEN})) as server:
        yield server


@pytest.mark.parametrize(
    "registry, realm, credentials, allowed",
    [
        # Basic credentials to a plain-http registry that is not loopback: refused
        ("http://registry.example.test", None, CREDS, False),
        # a token obtained with credentials, sent to a plain-http registry: refused
        ("http://registry.example.test", "https://auth.example.test/token", CREDS, False),
        # credentials to a plain-http token realm on another host: refused
        ("https://registry.example.test", "http://auth.example.test/token", CREDS, False),
        # ... unless the realm is on loopback
        ("https://registry.example.test", "http://127.0.0.1:{port}/token", CREDS, True),
        # https everywhere: fine
        ("https://registry.example.test", "https://auth.example.test/token", CREDS, True),
        # anonymous pulls from a plain-http registry (no credentials anywhere): fine
        ("http://registry.example.test", "https://auth.example.test/token", None, True),
    ],
)
def test_credentials_never_travel_over_plain_http_except_to_loopback(
    token_service, registry, realm, credentials, allowed
):
    realm = realm.format(port=token_service.port) if realm else None
    fake = FakeRegistry(
        bearer=(realm, TOKEN) if realm else None, basic=None if realm else (DST_USER, DST_SECRET)
    )
    fake.tags["a/b"] = []
    mapping = {
        registry: fake.url,
        "https://auth.example.test": token_service.url,
        "http://auth.example.test": token_service.url,
        token_service.url: token_service.url,
    }
    transport = MappedTransport(mapping)
    client = RegistryClient(registry, credentials or StaticCredentials(None), transport=transport)
    try:
        if allowed:
            assert client.list_tags("a/b") == []
        else:
            with pytest.raises(AuthError, match="refusing|plain http"):
                client.list_tags("a/b")
    finally:
        fake.stop()
    basic = base64.b64encode(f"{DST_USER}:{DST_SECRET}".encode()).decode()
    for _, url, headers in transport.sent:
        auth = headers.get("Authorization", "")
        insecure = url.startswith("http://") and not url.startswith("http://127.0.0.1")
        if insecure:
            assert basic not in auth, f"credentials sent in clear to {url}"
            if credentials is not None:
                assert not auth, f"{auth.split()[0]} sent in clear to {url}"
        if auth.startswith("Bearer"):
            assert url.startswith(registry), f"the registry token went to {url}"
        if auth.startswith("Basic"):
            assert url.startswith(realm or registry), (
                f"credentials went to {url}, not where the challenge said"
            )
