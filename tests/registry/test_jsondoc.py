"""parse_json: what outside JSON is accepted, and how deep nesting is refused before parsing."""

from __future__ import annotations

import pytest

from sync_core.errors import InvalidContent
from sync_core.registry.jsondoc import MAX_DEPTH, parse_json


@pytest.mark.parametrize(
    "raw, kind, expected",
    [
        (b'{"a": [1, {"b": null}]}', dict, {"a": [1, {"b": None}]}),
        ('{"a": "[[[[{{{{"}', dict, {"a": "[[[[{{{{"}),  # brackets in strings do not nest
        (b'{"a": "\\"[[[["}', dict, {"a": '"[[[['}),  # nor after an escaped quote
    ],
)
def test_accepted(raw, kind, expected):
    assert parse_json(raw, "doc", kind) == expected


def test_as_deep_as_allowed_is_parsed():
    document = parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "doc", list)
    depth = 1
    while document:
        document, depth = document[0], depth + 1
    assert depth == MAX_DEPTH


@pytest.mark.parametrize(
    "raw, kind, message",
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), None, f"nested deeper than {MAX_DEPTH}"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, None, f"nested deeper than {MAX_DEPTH}"),
        ("[" * 100_000, None, f"nested deeper than {MAX_DEPTH}"),  # str, unterminated
        (b"\xff{}", None, "not valid JSON"),
        (b"[]", dict, "not a JSON object"),
        (b"{}", list, "not a JSON array"),
    ],
)
def test_refused(raw, kind, message):
    with pytest.raises(InvalidContent, match=message):
        parse_json(raw, "doc", kind)
