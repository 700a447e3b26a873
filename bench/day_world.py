"""The world of ``bench/day.py``: a fleet catalog on the ACR stand-in, two mirrors, the timer's
state, the app in-process, and one simulated clock for all of them.

    the app (Syncer, in this process)  ->  ACR stand-in  ->  docker-registry  (the source; the
                                           stand-in's request log counts requests and tokens)
                                       ->  LatencyProxy  ->  mirror-a registry   (counted)
                                       ->  LatencyProxy  ->  mirror-a's token realm (counted)
                                       ->  the same for mirror-b
                                       ->  Azurite tables   (the timer's state, TableState)

The catalog is ``fleet/r00000`` ... of ``tags`` tags of one small image: one repository pushed,
the others copies of its directory in the backend's storage (``bench.corpus.seed_wide``), the
mirrors pre-populated the same way (the day starts in steady state). Their tag times are set a
month before the day.

:class:`SimClock` is the time of the Syncer (state times, lag, staleness, the planner's recent
window), of the stand-in (push times, its tokens' ``exp``), of the registry clients' token caches
and blob ledgers, and of the mirrors' token issuers (their tokens' ``exp``): tokens expire, and
times are compared, as over a real day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import corpus
from bench.world import MIRROR_PASS, MIRROR_USER, Mirror, far_mirror
from sync_core.azure.state import TableState
from sync_core.azure.storage import StorageAccess
from sync_core.config.load import load_config
from sync_core.engine.referrers import ReferrerFinder
from sync_core.jobs.syncer import Syncer
from sync_core.report.metrics import Metrics
from tests.harness import ACCEPT
from tests.harness.acr import AcrStandIn
from tests.harness.azurite import Azurite

SOURCE_USER, SOURCE_PASS = "day-sync", "day-sync-pw-51c3"
#: The subject of the stand-in's own pusher tokens: the pushes of the day are not the app's requests.
PUSHER = "harness-pusher"
NAMESPACE, TARGET_NAMESPACE = "fleet", "mirror"
TARGETS = ("mirror-a", "mirror-b")
#: One way, to the mirrors and their token realms: the day counts requests; its lags are waiting
#: and processing, not round trips across a continent.
DELAY_MS = 1.0
SOURCE_TOKEN_SECONDS = 600  # ACR's lifetime is not documented: 5-20 minutes reported, so one a tick
TARGET_TOKEN_SECONDS = 300  # Docker Hub's


class SimClock:
    """Simulated time: jumps forward to the next push or tick, and runs at the machine's pace in
    between (work takes the time it takes). ``listeners`` are called after each jump."""

    def __init__(self, start: dt.datetime):
        self._lock = threading.Lock()
        self._base, self._mark = start, time.monotonic()
        self.listeners: list[Callable[[], None]] = []

    def now(self) -> dt.datetime:
        with self._lock:
            return self._base + dt.timedelta(seconds=time.monotonic() - self._mark)

    def seconds(self) -> float:
        return self.now().timestamp()

    def advance_to(self, when: dt.datetime) -> None:
        """Jump to ``when`` (never back: work that ran past it keeps its time)."""
        with self._lock:
            if when > self._base + dt.timedelta(seconds=time.monotonic() - self._mark):
                self._base, self._mark = when, time.monotonic()
        for listener in self.listeners:
            listener()


@dataclass
class Usage:
    """Requests the app sent: to the source (its tokens and catalog pages counted apart too) and
    to each mirror (registry, token realm)."""

    source: int = 0  # without token requests
    source_tokens: int = 0
    catalog: int = 0  # of ``source``: the catalog pages (a tick's, whatever its repositories)
    catalog_tokens: int = 0  # of ``source_tokens``: for the catalog scope
    targets: dict[str, int] = field(default_factory=dict)
    target_tokens: dict[str, int] = field(default_factory=dict)

    def add(self, other: Usage) -> None:
        self.source += other.source
        self.source_tokens += other.source_tokens
        self.catalog += other.catalog
        self.catalog_tokens += other.catalog_tokens
        for mine, theirs in ((self.targets, other.targets), (self.target_tokens, other.target_tokens)):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count

    def scaled(self, factor: float) -> Usage:
        return Usage(
            round(self.source * factor),
            round(self.source_tokens * factor),
            round(self.catalog * factor),
            round(self.catalog_tokens * factor),
            {k: round(v * factor) for k, v in self.targets.items()},
            {k: round(v * factor) for k, v in self.target_tokens.items()},
        )

    @property
    def target_requests(self) -> int:
        """Every request to every mirror, token requests included."""
        return sum(self.targets.values()) + sum(self.target_tokens.values())


class Recording(Metrics):
    """The app's instruments, kept: staleness per timer run and mirror lag per copy, by target."""

    def __init__(self) -> None:
        super().__init__()
        self.staleness_seconds: dict[str, list[float]] = {}
        self.lag_seconds: dict[str, list[float]] = {}

    def staleness(self, target: str, seconds: float) -> None:
        self.staleness_seconds.setdefault(target, []).append(seconds)

    def lag(self, target: str, seconds: float) -> None:
        self.lag_seconds.setdefault(target, []).append(seconds)

    def clear(self) -> None:
        self.staleness_seconds.clear()
        self.lag_seconds.clear()


class DayWorld:
    def __init__(self, repositories: int, tags: int, full_check_hours: float, workdir: Path):
        self._stack = contextlib.ExitStack()
        try:
            self._start(repositories, tags, full_check_hours, workdir)
        except BaseException:
            self._stack.close()
            raise

    def _start(self, repositories: int, tags: int, full_check_hours: float, workdir: Path) -> None:
        enter = self._stack.enter_context
        self.start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.clock = SimClock(self.start)
        self.acr = enter(
            AcrStandIn(
                users={SOURCE_USER: (SOURCE_PASS, {"*": ["pull", "metadata_read"]})},
                token_lifetime=SOURCE_TOKEN_SECONDS,
                name="day-acr",
            )
        )
        self.acr.clock = self.clock.seconds
        self.mirrors: dict[str, Mirror] = {
            name: far_mirror(self._stack, f"day-{name}", DELAY_MS, None, TARGET_TOKEN_SECONDS)
            for name in TARGETS
        }
        self.clock.listeners.append(self._issuers_on_clock)
        self.tables = enter(Azurite("table"))
        access = StorageAccess(connection_string=self.tables.connection_string())
        self.state = TableState.for_access(access, "day-work")
        self.names = self._seed(repositories, tags)
        self.metrics = Recording()
        self.syncer = self._syncer(full_check_hours, workdir)
        self.checkers = {name: m.registry.pusher() for name, m in self.mirrors.items()}

    def close(self) -> None:
        self._stack.close()

    def _issuers_on_clock(self) -> None:
        """The mirrors' tokens expire by the simulated clock (their registries accept them: later)."""
        skew = round(self.clock.seconds() - time.time())
        for mirror in self.mirrors.values():
            mirror.issuer.exp_skew = skew

    def _seed(self, repositories: int, tags: int) -> list[str]:
        storage = self.acr.backend.storage_dir
        mirrors = [m.registry.storage_dir for m in self.mirrors.values()]
        copies = {TARGET_NAMESPACE: repositories}
        names = corpus.seed_wide(
            self.acr.pusher(direct=True),
            storage,
            mirrors[0],
            namespace=NAMESPACE,
            repositories=repositories,
            tags=tags,
            target_copies=copies,
        )
        for other in mirrors[1:]:
            corpus.mirror_copies(storage, other, names, copies)
        long_ago = self.start - dt.timedelta(days=30)
        wanted = [f"t{t:02d}" for t in range(tags)]
        for name in names:
            for tag in wanted:
                self.acr.set_tag_times(name, tag, long_ago)
        last = names[-1]  # the copies are real repositories, at the source and at each mirror
        assert self.acr.pusher().tags(last) == wanted, last
        for mirror in self.mirrors.values():
            assert mirror.registry.pusher().tags(self.at_target(last)) == wanted, mirror
        return names

    def _syncer(self, full_check_hours: float, workdir: Path) -> Syncer:
        path = workdir / "day-config.json"
        targets = [
            {
                "name": name,
                "registry": mirror.proxy.url,
                "namespace": TARGET_NAMESPACE,
                "username_env": "DAY_TARGET_USERNAME",
                "password_env": "DAY_TARGET_PASSWORD",
            }
            for name, mirror in self.mirrors.items()
        ]
        settings = {
            "source_registry": self.acr.url,
            "source_kind": "acr",
            "source_namespace": NAMESPACE,
            "sync_full_check_hours": full_check_hours,
            "targets": targets,
        }
        path.write_text(json.dumps(settings, indent=2))
        env = {
            "SOURCE_USERNAME": SOURCE_USER,
            "SOURCE_PASSWORD": SOURCE_PASS,
            "DAY_TARGET_USERNAME": MIRROR_USER,
            "DAY_TARGET_PASSWORD": MIRROR_PASS,
        }
        config = load_config(env, str(path))
        syncer = Syncer(config, clock=self.clock.now, metrics=self.metrics)
        # every cache of the process that ages by time ages by the simulated clock
        seconds = self.clock.seconds
        for client in (syncer.source_client, *syncer.target_clients.values()):
            client.auth.clock = seconds
        for destination in syncer.destinations.values():
            destination.ledger.clock = seconds
        syncer.copier.finder = ReferrerFinder(syncer.source_client, config.referrers, clock=seconds)
        return syncer

    @staticmethod
    def at_target(repository: str) -> str:
        return f"{TARGET_NAMESPACE}/{repository.split('/', 1)[1]}"

    def drain(self) -> Usage:
        """The app's requests since the last call (the counters start again at zero)."""
        log, grants = self.acr.log, self.acr.grants
        self.acr.reset_log()
        mine = [e for e in log if e.user != PUSHER]
        tokens = sum(1 for e in mine if e.kind == "token")
        catalog = sum(1 for e in mine if e.kind in ("catalog", "acr_catalog"))
        catalog_tokens = sum(1 for g in grants if any(s.startswith("registry:catalog") for s in g.requested))
        usage = Usage(len(mine) - tokens, tokens, catalog, catalog_tokens)
        for name, mirror in self.mirrors.items():
            usage.targets[name] = mirror.proxy.stats()["requests"]
            usage.target_tokens[name] = mirror.issuer_proxy.stats()["requests"]
            mirror.proxy.reset()
            mirror.issuer_proxy.reset()
        return usage

    def held(self, target: str, repository: str, reference: str) -> str | None:
        """The digest ``repository:reference`` has at ``target`` (asked directly: not counted)."""
        pusher = self.checkers[target]
        where = self.at_target(repository)
        answer = pusher.request(
            "HEAD", f"/v2/{where}/manifests/{reference}", where, headers={"Accept": ACCEPT}
        )
        return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None
