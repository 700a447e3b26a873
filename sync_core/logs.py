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

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, Protocol, TypeVar

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
    flat = {
        k: v if isinstance(v, (str, bool, int, float)) else clean(v)
        for k, v in dims.items()
        if k not in _RESERVED
    }
    logger.log(level, "%s | %s", clean(message, 2000), tail, extra={"custom_dimensions": dims, **flat})


# -- Functions invocations and threads --------------------------------------------------------------
#
# The Functions host keeps a worker's log record only when it names a running invocation. The
# worker attaches the id to records written in the function's own thread. In other threads it
# looks at ``context.thread_local_storage.invocation_id`` (worker 4.x, Python 3.10-3.12) or at a
# context variable of its own (azure-functions-runtime, Python 3.13). :class:`InvocationPool`
# carries both into its threads, so per-tag lines from the copy and plan pools reach Application
# Insights under the invocation that wrote them.

P = ParamSpec("P")
T = TypeVar("T")


class InvocationContext(Protocol):
    """What :func:`invocation` reads of ``azure.functions.Context``."""

    @property
    def invocation_id(self) -> str: ...

    @property
    def thread_local_storage(self) -> Any: ...


_invocation: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "sync_core_invocation", default=None
)


@contextlib.contextmanager
def invocation(context: InvocationContext) -> Iterator[None]:
    """While the block runs, :class:`InvocationPool` threads log for this invocation.

    ``context``: the function's ``azure.functions.Context``.
    """
    token = _invocation.set((context.invocation_id, context.thread_local_storage))
    try:
        yield
    finally:
        _invocation.reset(token)


def _run_in_invocation(call: Callable[[], T]) -> T:
    bound = _invocation.get()
    if bound is None:  # not inside a function (CLI, tests): nothing to carry
        return call()
    invocation_id, storage = bound
    previous = getattr(storage, "invocation_id", None)
    storage.invocation_id = invocation_id
    try:
        return call()
    finally:
        storage.invocation_id = previous


class InvocationPool(ThreadPoolExecutor):
    """The thread pool of sync_core: each task runs in a copy of its submitter's ``contextvars``
    context and, inside a Functions invocation, with the worker's thread-local invocation id set."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        context = contextvars.copy_context()  # one copy per task: a Context runs in one thread at a time
        call = functools.partial(fn, *args, **kwargs)

        def task() -> T:
            return context.run(_run_in_invocation, call)

        return super().submit(task)
