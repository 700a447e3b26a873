"""Parsing JSON that comes from outside (registries, token services, events, queue messages)."""

from __future__ import annotations

import json
import re
from typing import Any

from sync_core.errors import InvalidContent

_KIND_NAMES: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}
# Registry, token and event documents nest a few levels; far deeper is an attack or garbage.
MAX_DEPTH = 200
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)  # strings (skipped) and brackets


def parse_json(raw: bytes | str, what: str, kind: type | None = None) -> Any:
    """``raw`` parsed, or :class:`~sync_core.errors.InvalidContent` naming ``what``.

    Documents nested deeper than :data:`MAX_DEPTH` are refused before they are parsed: the
    parser's recursion would otherwise run up to the interpreter's limit, where anything else
    that happens on that thread (a garbage collection, a log line) fails too. Bytes that are not
    UTF-8 are refused like any other malformed input. ``kind`` (``dict`` or ``list``) is the
    type the document must have.
    """
    if _deeper_than(raw, MAX_DEPTH):
        raise InvalidContent(f"{what}: not valid JSON (nested deeper than {MAX_DEPTH} levels)")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidContent(f"{what}: not valid JSON") from None
    if kind is not None and not isinstance(document, kind):
        raise InvalidContent(f"{what}: not {_KIND_NAMES.get(kind, kind.__name__)}")
    return document


def _deeper_than(raw: bytes | str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (cheap when they cannot)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for token in _TOKENS.finditer(data):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif bracket in (b"]", b"}"):
            depth -= 1
    return False
