"""Authentication: challenge parsing, token answers and expiry, caching, refresh, Basic, anonymous.

Unit-level checks use ``parse_challenge`` / ``token_expiry`` directly; the rest runs against the
real docker-registry 2.8 + ``TokenIssuer`` of the harness, or against scripted local servers
(``ScriptedServer``) where a registry or token service must answer something 2.8 never sends.
"""

from __future__ import annotations

import time
import traceback
import urllib.parse

import jwt
import pytest

from sync_core.errors import AuthError
from sync_core.registry.auth import (
    ANONYMOUS,
    Authenticator,
    Credentials,
    CredentialSource,
    StaticCredentials,
    Token,
    granted_actions,
    merge_scopes,
    parse_challenge,
    token_claims,
    token_expiry,
)
from sync_core.registry.client import RegistryClient
from sync_core.registry.transport import Transport
from tests.harness import ADMIN, BASIC, PUSHER, READER
from tests.harness import images as img
from tests.harness.recording import RecordingTransport, Waits
from tests.harness.scripted import Reply, Request, ScriptedServer


def creds(user_pw) -> StaticCredentials:
    return StaticCredentials(Credentials(*user_pw))


class FakeClock:
    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


# -- parse_challenge -----------------------------------------------------------------------------


def test_parse_challenge_multiple_scopes_quoted_commas_and_host_port_names():
    header = (
        'Bearer realm="https://auth.example.io/token?a=1,b=2",service="registry.example.io",'
        'scope="repository:localhost:5000/team/app:pull,push repository:other/repo:pull registry:catalog:*"'
    )
    challenge = parse_challenge(header)
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.example.io/token?a=1,b=2"  # comma inside quotes
    assert challenge.params["service"] == "registry.example.io"
    assert challenge.scopes == (
        "repository:localhost:5000/team/app:pull,push",
        "repository:other/repo:pull",
        "registry:catalog:*",
    )


def test_parse_challenge_variants():
    c = parse_challenge('BEARER Realm="https://a/t" , Service=svc,error="insufficient_scope"')
    assert c.scheme == "bearer" and c.params == {
        "realm": "https://a/t",
        "service": "svc",
        "error": "insufficient_scope",
    }
    c = parse_challenge(r'Bearer realm="https://a/t",service="say \"hi\""')
    assert c.params["service"] == 'say "hi"'
    assert parse_challenge('Basic realm="basic-realm"') == parse_challenge('basic realm="basic-realm"')
    assert parse_challenge('Basic realm="basic-realm"').scheme == "basic"
    assert parse_challenge("   ") is None
    assert parse_challenge('Bearer realm="https://a/t"').scopes == ()


def test_parse_challenge_keeps_to_the_first_of_several_challenges():
    # requests joins repeated WWW-Authenticate headers with ", ": the Basic realm must not
    # overwrite the Bearer realm (it did: the token was then asked from "basic-realm").
    c = parse_challenge(
        'Bearer realm="https://auth.example.io/token",service="svc", Basic realm="basic-realm"'
    )
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example.io/token", "service": "svc"}


# -- merge_scopes ----------------------------------------------------------------------------------

MERGE_SCOPES = [
    # (scopes, merged)
    pytest.param([], (), id="none"),
    pytest.param(["repository:a:pull"], ("repository:a:pull",), id="one"),
    pytest.param(["repository:a:pull", "repository:a:pull"], ("repository:a:pull",), id="duplicate"),
    pytest.param(
        ["repository:a:pull", "repository:a:push"], ("repository:a:pull,push",), id="actions-united"
    ),
    pytest.param(
        ["repository:a:pull,push", "repository:a:push,pull"],
        ("repository:a:pull,push",),
        id="actions-in-any-order-are-one-scope",
    ),
    pytest.param(
        ["repository:a:push,pull"], ("repository:a:push,pull",), id="actions-keep-their-first-order"
    ),
    pytest.param(
        ["repository:a:pull,pull,,push"], ("repository:a:pull,push",), id="repeated-and-empty-actions"
    ),
    pytest.param(
        ["repository:b:pull", "repository:a:pull", "repository:b:push"],
        ("repository:b:pull,push", "repository:a:pull"),
        id="resources-in-first-seen-order",
    ),
    pytest.param(
        [
            "repository:localhost:5000/team/app:pull",
            "repository:localhost:5000/team/app:push",
            "repository:team/app:pull",
        ],
        ("repository:localhost:5000/team/app:pull,push", "repository:team/app:pull"),
        id="host-port-names-split-on-the-last-colon",
    ),
    pytest.param(
        ["registry:catalog:*", "repository:a:pull"],
        ("registry:catalog:*", "repository:a:pull"),
        id="catalog-scope",
    ),
    pytest.param(["repository:a:", "repository:a:pull"], ("repository:a:pull",), id="empty-actions"),
    pytest.param(["repository:a:"], ("repository:a",), id="only-empty-actions"),
    pytest.param(["pull", "pull"], ("pull",), id="no-colon-at-all"),
    pytest.param(
        ["repository:a", "repository:b"], ("repository:a", "repository:b"), id="type-and-name-without-actions"
    ),
    pytest.param(
        ["repository:a", "repository:a:pull"], ("repository:a:pull",), id="without-and-with-actions"
    ),
    pytest.param(
        ["repository:localhost:5000/x", "repository:localhost:5000/y"],
        ("repository:localhost:5000/x", "repository:localhost:5000/y"),
        id="host-port-name-without-actions",
    ),
]


@pytest.mark.parametrize("scopes, merged", MERGE_SCOPES)
def test_merge_scopes(scopes, merged):
    assert merge_scopes(scopes) == merged
    assert merge_scopes(merged) == merged  # merging again changes nothing


# -- token answers and expiry ------------------------------------------------------------------------


def _jwt(exp: float | None) -> str:
    claims = {"sub": "x"} if exp is None else {"sub": "x", "exp": int(exp)}
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


def test_token_expiry_prefers_jwt_exp_then_expires_in_then_default():
    now = 1_000_000.0
    assert token_expiry({"expires_in": 30}, _jwt(now + 4500), now) == now + 4500
    assert token_expiry({}, _jwt(now + 900), now) == now + 900
    assert token_expiry({"expires_in": 30}, _jwt(None), now) == now + 30  # JWT without exp
    assert token_expiry({"expires_in": 30}, "opaque-token", now) == now + 30
    assert token_expiry({}, "opaque-token", now) == now + 60
    for bogus in (True, -5, 0, "300", None):
        assert token_expiry({"expires_in": bogus}, "opaque-token", now) == now + 60


def test_token_is_refreshed_a_margin_before_expiry():
    # margin: 20 % of the lifetime, at most 60 s
    short = Token("t", expires_at=100.0, fetched_at=0.0)
    assert short.fresh(79.9) and not short.fresh(80.0)
    long = Token("t", expires_at=4500.0, fetched_at=0.0)
    assert long.fresh(4439.9) and not long.fresh(4440.0)


def test_credentials_repr_hides_the_password():
    c = Credentials("acr-token", "s3cr3t-PASS")
    assert "s3cr3t-PASS" not in repr(c) and "s3cr3t-PASS" not in str(c)


# -- scripted registry + token service ------------------------------------------------------------------


class ScriptedTokenAuth:
    """A registry accepting ``Bearer opaque-*`` tokens and a token service minting them.

    ``answer(n)`` builds the n-th token answer (default: only ``access_token``, like ACR).
    """

    def __init__(self, scope_in_challenge: str | None = None, extra_challenge: str = ""):
        self.count = 0
        self.answer = lambda n: {"access_token": f"opaque-{n}"}
        self.token_server = ScriptedServer(self._token)
        self.scope_in_challenge = scope_in_challenge
        self.extra_challenge = extra_challenge
        self.registry = ScriptedServer(self._registry)

    def _token(self, request: Request) -> Reply:
        self.count += 1
        return Reply.json(self.answer(self.count))

    def _registry(self, request: Request) -> Reply:
        if request.headers.get("authorization", "").startswith("Bearer "):
            return Reply.json({"name": "team/app", "tags": ["1.0"]})
        challenge = f'Bearer realm="{self.token_server.url}/token",service="svc"'
        if self.scope_in_challenge:
            challenge += f',scope="{self.scope_in_challenge}"'
        return Reply.json(
            {"errors": [{"code": "UNAUTHORIZED"}]},
            401,
            {"WWW-Authenticate": challenge + self.extra_challenge},
        )

    def token_queries(self) -> list[dict[str, list[str]]]:
        return [
            urllib.parse.parse_qs(urllib.parse.urlsplit(s.path).query) for s in self.token_server.requests
        ]

    def bearer_sent(self) -> list[str]:
        return [s.headers["authorization"] for s in self.registry.requests if "authorization" in s.headers]

    def close(self) -> None:
        self.registry.stop()
        self.token_server.stop()


@pytest.fixture
def scripted():
    made = []

    def factory(**kwargs) -> ScriptedTokenAuth:
        made.append(ScriptedTokenAuth(**kwargs))
        return made[-1]

    yield factory
    for s in made:
        s.close()


@pytest.mark.parametrize(
    "answer, lifetime",
    [
        (lambda n: {"access_token": f"opaque-{n}"}, 60),  # ACR: access_token only, no expires_in
        (lambda n: {"token": f"opaque-{n}"}, 60),
        (lambda n: {"token": f"opaque-{n}", "expires_in": 30}, 30),
        (lambda n: {"token": f"opaque-{n}", "access_token": f"opaque-{n}", "expires_in": 300}, 300),
    ],
    ids=["access_token-only", "token-only", "token+expires_in", "both+expires_in"],
)
def test_token_answer_shapes_and_their_lifetimes(scripted, answer, lifetime):
    s = scripted()
    s.answer = answer
    clock = FakeClock(1_000_000.0)
    client = RegistryClient(s.registry.url, creds(READER), transport=Transport(sleep=Waits()), clock=clock)
    assert client.list_tags("team/app") == ["1.0"]
    assert s.count == 1 and s.bearer_sent() == ["Bearer opaque-1"]
    margin = min(60, lifetime * 0.2)
    clock.now += lifetime - margin - 1
    client.list_tags("team/app")
    assert s.count == 1  # still fresh: cached
    clock.now += 2  # inside the refresh margin: a new token *before* the old one is used
    client.list_tags("team/app")
    assert s.count == 2
    assert s.bearer_sent()[-1] == "Bearer opaque-2"
    unauthenticated = [x for x in s.registry.requests if "authorization" not in x.headers]
    assert len(unauthenticated) == 1  # only the very first request, which learned the challenge


def test_jwt_exp_wins_over_a_shorter_expires_in(scripted):
    s = scripted()
    clock = FakeClock(1_000_000.0)
    s.answer = lambda n: {"token": _jwt(clock.now + 3600), "expires_in": 10}
    client = RegistryClient(s.registry.url, creds(READER), transport=Transport(sleep=Waits()), clock=clock)
    client.list_tags("team/app")
    clock.now += 600  # far past expires_in, well before exp
    client.list_tags("team/app")
    assert s.count == 1


def test_scope_names_with_host_port_reach_the_token_service_intact(scripted):
    s = scripted(scope_in_challenge="repository:localhost:5000/team/app:pull")
    client = RegistryClient(s.registry.url, creds(READER), transport=Transport(sleep=Waits()))
    client.list_tags("team/app")
    query = s.token_queries()[0]
    assert query["service"] == ["svc"]
    assert sorted(query["scope"]) == ["repository:localhost:5000/team/app:pull", "repository:team/app:pull"]


def test_second_challenge_in_the_header_does_not_redirect_the_token_request(scripted):
    s = scripted(extra_challenge=', Basic realm="registry"')
    client = RegistryClient(s.registry.url, creds(READER), transport=Transport(sleep=Waits()))
    assert client.list_tags("team/app") == ["1.0"]
    assert s.count == 1


def test_plain_http_realm_on_another_host_is_refused_without_contacting_it():
    challenge = 'Bearer realm="http://auth.example.invalid/token",service="svc"'
    with ScriptedServer(lambda request: Reply(401, {"WWW-Authenticate": challenge})) as srv:
        transport = RecordingTransport(sleep=Waits())
        client = RegistryClient(srv.url, creds(READER), transport=transport)
        with pytest.raises(AuthError, match="plain http") as info:
            client.list_tags("team/app")
        assert "reader-pass" not in str(info.value)
        assert [url for _, url, _ in transport.log] == [f"{srv.url}/v2/team/app/tags/list"]


def test_challenge_problems_are_auth_errors():
    answers = iter(
        [
            Reply(401),  # no challenge at all
            Reply(401, {"WWW-Authenticate": 'Bearer service="svc"'}),  # no realm
            Reply(401, {"WWW-Authenticate": 'Negotiate realm="x"'}),  # unsupported scheme
        ]
    )
    with ScriptedServer(lambda request: next(answers)) as srv:
        for match in ("without an authentication challenge", "without a realm", "unsupported"):
            client = RegistryClient(srv.url, creds(READER), transport=Transport(sleep=Waits()))
            with pytest.raises(AuthError, match=match):
                client.list_tags("team/app")


def test_basic_credentials_never_go_to_a_plain_http_non_loopback_registry():
    auth = Authenticator("http://registry.example.invalid", Transport(), creds(BASIC))
    with pytest.raises(AuthError, match="plain http"):
        auth.unauthorized('Basic realm="r"', ["repository:a:pull"], 0)
    assert auth._authorization(("repository:a:pull",))[0] is None  # nothing learned, nothing sent


# -- the real registry and token issuer -------------------------------------------------------------


def test_tokens_are_cached_per_scope_set(token_registry_src, token_issuer, seeded):
    client = RegistryClient(token_registry_src.url, creds(READER))
    before = token_issuer.token_requests
    for _ in range(15):
        client.head_manifest("library/alpine", "3.19")
        client.list_tags("library/alpine")
        client.get_manifest("library/alpine", "3.20")
    assert token_issuer.token_requests - before == 1  # one token for one repository scope
    middle = token_issuer.token_requests
    for repo in ("team/app", "team/legacy", "charts/hello"):
        for _ in range(5):
            client.list_tags(repo)
    assert token_issuer.token_requests - middle == 3  # one per repository, not per call
    assert client.auth.tokens_fetched == 4
    granted = token_issuer.grants[-3:]
    assert [g.requested for g in granted] == [
        [f"repository:{r}:pull"] for r in ("team/app", "team/legacy", "charts/hello")
    ]  # small per-repository scope sets, never one ever-growing token


def test_push_client_tokens_do_not_grow_with_calls(token_registry_dst, token_issuer):
    client = RegistryClient(token_registry_dst.url, creds(PUSHER), actions="pull,push")
    before = token_issuer.token_requests
    client.list_tags("auth-cache/one")  # learns the challenge: its pull scope merges into pull,push
    client.list_tags("auth-cache/one")
    assert token_issuer.token_requests - before == 1
    warm = token_issuer.token_requests
    for _ in range(20):
        client.list_tags("auth-cache/one")
        client.head_manifest("auth-cache/one", "x")
    assert token_issuer.token_requests == warm
    client.list_tags("auth-cache/two")
    assert token_issuer.token_requests == warm + 1  # challenge known: one token up front
    assert token_issuer.grants[-1].requested == ["repository:auth-cache/two:pull,push"]


def test_token_service_throttling_is_retried(fresh_issuer, fresh_registry):
    issuer = fresh_issuer()
    reg = fresh_registry(token_issuer=issuer)
    reg.pusher().push("team/app", img.oci_image("throttled", (64,)), "1.0")
    issuer.fail_next(2, 429, retry_after="2")
    waits = Waits()
    client = RegistryClient(reg.url, creds(READER), transport=Transport(sleep=waits))
    assert client.list_tags("team/app") == ["1.0"]
    assert waits == [2.0, 2.0]
    assert issuer.token_requests == 3


def test_basic_auth_against_htpasswd_registry(basic_registry):
    reg = basic_registry
    image = img.oci_image("basic-auth", (128,))
    reg.pusher().push("auth/basic", image, "v1")
    transport = RecordingTransport(sleep=Waits())
    client = RegistryClient(reg.url, creds(BASIC), transport=transport)
    assert client.get_manifest("auth/basic", "v1").raw == image.raw
    assert client.list_tags("auth/basic") == ["v1"]
    assert client.auth.challenge.scheme == "basic"
    assert client.auth.tokens_fetched == 0
    statuses = [status for _, _, status in transport.log]
    assert statuses.count(401) == 1  # the challenge is learned once, then sent up front


@pytest.mark.parametrize("kind", ["token", "basic"])
def test_wrong_password_is_an_auth_error_without_the_password(kind, token_registry_src, basic_registry):
    secret = "Wr0ng-S3cret-Passw0rd"
    if kind == "token":
        reg, user = token_registry_src, READER[0]
    else:
        reg, user = basic_registry, BASIC[0]
    client = RegistryClient(reg.url, StaticCredentials(Credentials(user, secret)))
    with pytest.raises(AuthError) as info:
        client.list_tags("library/alpine")
    text = "".join(traceback.format_exception(info.value)) + repr(info.value) + repr(client.auth.credentials)
    assert secret not in text
    assert info.value.status in (401, 403)
    if kind == "token":
        assert user in str(info.value)  # says whose credentials were refused


class RotatingSecret(CredentialSource):
    """Stale password until ``refresh`` re-reads it (a Key Vault secret after rotation)."""

    def __init__(self, user: str, stale: str, current: str):
        self.user, self.password, self.current = user, stale, current
        self.refreshes = 0

    def get(self) -> Credentials:
        return Credentials(self.user, self.password)

    def refresh(self) -> bool:
        self.refreshes += 1
        self.password = self.current
        return True


def test_rejected_credentials_are_re_read_once(token_registry_src, basic_registry):
    source = RotatingSecret(READER[0], "stale", READER[1])
    client = RegistryClient(token_registry_src.url, source)
    assert "3.19" in client.list_tags("library/alpine")
    assert source.refreshes == 1

    basic_registry.pusher().push("auth/rotated", img.oci_image("rotated", (64,)), "v1")
    source = RotatingSecret(BASIC[0], "stale", BASIC[1])
    client = RegistryClient(basic_registry.url, source)
    assert client.list_tags("auth/rotated") == ["v1"]
    assert source.refreshes == 1


def test_anonymous_registry_needs_no_credentials(anon_registry):
    image = img.oci_image("anonymous", (256,))
    anon_registry.pusher().push("open/image", image, "latest")
    client = RegistryClient(anon_registry.url, ANONYMOUS)
    assert client.get_manifest("open/image", "latest").raw == image.raw
    assert client.list_tags("open/image") == ["latest"]
    assert client.auth.challenge is None


def test_anonymous_pull_from_a_token_registry(fresh_issuer, fresh_registry):
    issuer = fresh_issuer(anonymous={"*": ["pull"]})
    reg = fresh_registry(token_issuer=issuer)
    image = img.oci_image("anonymous-token", (256,))
    reg.pusher().push("open/image", image, "latest")
    client = RegistryClient(reg.url)
    assert client.get_manifest("open/image", "latest").raw == image.raw
    assert [g.user for g in issuer.grants] == [None]


def test_token_refreshed_ahead_of_expiry(fresh_issuer, fresh_registry):
    # expires_in claims an hour: the JWT exp (120 s) is what counts
    issuer = fresh_issuer(lifetime=120, advertised_expires_in=3600, fields=("access_token", "expires_in"))
    reg = fresh_registry(token_issuer=issuer)
    reg.pusher().push("team/app", img.oci_image("ahead", (64,)), "1.0")
    clock = FakeClock()
    transport = RecordingTransport(sleep=Waits())
    client = RegistryClient(reg.url, creds(READER), transport=transport, clock=clock)
    client.list_tags("team/app")
    assert issuer.token_requests == 1
    clock.now += 60
    client.list_tags("team/app")
    assert issuer.token_requests == 1
    clock.now += 40  # 100 s: less than the 24 s margin (20 % of 120 s) before exp
    sent = len(transport.log)
    client.list_tags("team/app")
    assert issuer.token_requests == 2
    # token request + the listing: the old token was never used (no 401 round trip)
    assert [(m, status) for m, _, status in transport.log[sent:]] == [("GET", 200), ("GET", 200)]


def test_expired_token_refused_by_the_registry_is_refreshed(fresh_issuer, fresh_registry):
    # exp_skew=-60 cancels distribution's 60 s leeway: the registry refuses a token after
    # `lifetime` seconds. The client's clock is frozen, so it believes its token is fresh and
    # only the registry's 401 can tell it otherwise.
    issuer = fresh_issuer(lifetime=2, exp_skew=-60)
    reg = fresh_registry(token_issuer=issuer)
    reg.pusher().push("team/app", img.oci_image("expiring", (64,)), "1.0")
    clock = FakeClock(time.time() - 600)
    transport = RecordingTransport(sleep=Waits())
    client = RegistryClient(reg.url, creds(READER), transport=transport, clock=clock)
    assert client.list_tags("team/app") == ["1.0"]
    assert issuer.token_requests == 1
    time.sleep(2.1)
    sent = len(transport.log)
    assert client.list_tags("team/app") == ["1.0"]
    assert issuer.token_requests == 2
    statuses = [status for _, _, status in transport.log[sent:]]
    assert statuses == [401, 200, 200]  # refused, new token, accepted


def test_key_rotation_401_refreshes_token(fresh_issuer, fresh_registry):
    issuer = fresh_issuer()
    reg = fresh_registry(token_issuer=issuer)
    reg.pusher().push("team/app", img.oci_image("rotation", (64,)), "1.0")
    client = RegistryClient(reg.url, creds(ADMIN))
    assert client.list_tags("team/app") == ["1.0"]
    issuer.rotate_key()
    reg.restart()
    before = issuer.token_requests
    assert client.list_tags("team/app") == ["1.0"]
    assert issuer.token_requests > before


# -- what a token grants (check) -------------------------------------------------------------------


def test_new_token_claims_fetch_a_new_token_and_say_what_it_grants(
    token_registry_dst, token_issuer, basic_registry
):
    client = RegistryClient(token_registry_dst.url, creds(READER), actions="pull,push")
    assert client.auth.new_token_claims(client.scopes("check/app")) is None, "no challenge known yet"
    assert client.api_version_check().status_code == 200 and client.auth.scheme == "bearer"
    before = token_issuer.token_requests
    first = client.auth.new_token_claims(client.scopes("check/app"))
    second = client.auth.new_token_claims(client.scopes("check/app"))
    assert token_issuer.token_requests == before + 2, "never a cached token"
    assert first is not None and second is not None and first["jti"] != second["jti"]
    assert granted_actions(first, "repository", "check/app") == {"pull"}, "READER may pull only"
    assert granted_actions(first, "repository", "check/other") == frozenset()
    assert granted_actions({"sub": "x"}, "repository", "check/app") is None, "no access claim: unknown"
    assert granted_actions(
        {"access": [{"type": "repository", "name": "a", "actions": ["*"]}]}, "repository", "a"
    ) == {"*"}
    assert token_claims("not-a-jwt") is None

    basic = RegistryClient(basic_registry.url, creds(BASIC))
    assert basic.api_version_check().status_code == 200 and basic.auth.scheme == "basic"
    assert basic.auth.new_token_claims(basic.scopes("check/app")) is None
