"""The sync job: list the source, diff every target, copy what is missing, report.

Used by the CLI (``python -m sync_core sync``), by the queue worker (one repository or one tag
at a time) and by the timer (planning only). A failing tag, repository or target is recorded
in the summary and never stops the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import logs
from .catalog import TagInfo, make_source, source_actions
from .config import SyncConfig, TargetConfig
from .copy import BlobLedger, Copier, CopyResult
from .errors import ConfigError, InvalidContent, NotFound, SyncError
from .names import ImageRef, check_repository
from .plan import NameRejected, TagWork, repository_selected, target_repository, wanted_tags
from .registry import RegistryClient
from .secrets import SecretStore

log = logging.getLogger("sync_core.sync")

BLOB_CONCURRENCY = 4  # blob transfers per image copy (one pool per target: x SYNC_CONCURRENCY)
PLAN_CONCURRENCY_FACTOR = 8  # listings are one small request each: plan wider than we copy
MAX_PLAN_CONCURRENCY = 64


def plan_concurrency(concurrency: int) -> int:
    """Repositories listed at once: planning is round trips of small answers, not transfers."""
    return max(concurrency, min(MAX_PLAN_CONCURRENCY, concurrency * PLAN_CONCURRENCY_FACTOR))


def interleave(work: list[TagWork]) -> list[TagWork]:
    """Round-robin over destination repositories (order within each kept).

    Manifest pushes to one repository are serialized (see ``BlobLedger.manifest_writes``), so
    concurrent copies should be of tags in different repositories, not five tags of one.
    """
    groups: dict[tuple[str, str], list[TagWork]] = {}
    for item in work:
        groups.setdefault((item.target, item.target_repository), []).append(item)
    out: list[TagWork] = []
    queues = list(groups.values())
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def describe(exc: BaseException) -> str:
    """A one-line reason for the summary (our errors are written to be shown as they are)."""
    if isinstance(exc, SyncError):
        return str(exc).splitlines()[0] if not isinstance(exc, ConfigError) else "; ".join(exc.problems)
    return f"unexpected {type(exc).__name__}"


@dataclass
class TargetCounts:
    considered: int = 0
    missing: int = 0
    copied: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass
class Summary:
    dry_run: bool = False
    repositories: int = 0
    tags_considered: int = 0
    tags_missing: int = 0
    tags_copied: int = 0
    tags_unchanged: int = 0
    tags_skipped: int = 0
    tags_failed: int = 0
    manifests_pushed: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0
    duration_seconds: float = 0.0
    targets: dict[str, TargetCounts] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    planned: list[TagWork] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return not self.failures

    def target(self, name: str) -> TargetCounts:
        return self.targets.setdefault(name, TargetCounts())

    def fail(self, where: str, reason: str, target: str | None = None, tags: int = 1) -> None:
        with self._lock:
            self.failures.append({"target": target, "item": where, "reason": reason})
            if target:
                self.target(target).failed += tags
            self.tags_failed += tags
        logs.decision(
            log, "failed", f"failed {where}: {reason}", level=logging.ERROR, item=where, target=target
        )

    def skip(self, where: str, reason: str, target: str, tags: int = 1) -> None:
        with self._lock:
            self.skipped.append({"target": target, "item": where, "reason": reason})
            self.target(target).skipped += tags
            self.tags_skipped += tags
        logs.decision(log, "skipped", f"skipped {where}: {reason}", item=where, target=target)

    def add_copy(self, work: TagWork, result: CopyResult) -> None:
        with self._lock:
            counts = self.target(work.target)
            if result.status == "copied":
                self.tags_copied += 1
                counts.copied += 1
            elif result.status == "unchanged":
                self.tags_unchanged += 1
                counts.unchanged += 1
            self.manifests_pushed += result.manifests_pushed
            self.blobs_uploaded += result.blobs_uploaded
            self.blobs_mounted += result.blobs_mounted
            self.blobs_skipped += result.blobs_skipped
            self.bytes_uploaded += result.bytes_uploaded
        if result.status == "skipped":
            self.skip(f"{work.source_repository}:{work.tag}", result.reason or "skipped", work.target)
            return
        logs.decision(
            log, result.status,
            f"{result.status} {work.source_repository}:{work.tag} -> {work.target} {work.target_repository}:{work.tag} "
            f"({result.bytes_uploaded} bytes uploaded, {result.blobs_mounted} blobs mounted, {result.seconds:.2f}s)",
            repository=work.source_repository, tag=work.tag, digest=result.digest, target=work.target,
            target_repository=work.target_repository, bytes_uploaded=result.bytes_uploaded,
        )  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "repositories": self.repositories,
            "tags": {
                "considered": self.tags_considered,
                "missing": self.tags_missing,
                "copied": self.tags_copied,
                "unchanged": self.tags_unchanged,
                "skipped": self.tags_skipped,
                "failed": self.tags_failed,
            },
            "manifests_pushed": self.manifests_pushed,
            "blobs": {
                "uploaded": self.blobs_uploaded,
                "mounted": self.blobs_mounted,
                "skipped": self.blobs_skipped,
            },
            "bytes_uploaded": self.bytes_uploaded,
            "duration_seconds": round(self.duration_seconds, 3),
            "targets": {name: vars(c) for name, c in sorted(self.targets.items())},
            "skipped": self.skipped,
            "failures": self.failures,
            "planned": [vars(w) for w in self.planned] if self.dry_run else [],
        }


class Syncer:
    """Registry clients, copiers and the run logic for one configuration.

    Create once per process (the Functions host keeps it between invocations) so that tokens,
    connections and Key Vault secrets are reused.
    """

    def __init__(self, config: SyncConfig, *, secrets: SecretStore | None = None,
                 clock: Callable[[], dt.datetime] | None = None):  # fmt: skip
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
                target.registry,
                self.secrets.credentials(target.credentials),
                actions="pull,push",
                pool_size=pool,
            )
            self.target_clients[target.name] = client
            self.copiers[target.name] = Copier(
                self.source_client,
                client,
                blob_concurrency=config.concurrency * BLOB_CONCURRENCY,  # shared by the copies
                ledger=BlobLedger(),
            )

    def close(self) -> None:
        for copier in self.copiers.values():
            copier.close()

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- planning -------------------------------------------------------------------------
    def repositories(self) -> list[str]:
        return self.source.repositories()

    def selected_targets(self, names: Iterable[str] | None) -> list[TargetConfig]:
        if names is None:
            return list(self.config.targets)
        return [self.config.target(n) for n in names]

    def plan_repository(
        self, repository: str, summary: Summary, targets: Iterable[str] | None = None
    ) -> list[TagWork]:
        """What each target lacks of ``repository`` (failures and skips go into ``summary``)."""
        targets = [
            t
            for t in self.selected_targets(targets)
            if repository_selected(repository, self.config.filters)
            and repository_selected(repository, t.filters)
        ]
        if not targets:
            return []  # excluded everywhere: not even listed (ACR read quota; may be unreadable)
        try:
            tags = self.source.tags(repository)
        except Exception as exc:  # noqa: BLE001 - one repository's failure must not stop the rest
            for target in targets:
                summary.fail(repository, f"listing source tags: {describe(exc)}", target.name)
            return []
        now = self.clock()
        work: list[TagWork] = []
        for target in targets:
            work.extend(self._diff(repository, tags, target, summary, now))
        return work

    def _diff(self, repository: str, tags: list[TagInfo], target: TargetConfig, summary: Summary,
              now: dt.datetime) -> list[TagWork]:  # fmt: skip
        selected = wanted_tags(self.config, target, repository, tags, now)
        if not selected:
            return []
        with summary._lock:
            summary.tags_considered += len(selected)
            summary.target(target.name).considered += len(selected)
        try:
            dst_repo = target_repository(repository, self.config.source.namespace, target)
        except NameRejected as exc:
            summary.skip(repository, str(exc), target.name, tags=len(selected))
            return []
        client = self.target_clients[target.name]
        try:
            listed = _target_tags(client, dst_repo)
            self.copiers[target.name].ledger.set_new_repository(dst_repo, listed is None)
            present = set(listed or ())
            work = []
            for tag in selected:
                if tag.name not in present:
                    work.append(TagWork(target.name, repository, dst_repo, tag.name, tag.digest, "missing"))
                elif self.config.compare == "digest":
                    source_digest = tag.digest or self._source_digest(repository, tag.name)
                    info = client.head_manifest(dst_repo, tag.name)
                    if info is None or info.digest != source_digest:
                        work.append(
                            TagWork(
                                target.name, repository, dst_repo, tag.name, source_digest, "digest differs"
                            )
                        )
        except Exception as exc:  # noqa: BLE001
            summary.fail(
                f"{repository} -> {target.name}", f"diff: {describe(exc)}", target.name, tags=len(selected)
            )
            return []
        with summary._lock:
            summary.tags_missing += len(work)
            summary.target(target.name).missing += len(work)
        return work

    def _source_digest(self, repository: str, tag: str) -> str | None:
        info = self.source_client.head_manifest(repository, tag)
        return info.digest if info else None

    def plan(self, summary: Summary, repositories: list[str] | None = None, targets: list[str] | None = None,
             progress: Callable[[Summary], None] | None = None) -> list[TagWork]:  # fmt: skip
        repositories = self.repositories() if repositories is None else repositories
        summary.repositories = len(repositories)
        work: list[TagWork] = []
        workers = min(plan_concurrency(self.config.concurrency), max(1, len(repositories)))
        with logs.InvocationPool(workers, thread_name_prefix="plan") as pool:
            for found in pool.map(lambda r: self.plan_repository(r, summary, targets), repositories):
                work.extend(found)
                if progress:
                    progress(summary)
        return work

    # -- copying --------------------------------------------------------------------------
    def copy_work(self, work: TagWork, summary: Summary) -> None:
        target = self.config.target(work.target)
        try:
            result = self.copiers[work.target].copy(
                work.source_repository,
                work.tag,
                work.target_repository,
                expected_digest=work.digest,
                skip_media_types=target.skip_artifact_types,
                tag_absent=work.reason == "missing",  # just listed at the destination: no HEAD
            )
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            summary.fail(f"{work.source_repository}:{work.tag} -> {work.target}", describe(exc), work.target)
            return
        summary.add_copy(work, result)

    def execute(self, work: list[TagWork], summary: Summary, *, deadline: float | None = None,
                progress: Callable[[Summary], None] | None = None) -> list[TagWork]:  # fmt: skip
        """Copy every item; with a ``deadline`` (monotonic), start none after it. Returns the rest."""
        left: list[TagWork] = []
        lock = threading.Lock()

        def run(item: TagWork) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                with lock:
                    left.append(item)
                return
            self.copy_work(item, summary)
            if progress:
                progress(summary)

        try:
            with logs.InvocationPool(self.config.concurrency, thread_name_prefix="copy") as pool:
                list(pool.map(run, interleave(work) if self.config.concurrency > 1 else work))
        finally:
            self._forget_new_repositories(work)
        return left

    def _forget_new_repositories(self, work: list[TagWork]) -> None:
        """A "new at the destination" mark holds from one listing to the end of its copies only."""
        for item in work:
            copier = self.copiers.get(item.target)
            if copier is not None:
                copier.ledger.set_new_repository(item.target_repository, False)

    # -- entry points -----------------------------------------------------------------------
    def run(self, *, dry_run: bool = False, repositories: list[str] | None = None,
            targets: list[str] | None = None, progress: Callable[[Summary], None] | None = None) -> Summary:  # fmt: skip
        """The full job (or a dry run that only plans)."""
        started = time.monotonic()
        summary = Summary(dry_run=dry_run)
        work = self.plan(summary, repositories, targets, progress)
        if dry_run:
            summary.planned = work
            self._forget_new_repositories(work)
        else:
            self.execute(work, summary, progress=progress)
        summary.duration_seconds = time.monotonic() - started
        return summary

    def copy_image(self, ref: ImageRef, summary: Summary, targets: Iterable[str] | None = None,
                   digest: str | None = None) -> None:  # fmt: skip
        """Copy one image to each target (by name mapping; tag filters do not apply)."""
        for target in self.selected_targets(targets):
            try:
                dst_repo = target_repository(ref.repository, self.config.source.namespace, target)
            except NameRejected as exc:
                summary.skip(str(ref), str(exc), target.name)
                continue
            self.copy_work(
                TagWork(target.name, ref.repository, dst_repo, ref.reference, digest, "requested"), summary
            )


def _target_tags(client: RegistryClient, repository: str) -> list[str] | None:
    """Every tag of a destination repository, or None when the repository does not exist (404)."""
    tags: list[str] = []
    try:
        for page in client.paginate(
            f"/v2/{check_repository(repository)}/tags/list", "tags", client.scopes(repository),
            f"list tags of {repository}",
        ):  # fmt: skip
            values = page.get("tags")
            if values is None:
                continue
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise InvalidContent(f"{client.host}/{repository} tags: 'tags' is not a list of strings")
            tags.extend(values)
    except NotFound:
        return None
    return tags
