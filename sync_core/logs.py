"""One log line per decision, readable and queryable.

Every line ends with ``| decision=... repository=... tag=... digest=... target=...``; the same
fields go into ``custom_dimensions`` (what Application Insights shows as customDimensions), so
queries such as ``traces | where customDimensions.decision == "failed"`` work. Values from
untrusted input (events, registry answers) are escaped and cut to a bounded length.

With ``telemetryMode: OpenTelemetry`` (host.json) the worker's OpenTelemetry log handler turns
each extra attribute of a record into one customDimensions entry and a dict into one string: so
each field is also set as an attribute of its own (``record.decision``, ``record.repository``...).
"""

from __future__ import annotations

import logging

MAX_VALUE = 300
# LogRecord's own attributes: a field with one of these names stays in custom_dimensions only.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "custom_dimensions"}


def clean(value: object, limit: int = MAX_VALUE) -> str:
    """A value made safe for one log line: no control characters, bounded length."""
    text = value if isinstance(value, str) else repr(value)
    return text[:limit].encode("unicode_escape").decode("ascii")


def decision(
    logger: logging.Logger, what: str, message: str, *, level: int = logging.INFO, **fields: object
) -> None:
    dims = {"decision": what, **{k: v for k, v in fields.items() if v is not None}}
    tail = " ".join(f"{k}={clean(v)}" for k, v in dims.items())
    flat = {k: v if isinstance(v, (str, bool, int, float)) else clean(v) for k, v in dims.items() if k not in _RESERVED}
    logger.log(level, "%s | %s", clean(message, 2000), tail, extra={"custom_dimensions": dims, **flat})
