"""Run a real ``azurite-queue`` or ``azurite-table`` (the Azure Storage emulator, npm package
``azurite``) for tests.

    with Azurite() as azurite:
        conn = azurite.connection_string()                  # the well-known devstoreaccount1
        conn = azurite.connection_string(proxy.url)         # the same account through a FaultProxy
        azurite.stop_process(); ...; azurite.start()        # an outage; data and port are kept
    with Azurite("table") as tables:                        # the table service (the timer's state)
        conn = tables.connection_string()

The binary comes from ``make azurite`` (``.tools/azurite``, see mk/azurite.mk) or
``REGISTRY_SYNC_TEST_AZURITE_BIN``. It listens on 127.0.0.1 on an ephemeral port, keeps its data
in a temp dir (removed by :meth:`Azurite.stop`), skips the API version check (the SDK may be
newer than the emulator) and sends no telemetry.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.harness.paths import ROOT

from .registry import free_port
from .servers import end_process, log_tail, spawn

BIN = ROOT / ".tools" / "azurite" / "node_modules" / ".bin"
AZURITE_QUEUE = Path(os.environ.get("REGISTRY_SYNC_TEST_AZURITE_BIN", BIN / "azurite-queue"))
SERVICES = ("queue", "table")

#: The emulator's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_live: set[Azurite] = set()
_live_lock = threading.Lock()


def ensure_installed(service: str = "queue") -> Path:
    """The azurite-<service> binary, installed with ``make azurite`` when missing."""
    binary = AZURITE_QUEUE if service == "queue" else AZURITE_QUEUE.with_name(f"azurite-{service}")
    if not os.access(binary, os.X_OK):
        make = shutil.which("make")
        assert make, "make is needed to install azurite into .tools/azurite"
        subprocess.run([make, "-C", str(ROOT), "-f", "mk/azurite.mk", "azurite"], check=True, timeout=900)
    assert os.access(binary, os.X_OK), f"{binary} missing (make azurite)"
    return binary


class Azurite:
    """A running ``azurite-<service>``: ``port``, ``url`` (the account's endpoint), ``location``."""

    def __init__(self, service: str = "queue", *, startup_timeout: float = 30.0) -> None:
        assert service in SERVICES, service
        self.service = service
        self.binary = ensure_installed(service)
        self.startup_timeout = startup_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.location = self._tmp / "data"
        self.location.mkdir()
        self.log_path = self._tmp / "azurite.log"
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log = None
        with _live_lock:
            _live.add(self)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def connection_string(self, endpoint: str | None = None) -> str:
        """Shared-key connection string; ``endpoint`` (``http://host:port``) routes it elsewhere."""
        url = f"{endpoint.rstrip('/')}/{ACCOUNT}" if endpoint else self.url
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"{self.service.capitalize()}Endpoint={url};"
        )

    def start(self) -> None:
        """Start (again) on the same port if it had one; the data in ``location`` is kept."""
        if self.running:
            return
        self.port = self.port or free_port()
        self._log = open(self.log_path, "ab")
        self._proc = spawn(
            [
                str(self.binary),
                f"--{self.service}Host",
                "127.0.0.1",
                f"--{self.service}Port",
                str(self.port),
                "--location",
                str(self.location),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ],
            self._log,
            self._tmp,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.binary.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.binary.name} did not listen on {self.port} in {self.startup_timeout}s"
                )
            time.sleep(0.05)

    def stop_process(self) -> None:
        """Stop the process (an outage); :meth:`start` brings it back with its data."""
        proc, self._proc = self._proc, None
        end_process(proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the process and remove its data. Idempotent."""
        self.stop_process()
        shutil.rmtree(self._tmp, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connection_string(*services: Azurite) -> str:
    """One connection string for the account of several emulators (queue and table endpoints)."""
    parts = [f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"]
    parts += [f"{s.service.capitalize()}Endpoint={s.url};" for s in services]
    return "".join(parts)


def stop_all() -> None:
    with _live_lock:
        running = list(_live)
    for azurite in running:
        azurite.stop()


atexit.register(stop_all)
