"""The benchmark's registries: a source near the job, a mirror far away, each with token auth.

    source registry  <- LatencyProxy(source_delay_ms)  <- the tools      (source token issuer: direct)
    mirror registry  <- LatencyProxy(delay_ms, bw)     <- the tools
    mirror issuer    <- LatencyProxy(delay_ms, bw)     <- the tools      (the mirror's token realm)

The mirror's token realm is the proxied issuer URL, so a token fetch costs a round trip to the
far side, as with auth.docker.io or dockerauth.<region>.aliyuncs.com. The source sits behind a
proxy too (default 1 ms one-way: the job runs in the source's region), so its requests are
counted the same way. A second source registry holds the wide catalog.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.latency_proxy import LatencyProxy
from bench.tools import Endpoint
from tests.harness import CATALOG, Registry, TokenIssuer
from tests.harness.images import Pusher

SOURCE_USER, SOURCE_PASS = "bench-source-reader", "bench-source-pw-6f1e"
MIRROR_USER, MIRROR_PASS = "bench-mirror-bot", "bench-mirror-pw-93ac"


class World:
    def __init__(self, *, delay_ms: float, source_delay_ms: float, bandwidth: float | None, wide: bool):
        self._stack = contextlib.ExitStack()
        try:
            self._start(delay_ms, source_delay_ms, bandwidth, wide)
        except BaseException:
            self._stack.close()
            raise

    def _start(self, delay_ms: float, source_delay_ms: float, bandwidth: float | None, wide: bool) -> None:
        enter = self._stack.enter_context
        self.delay_ms = delay_ms
        self.source_delay_ms = source_delay_ms
        self.bandwidth = bandwidth
        everything = {"*": ["*"], CATALOG: ["*"]}
        self.source_issuer = enter(
            TokenIssuer(users={SOURCE_USER: (SOURCE_PASS, everything)}, service="bench-source", lifetime=900)
        )
        self.mirror_issuer = enter(
            TokenIssuer(users={MIRROR_USER: (MIRROR_PASS, everything)}, service="bench-mirror", lifetime=900)
        )
        self.issuer_proxy = enter(LatencyProxy("127.0.0.1", self.mirror_issuer.port, delay_ms, bandwidth))
        self.source = enter(Registry(token_issuer=self.source_issuer, name="bench-source"))
        self.mirror = enter(
            Registry(
                token_issuer=self.mirror_issuer,
                name="bench-mirror",
                extra_config={"auth": {"token": {"realm": f"{self.issuer_proxy.url}/token"}}},
            )
        )
        self.source_proxy = enter(LatencyProxy("127.0.0.1", self.source.port, source_delay_ms))
        self.mirror_proxy = enter(LatencyProxy("127.0.0.1", self.mirror.port, delay_ms, bandwidth))
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

    def mirror_endpoint(self) -> Endpoint:
        return Endpoint(self.mirror_proxy.url, MIRROR_USER, MIRROR_PASS)

    # -- direct access for seeding and checks (no proxy) ------------------------------------
    def source_pusher(self, wide: bool = False) -> Pusher:
        return (self.wide_source if wide else self.source).pusher()

    def mirror_pusher(self) -> Pusher:
        return self.mirror.pusher()

    def storage(self, which: str) -> Path:
        return {"source": self.source, "wide": self.wide_source, "mirror": self.mirror}[which].storage_dir

    # -- counters ---------------------------------------------------------------------------
    def reset_counters(self) -> None:
        for proxy in (self.source_proxy, self.mirror_proxy, self.issuer_proxy, self.wide_proxy):
            if proxy is not None:
                proxy.reset()
        self.source_issuer.reset_counters()

    def counters(self, wide: bool = False) -> dict:
        source = (self.wide_proxy if wide else self.source_proxy).stats()
        mirror = self.mirror_proxy.stats()
        tokens = self.issuer_proxy.stats()
        for stats in (source, mirror, tokens):
            stats.pop("request_log", None)
        return {
            "source": source,
            "source_tokens": self.source_issuer.token_requests,
            "mirror": mirror,
            "mirror_tokens": tokens["requests"],
            "mirror_token_connections": tokens["connections"],
        }
