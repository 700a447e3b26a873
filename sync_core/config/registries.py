"""What is known about particular registries, by host: Docker Hub and Alibaba Cloud ACR.

The rules that hold whatever the configuration says (a host's aliases, the path depth it accepts)
live here, each with where it comes from, so that loading, planning and ``check`` read one table.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DOCKER_HUB = "https://registry-1.docker.io"
_HOST_ALIASES = {"https://docker.io": DOCKER_HUB, "https://index.docker.io": DOCKER_HUB}
# Registries that accept only namespace/repository (two path levels): Docker Hub, and every host
# form of Alibaba Cloud ACR (personal edition old and new, international, VPC; Enterprise Edition
# repositories are namespace/name too).
_TWO_LEVEL_HOSTS = tuple(
    re.compile(p)
    for p in (
        r"registry-1\.docker\.io",
        r"registry(-vpc|-intl|-intl-vpc|-internal)?\.[a-z0-9-]+\.aliyuncs\.com",
        r"crpi-[a-z0-9]+(-vpc)?\.[a-z0-9-]+\.personal\.cr\.aliyuncs\.com",
        r"[a-z0-9][a-z0-9-]*-registry(-vpc)?\.[a-z0-9-]+\.cr\.aliyuncs\.com",
    )
)
# A platform as a target's `platforms` list names it: os/architecture[/variant].


def canonical_registry(url: str) -> str:
    """``url`` (normalized) under the name the registry answers on: ``docker.io`` is Docker Hub's API host."""
    return _HOST_ALIASES.get(url, url)


def default_path_depth(registry: str) -> int | None:
    """The path levels ``registry`` accepts when the configuration does not say (None: no limit)."""
    host = urlsplit(registry).hostname or ""
    return 2 if any(p.fullmatch(host) for p in _TWO_LEVEL_HOSTS) else None
