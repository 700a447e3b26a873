"""What is known about particular registries, by host: Docker Hub and Alibaba Cloud ACR.

The rules that hold whatever the configuration says (a host's aliases, the path depth it accepts,
what it refuses, where it can be reached from) and the defaults the configuration may change
(the request budget) live here, each with the documentation it comes from, so that loading,
planning, the infrastructure tests and ``check`` read one table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

DOCKER_HUB = "https://registry-1.docker.io"
_HOST_ALIASES = {"https://docker.io": DOCKER_HUB, "https://index.docker.io": DOCKER_HUB}


@dataclass(frozen=True)
class RequestDefaults:
    """A registry's request budget when the configuration does not set one (None: no limit).

    ``requests_per_second`` and ``concurrent_requests`` are what one process sends (the CLI, or
    one Functions instance); ``fleet_requests_per_second`` is what every process of a deployment
    may send together: the infrastructure divides it by the instance count (docs/rate-limits.md).
    """

    requests_per_second: float | None
    concurrent_requests: int | None
    fleet_requests_per_second: float | None = None


# Docker Hub. Documented (docs.docker.com, "Docker Hub usage and limits"): an abuse rate limit
# on every request to Hub (web, API, pulls) per IPv4 address or IPv6 /64, "in the order of
# thousands of requests per minute", answered with a bare 429 (no Retry-After, no RateLimit
# headers); and a pull limit per 6 h or 1 h window (a manifest GET counts, a HEAD does not;
# `ratelimit-limit: 100;w=21600` / `ratelimit-remaining` on manifest answers; unlimited for paid
# plans), which no request rate avoids: pushing and HEAD checks do not count against it.
# Conservative choices, not documented numbers: the whole fleet stays at 15 requests/s (900 a
# minute, under the lowest reading of "thousands per minute", with room for anything else that
# leaves from the same address); one process alone sends 10/s with 8 in flight.
DOCKER_HUB_DEFAULTS = RequestDefaults(10.0, 8, 15.0)
# Alibaba Cloud ACR. Alibaba documents QPS limits for its OpenAPI (the console API), none for the
# registry (Distribution) API of the personal or the Enterprise Edition that we found; the
# personal edition is a free shared service. Conservative choice, not a documented number: the
# same budget as Docker Hub.
ALIBABA_DEFAULTS = RequestDefaults(10.0, 8, 15.0)
# Any other target: no rate limit, at most 32 requests in flight from one process (a choice:
# half the threads a process plans with). A 429 still slows the whole registry down.
GENERIC_DEFAULTS = RequestDefaults(None, 32)
# The source has no budget unless SOURCE_REQUESTS_PER_SECOND / SOURCE_CONCURRENT_REQUESTS set one;
# its 429s slow it down all the same. An Azure Container Registry's documented throttling is per
# registry, whoever reads: ReadOps per minute, Basic 1,000, Standard 3,000, Premium 10,000 (a pull
# is the manifest plus one per layer), answered with 429s, also on the token endpoint.


# Where the rules come from.
DOCKER_PUSH_DOC = "https://docs.docker.com/docker-hub/repos/manage/hub-images/push/"
DOCKER_TOKENS_DOC = "https://docs.docker.com/security/access-tokens/reference/"
DOCKER_PULLS_DOC = "https://docs.docker.com/docker-hub/usage/pulls/"
ALIBABA_EDITIONS_DOC = (
    "https://www.alibabacloud.com/help/en/container-registry/latest/what-is-container-registry"
)
ALIBABA_NAMESPACES_DOC = "https://www.alibabacloud.com/help/en/acr/user-guide/manage-namespaces"
ALIBABA_INSTANCE_ENDPOINT_DOC = "https://www.alibabacloud.com/help/en/acr/user-guide/individual-edition-instance-independent-domain-name-capacity-limit"
ALIBABA_NETWORK_DOC = "https://www.alibabacloud.com/help/en/acr/user-guide/network-access-control-overview"
# Not documented by Alibaba: the refusal as projects pushing buildx images there report it.
ALIBABA_ATTESTATIONS_REPORT = "https://github.com/matrixorigin/matrixone-operator/issues/613"


@dataclass(frozen=True)
class Rule:
    """One thing a registry does whatever the configuration says, and where that is written."""

    text: str
    source: str


@dataclass(frozen=True)
class KnownRegistry:
    """A registry (and edition) recognised by its host name."""

    name: str
    path_depth: int | None  # path levels a repository name may have at most (None: no limit)
    namespace_required: bool = False  # a one-level name is refused (Docker Hub: library/ is Docker's own)
    private_network_only: bool = False  # the endpoint answers only inside the provider's network
    refuses_attestations: bool = False  # buildx attestation manifests are refused ("unknown manifest class")
    rate_limit_probe: tuple[str, str] | None = None  # (repository, tag) whose HEAD shows the pull limit
    requests: RequestDefaults = GENERIC_DEFAULTS  # its request budget unless the configuration sets one
    rules: tuple[Rule, ...] = ()


_DOCKER_HUB = KnownRegistry(
    "Docker Hub",
    path_depth=2,
    namespace_required=True,
    rate_limit_probe=("ratelimitpreview/test", "latest"),
    requests=DOCKER_HUB_DEFAULTS,
    rules=(
        Rule(
            "repositories are <namespace>/<name>: two path levels; a one-level name is an official "
            "image (library/), which only Docker publishes",
            DOCKER_PUSH_DOC,
        ),
        Rule(
            "a push needs a namespace that exists (the account or an organization it may write to) "
            "and a token with 'Read & Write' or more; anything less is answered 'denied: requested "
            "access to the resource is denied'",
            DOCKER_TOKENS_DOC,
        ),
        Rule(
            "manifest GETs count against the pull limit (HEADs do not); the limit is sent in the "
            "ratelimit-limit / ratelimit-remaining headers",
            DOCKER_PULLS_DOC,
        ),
    ),
)

_ALIBABA_PERSONAL_RULES = (
    Rule(
        "Personal Edition: repositories are <namespace>/<name> (two path levels); at most 3 "
        "namespaces and 300 repositories",
        ALIBABA_EDITIONS_DOC,
    ),
    Rule(
        "a push creates the repository only when the namespace exists and its 'Automatically "
        "Create Repository' setting is on",
        ALIBABA_NAMESPACES_DOC,
    ),
    Rule(
        "buildx attestation manifests are refused ('unknown manifest class for "
        "application/vnd.oci.empty.v1+json'; reported, not documented)",
        ALIBABA_ATTESTATIONS_REPORT,
    ),
)


_ALIBABA_PERSONAL = KnownRegistry(
    "Alibaba Cloud ACR Personal Edition",
    path_depth=2,
    namespace_required=True,
    refuses_attestations=True,
    rules=_ALIBABA_PERSONAL_RULES,
    requests=ALIBABA_DEFAULTS,
)
_ALIBABA_INSTANCE = replace(
    _ALIBABA_PERSONAL,
    name="Alibaba Cloud ACR Personal Edition instance endpoint (crpi-)",
    rules=(
        *_ALIBABA_PERSONAL_RULES,
        Rule(
            "instances created since 2024-09-09 have this endpoint: anonymous pulls are not "
            "supported and clients pull with credentials",
            ALIBABA_INSTANCE_ENDPOINT_DOC,
        ),
    ),
)
_ALIBABA_ENTERPRISE = KnownRegistry(
    "Alibaba Cloud ACR Enterprise Edition",
    path_depth=2,
    namespace_required=True,
    requests=ALIBABA_DEFAULTS,
    rules=(
        Rule("repositories are <namespace>/<name> (two path levels)", ALIBABA_EDITIONS_DOC),
        Rule(
            "a new instance accepts no traffic: internet access (with an allowlist) or a VPC "
            "must be enabled in its access control",
            ALIBABA_NETWORK_DOC,
        ),
        Rule(
            "a push creates the repository only when the namespace allows it (automatic creation)",
            ALIBABA_NAMESPACES_DOC,
        ),
    ),
)

# (host pattern, the registry, what its private endpoints are called): an endpoint is private
# when the pattern's group "private" matched.
_KNOWN = (
    (re.compile(r"registry-1\.docker\.io"), _DOCKER_HUB, ""),
    (
        re.compile(r"registry(?:-intl)?(?P<private>-vpc|-internal)?\.[a-z0-9-]+\.aliyuncs\.com"),
        _ALIBABA_PERSONAL,
        "VPC/internal endpoint",
    ),
    (
        re.compile(r"crpi-[a-z0-9]+(?P<private>-vpc)?\.[a-z0-9-]+\.personal\.cr\.aliyuncs\.com"),
        _ALIBABA_INSTANCE,
        "VPC endpoint",
    ),
    (
        re.compile(r"[a-z0-9][a-z0-9-]*-registry(?P<private>-vpc)?\.[a-z0-9-]+\.cr\.aliyuncs\.com"),
        _ALIBABA_ENTERPRISE,
        "VPC endpoint",
    ),
)


def canonical_registry(url: str) -> str:
    """``url`` (normalized) under the name the registry answers on: ``docker.io`` is Docker Hub's API host."""
    return _HOST_ALIASES.get(url, url)


def known_registry(registry: str) -> KnownRegistry | None:
    """What is known of the registry at ``registry`` (a normalized URL), None for any other."""
    host = (urlsplit(registry).hostname or "").lower()
    for pattern, known, private in _KNOWN:
        match = pattern.fullmatch(host)
        if match and match.groupdict().get("private"):
            return replace(known, name=f"{known.name} ({private})", private_network_only=True)
        if match:
            return known
    return None


def default_path_depth(registry: str) -> int | None:
    """The path levels ``registry`` accepts when the configuration does not say (None: no limit)."""
    known = known_registry(registry)
    return known.path_depth if known else None


def default_request_limits(registry: str) -> RequestDefaults:
    """The request budget of ``registry`` (a normalized URL) when the configuration sets none."""
    known = known_registry(registry)
    return known.requests if known else GENERIC_DEFAULTS
