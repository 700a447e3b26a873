"""Hostile and malformed input: a clear error or a clean skip, never a crash, a hang or a copy
outside the configured namespaces.

Property-based (hypothesis) over what reaches registry-sync from outside: registry answers
(manifests, listings, paging ``Link`` headers, upload ``Location`` headers, catalogs with hostile
names), queue messages, configuration values and event payloads. The registries are
``FakeRegistry`` servers on 127.0.0.1 whose answers the examples script; an ``evil`` server
stands for "another host" and must never be contacted. Every example is bounded in time.
(``tests/azure/test_events.py`` fuzzes event *fields*; here: raw payload bytes and the Functions
entry point.)
"""

from __future__ import annotations

import json
import time

import azure.functions as func
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_core.azure.events import load_events
from sync_core.azure.handlers import events_messages, process_message
from sync_core.azure.messages import WorkMessage, parse_message
from sync_core.config.load import load_config
from sync_core.config.model import SyncConfig
from sync_core.errors import ConfigError, ForeignHostError, InvalidContent, RegistryError, SyncError
from sync_core.jobs.syncer import Syncer
from sync_core.registry import client as registry_module
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import is_digest, is_repository, is_tag
from sync_core.registry.retry import RetryPolicy
from sync_core.registry.transport import Transport
from tests.harness import images
from tests.harness.copying import OneTarget
from tests.harness.fakeregistry import FakeRegistry
from tests.harness.function_context import Context
from tests.harness.images import sha256_digest
from tests.harness.scripted import Reply, Request, ScriptedServer

FAST = RetryPolicy(attempts=2, backoff_base=0.0, backoff_cap=0.0, retry_after_cap=0.0)
EXAMPLE_SECONDS = 20.0
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

VALID = images.oci_image("hostile-valid", (300,))
INDEX = images.oci_index("hostile-index", ("linux/amd64",), (200,), attestations=False)
OVER_4_MIB = json.dumps(
    {**json.loads(VALID.raw), "annotations": {"pad": "x" * (4 * 1024 * 1024)}}
).encode()  # a well-formed manifest, too big
DEEP = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def client(url: str) -> RegistryClient:
    return RegistryClient(url, transport=Transport(retry=FAST, timeout=(5.0, 10.0)))


@pytest.fixture(scope="module")
def evil():
    """Another host: whatever a registry answer points at there must never be requested."""
    with ScriptedServer(lambda r: Reply.json({"stolen": True})) as server:
        yield server


@pytest.fixture(scope="module")
def src():
    registry = FakeRegistry()
    registry.push("hostile/app", VALID, "valid")
    registry.push("hostile/app", INDEX, "index")
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def dst():
    registry = FakeRegistry()
    yield registry
    registry.stop()


def fresh(evil: ScriptedServer, src: FakeRegistry | None = None, dst: FakeRegistry | None = None) -> None:
    evil.reset()
    if src is not None:
        src.reset()
    if dst is not None:
        dst.reset(content=True)  # every example mirrors into an empty target


def assert_clean(evil: ScriptedServer, dst: FakeRegistry | None = None, prefix: str = "/v2/mirror/") -> None:
    assert not evil.requests, f"contacted another host: {[(r.method, r.path) for r in evil.requests]}"
    if dst is not None:
        outside = [(w.method, w.path) for w in dst.writes() if not w.path.startswith(prefix)]
        assert not outside, f"wrote outside {prefix}: {outside}"


# -- manifests --------------------------------------------------------------------------------------


@st.composite
def manifest_answers(draw):
    base = draw(st.sampled_from([VALID, INDEX]))
    doc = json.loads(base.raw)
    kind = draw(st.sampled_from(["valid", "mutated", "descriptor", "bytes", "json", "deep", "huge"]))
    if kind == "valid":
        body = base.raw
    elif kind == "mutated":
        key = draw(
            st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests", "artifactType"])
        )
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(json_values | st.sampled_from([2, images.OCI_INDEX, images.DOCKER_MANIFEST, []]))
        body = json.dumps(doc).encode()
    elif kind == "descriptor":
        entries = doc.get("layers") or doc.get("manifests")
        field = draw(st.sampled_from(["mediaType", "digest", "size", "urls", "artifactType", "platform"]))
        entries[0][field] = draw(
            json_values
            | st.sampled_from(
                [
                    "sha256:" + "0" * 64,
                    "sha256:../../etc/passwd",
                    "md5:abc",
                    -1,
                    2**63,
                    10**9,
                    images.OCI_INDEX,
                    ["https://evil.example/layer"],
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                ]
            )
        )
        body = json.dumps(doc).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        body = draw(st.sampled_from(DEEP))
    else:
        body = OVER_4_MIB
    content_type = draw(
        st.sampled_from(
            [
                base.media_type,
                None,
                "text/html",
                "application/json",
                images.OCI_INDEX,
                images.DOCKER_MANIFEST,
                f"{images.OCI_MANIFEST}; charset=utf-8",
            ]
        )
    )
    digest = draw(st.sampled_from(["right", "right", "wrong", "garbage", None]))
    status = draw(st.sampled_from([200] * 8 + [404, 500, 401, 302, 204, 429]))
    return status, body, content_type, digest


def serve_manifest(answer):
    status, body, content_type, digest = answer

    def hook(r: Request) -> Reply | None:
        if "/manifests/hostile" not in r.path:
            return None
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if digest == "right":
            headers["Docker-Content-Digest"] = sha256_digest(body)
        elif digest == "wrong":
            headers["Docker-Content-Digest"] = (
                VALID.digest if sha256_digest(body) != VALID.digest else INDEX.digest
            )
        elif digest == "garbage":
            headers["Docker-Content-Digest"] = "sha256:zz/../x"
        return Reply(status, headers, body)

    return hook


@HYPO
@given(answer=manifest_answers())
def test_any_manifest_answer_ends_in_a_verified_copy_or_a_clear_error(evil, src, dst, answer):
    fresh(evil, src, dst)
    src.hooks.append(serve_manifest(answer))
    copier = OneTarget(client(src.url), client(dst.url), retry=FAST, blob_concurrency=2)
    started = time.monotonic()
    try:
        result = copier.copy("hostile/app", "hostile", "mirror/app")
    except SyncError as exc:
        assert str(exc).strip(), "an error without a message"
        result = None
    finally:
        copier.close()
    assert time.monotonic() - started < EXAMPLE_SECONDS
    assert_clean(evil, dst)
    if result is not None and result.status == "copied":
        status, body, _, _ = answer
        assert status == 200 and len(body) <= 4 * 1024 * 1024
        pushed = [w for w in dst.writes() if w.method == "PUT" and w.path.endswith("/manifests/hostile")]
        assert [w.body for w in pushed] == [body], "the tag was not pushed with the exact source bytes"
        assert result.digest == sha256_digest(body)


# -- listings and paging ----------------------------------------------------------------------------

LINKS = [
    "none",
    "next",
    "absolute-next",
    "evil",
    "evil-protocol-relative",
    "localhost-alias",
    "https-same-host",
    "loop",
    "garbage",
    "first",
]


@st.composite
def pages(draw):
    out = []
    for _ in range(draw(st.integers(1, 5))):
        body = draw(
            st.one_of(
                st.builds(
                    lambda tags: json.dumps({"name": "hostile/list", "tags": tags}).encode(),
                    st.lists(
                        st.text(max_size=12) | st.from_regex(r"[a-z0-9.]{1,8}", fullmatch=True), max_size=5
                    ),
                ),
                json_values.map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=50),
                st.sampled_from(DEEP),
            )
        )
        out.append((body, draw(st.sampled_from(LINKS))))
    return out


def serve_pages(registry: FakeRegistry, evil: ScriptedServer, script):
    def hook(r: Request) -> Reply | None:
        if "/tags/list" not in r.path:
            return None
        page = int(r.path.split("page=")[1].split("&")[0]) if "page=" in r.path else 0
        body, link = script[min(page, len(script) - 1)]
        target = {
            "none": None,
            "next": f"/v2/hostile/list/tags/list?page={page + 1}",
            "absolute-next": f"{registry.url}/v2/hostile/list/tags/list?page={page + 1}",
            "evil": f"{evil.url}/v2/hostile/list/tags/list?page={page + 1}",
            "evil-protocol-relative": f"//{evil.host}/v2/hostile/list/tags/list?page={page + 1}",
            "localhost-alias": f"http://localhost:{registry.server.port}/v2/hostile/list/tags/list?page={page + 1}",
            "https-same-host": f"https://{registry.host}/v2/hostile/list/tags/list?page={page + 1}",
            "loop": r.path,
            "garbage": "<<>>",
            "first": "/v2/hostile/list/tags/list",
        }[link]
        headers = {"Content-Type": "application/json"}
        if target is not None:
            headers["Link"] = target if link == "garbage" else f'<{target}>; rel="next"'
        return Reply(200, headers, body)

    registry.hooks.append(hook)


@HYPO
@given(script=pages())
def test_any_listing_with_any_link_header_ends_in_tags_or_a_clear_error(evil, src, script, monkeypatch):
    monkeypatch.setattr(registry_module, "MAX_PAGES", 40)
    fresh(evil, src)
    serve_pages(src, evil, script)
    started = time.monotonic()
    try:
        tags = client(src.url).list_tags("hostile/list")
    except SyncError as exc:
        assert str(exc).strip()
    else:
        assert isinstance(tags, list) and all(isinstance(t, str) for t in tags)
    assert time.monotonic() - started < EXAMPLE_SECONDS
    assert len(src.server.requests) <= 40 + 2
    assert_clean(evil)


@pytest.mark.parametrize(
    "mode, error",
    [
        ("same-items", "repeat"),  # a new URL every time, the same page every time
        ("empty", "repeat"),  # empty pages that always link on
        ("fresh-items", "more than 25 pages"),  # always new entries: only the page bound stops it
    ],
)
def test_endless_pagination_is_cut_short_with_a_clear_error(evil, src, monkeypatch, mode, error):
    monkeypatch.setattr(registry_module, "MAX_PAGES", 25)
    fresh(evil, src)

    def hook(r: Request) -> Reply | None:
        if "/tags/list" not in r.path and "/_catalog" not in r.path:
            return None
        n = int(r.path.split("last=x")[1].split("&")[0]) if "last=x" in r.path else 0
        names = {"same-items": ["a", "b"], "empty": [], "fresh-items": [f"t{n}"]}[mode]
        key = "tags" if "/tags/list" in r.path else "repositories"
        base = r.path.split("?")[0]
        return Reply.json({key: names}, headers={"Link": f'<{base}?last=x{n + 1}&n=2>; rel="next"'})

    src.hooks.append(hook)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=error):
        client(src.url).list_tags("hostile/endless")
    with pytest.raises(RegistryError, match=error):
        client(src.url).list_repositories()
    assert time.monotonic() - started < 10
    assert len(src.server.requests) <= 2 * 25


# -- upload Location -----------------------------------------------------------------------------

LOCATIONS = [
    "relative",
    "absolute",
    "evil",
    "evil-protocol-relative",
    "https-same-host",
    "localhost-alias",
    "empty",
    "javascript",
    "missing",
]


@HYPO
@given(first=st.sampled_from(LOCATIONS), then=st.sampled_from(LOCATIONS), chunked=st.booleans())
def test_upload_locations_are_followed_only_on_the_registrys_own_host(evil, src, dst, first, then, chunked):
    fresh(evil, src, dst)
    answers = iter([first, then])

    def location(kind: str, uid: str) -> str | None:
        path = f"/v2/mirror/app/blobs/uploads/{uid}?state=1"
        return {
            "relative": path,
            "absolute": dst.url + path,
            "evil": evil.url + path,
            "evil-protocol-relative": f"//{evil.host}{path}",
            "https-same-host": f"https://{dst.host}{path}",
            "localhost-alias": f"http://localhost:{dst.server.port}{path}",
            "empty": "",
            "javascript": "javascript:alert(1)",
            "missing": None,
        }[kind]

    def hook(r: Request) -> Reply | None:
        if r.method in ("POST", "PATCH") and "/blobs/uploads/" in r.path:
            answer = dst.handle_default(r)
            uid = answer.headers["Location"].split("/uploads/")[1].split("?")[0]
            kind = next(answers, "relative")
            value = location(kind, uid)
            headers = {k: v for k, v in answer.headers.items() if k != "Location"}
            if value is not None:
                headers["Location"] = value
            return Reply(answer.status, headers, answer.body)
        return None

    dst.hooks.append(hook)
    copier = OneTarget(client(src.url), client(dst.url), retry=FAST, blob_concurrency=1, chunked=chunked)
    try:
        result = copier.copy("hostile/app", "valid", "mirror/app")
    except SyncError as exc:
        assert str(exc).strip()
        assert isinstance(exc, (ForeignHostError, RegistryError))
    else:
        assert result.status == "copied"
    finally:
        copier.close()
    assert_clean(evil, dst)


# -- a catalog full of hostile names ----------------------------------------------------------------

NASTY_REPOS = [
    "gs/../etc",
    "gs//x",
    "/gs/x",
    "gs/x/",
    "GS/x",
    "gsx/app",
    "gs",
    "gs/%2e%2e/x",
    "gs/x?y=1",
    "gs/x#y",
    "gs/a b",
    "gs/" + "a" * 300,
    "http://evil/gs/x",
    "gs/x\n",
    "../gs/x",  # not a path: hostile input
    "gs/.hidden",
    "gs/x/../../other",
    "other/gs/x",
]
NASTY_TAGS = ["../x", "a" * 200, "-bad", ".bad", "x/y", "sha256:" + "a" * 64, "x y", "", "x\n"]  # not a path


@HYPO
@given(
    repos=st.lists(
        st.from_regex(r"gs/[a-z0-9]{1,6}(/[a-z0-9]{1,4})?", fullmatch=True)
        | st.from_regex(r"[a-z]{1,3}/[a-z0-9]{1,5}", fullmatch=True)
        | st.sampled_from(NASTY_REPOS)
        | st.text(max_size=12),
        max_size=5,
        unique=True,
    ),
    tags=st.lists(
        st.from_regex(r"[a-z0-9][a-z0-9.]{0,5}", fullmatch=True) | st.sampled_from(NASTY_TAGS),
        min_size=1,
        max_size=3,
        unique=True,
    ),
)
def test_a_hostile_catalog_never_leads_to_a_copy_outside_the_namespaces(evil, dst, repos, tags):
    fresh(evil, None, dst)
    source = FakeRegistry()
    try:
        for repo in repos:
            source.tags[repo] = list(tags)
            if is_repository(repo):
                for tag in tags:
                    if is_tag(tag):
                        source.push(repo, VALID, tag)
        env = {
            "SOURCE_REGISTRY": source.url,
            "SOURCE_KIND": "oci",
            "SOURCE_NAMESPACE": "gs",
            "TARGET_REGISTRY": dst.url,
            "TARGET_NAMESPACE": "mirror",
            "SYNC_CONCURRENCY": "2",
            "SOURCE_ALLOW_EMPTY": "true",
        }
        with Syncer(load_config(env)) as syncer:
            for c in (syncer.source_client, *syncer.target_clients.values()):
                c.transport.retry = FAST
            summary = syncer.run()
        assert {r.method for r in source.server.requests} <= {"GET", "HEAD"}
    finally:
        source.stop()
    assert_clean(evil, dst)
    wanted = {
        (f"mirror/{repo[3:]}", tag)
        for repo in repos
        if is_repository(repo) and repo.startswith("gs/") and len(repo) + 4 <= 255
        for tag in tags
        if is_tag(tag)
    }
    for write in dst.writes():
        repo = write.path.split("/v2/", 1)[1].split("/manifests/")[0].split("/blobs/")[0]
        assert repo in {w[0] for w in wanted}, f"wrote to {repo}, not a mirror of a selected repository"
    assert summary.ok, summary.failures
    assert {(r, t) for (r, t) in dst.manifests if not t.startswith("sha256:")} == wanted


# -- queue messages ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> SyncConfig:
    return load_config(
        {
            "SOURCE_REGISTRY": "http://127.0.0.1:9",
            "SOURCE_KIND": "acr",
            "SOURCE_NAMESPACE": "gs",
            "TARGET_REGISTRY": "http://127.0.0.1:9",
            "TARGET_NAMESPACE": "mirror",
        }
    )


def near_valid_messages():
    fields = {
        "v": st.sampled_from([1, 1, 2, "1", None, True]),
        "kind": st.sampled_from(["tag", "repository", "TAG", "", None, 1]),
        "repository": st.sampled_from(["gs/app", "gs/a/b", "other/app", "gs/../x", "gs", "gs/App", "", None])
        | st.text(max_size=15),
        "target": st.sampled_from(["target", "other", "", None, ["target"]]),
        "tag": st.sampled_from(["1.0", "../x", "", None, "a" * 200, 1]) | st.text(max_size=10),  # not a path
        "digest": st.sampled_from([None, "sha256:" + "a" * 64, "sha256:zz", "md5:x", 5]),
        "extra": st.sampled_from([None, 1, "x"]),
    }
    return st.fixed_dictionaries({}, optional=fields)


@HYPO
@given(
    message=st.one_of(
        near_valid_messages().map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=100),
        st.binary(max_size=100),
        st.sampled_from(
            [d.decode() for d in DEEP]
            + [
                "[" * 20_000 + "]" * 20_000,
                "x" * 60_000,
                '{"v": 1, "kind": "tag", "repository": "gs/a"' + "}" * 2,
            ]
        ),
    )
)
def test_any_queue_message_is_a_valid_work_item_or_invalid_content(config, message):
    try:
        work = parse_message(message, config)
    except InvalidContent as exc:
        assert str(exc).strip()
        return
    assert isinstance(work, WorkMessage)
    assert work.kind in ("tag", "repository") and work.target == "target"
    assert is_repository(work.repository) and work.repository.startswith("gs/")
    assert (work.tag is None) == (work.kind == "repository") and (work.tag is None or is_tag(work.tag))
    assert work.digest is None or is_digest(work.digest)
    assert parse_message(work.dumps(), config) == work


def test_an_invalid_queue_message_fails_before_any_network_request(config):
    # a poison message must fail fast and plainly: the registries here do not even exist
    with Syncer(config) as syncer:
        for bad in (
            b'{"v": 1, "kind": "tag", "repository": "other/x", "target": "target", "tag": "1"}',
            b"[" * 40_000,
            b"\xff\xfe",
            b'{"v": 1, "kind": "repository", "repository": "gs/x", "target": "t"}',
        ):
            started = time.monotonic()
            with pytest.raises(InvalidContent):
                process_message(bad, syncer)
            assert time.monotonic() - started < 1.0
        assert syncer.source_client.transport.requests_sent == 0


# -- configuration values ---------------------------------------------------------------------------

SETTINGS = [
    "SOURCE_REGISTRY",
    "SOURCE_KIND",
    "SOURCE_NAMESPACE",
    "SOURCE_REPOSITORIES",
    "TARGET_REGISTRY",
    "TARGET_NAMESPACE",
    "TAG_INCLUDE",
    "TAG_EXCLUDE",
    "REPOSITORY_INCLUDE",
    "TAG_MIN_AGE_DAYS",
    "TAG_MAX_AGE_DAYS",
    "TAG_KEEP_LATEST",
    "SYNC_COMPARE",
    "SYNC_CONCURRENCY",
    "SYNC_QUEUE",
    "SYNC_TIME_BUDGET_SECONDS",
    "KEY_VAULT_URL",
    "SOURCE_USERNAME",
    "SOURCE_PASSWORD",
    "SOURCE_USERNAME_SECRET",
    "TARGET_SKIP_ARTIFACT_TYPES",
]
ODD_VALUES = [
    "",
    " ",
    "gsoci.azurecr.io",
    "http://127.0.0.1:5000",
    "https://u:p@h",
    "ftp://x",
    "a{4294967296}",
    "(" * 200 + ")" * 200,
    "[",
    "1e400",
    "nan",
    "-1",
    "9" * 5000,
    "acr",
    "oci",
    "digest",
    "0",
    "\x00",
    "a,b,,c",
    "../x",  # not a path: hostile input
    "https://vault.example",
    "${HOME}",
    "x" * 10_000,
]


def _load(env=None, path=None):
    try:
        config = load_config(env or {}, path)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return None
    assert isinstance(config, SyncConfig) and config.targets
    return config


@HYPO
@given(
    env=st.dictionaries(
        st.sampled_from(SETTINGS), st.sampled_from(ODD_VALUES) | st.text(max_size=30), max_size=10
    )
)
def test_any_environment_is_a_configuration_or_a_config_error(env):
    _load({"SOURCE_REGISTRY": "gsoci.azurecr.io", "TARGET_REGISTRY": "docker.io", **env})


@HYPO
@given(
    doc=st.dictionaries(
        st.sampled_from([s.lower() for s in SETTINGS] + ["targets", "x"]),
        json_values | st.sampled_from(ODD_VALUES),
        max_size=8,
    ),
    targets=st.none()
    | json_values
    | st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "registry",
                    "namespace",
                    "tag_include",
                    "max_path_depth",
                    "skip_artifact_types",
                    "username_secret",
                    "password_env",
                    "bogus",
                ]
            ),
            json_values | st.sampled_from(ODD_VALUES),
            max_size=5,
        ),
        max_size=3,
    ),
)
def test_any_configuration_file_is_a_configuration_or_a_config_error(tmp_path_factory, doc, targets):
    path = tmp_path_factory.mktemp("cfg") / "sync.yaml"
    if targets is not None:
        doc = {**doc, "targets": targets}
    path.write_text(yaml.safe_dump(doc))
    _load({}, str(path))


# -- event payloads and the Functions entry point ---------------------------------------------------


@HYPO
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.sampled_from(DEEP + [b"\xff" * 10, b'[{"id": "\xc3"}]']),
        json_values.map(lambda v: json.dumps(v).encode("utf-16")),
    )
)
def test_any_event_payload_bytes_enqueue_nothing_and_never_raise(config, payload):
    assert events_messages(payload, config) == []
    try:
        load_events(payload)
    except InvalidContent:
        pass


@HYPO
@given(
    data=json_values | st.fixed_dictionaries({"target": json_values, "request": json_values}),
    event_type=st.sampled_from(
        ["Microsoft.ContainerRegistry.ImagePushed", "Microsoft.ContainerRegistry.ImageDeleted", "", "x" * 500]
    ),
)
def test_the_event_grid_function_never_raises_on_hostile_events(function_env, data, event_type):
    import function_app

    class Out(func.Out):
        value = None

        def set(self, val) -> None:
            self.value = val

        def get(self):
            return self.value

    out = Out()
    event = func.EventGridEvent(
        id="e", data=data, topic="t", subject="s", event_type=event_type, event_time=None, data_version="1"
    )
    function_app.on_image_pushed(event, out, Context())
    config = function_env
    for text in out.value or []:
        message = parse_message(text, config)
        assert message.repository.startswith("gs/")


@pytest.fixture(scope="module")
def function_env():
    from sync_core.azure import runtime

    env = {
        "SOURCE_REGISTRY": "http://127.0.0.1:9",
        "SOURCE_KIND": "acr",
        "SOURCE_NAMESPACE": "gs",
        "TARGET_REGISTRY": "http://127.0.0.1:9",
        "TARGET_NAMESPACE": "mirror",
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    runtime.reset()
    yield runtime.shared_syncer().config
    runtime.reset()
    mp.undo()
