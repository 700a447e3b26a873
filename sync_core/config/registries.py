"""What is known about particular registries, by host: Docker Hub and Alibaba Cloud ACR.

The rules that hold whatever the configuration says (a host's aliases, the path depth it accepts)
and the defaults it may change (the request budget) live here, each with where it comes from, so
that loading, planning, the infrastructure tests and ``check`` read one table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DOCKER_HUB = "https://registry-1.docker.io"
_HOST_ALIASES = {"https://docker.io": DOCKER_HUB, "https://index.docker.io": DOCKER_HUB}
_DOCKER_HUB_HOSTS = (re.compile(r"registry-1\.docker\.io"),)
# Every host form of Alibaba Cloud ACR: personal edition old and new, international, VPC, and
# Enterprise Edition instances.
_ALIBABA_HOSTS = tuple(
    re.compile(p)
    for p in (
        r"registry(-vpc|-intl|-intl-vpc|-internal)?\.[a-z0-9-]+\.aliyuncs\.com",
        r"crpi-[a-z0-9]+(-vpc)?\.[a-z0-9-]+\.personal\.cr\.aliyuncs\.com",
        r"[a-z0-9][a-z0-9-]*-registry(-vpc)?\.[a-z0-9-]+\.cr\.aliyuncs\.com",
    )
)
# Registries that accept only namespace/repository (two path levels): Docker Hub, and Alibaba
# Cloud ACR (Enterprise Edition repositories are namespace/name too).
_TWO_LEVEL_HOSTS = _DOCKER_HUB_HOSTS + _ALIBABA_HOSTS


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


def canonical_registry(url: str) -> str:
    """``url`` (normalized) under the name the registry answers on: ``docker.io`` is Docker Hub's API host."""
    return _HOST_ALIASES.get(url, url)


def default_path_depth(registry: str) -> int | None:
    """The path levels ``registry`` accepts when the configuration does not say (None: no limit)."""
    host = urlsplit(registry).hostname or ""
    return 2 if any(p.fullmatch(host) for p in _TWO_LEVEL_HOSTS) else None


def default_request_limits(registry: str) -> RequestDefaults:
    """The request budget of ``registry`` (a normalized URL) when the configuration sets none."""
    host = urlsplit(registry).hostname or ""
    if any(p.fullmatch(host) for p in _DOCKER_HUB_HOSTS):
        return DOCKER_HUB_DEFAULTS
    if any(p.fullmatch(host) for p in _ALIBABA_HOSTS):
        return ALIBABA_DEFAULTS
    return GENERIC_DEFAULTS
