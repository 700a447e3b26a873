"""What the Functions worker passes a function as ``context``, for tests that call functions directly."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import azure.functions as func


class Context(func.Context):
    """What the worker passes as ``context``: an invocation id and its thread-local storage.

    ``storage`` is one ``threading.local`` for the process, as in the worker (4.x reads
    ``storage.invocation_id`` in any thread to tie a log record to an invocation).
    """

    storage = threading.local()

    def __init__(self, invocation_id: str | None = None) -> None:
        self._id = invocation_id or str(uuid.uuid4())

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self):
        return self.storage

    @property
    def function_name(self) -> str:
        return "test"

    @property
    def function_directory(self) -> str:
        return str(Path(__file__).resolve().parent.parent)

    @property
    def trace_context(self):
        return None

    @property
    def retry_context(self):
        return None


class Collect(func.Out):
    """A queue output binding that keeps what the function set."""

    def __init__(self) -> None:
        self.value = None

    def set(self, val) -> None:
        self.value = val

    def get(self):
        return self.value
