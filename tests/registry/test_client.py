"""RegistryClient against real docker-registry 2.8 processes and scripted Link-paging servers."""

from __future__ import annotations

import hashlib

import pytest

from sync_core.errors import AuthError, ForeignHostError, InvalidContent, NotFound, RegistryError
from sync_core.registry.auth import Credentials, StaticCredentials
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import normalize_registry_url
from tests.harness import ADMIN, PUSHER, READER
from tests.harness import images as img
from tests.harness.recording import RecordingTransport, Waits
from tests.harness.scripted import Reply, Request, ScriptedServer


def quiet_transport() -> RecordingTransport:
    """A real Transport that records its requests and never really sleeps between retries."""
    return RecordingTransport(sleep=Waits())


def client_for(registry, user=READER, actions="pull", **kwargs) -> RegistryClient:
    return RegistryClient(registry.url, StaticCredentials(Credentials(*user)), actions=actions, **kwargs)


# -- manifests and blobs on the real registry --------------------------------------------------------


def test_get_manifest_returns_exact_bytes_for_every_seeded_image(token_registry_src, seeded):
    client = client_for(token_registry_src)
    for (repo, tag), expected in seeded.items():
        manifest = client.get_manifest(repo, tag)
        assert manifest.raw == expected.raw, (repo, tag)
        assert manifest.digest == expected.digest
        assert manifest.media_type == expected.media_type
        by_digest = client.get_manifest(repo, expected.digest)
        assert by_digest.raw == expected.raw
        for child in expected.children:  # an index is only served with the OCI index type in Accept
            assert client.get_manifest(repo, child.digest).raw == child.raw


def test_head_manifest_and_missing_things(token_registry_src, seeded):
    client = client_for(token_registry_src)
    app = seeded.manifest("team/app", "1.0.0")
    info = client.head_manifest("team/app", "1.0.0")
    assert (info.digest, info.media_type, info.size) == (app.digest, app.media_type, app.size)
    assert client.head_manifest("team/app", "no-such-tag") is None
    with pytest.raises(NotFound):
        client.get_manifest("team/app", "no-such-tag")
    with pytest.raises(InvalidContent):
        client.get_manifest("Team/App", "1.0.0")  # invalid names never reach the wire
    with pytest.raises(InvalidContent):
        client.get_manifest("team/app", "bad:tag")


def test_blob_size_and_open_blob(token_registry_src, seeded):
    client = client_for(token_registry_src)
    blob = seeded.base_layer
    assert client.blob_size("team/app", blob.digest) == blob.size
    assert client.blob_size("team/app", "sha256:" + "0" * 64) is None
    with client.open_blob("team/legacy", blob.digest) as response:
        data = response.raw.read()
    assert hashlib.sha256(data).hexdigest() == blob.digest.split(":")[1]
    with pytest.raises(NotFound):
        client.open_blob("team/app", "sha256:" + "0" * 64)


def test_normalize_registry_url():
    assert normalize_registry_url("myreg.azurecr.io") == "https://myreg.azurecr.io"
    assert normalize_registry_url("HTTP://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    for bad in ("ftp://x", "https://x/v2", "https://u:p@x", "https://x?q=1"):
        with pytest.raises(ValueError):
            normalize_registry_url(bad)


# -- listing on the real registry -----------------------------------------------------------------


def test_catalog_pages_with_link_on_the_real_registry(fresh_registry):
    reg = fresh_registry()
    pusher = reg.pusher()
    repos = sorted(f"lib/r{i}" for i in range(7))
    image = img.oci_image("catalog-paging", (64,))
    for repo in repos:
        pusher.push(repo, image, "t")
    transport = RecordingTransport(sleep=Waits())
    client = client_for(reg, ADMIN, transport=transport)

    assert client.list_repositories(page_size=2) == repos
    pages = [e for e in transport.sent("GET", "/v2/_catalog") if e[2] == 200]
    assert len(pages) >= 4  # 7 repos, 2 a page: the Link headers were followed
    assert all("n=2" in url for _, url, _ in pages)
    assert any("last=" in url for _, url, _ in pages)
    assert client.list_repositories() == repos  # one page


def test_catalog_without_catalog_permission_is_an_auth_error(token_registry_src):
    with pytest.raises(AuthError):
        client_for(token_registry_src, READER).list_repositories()


def test_tags_are_all_listed_and_a_missing_repository_is_none(fresh_registry):
    reg = fresh_registry()
    pusher = reg.pusher()
    image = img.oci_image("tag-listing", (64,))
    tags = sorted(f"v{i}" for i in range(12))
    for tag in tags:
        pusher.push("team/tags", image, tag)
    client = client_for(reg, PUSHER)
    assert sorted(client.list_tags("team/tags")) == tags
    assert client.list_tags("team/does-not-exist") is None  # 404: no tag listing (not "no tags")


# -- Link paging rules (scripted servers) -------------------------------------------------------------


def test_relative_and_absolute_links_on_the_same_host_are_followed():
    holder = {}

    def handler(request: Request) -> Reply:
        pages = {
            "/v2/_catalog?n=1": ("a", "/v2/_catalog?last=a&n=1"),  # relative
            "/v2/_catalog?last=a&n=1": ("b", f"{holder['url']}/v2/_catalog?last=b&n=1"),  # absolute
            "/v2/_catalog?last=b&n=1": ("c", "_catalog?last=c&n=1"),  # relative to the path
            "/v2/_catalog?last=c&n=1": ("d", None),
        }
        name, target = pages[request.path]
        headers = {"Link": f'<{target}>; rel="next"'} if target else {}
        return Reply.json({"repositories": [name]}, 200, headers)

    with ScriptedServer(handler) as srv:
        holder["url"] = srv.url
        client = RegistryClient(srv.url, transport=quiet_transport())
        assert client.list_repositories(page_size=1) == ["a", "b", "c", "d"]
        assert len(srv.requests) == 4


def test_link_to_another_host_is_refused():
    with ScriptedServer(lambda request: Reply.json({"repositories": ["x"]})) as other:
        with ScriptedServer(
            lambda request: Reply.json(
                {"repositories": ["a"]}, headers={"Link": f'<{other.url}/v2/_catalog?last=a>; rel="next"'}
            )
        ) as srv:
            client = RegistryClient(srv.url, transport=quiet_transport())
            with pytest.raises(ForeignHostError):
                client.list_repositories()
            assert other.requests == []  # never contacted


def test_link_looping_back_is_an_error():
    def handler(request: Request) -> Reply:
        nxt = "/v2/_catalog?last=b&n=1" if "last=a" in request.path else "/v2/_catalog?last=a&n=1"
        return Reply.json({"repositories": ["x"]}, headers={"Link": f'<{nxt}>; rel="next"'})

    with ScriptedServer(handler) as srv:
        client = RegistryClient(srv.url, transport=quiet_transport())
        with pytest.raises(RegistryError, match="loops"):
            client.list_repositories(page_size=1)
        assert len(srv.requests) == 3  # n=1 -> last=a -> last=b -> (last=a again: stop)

    with ScriptedServer(
        lambda request: Reply.json({"tags": ["t"]}, headers={"Link": f'<{request.path}>; rel="next"'})
    ) as srv:
        client = RegistryClient(srv.url, transport=quiet_transport())
        with pytest.raises(RegistryError, match="loops"):
            client.list_tags("team/app")
        assert len(srv.requests) == 1


def test_listing_answers_that_are_not_lists_of_strings_are_invalid():
    answers = iter([{"repositories": "a,b"}, {"repositories": [1, 2]}, ["not", "an", "object"]])
    with ScriptedServer(lambda request: Reply.json(next(answers))) as srv:
        client = RegistryClient(srv.url, transport=quiet_transport())
        for _ in range(3):
            with pytest.raises(InvalidContent):
                client.list_repositories()
