"""The benchmark's registries: a source near the job, mirrors far away, each with token auth.

    source registry  <- LatencyProxy(source_delay_ms)  <- the tools      (source token issuer: direct)
    mirror registry  <- LatencyProxy(delay_ms, bw)     <- the tools
    mirror issuer    <- LatencyProxy(delay_ms, bw)     <- the tools      (the mirror's token realm)

The mirror's token realm is the proxied issuer URL, so a token fetch costs a round trip to the
far side, as with auth.docker.io or dockerauth.<region>.aliyuncs.com. The source sits behind a
proxy too (default 1 ms one-way: the job runs in the source's region), so its requests are
counted the same way. A second source registry holds the wide catalog; a second mirror (its own
registry, issuer and proxies, as far away as the first) is the other target of the two-target run.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.latency_proxy import LatencyProxy
from bench.tools import Endpoint
from tests.harness import CATALOG, Registry, TokenIssuer
from tests.harness.images import Pusher

SOURCE_USER, SOURCE_PASS = "bench-source-reader", "bench-source-pw-6f1e"
MIRROR_USER, MIRROR_PASS = "bench-mirror-bot", "bench-mirror-pw-93ac"


EVERYTHING = {"*": ["*"], CATALOG: ["*"]}


@dataclass
class Mirror:
    """A registry far away: it and its token realm, each behind a latency proxy."""

    issuer: TokenIssuer
    issuer_proxy: LatencyProxy
    registry: Registry
    proxy: LatencyProxy

    def counters(self) -> tuple[dict, int]:
        """The registry proxy's stats (without the request log), and the token requests."""
        stats = self.proxy.stats()
        stats.pop("request_log", None)
        return stats, self.issuer_proxy.stats()["requests"]


def far_mirror(
    stack: contextlib.ExitStack, name: str, delay_ms: float, bandwidth: float | None, lifetime: int = 900
) -> Mirror:
    """A mirror registry and its token realm, each behind a latency proxy, closed with ``stack``.

    The realm its challenges name is the proxied issuer's, so every token fetch is counted (and
    delayed) as a request to ``auth.docker.io`` would be; ``lifetime``: the tokens' seconds.
    """
    enter = stack.enter_context
    issuer = enter(
        TokenIssuer(users={MIRROR_USER: (MIRROR_PASS, EVERYTHING)}, service=name, lifetime=lifetime)
    )
    issuer_proxy = enter(LatencyProxy("127.0.0.1", issuer.port, delay_ms, bandwidth))
    registry = enter(
        Registry(
            token_issuer=issuer,
            name=name,
            extra_config={"auth": {"token": {"realm": f"{issuer_proxy.url}/token"}}},
        )
    )
    return Mirror(
        issuer, issuer_proxy, registry, enter(LatencyProxy("127.0.0.1", registry.port, delay_ms, bandwidth))
    )


class World:
    def __init__(
        self,
        *,
        delay_ms: float,
        source_delay_ms: float,
        bandwidth: float | None,
        wide: bool,
        mirrors: int = 1,
    ):
        self._stack = contextlib.ExitStack()
        try:
            self._start(delay_ms, source_delay_ms, bandwidth, wide, mirrors)
        except BaseException:
            self._stack.close()
            raise

    def _start(
        self, delay_ms: float, source_delay_ms: float, bandwidth: float | None, wide: bool, mirrors: int
    ) -> None:
        enter = self._stack.enter_context
        self.delay_ms = delay_ms
        self.source_delay_ms = source_delay_ms
        self.bandwidth = bandwidth
        self.source_issuer = enter(
            TokenIssuer(users={SOURCE_USER: (SOURCE_PASS, EVERYTHING)}, service="bench-source", lifetime=900)
        )
        self.source = enter(Registry(token_issuer=self.source_issuer, name="bench-source"))
        self.source_proxy = enter(LatencyProxy("127.0.0.1", self.source.port, source_delay_ms))
        names = ["bench-mirror", *(f"bench-mirror-{i + 1}" for i in range(1, mirrors))]
        self.mirrors = [far_mirror(self._stack, name, delay_ms, bandwidth) for name in names]
        self.mirror = self.mirrors[0].registry
        self.wide_source = self.wide_proxy = None
        if wide:
            self.wide_source = enter(Registry(token_issuer=self.source_issuer, name="bench-wide-source"))
            self.wide_proxy = enter(LatencyProxy("127.0.0.1", self.wide_source.port, source_delay_ms))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- endpoints as the tools see them ----------------------------------------------------
    def source_endpoint(self, wide: bool = False) -> Endpoint:
        proxy = self.wide_proxy if wide else self.source_proxy
        return Endpoint(proxy.url, SOURCE_USER, SOURCE_PASS)

    def mirror_endpoint(self, index: int = 0) -> Endpoint:
        return Endpoint(self.mirrors[index].proxy.url, MIRROR_USER, MIRROR_PASS)

    # -- direct access for seeding and checks (no proxy) ------------------------------------
    def source_pusher(self, wide: bool = False) -> Pusher:
        return (self.wide_source if wide else self.source).pusher()

    def mirror_pusher(self, index: int = 0) -> Pusher:
        return self.mirrors[index].registry.pusher()

    def storage(self, which: str) -> Path:
        return {"source": self.source, "wide": self.wide_source, "mirror": self.mirror}[which].storage_dir

    # -- counters ---------------------------------------------------------------------------
    def reset_counters(self) -> None:
        proxies = [
            self.source_proxy,
            self.wide_proxy,
            *(p for m in self.mirrors for p in (m.proxy, m.issuer_proxy)),
        ]
        for proxy in proxies:
            if proxy is not None:
                proxy.reset()
        self.source_issuer.reset_counters()
        self._cpu_mark = self.cpu_seconds()

    def cpu_seconds(self) -> float:
        """CPU used so far by the registries and by this process (latency proxies, token issuers)."""
        registries = [self.source, self.wide_source, *(m.registry for m in self.mirrors)]
        return time.process_time() + sum(_process_cpu(r.pid) for r in registries if r is not None and r.pid)

    def counters(self, wide: bool = False) -> dict:
        """Source and mirror counters; ``mirror2``/``mirror2_tokens`` too when there is a second mirror."""
        source = (self.wide_proxy if wide else self.source_proxy).stats()
        source.pop("request_log", None)
        out = {
            "source": source,
            "source_tokens": self.source_issuer.token_requests,
            "harness_cpu_seconds": self.cpu_seconds() - getattr(self, "_cpu_mark", 0.0),
        }
        for i, mirror in enumerate(self.mirrors):
            key = "mirror" if i == 0 else f"mirror{i + 1}"
            out[key], out[f"{key}_tokens"] = mirror.counters()
        return out


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
