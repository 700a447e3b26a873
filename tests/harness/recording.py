"""Instruments for the client under test: a recording ``Transport`` and a recording ``sleep``.

The one harness module that imports ``sync_core``: :class:`RecordingTransport` *is* the real
:class:`sync_core.registry.transport.Transport` (nothing is replaced), with a log of what it sent. It is
not re-exported from :mod:`tests.harness`, which stays independent of the code under test.
"""

from __future__ import annotations

import threading
from typing import Any

from requests import Response

from sync_core.registry.transport import Transport


class RecordingTransport(Transport):
    """A real :class:`Transport` that records ``(method, url, status)`` of every ``send``.

    ``status`` is None when the send raised.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.log: list[tuple[str, str, int | None]] = []
        self._log_lock = threading.Lock()

    def send(self, method: str, url: str, **kwargs: Any) -> Response:
        try:
            response = super().send(method, url, **kwargs)
        except Exception:
            with self._log_lock:
                self.log.append((method, url, None))
            raise
        with self._log_lock:
            self.log.append((method, url, response.status_code))
        return response

    def sent(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, int | None]]:
        with self._log_lock:
            return [e for e in self.log if (method is None or e[0] == method) and contains in e[1]]


class Waits(list):
    """``Transport(sleep=waits)``: records the delays instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
