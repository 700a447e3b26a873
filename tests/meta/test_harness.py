"""The harness is real: docker-registry 2.8 enforces our tokens, skopeo talks to it, images are exact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jwt
import pytest
import requests

from tests.harness import ADMIN, BASIC, PUSHER, READER, REGISTRY_LEEWAY, Pusher, Registry, RegistryStartError
from tests.harness import images as img
from tests.harness.registry import AccessLogIncomplete
from tests.harness.seed import BIG_LAYER_SIZE, standard_catalog
from tests.harness.tokens import libtrust_key_id, parse_scope


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_from_realm(issuer, scopes, auth=None, **params) -> requests.Response:
    return requests.get(
        issuer.realm, params={"service": issuer.service, "scope": scopes, **params}, auth=auth, timeout=10
    )


def unverified(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# -- token auth enforced by the real registry ---------------------------------------------------


def test_no_token_gets_bearer_challenge_naming_issuer(token_registry_src, token_issuer):
    r = requests.get(f"{token_registry_src.url}/v2/", timeout=10)
    assert r.status_code == 401
    scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params["realm"] == token_issuer.realm
    assert params["service"] == token_issuer.service

    r = requests.get(f"{token_registry_src.url}/v2/team/app/tags/list", timeout=10)
    assert r.status_code == 401
    assert parse_challenge(r.headers["WWW-Authenticate"])[1]["scope"] == "repository:team/app:pull"


def test_minted_token_is_accepted(token_registry_src, token_issuer):
    token = token_issuer.mint(["repository:team/app:pull"])
    r = requests.get(f"{token_registry_src.url}/v2/team/app/tags/list", headers=bearer(token), timeout=10)
    assert r.status_code == 200
    assert "1.0.0" in r.json()["tags"]


def test_token_for_another_repository_is_refused(token_registry_src, token_issuer):
    token = token_issuer.mint(["repository:library/alpine:pull"])
    r = requests.get(f"{token_registry_src.url}/v2/team/app/tags/list", headers=bearer(token), timeout=10)
    assert r.status_code == 401
    _, params = parse_challenge(r.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "repository:team/app:pull"


def test_pull_token_cannot_push(token_registry_src, token_issuer):
    token = token_issuer.mint(["repository:team/app:pull"])
    r = requests.post(
        f"{token_registry_src.url}/v2/team/app/blobs/uploads/", headers=bearer(token), timeout=10
    )
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    # distribution lists the actions in no fixed order
    assert "repository:team/app:pull,push" in challenge or "repository:team/app:push,pull" in challenge


def test_catalog_needs_catalog_scope(token_registry_src, token_issuer, seeded):
    url = f"{token_registry_src.url}/v2/_catalog"
    r = requests.get(url, headers=bearer(token_issuer.mint(["repository:team/app:pull"])), timeout=10)
    assert r.status_code == 401
    assert 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    repos = token_registry_src.pusher().catalog(page_size=2)  # also exercises Link paging
    assert set(seeded.repos()) <= set(repos)


def test_expired_token_is_rejected(token_registry_src, token_issuer):
    url = f"{token_registry_src.url}/v2/team/app/tags/list"
    expired = token_issuer.mint(["repository:team/app:pull"], lifetime=-(REGISTRY_LEEWAY + 5))
    r = requests.get(url, headers=bearer(expired), timeout=10)
    assert r.status_code == 401
    assert parse_challenge(r.headers["WWW-Authenticate"])[0] == "Bearer"
    # distribution 2.8 allows 60 s of clock skew: a token expired 5 s ago still works
    recently_expired = token_issuer.mint(["repository:team/app:pull"], lifetime=-5)
    assert requests.get(url, headers=bearer(recently_expired), timeout=10).status_code == 200


def test_exp_skew_makes_the_registry_enforce_the_lifetime(fresh_issuer, fresh_registry):
    issuer = fresh_issuer(lifetime=1, exp_skew=-REGISTRY_LEEWAY - 1, advertised_expires_in=3600)
    reg = fresh_registry(token_issuer=issuer)
    answer = token_from_realm(issuer, "repository:x/y:pull", auth=ADMIN).json()
    assert answer["expires_in"] == 3600  # the lie
    r = requests.get(f"{reg.url}/v2/x/y/tags/list", headers=bearer(answer["token"]), timeout=10)
    assert r.status_code == 401  # refused at once although the client was told "an hour"


def test_rotate_key_invalidates_old_tokens_after_restart(fresh_issuer, fresh_registry):
    issuer = fresh_issuer()
    reg = fresh_registry(token_issuer=issuer)
    url = f"{reg.url}/v2/"
    old = issuer.mint(["repository:a/b:pull"])
    assert requests.get(url, headers=bearer(old), timeout=10).status_code == 200
    issuer.rotate_key()
    reg.restart()
    assert requests.get(url, headers=bearer(old), timeout=10).status_code == 401
    assert (
        requests.get(url, headers=bearer(issuer.mint(["repository:a/b:pull"])), timeout=10).status_code == 200
    )


def test_challenge_flow_through_issuer_end_to_end(token_registry_src, token_issuer, seeded):
    """What a real client does: 401 challenge -> realm with Basic -> Bearer -> 200."""
    url = f"{token_registry_src.url}/v2/team/legacy/manifests/v1"
    r = requests.get(url, headers={"Accept": img.ACCEPT}, timeout=10)
    _, params = parse_challenge(r.headers["WWW-Authenticate"])
    answer = requests.get(
        params["realm"],
        params={"service": params["service"], "scope": params["scope"]},
        auth=READER,
        timeout=10,
    ).json()
    r = requests.get(url, headers={"Accept": img.ACCEPT, **bearer(answer["token"])}, timeout=10)
    assert r.status_code == 200
    assert r.content == seeded["team/legacy", "v1"].raw


# -- skopeo through the issuer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def skopeo():
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo not installed")
    return path


def test_skopeo_inspect_raw_returns_pushed_bytes(skopeo, token_registry_src, token_issuer, seeded):
    before = len(token_issuer.grants)
    out = subprocess.run(
        [
            skopeo,
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            f"{ADMIN[0]}:{ADMIN[1]}",
            f"docker://{token_registry_src.host}/team/app:1.0.0",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == seeded["team/app", "1.0.0"].raw
    new = token_issuer.grants[before:]
    assert any(g.user == "admin" and "repository:team/app:pull" in g.granted for g in new)


def test_skopeo_copy_all_preserves_digests(skopeo, token_registry_src, fresh_registry, seeded):
    dst = fresh_registry(auth="htpasswd")
    for repo, tag in (("team/app", "1.0.0"), ("team/legacy", "v2-multi")):
        subprocess.run(
            [
                skopeo,
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--src-creds",
                f"{ADMIN[0]}:{ADMIN[1]}",
                "--dest-creds",
                f"{BASIC[0]}:{BASIC[1]}",
                f"docker://{token_registry_src.host}/{repo}:{tag}",
                f"docker://{dst.host}/{repo}:{tag}",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        raw, _, digest = dst.pusher().fetch_manifest(repo, tag)
        assert raw == seeded[repo, tag].raw
        assert digest == seeded[repo, tag].digest


# -- htpasswd and anonymous registries ------------------------------------------------------------


def test_htpasswd_registry(basic_registry):
    url = f"{basic_registry.url}/v2/"
    r = requests.get(url, timeout=10)
    assert r.status_code == 401
    assert parse_challenge(r.headers["WWW-Authenticate"])[0] == "Basic"
    assert requests.get(url, auth=BASIC, timeout=10).status_code == 200
    assert requests.get(url, auth=(BASIC[0], "wrong"), timeout=10).status_code == 401
    assert requests.get(url, auth=("nobody", BASIC[1]), timeout=10).status_code == 401
    m = img.oci_image("htpasswd-check")
    p = Pusher(basic_registry.url, basic_auth=BASIC)
    assert p.push("check/basic", m, "t") == m.digest
    assert p.fetch_manifest("check/basic", "t")[0] == m.raw


def test_anonymous_registry(anon_registry):
    p = anon_registry.pusher()
    m = img.docker_manifest_list("anon-check")
    p.push("check/anon", m, "t")
    raw, media_type, digest = p.fetch_manifest("check/anon", "t")
    assert (raw, media_type, digest) == (m.raw, img.DOCKER_LIST, m.digest)


# -- the token issuer itself ----------------------------------------------------------------------


def test_kid_is_libtrust_key_id(token_issuer):
    kid = jwt.get_unverified_header(token_issuer.mint(["repository:a:pull"]))["kid"]
    assert kid == token_issuer.kid
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", kid)
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    assert kid == libtrust_key_id(load_pem_public_key(token_issuer.public_key_pem))


def test_issuer_authentication(token_issuer):
    assert token_from_realm(token_issuer, "repository:a:pull", auth=("admin", "nope")).status_code == 401
    assert token_from_realm(token_issuer, "repository:a:pull", auth=("ghost", "x")).status_code == 401
    anon = token_from_realm(token_issuer, "repository:a:pull")
    assert anon.status_code == 200
    assert unverified(anon.json()["token"])["access"] == []


def test_issuer_grants_intersection(token_issuer):
    token_issuer_grants_before = len(token_issuer.grants)
    r = requests.get(
        token_issuer.realm,
        params=[
            ("service", token_issuer.service),
            ("scope", "repository:team/app:pull,push,delete registry:catalog:*"),
            ("scope", "repository:library/alpine:pull"),
        ],
        auth=READER,
        timeout=10,
    )
    claims = token_issuer.decode(r.json()["token"])
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "repository", "name": "library/alpine", "actions": ["pull"]},
    ]
    assert claims["aud"] == token_issuer.service and claims["iss"] == token_issuer.issuer
    assert claims["sub"] == "reader"
    grant = token_issuer.grants[token_issuer_grants_before]
    assert grant.user == "reader"
    assert grant.requested == [
        "repository:team/app:pull,push,delete",
        "registry:catalog:*",
        "repository:library/alpine:pull",
    ]
    assert grant.granted == ["repository:team/app:pull", "repository:library/alpine:pull"]

    admin = token_issuer.decode(
        token_from_realm(
            token_issuer, "registry:catalog:* repository:127.0.0.1:5000/x/y:pull,push", auth=ADMIN
        ).json()["token"]
    )
    assert admin["access"] == [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": "127.0.0.1:5000/x/y", "actions": ["pull", "push"]},
    ]
    pusher = token_issuer.decode(
        token_from_realm(token_issuer, "repository:a/b:*", auth=PUSHER).json()["token"]
    )
    assert pusher["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull", "push"]}]


def test_issuer_answer_fields_lifetime_and_failures(fresh_issuer):
    issuer = fresh_issuer()
    body = token_from_realm(issuer, "repository:a:pull", auth=ADMIN).json()
    assert set(body) == {"token", "access_token", "expires_in"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 300

    issuer.fields = ("access_token",)  # what ACR answers
    issuer.lifetime = 2
    body = token_from_realm(issuer, "repository:a:pull", auth=ADMIN).json()
    assert set(body) == {"access_token"}
    claims = unverified(body["access_token"])
    assert claims["exp"] - claims["iat"] == 2

    issuer.fields = ("token", "expires_in", "issued_at")
    issuer.advertised_expires_in = 900
    body = token_from_realm(issuer, "repository:a:pull", auth=ADMIN).json()
    assert body["expires_in"] == 900 and body["issued_at"].endswith("Z")
    claims = unverified(body["token"])
    assert claims["exp"] - claims["iat"] == 2

    issuer.fail_next(2, status=429, retry_after="1")
    r1 = token_from_realm(issuer, "repository:a:pull", auth=ADMIN)
    r2 = token_from_realm(issuer, "repository:a:pull", auth=ADMIN)
    r3 = token_from_realm(issuer, "repository:a:pull", auth=ADMIN)
    assert [r1.status_code, r2.status_code, r3.status_code] == [429, 429, 200]
    assert r1.headers["Retry-After"] == "1"
    assert issuer.token_requests == 6
    assert len(issuer.grants) == 4  # failed answers are counted but not logged as grants


def test_parse_scope_keeps_host_port_in_name():
    s = parse_scope("repository:host:5000/a/b:pull,push")
    assert (s.type, s.name, s.actions) == ("repository", "host:5000/a/b", ("pull", "push"))
    assert parse_scope("nonsense") is None


# -- the seeded catalog -------------------------------------------------------------------------------


def test_seeded_manifests_are_byte_identical(token_registry_src, seeded):
    p = token_registry_src.pusher()
    for (repo, tag), manifest in seeded.items():
        raw, media_type, digest = p.fetch_manifest(repo, tag)
        assert raw == manifest.raw, (repo, tag)
        assert media_type == manifest.media_type, (repo, tag)
        assert digest == manifest.digest, (repo, tag)
        for child in manifest.children:
            assert p.exists_manifest(repo, child.digest)
    for repo in seeded.repos():
        assert p.tags(repo) == seeded.tags(repo)


def test_seeded_shapes(token_registry_src, seeded):
    base = seeded.base_layer.digest
    for key in (("library/alpine", "3.20"), ("team/app", "1.0.0"), ("team/legacy", "v1")):
        assert base in {b.digest for b in seeded[key].all_blobs()}, key
        assert token_registry_src.pusher().blob_exists(key[0], base)
    assert seeded["team/legacy", "v1"].json["layers"][0]["mediaType"] == img.DOCKER_LAYER

    index = seeded["team/app", "1.0.0"]
    entries = index.json["manifests"]
    platforms = [(e["platform"]["os"], e["platform"]["architecture"]) for e in entries]
    assert platforms == [
        ("linux", "amd64"),
        ("linux", "arm64"),
        ("unknown", "unknown"),
        ("unknown", "unknown"),
    ]
    att = entries[2]
    assert att["annotations"] == {
        "vnd.docker.reference.digest": entries[0]["digest"],
        "vnd.docker.reference.type": "attestation-manifest",
    }
    att_manifest = next(c for c in index.children if c.digest == att["digest"])
    assert {layer["mediaType"] for layer in att_manifest.json["layers"]} == {img.IN_TOTO}

    sig = seeded.signature
    assert seeded["team/app", f"sha256-{index.digest[7:]}.sig"] is sig
    assert sig.json["subject"]["digest"] == index.digest
    assert sig.json["artifactType"] == img.COSIGN_SIG_ARTIFACT
    assert sig.json["config"] == {"mediaType": img.OCI_EMPTY, "digest": img.sha256_digest(b"{}"), "size": 2}

    chart = seeded["charts/hello", "0.1.0"].json
    assert chart["config"]["mediaType"] == img.HELM_CONFIG
    assert chart["layers"][0]["mediaType"] == img.HELM_CHART
    assert "mediaType" not in chart  # like Helm: the type is only in the Content-Type

    assert seeded["team/legacy", "v2-multi"].media_type == img.DOCKER_LIST
    assert len(seeded["team/legacy", "v2-multi"].children) == 2
    assert ("org/team/deep/tool", "2.0") in seeded

    big = seeded["big/blob", "large"]
    big_layer = big.blobs[1]
    assert big_layer.size == BIG_LAYER_SIZE
    assert token_registry_src.pusher().fetch_blob("big/blob", big_layer.digest) == big_layer.data


def test_catalog_is_deterministic(seeded):
    again = standard_catalog()
    assert {k: m.digest for k, m in again.items()} == {k: m.digest for k, m in seeded.items()}
    # distinct seeds give distinct layers
    layers = [b.digest for m in seeded.values() for b in m.all_blobs()]
    assert len(set(layers)) > 40


def test_manifest_bytes_are_not_canonical_json():
    m = img.oci_image("fmt")
    assert m.raw != json.dumps(m.json, separators=(",", ":")).encode()
    assert m.raw != json.dumps(m.json).encode()


# -- registry lifecycle ----------------------------------------------------------------------------


def test_registry_lifecycle_and_extra_config(fresh_registry):
    reg = fresh_registry(auth="none", extra_config={"http": {"headers": {"X-Harness": ["yes"]}}})
    tmp = Path(reg.config_path).parent
    assert requests.get(f"{reg.url}/v2/", timeout=10).headers["X-Harness"] == "yes"
    assert reg.config["storage"]["delete"]["enabled"] is True
    m = img.oci_image("restart")
    reg.pusher().push("r/s", m, "t")
    port = reg.port
    reg.restart()
    assert reg.port == port and reg.pusher().fetch_manifest("r/s", "t")[0] == m.raw
    reg.pusher().delete_manifest("r/s", m.digest)
    assert not reg.pusher().exists_manifest("r/s", m.digest)
    reg.stop()
    assert not reg.running and not tmp.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{reg.url}/v2/", timeout=2)


def test_access_log_fails_loudly_when_its_marker_never_appears(fresh_registry, tmp_path):
    """A truncated (or lagging) log must not pass for a registry that saw no write."""
    reg = fresh_registry(auth="none")
    mark = len(reg.access_log())
    reg.pusher().push("log/check", img.oci_image("access-log"), "t")
    puts = [(m, p) for m, p, _ in reg.writes(mark) if m == "PUT"]
    assert puts[-1] == ("PUT", "/v2/log/check/manifests/t"), puts
    real = reg.log_path
    truncated = tmp_path / "truncated.log"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])  # the marker will not be in it
    reg.log_path = truncated
    with pytest.raises(
        AccessLogIncomplete, match=r"marker request /v2/\?access-log-marker=\w+ did not appear"
    ):
        reg.writes(mark, timeout=0.2)


def test_registry_start_failure_reports_log():
    with pytest.raises(RegistryStartError, match="must provide exactly one storage type"):
        Registry(extra_config={"storage": {"inmemory": {}}})
