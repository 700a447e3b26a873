"""Running the two tools as subprocesses: wall time, exit status, peak RSS (``wait4``)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ProcessResult:
    command: list[str]
    returncode: int
    seconds: float
    max_rss_bytes: int
    stdout: str
    stderr: str
    timed_out: bool = False
    cpu_seconds: float = 0.0  # user + system CPU of the command (its children included)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_measured(command: list[str], env: dict[str, str], timeout: float, cwd: Path = ROOT) -> ProcessResult:
    """Run ``command`` (through :mod:`bench.maxrss`, which reports the command's own peak RSS and CPU time)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(prefix="maxrss-") as rss,
    ):
        wrapped = [sys.executable, "-S", str(Path(__file__).with_name("maxrss.py")), rss.name, *command]
        started = time.monotonic()
        proc = subprocess.Popen(
            wrapped,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        # Popen.wait(timeout) polls (sleeps of up to 50 ms): the end would be seen up to 50 ms late.
        # A blocking wait sees it at once; a timer kills the process group on timeout.
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        fields = Path(rss.name).read_text().split()
        return ProcessResult(
            command=command,
            returncode=proc.returncode,
            seconds=seconds,
            max_rss_bytes=int(fields[0]) * 1024 if fields and fields[0].isdigit() else 0,  # Linux: kilobytes
            cpu_seconds=sum(float(f) for f in fields[1:3]),
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Endpoint:
    url: str  # http://127.0.0.1:PORT (what the tools are given)
    username: str
    password: str

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]


class RegistrySync:
    """``python -m sync_core sync --json`` configured through the environment (as in Azure).

    One target: ``TARGET_*`` settings. Several: a ``SYNC_CONFIG`` file listing them (written in
    ``workdir``), their credentials in the environment (``username_env``/``password_env``).
    """

    name = "registry-sync"

    def __init__(
        self,
        source: Endpoint,
        targets: Endpoint | list[Endpoint],
        concurrency: int | None = None,
        workdir: Path | None = None,
    ):
        self.source = source
        self.targets = targets if isinstance(targets, list) else [targets]
        self.concurrency = concurrency
        self.workdir = workdir
        assert len(self.targets) == 1 or workdir is not None, "several targets need a workdir for SYNC_CONFIG"

    def env(
        self, source_namespace: str, target_namespace: str, settings: dict[str, str] | None = None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "TARGET_", "SYNC_"))}
        env.update(
            SOURCE_REGISTRY=self.source.url,
            SOURCE_KIND="oci",
            SOURCE_NAMESPACE=source_namespace,
            SOURCE_USERNAME=self.source.username,
            SOURCE_PASSWORD=self.source.password,
            PYTHONPATH=str(ROOT),
        )
        if len(self.targets) == 1:
            (target,) = self.targets
            env.update(
                TARGET_REGISTRY=target.url,
                TARGET_NAMESPACE=target_namespace,
                TARGET_USERNAME=target.username,
                TARGET_PASSWORD=target.password,
            )
        else:
            env["SYNC_CONFIG"] = str(self.config_file(target_namespace))
            for i, target in enumerate(self.targets):
                env[f"BENCH_TARGET{i + 1}_USERNAME"], env[f"BENCH_TARGET{i + 1}_PASSWORD"] = (
                    target.username,
                    target.password,
                )
        if self.concurrency:
            env["SYNC_CONCURRENCY"] = str(self.concurrency)
        env.update(settings or {})
        return env

    def config_file(self, target_namespace: str) -> Path:
        """The ``SYNC_CONFIG`` file with every target (names ``mirror1``, ``mirror2``, ...)."""
        assert self.workdir is not None
        targets = [
            {
                "name": f"mirror{i + 1}",
                "registry": t.url,
                "namespace": target_namespace,
                "username_env": f"BENCH_TARGET{i + 1}_USERNAME",
                "password_env": f"BENCH_TARGET{i + 1}_PASSWORD",
            }
            for i, t in enumerate(self.targets)
        ]
        path = self.workdir / f"registry-sync-{target_namespace.replace('/', '_')}.json"
        path.write_text(json.dumps({"targets": targets}, indent=2))
        return path

    def command(self, args: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, "-m", "sync_core", "sync", "--json", *args]

    def display(
        self,
        source_namespace: str,
        target_namespace: str,
        settings: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> str:
        if len(self.targets) == 1:
            where = f"TARGET_REGISTRY={self.targets[0].url} TARGET_NAMESPACE={target_namespace}"
        else:
            where = (
                f"SYNC_CONFIG=<{len(self.targets)} targets: "
                f"{', '.join(t.url for t in self.targets)}, namespace {target_namespace}>"
            )
        extra = {
            **({"SYNC_CONCURRENCY": str(self.concurrency)} if self.concurrency else {}),
            **(settings or {}),
        }
        return (
            f"SOURCE_REGISTRY={self.source.url} SOURCE_KIND=oci SOURCE_NAMESPACE={source_namespace} {where}"
            + "".join(f" {k}={v}" for k, v in extra.items())
            + " SOURCE_/TARGET_USERNAME/PASSWORD=... python "
            + " ".join(self.command(args)[1:])
        )

    def sync(
        self,
        source_namespace: str,
        target_namespace: str,
        timeout: float,
        *,
        settings: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> tuple[ProcessResult, dict]:
        """One run; ``settings``: more environment (``SYNC_REFERRERS``), ``args``: ``--full-check``."""
        result = run_measured(
            self.command(args), self.env(source_namespace, target_namespace, settings), timeout
        )
        return result, _json(result.stdout)

    def verify(
        self, source_namespace: str, target_namespace: str, timeout: float, *, deep: bool = False
    ) -> tuple[ProcessResult, dict]:
        """``python -m sync_core verify --json [--deep]``: its report (exit 0 when complete)."""
        command = [sys.executable, "-m", "sync_core", "verify", "--json", *(["--deep"] if deep else [])]
        result = run_measured(command, self.env(source_namespace, target_namespace), timeout)
        return result, _json(result.stdout)


def _json(text: str) -> dict:
    try:
        return json.loads(text)
    except ValueError:
        return {}


class Skopeo:
    """``skopeo sync --all`` (the replaced tool's method) and ``skopeo copy --all``.

    Credentials go in an auth file in a private temp HOME (never on a command line); its blob
    info cache lives there too and is kept for the whole benchmark run, as on a long-lived host.
    """

    name = "skopeo"

    def __init__(self, source: Endpoint, target: Endpoint, workdir: Path, label: str = "main"):
        self.source = source
        self.target = target
        self.home = workdir / f"skopeo-{label}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.authfile = self.home / "auth.json"
        auths = {
            ep.host: {"auth": base64.b64encode(f"{ep.username}:{ep.password}".encode()).decode()}
            for ep in (source, target)
        }
        self.authfile.write_text(json.dumps({"auths": auths}))
        self.authfile.chmod(0o600)

    def env(self) -> dict[str, str]:
        return dict(os.environ, HOME=str(self.home), XDG_RUNTIME_DIR=str(self.home))

    def sync_command(self, yaml_path: Path, target_namespace: str) -> list[str]:
        return [
            "skopeo",
            "sync",
            "--all",
            "--preserve-digests",
            "--retry-times",
            "3",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            "--authfile",
            str(self.authfile),
            str(yaml_path),
            f"{self.target.host}/{target_namespace}",
        ]

    def write_yaml(self, name: str, repositories: list[str]) -> Path:
        path = self.home / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump({self.source.host: {"tls-verify": False, "images": {r: [] for r in repositories}}})
        )
        return path

    def sync(
        self, name: str, repositories: list[str], target_namespace: str, timeout: float
    ) -> ProcessResult:
        """Sync ``repositories`` (every tag); skopeo names them ``<namespace>/<last path part>``."""
        return run_measured(
            self.sync_command(self.write_yaml(name, repositories), target_namespace), self.env(), timeout
        )

    def copy_command(self, src_ref: str, dst_ref: str) -> list[str]:
        return [
            "skopeo",
            "copy",
            "--all",
            "--preserve-digests",
            "--retry-times",
            "3",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--authfile",
            str(self.authfile),
            f"docker://{self.source.host}/{src_ref}",
            f"docker://{self.target.host}/{dst_ref}",
        ]

    def copy(self, src_ref: str, dst_ref: str, timeout: float) -> ProcessResult:
        return run_measured(self.copy_command(src_ref, dst_ref), self.env(), timeout)


def skopeo_version() -> str:
    try:
        out = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return out.strip().removeprefix("skopeo version ").strip()
