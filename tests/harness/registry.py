"""Run a real ``docker-registry serve`` (distribution 2.8) on 127.0.0.1 for tests.

    with Registry(token_issuer=issuer) as reg:          # auth.token via a TokenIssuer
        ...
    Registry(htpasswd_users={"basic": "basic-pass"})     # auth.htpasswd (bcrypt)
    Registry()                                          # no auth

The registry is started by the constructor and answers ``GET /v2/`` before it returns.
Storage, config and log live in a temp dir removed by :meth:`Registry.stop`. Every started
registry is also stopped by :func:`stop_all` (called at interpreter exit and by the test
session teardown), and on Linux it dies with the Python process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import copy
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import bcrypt
import requests
import yaml

from .servers import end_process, log_tail, spawn

if TYPE_CHECKING:
    from .images import Pusher
    from .tokens import TokenIssuer

REGISTRY_BINARY = os.environ.get("REGISTRY_SYNC_TEST_REGISTRY_BIN", "/usr/bin/docker-registry")

#: ``extra_config`` for a registry that stores manifests with foreign (non-distributable) layers:
#: distribution 2.8 refuses their ``urls`` unless ``validation.manifests.urls.allow`` admits them.
FOREIGN_URLS_ALLOWED = {"validation": {"manifests": {"urls": {"allow": ["^https?://"]}}}}
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})

_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
)

_live: set[Registry] = set()
_live_lock = threading.Lock()


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, extra: Mapping) -> dict:
    """Recursively merge ``extra`` into a copy of ``base`` (``None`` values delete keys)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def htpasswd_lines(users: Mapping[str, str]) -> str:
    """bcrypt htpasswd content for ``{user: password}``."""
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{user}:{hashed}")
    return "\n".join(lines) + "\n"


class RegistryStartError(RuntimeError):
    pass


class AccessLogIncomplete(AssertionError):
    """The access log lacks the marker request :meth:`Registry.access_log` sent: it is incomplete."""


class Registry:
    """A running ``docker-registry`` process.

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``host`` (``127.0.0.1:PORT``), ``port``,
    ``auth`` (``"token"``, ``"htpasswd"`` or ``"none"``), ``token_issuer``, ``htpasswd_users``,
    ``config`` (the dict written to ``config_path``), ``storage_dir``, ``log_path``.
    """

    def __init__(
        self,
        *,
        token_issuer: TokenIssuer | None = None,
        htpasswd_users: Mapping[str, str] | None = None,
        extra_config: Mapping | None = None,
        startup_timeout: float = 15.0,
        binary: str = REGISTRY_BINARY,
        name: str = "registry",
    ):
        if token_issuer is not None and htpasswd_users:
            raise ValueError("choose token_issuer or htpasswd_users, not both")
        self.token_issuer = token_issuer
        self.htpasswd_users = dict(htpasswd_users or {})
        self.auth = "token" if token_issuer is not None else "htpasswd" if htpasswd_users else "none"
        self.name = name
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._extra_config = dict(extra_config or {})
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.storage_dir = self._tmp / "storage"
        self.storage_dir.mkdir()
        self.config_path = self._tmp / "config.yml"
        self.log_path = self._tmp / "registry.log"
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self.port = 0
        self.config: dict = {}
        #: set by the ``token_registry_src`` fixture to what was pushed (a ``Seeded``)
        self.seeded = None
        if self.auth == "htpasswd":
            (self._tmp / "htpasswd").write_text(htpasswd_lines(self.htpasswd_users))
        with _live_lock:
            _live.add(self)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    # -- properties ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The ``docker-registry`` process id (None when not running)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def build_config(self, port: int) -> dict:
        config: dict = {
            "version": 0.1,
            "log": {"level": "warn", "fields": {"service": self.name}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                "secret": "registry-sync-test-secret",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.auth == "token":
            ti = self.token_issuer
            config["auth"] = {
                "token": {
                    "realm": ti.realm,
                    "service": ti.service,
                    "issuer": ti.issuer,
                    "rootcertbundle": ti.cert_path,
                }
            }
        elif self.auth == "htpasswd":
            config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(self._tmp / "htpasswd")}}
        return deep_merge(config, self._extra_config)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        """(Re)start on a free port (a new one if the old one is taken); storage is kept."""
        if self.running:
            return
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self.port or free_port()
            try:
                self._spawn(port)
                return
            except RegistryStartError as exc:
                last_error = exc
                self._kill()
                if "address already in use" not in str(exc):
                    raise
                self.port = 0
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int) -> None:
        self.port = port
        self.config = self.build_config(port)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log_file = open(self.log_path, "ab")
        self._proc = spawn([self.binary, "serve", str(self.config_path)], self._log_file, self._tmp)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                r = requests.get(f"{self.url}/v2/", timeout=1)
                if r.status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"docker-registry did not answer on {self.url} within {self.startup_timeout}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    # -- request log ------------------------------------------------------------------------------

    def access_log(self, timeout: float = 5.0) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request answered so far, oldest first.

        From the access log distribution writes to its stdout (Apache combined format). A request
        is logged just after its answer is sent, so a marker request is sent first and waited for:
        everything answered before this call is in the list. Raises :class:`AccessLogIncomplete`
        when the marker is not in the log within ``timeout`` seconds (a truncated or lagging log
        would otherwise pass for one without the requests looked for).
        """
        marker = f"/v2/?access-log-marker={uuid.uuid4().hex}"
        requests.get(self.url + marker, timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            entries = [
                (m["method"], m["path"], int(m["status"]))
                for m in map(_ACCESS_LINE.match, self.log_path.read_text(errors="replace").splitlines())
                if m is not None
            ]
            if any(path == marker for _, path, _ in entries):
                return [e for e in entries if "access-log-marker=" not in e[1]]
            if time.monotonic() > deadline:
                raise AccessLogIncomplete(
                    f"{self.name} at {self.url}: the marker request {marker} did not appear in the access "
                    f"log {self.log_path} within {timeout} s ({len(entries)} entries read): the log is "
                    f"truncated or lagging, so it cannot say which requests were answered\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def plant_blob(self, repository: str, digest: str, data: bytes) -> None:
        """Store ``data`` as blob ``digest`` of ``repository`` straight into the storage directory,
        as damaged storage would hold it: distribution serves the bytes as they are (it checks a
        digest on upload only, so no client could put them there)."""
        hexpart = digest.split(":", 1)[1]
        v2 = self.storage_dir / "docker/registry/v2"
        blob = v2 / "blobs/sha256" / hexpart[:2] / hexpart / "data"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = v2 / "repositories" / repository / "_layers/sha256" / hexpart / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)

    def writes(self, since: int = 0, timeout: float = 5.0) -> list[tuple[str, str, int]]:
        """The PUT/POST/PATCH/DELETE requests of :meth:`access_log` from entry ``since`` on."""
        return [e for e in self.access_log(timeout)[since:] if e[0] in WRITE_METHODS]

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        end_process(proc, 5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage."""
        self._kill()
        self.start()

    def stop(self) -> None:
        """Terminate the process, wait for it and remove the temp dir. Idempotent."""
        self._kill()
        shutil.rmtree(self._tmp, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Registry({self.url}, auth={self.auth})"

    # -- clients ---------------------------------------------------------------------------------

    def pusher(self, user: str | None = None) -> Pusher:
        """A :class:`~tests.harness.images.Pusher` with full access to this registry.

        Token registries: tokens minted directly by the issuer (no HTTP round trip to it).
        htpasswd registries: Basic auth as ``user`` (default: the first user).
        """
        from .images import Pusher

        if self.auth == "token":
            return Pusher.for_issuer(self.url, self.token_issuer)
        if self.auth == "htpasswd":
            user = user or next(iter(self.htpasswd_users))
            return Pusher(self.url, basic_auth=(user, self.htpasswd_users[user]))
        return Pusher(self.url)


def stop_all() -> None:
    """Stop every registry (then every token issuer) this process started and has not stopped."""
    with _live_lock:
        regs = list(_live)
    for reg in regs:
        reg.stop()
    from .tokens import stop_all_issuers

    stop_all_issuers()


atexit.register(stop_all)
