"""The ACR stand-in (tests/harness/acr.py) behaves like ACR where registry-sync depends on it."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import time
import urllib.parse

import jwt
import pytest
import requests

from tests.harness import images
from tests.harness.acr import AcrStandIn

ROOT = ("root", "root-pw")
SCOPED = ("scoped", "scoped-pw")
USERS = {
    ROOT[0]: (ROOT[1], {"*": ["pull", "push", "metadata_read", "delete"]}),
    SCOPED[0]: (SCOPED[1], {"team/*": ["pull", "metadata_read"]}),
}
APP_TAGS = ["t1", "t2", "t3", "t4", "t5"]
ACR_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


@pytest.fixture(scope="module")
def acr(token_issuer):
    with AcrStandIn(users=USERS, issuer=token_issuer) as standin:
        pusher = standin.pusher()
        app = images.oci_index("acr-app", layer_sizes=(256,), attestations=False)
        for tag in APP_TAGS:
            pusher.push("team/app", app, tag)
        timed = images.oci_image("acr-timed", (128,))
        for tag in ("a", "b", "c", "d"):
            pusher.push("team/timed", timed, tag)
        pusher.push("library/alpine", images.oci_image("acr-alpine", (128,)), "3.20")
        standin.seeded = {"team/app": app, "team/timed": timed}
        yield standin


def token(acr: AcrStandIn, user: tuple[str, str], *scopes: str) -> requests.Response:
    return requests.get(
        f"{acr.url}/oauth2/token", params={"service": acr.host, "scope": list(scopes)}, auth=user, timeout=10
    )


def bearer(acr: AcrStandIn, user: tuple[str, str], *scopes: str) -> dict:
    r = token(acr, user, *scopes)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def get_tags(acr: AcrStandIn, headers: dict, repo: str, **params) -> requests.Response:
    return requests.get(f"{acr.url}/acr/v1/{repo}/_tags", params=params, headers=headers, timeout=10)


def all_pages(acr: AcrStandIn, headers: dict, first: str) -> tuple[list[str], list[str]]:
    """Follow relative Links; returns (tag names in order, Link values seen)."""
    names: list[str] = []
    links: list[str] = []
    url = acr.url + first
    while url:
        r = requests.get(url, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        names += [t["name"] for t in r.json()["tags"]]
        link = r.headers.get("Link")
        if not link:
            break
        links.append(link)
        target = re.match(r"^<([^>]+)>;\s*rel=\"next\"$", link)
        assert target, link
        url = urllib.parse.urljoin(r.url, target[1])
    return names, links


def test_token_answers_only_access_token_with_exp(acr):
    acr.reset_log()
    before = int(time.time())
    r = token(acr, ROOT, "repository:team/app:pull,metadata_read")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token"}
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert before + acr.token_lifetime - 2 <= claims["exp"] <= int(time.time()) + acr.token_lifetime + 2
    assert claims["aud"] == acr.host
    assert claims["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "metadata_read"]}
    ]

    old = acr.token_lifetime
    acr.token_lifetime = 90
    try:
        claims = jwt.decode(
            token(acr, ROOT, "repository:team/app:pull").json()["access_token"],
            options={"verify_signature": False},
        )
        assert claims["exp"] - claims["iat"] == 90
    finally:
        acr.token_lifetime = old

    assert token(acr, (ROOT[0], "wrong"), "repository:team/app:pull").status_code == 401
    assert token(acr, ("nobody", "x"), "repository:team/app:pull").status_code == 401
    assert acr.token_requests == 4
    assert acr.token_calls() == 4 and acr.token_calls(user="root") == 3
    assert [g.user for g in acr.grants] == ["root", "root"]
    # scopes outside the scope map are dropped, not refused
    r = token(acr, SCOPED, "repository:team/app:pull,push,metadata_read", "repository:library/alpine:pull")
    assert r.status_code == 200
    assert acr.grants[-1].granted == ["repository:team/app:pull,metadata_read"]


def test_catalog_needs_root_wildcard_scope_map(acr):
    root = bearer(acr, ROOT, "registry:catalog:*")
    r = requests.get(f"{acr.url}/v2/_catalog", headers=root, timeout=10)
    assert r.status_code == 200
    assert {"team/app", "team/timed", "library/alpine"} <= set(r.json()["repositories"])
    r = requests.get(f"{acr.url}/acr/v1/_catalog", params={"n": 1}, headers=root, timeout=10)
    assert r.status_code == 200 and len(r.json()["repositories"]) == 1
    assert r.headers["Link"].startswith("</acr/v1/_catalog?last=")

    r = token(acr, SCOPED, "registry:catalog:*")
    assert r.status_code == 200  # ACR does not fail the token request...
    assert acr.grants[-1].granted == []
    scoped = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = requests.get(f"{acr.url}/v2/_catalog", headers=scoped, timeout=10)
    assert r.status_code == 401  # ...the catalog call fails
    assert 'scope="registry:catalog:*"' in r.headers["WWW-Authenticate"]
    assert f'realm="{acr.url}/oauth2/token"' in r.headers["WWW-Authenticate"]
    assert requests.get(f"{acr.url}/acr/v1/_catalog", headers=scoped, timeout=10).status_code == 401


def test_tags_schema(acr):
    headers = bearer(acr, SCOPED, "repository:team/app:metadata_read")
    r = get_tags(acr, headers, "team/app")
    assert r.status_code == 200
    assert "Link" not in r.headers
    body = r.json()
    assert set(body) == {"registry", "imageName", "tags"}
    assert body["registry"] == acr.host and body["imageName"] == "team/app"
    assert [t["name"] for t in body["tags"]] == APP_TAGS
    for tag in body["tags"]:
        assert set(tag) == {
            "name",
            "digest",
            "createdTime",
            "lastUpdateTime",
            "signed",
            "changeableAttributes",
        }
        assert tag["digest"] == acr.seeded["team/app"].digest
        assert ACR_TIME.match(tag["createdTime"]) and ACR_TIME.match(tag["lastUpdateTime"])
        assert tag["signed"] is False
        assert tag["changeableAttributes"] == {
            "deleteEnabled": True,
            "writeEnabled": True,
            "readEnabled": True,
            "listEnabled": True,
        }

    root = bearer(acr, ROOT, "repository:no/such:metadata_read")
    r = get_tags(acr, root, "no/such")
    assert r.status_code == 404
    assert r.json() == {
        "errors": [
            {
                "code": "NAME_UNKNOWN",
                "message": "repository name not known to registry",
                "detail": {"name": "no/such"},
            }
        ]
    }


def test_tags_paging_with_relative_links(acr):
    headers = bearer(acr, ROOT, "repository:team/app:metadata_read")
    acr.reset_log()
    names, links = all_pages(acr, headers, "/acr/v1/team/app/_tags?n=2")
    assert names == APP_TAGS
    assert links == [
        '</acr/v1/team/app/_tags?last=t2&n=2&orderby=>; rel="next"',
        '</acr/v1/team/app/_tags?last=t4&n=2&orderby=>; rel="next"',
    ]
    assert acr.tags_calls("team/app") == 3
    assert acr.manifest_gets() == 0 and acr.blob_gets() == 0


def test_orderby_after_set_tag_times(acr):
    base = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)
    # updated order: c (oldest), a, d, b (newest)
    for tag, days in (("c", 0), ("a", 1), ("d", 2), ("b", 3)):
        acr.set_tag_times("team/timed", tag, base - dt.timedelta(days=10), base + dt.timedelta(days=days))
    headers = bearer(acr, SCOPED, "repository:team/timed:metadata_read")

    names, links = all_pages(acr, headers, "/acr/v1/team/timed/_tags?n=2&orderby=timedesc")
    assert names == ["b", "d", "a", "c"]
    assert links == ['</acr/v1/team/timed/_tags?last=d&n=2&orderby=timedesc>; rel="next"']
    names, _ = all_pages(acr, headers, "/acr/v1/team/timed/_tags?n=3&orderby=timeasc")
    assert names == ["c", "a", "d", "b"]

    tags = {t["name"]: t for t in get_tags(acr, headers, "team/timed").json()["tags"]}
    assert tags["c"]["createdTime"] == "2025-02-19T12:00:00.1234560Z"
    assert tags["b"]["lastUpdateTime"] == "2025-03-04T12:00:00.1234560Z"

    # a push through the stand-in moves lastUpdateTime, keeps createdTime
    acr.pusher().push("team/timed", acr.seeded["team/timed"], "c")
    created, updated = acr.tag_times("team/timed", "c")
    assert created == base - dt.timedelta(days=10)
    assert updated > dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    names, _ = all_pages(acr, headers, "/acr/v1/team/timed/_tags?orderby=timedesc")
    assert names[0] == "c"


def test_push_times_follow_the_standin_clock(token_issuer):
    """A simulated day: pushes, and the repository's attributes, carry the stand-in's clock, not
    the machine's; its tokens are valid by that clock too."""
    with AcrStandIn(users=USERS, issuer=token_issuer) as acr:
        morning = dt.datetime(2031, 5, 4, 12, 0, tzinfo=dt.timezone.utc)
        evening = morning + dt.timedelta(hours=7, microseconds=250)
        image = images.oci_image("acr-clock", (64,))
        acr.clock = morning.timestamp
        acr.pusher().push("team/clock", image, "1.0")
        acr.clock = evening.timestamp
        signature = images.signature("acr-clock-sig", image)
        acr.pusher().push("team/clock", signature)  # a referrer, by digest, seven hours later
        headers = bearer(acr, ROOT, "repository:team/clock:metadata_read")

        (tag,) = get_tags(acr, headers, "team/clock").json()["tags"]
        assert (tag["createdTime"], tag["lastUpdateTime"]) == ("2031-05-04T12:00:00.0000000Z",) * 2
        listed = requests.get(f"{acr.url}/acr/v1/team/clock/_manifests", headers=headers, timeout=10)
        assert {m["digest"]: m["lastUpdateTime"] for m in listed.json()["manifests"]} == {
            image.digest: "2031-05-04T12:00:00.0000000Z",
            signature.digest: "2031-05-04T19:00:00.0002500Z",
        }
        attributes = requests.get(f"{acr.url}/acr/v1/team/clock", headers=headers, timeout=10).json()
        assert (attributes["createdTime"], attributes["lastUpdateTime"]) == (
            "2031-05-04T12:00:00.0000000Z",
            "2031-05-04T19:00:00.0002500Z",
        )
        assert (attributes["manifestCount"], attributes["tagCount"]) == (2, 1)


def test_tags_challenge_without_token(acr):
    r = get_tags(acr, {}, "team/app")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{acr.url}/oauth2/token",service="{acr.host}",'
        f'scope="repository:team/app:metadata_read",error="invalid_token"'
    )
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # pull alone is not enough; nor is a scope map that does not cover the repository
    assert get_tags(acr, bearer(acr, ROOT, "repository:team/app:pull"), "team/app").status_code == 401
    scoped = bearer(acr, SCOPED, "repository:library/alpine:metadata_read")
    assert get_tags(acr, scoped, "library/alpine").status_code == 401
    # expired tokens are refused (no leeway, unlike the backend registry)
    expired = {"Authorization": f"Bearer {acr.mint(['repository:team/app:metadata_read'], lifetime=-5)}"}
    assert get_tags(acr, expired, "team/app").status_code == 401


def test_fail_next_injects_throttling(acr):
    acr.fail_next(1, 429, kinds="token", retry_after="1")
    r = token(acr, ROOT, "repository:team/app:pull")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert token(acr, ROOT, "repository:team/app:pull").status_code == 200


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_inspect_through_standin(acr):
    acr.reset_log()
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            f"{ROOT[0]}:{ROOT[1]}",
            f"docker://{acr.host}/team/app:t3",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == acr.seeded["team/app"].raw
    assert acr.token_calls(user="root") >= 1
    assert acr.grants[-1].granted == ["repository:team/app:pull"]
    assert acr.count("manifest", "GET", "team/app", status=200, user="root") == 1


def test_own_issuer_and_backend_pusher():
    with AcrStandIn(users={"u": ("p", {"*": ["pull"]})}, token_lifetime=30) as acr:
        assert acr.issuer.service == acr.host
        assert acr.backend.config["auth"]["token"]["realm"] == f"{acr.url}/oauth2/token"
        img = images.oci_image("acr-direct", (64,))
        acr.backend.pusher().push("direct/repo", img, "x")  # straight to the backend
        headers = bearer(acr, ("u", "p"), "repository:direct/repo:pull")
        r = requests.get(
            f"{acr.url}/v2/direct/repo/manifests/x", headers={**headers, "Accept": images.ACCEPT}, timeout=10
        )
        assert r.status_code == 200 and r.content == img.raw
        assert acr.grants[-1].granted == ["repository:direct/repo:pull"]  # no metadata_read in map
        assert acr.manifest_gets("direct/repo") == 1
