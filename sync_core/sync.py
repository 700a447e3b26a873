"""The sync job: registry clients for one configuration, planning, copying, the summary.

:class:`Syncer` is what the CLI and the queue worker hold: it builds the registry clients and
copiers once (tokens, connections and Key Vault secrets are reused), asks the
:class:`~sync_core.plan.Planner` what each target lacks and executes the work. A failing tag,
repository or target is recorded in the summary and never stops the rest.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from .catalog import make_source, source_actions
from .config import SyncConfig
from .copy import Copier
from .errors import describe
from .ledger import BlobLedger
from .names import ImageRef
from .plan import Planner, Reason, TagWork, interleave, plan_concurrency
from .registry import RegistryClient
from .report import Recorder, Summary
from .secrets import SecretStore

BLOB_CONCURRENCY = 4  # blob transfers per image copy (one pool per target: x SYNC_CONCURRENCY)

Progress = Callable[[Summary], None]


class Syncer:
    """Registry clients, copiers and the run logic for one configuration.

    Create once per process (the Functions host keeps it between invocations) so that tokens,
    connections and Key Vault secrets are reused.
    """

    def __init__(
        self,
        config: SyncConfig,
        *,
        secrets: SecretStore | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ):
        self.config = config
        self.secrets = secrets or SecretStore(config.key_vault_url)
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        # Connections per host: every planning or copying thread and blob transfer may hold one
        # (a request beyond the pool opens a connection it then throws away: a round trip more).
        pool = max(plan_concurrency(config.concurrency), config.concurrency * (BLOB_CONCURRENCY + 1)) + 4
        self.source_client = RegistryClient(
            config.source.registry, self.secrets.credentials(config.source.credentials),
            actions=source_actions(config.source), pool_size=pool,
        )  # fmt: skip
        self.source = make_source(config.source, self.source_client)
        self.target_clients: dict[str, RegistryClient] = {}
        self.copiers: dict[str, Copier] = {}
        for target in config.targets:
            client = RegistryClient(
                target.registry, self.secrets.credentials(target.credentials), actions="pull,push", pool_size=pool
            )
            self.target_clients[target.name] = client
            self.copiers[target.name] = Copier(
                self.source_client,
                client,
                blob_concurrency=config.concurrency * BLOB_CONCURRENCY,  # shared by the copies
                ledger=BlobLedger(),
            )
        self.planner = Planner(config, self.source, self.target_clients, self.clock)

    def close(self) -> None:
        for copier in self.copiers.values():
            copier.close()

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning -------------------------------------------------------------------------
    def repositories(self) -> list[str]:
        return self.source.repositories()

    def plan_repository(
        self, repository: str, summary: Summary, targets: Iterable[str] | None = None
    ) -> list[TagWork]:
        """What each target lacks of ``repository`` (failures and skips go into ``summary``)."""
        return self.planner.plan_repository(repository, Recorder(summary), targets)

    # -- copying --------------------------------------------------------------------------
    def copy_work(self, work: TagWork, recorder: Recorder) -> None:
        target = self.config.target(work.target)
        try:
            result = self.copiers[work.target].copy(
                work.source_repository,
                work.tag,
                work.target_repository,
                expected_digest=work.digest,
                skip_media_types=target.skip_artifact_types,
                at_target=work.at_target,
            )
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            recorder.failed(f"{work.source_repository}:{work.tag} -> {work.target}", describe(exc), work.target)
            return
        recorder.finished(work, result)

    def execute(
        self,
        work: list[TagWork],
        summary: Summary,
        *,
        deadline: float | None = None,
        progress: Progress | None = None,
    ) -> list[TagWork]:
        """Copy every item; with a ``deadline`` (monotonic), start none after it. Returns the rest."""
        recorder = Recorder(summary)
        left: list[TagWork] = []
        lock = threading.Lock()

        def run(item: TagWork) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                with lock:
                    left.append(item)
                return
            self.copy_work(item, recorder)
            if progress:
                progress(summary)

        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="copy") as pool:
            list(pool.map(run, interleave(work) if self.config.concurrency > 1 else work))
        return left

    # -- entry points -----------------------------------------------------------------------
    def run(
        self,
        *,
        dry_run: bool = False,
        repositories: list[str] | None = None,
        targets: list[str] | None = None,
        progress: Progress | None = None,
    ) -> Summary:
        """The full job (or a dry run that only plans)."""
        started = time.monotonic()
        summary = Summary(dry_run=dry_run)
        tick = (lambda: progress(summary)) if progress else None
        work = self.planner.plan(Recorder(summary), repositories, targets, tick)
        if dry_run:
            summary.planned = work
        else:
            self.execute(work, summary, progress=progress)
        summary.duration_seconds = time.monotonic() - started
        return summary

    def copy_image(
        self,
        ref: ImageRef,
        summary: Summary,
        targets: Iterable[str] | None = None,
        digest: str | None = None,
        reason: Reason = Reason.REQUESTED,
    ) -> None:
        """Copy one image to each target (by name mapping; tag filters do not apply)."""
        recorder = Recorder(summary)
        for work in self.planner.image(ref.repository, ref.reference, digest, reason, recorder, targets):
            self.copy_work(work, recorder)
