"""Whether a registry has the referrers API is learned from what answers, not from one 404.

Against the ACR stand-in (the API; a repository it does not have answers ``NAME_UNKNOWN``, as
ACR does) and a real ``distribution`` 2.8 registry (no such route: its 404 carries no OCI error).
"""

from __future__ import annotations

from sync_core.auth import Credentials, StaticCredentials
from sync_core.config import ReferrerPolicy
from sync_core.referrers import ReferrerFinder
from sync_core.registry import RegistryClient
from tests.harness import PUSHER, images
from tests.harness.acr import AcrStandIn

USER = ("finder", "finder-pw-8Qs")


def test_an_unknown_repository_does_not_turn_the_api_off(token_issuer):
    with AcrStandIn(users={USER[0]: (USER[1], {"*": ["pull", "push"]})}, issuer=token_issuer, name="finder") as acr:
        pusher = acr.pusher()
        app = images.oci_image("finder-app", (64,))
        sig = images.signature("finder-sig", app)
        pusher.push("gs/app", app, "1.0")
        pusher.push("gs/app", sig)
        finder = ReferrerFinder(RegistryClient(acr.url, StaticCredentials(Credentials(*USER))), ReferrerPolicy())
        # deleted since it was listed: nothing there, and nothing settled about the API
        assert finder.of("gs/gone", app.digest) == [] and finder.api is None
        assert [d.digest for d in finder.of("gs/app", app.digest)] == [sig.digest] and finder.api is True
        assert finder.of("gs/gone-too", app.digest) == [] and finder.api is True
        assert [d.digest for d in finder.of("gs/app", app.digest)] == [sig.digest]


def test_a_registry_without_the_route_is_read_through_the_referrers_tag(fresh_registry):
    registry = fresh_registry()
    pusher = registry.pusher()
    app = images.oci_image("finder-plain", (64,))
    pusher.push("gs/app", app, "1.0")
    finder = ReferrerFinder(RegistryClient(registry.url, StaticCredentials(Credentials(*PUSHER))), ReferrerPolicy())
    assert finder.of("gs/app", app.digest) == [] and finder.api is False
