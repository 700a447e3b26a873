"""What a committed setting value must not look like (keys, SAS, tokens, PEM)."""

from __future__ import annotations

import re

SECRET_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"AccountKey=",
        r"SharedAccessSignature",
        r"[?&]sig=",
        r"InstrumentationKey=[0-9a-f-]{8,}",
        r"dckr_pat_",  # Docker Hub personal access token
        r"\beyJ[A-Za-z0-9_-]{10,}",  # JWT
        r"-----BEGIN",
        r"^[A-Za-z0-9+/=_-]{32,}$",  # long opaque token / key
    )
]


GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def looks_like_secret(value: str) -> bool:
    if GUID.fullmatch(value):
        return False  # ids (built-in role definitions, tenants) are public
    return any(p.search(value) for p in SECRET_PATTERNS)
