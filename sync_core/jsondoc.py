"""Parsing JSON that comes from outside (registries, token services, events, queue messages)."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidContent

_KIND_NAMES: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}


def parse_json(raw: bytes | str, what: str, kind: type | None = None) -> Any:
    """``raw`` parsed, or :class:`~sync_core.errors.InvalidContent` naming ``what``.

    Absurdly nested documents (``RecursionError``) and bytes that are not UTF-8 are refused like
    any other malformed input. ``kind`` (``dict`` or ``list``) is the type the document must have.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidContent(f"{what}: not valid JSON") from None
    if kind is not None and not isinstance(document, kind):
        raise InvalidContent(f"{what}: not {_KIND_NAMES.get(kind, kind.__name__)}")
    return document
