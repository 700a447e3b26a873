"""``verify``: is every tag sync would mirror (and its referrers) at each target, with the source digest?

Selection is sync's own: the source listings (``catalog.py``), the filters and name mapping
(``plan.py``: :meth:`~sync_core.plan.planner.Planner.selected_targets`, ``repository_wanted``,
``wanted_tags``, ``target_repository``), the referrers policy and each target's skip rules. Tags
sync skips (unreadable at the source, a name the target refuses, a type the target skips) are
counted as skipped, not as missing. Nothing is written anywhere.

For each selected tag and target: the tag at the target must carry the source digest (ACR
listings carry it; a plain OCI source is asked with one HEAD per tag). A source tag that is a
referrers tag by content (``sha256-<hex>``, an index of manifests whose subject is that digest)
is in order at a target without the referrers API when it has the source digest or lists every
entry of it the target holds (a merged listing: a target that narrows indexes, entries written
by others); a target with the API lists referrers itself (counted as skipped there). For a tag that does, each
referrer the source lists for it (the referrers API or the referrers tag, as the copier finds
them), and their referrers in turn, must be at the target (HEAD by digest) and listed there (the
target's referrers API, or its referrers tag ``sha256-<hex>`` where it has no API). ``deep``
also fetches every manifest at the target (digest verified), walks each index to its child
manifests and HEADs every blob (size checked), each once per target repository, and follows
the referrers of child manifests too.

The cost in requests is :data:`COST` (shown by ``verify --help``, measured by ``make bench``).
What it finds is a :class:`~sync_core.jobs.verify_findings.Report` (``verify_findings.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from sync_core.config.model import ReferrerPolicy, TargetConfig
from sync_core.engine.following import listed_subject
from sync_core.engine.narrowing import check_skip, narrowed_from
from sync_core.engine.referrers import MAX_REFERRER_DEPTH, ReferrerFinder
from sync_core.errors import NameRejected, NotFound, SkipImage, describe
from sync_core.jobs.syncer import Syncer
from sync_core.jobs.verify_findings import Finding, Report, Status, Tally
from sync_core.plan.catalog import TagInfo
from sync_core.plan.mapping import map_repository
from sync_core.plan.planner import plan_concurrency
from sync_core.plan.selection import repository_wanted, wanted_tags
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Manifest
from sync_core.registry.names import fallback_tag, fallback_tag_subject

COST = """\
Cost in requests (besides tokens, each registry's first auth challenge, the catalog listing and
one tag listing per repository):
  per tag and target     1 HEAD of the tag at the target (--deep: 1 GET of its manifest instead)
  per tag                1 HEAD at the source for a plain OCI source (ACR listings carry digests)
  per sha256-<hex> tag   1 GET at the source of it and of each manifest it lists (is it a
                         referrers tag?); where it is one and its digest differs at a target,
                         1 HEAD per entry there and 1 listing (API, or GET of the referrers tag)
  referrers (unless SYNC_REFERRERS=none), per tag and per referrer found:
                         1 referrers request at the source (API, or GET of the referrers tag),
                         shared by all targets; where there are some, per target 1 listing
                         (API, or GET of the referrers tag) and 1 HEAD per referrer
  --deep, per target     1 GET per child or referrer manifest and 1 HEAD per blob, each once per
                         target repository; referrers of child manifests as above
"""


class Verifier:
    """Checks the targets of ``syncer`` (its clients, planner, source and referrer finder)."""

    def __init__(self, syncer: Syncer, *, deep: bool = False):
        self.syncer = syncer
        self.config = syncer.config
        self.deep = deep
        self.finder = syncer.copier.finder  # the source's referrers, as the copier sees them
        # each target's listings (referrers API, or the referrers tag): every type counts there
        self.listings = {
            name: ReferrerFinder(client, ReferrerPolicy()) for name, client in syncer.target_clients.items()
        }
        self._lock = threading.Lock()
        self._checked: set[tuple[str, str, str]] = set()  # (target, repository, digest) seen by --deep
        self.report = Report(deep)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _tally(self, target: str) -> Tally:
        with self._lock:
            return self.report.targets.setdefault(target, Tally())

    def _count(self, target: str, what: str, n: int = 1) -> None:
        tally = self._tally(target)
        with self._lock:
            setattr(tally, what, getattr(tally, what) + n)

    def _find(self, finding: Finding) -> None:
        tally = self._tally(finding.target)
        with self._lock:
            self.report.findings.append(finding)
            tally.problems += 1

    def _first(self, target: str, repository: str, digest: str) -> bool:
        """True the first time ``digest`` in ``repository`` at ``target`` comes up (--deep)."""
        key = (target, repository, digest)
        with self._lock:
            if key in self._checked:
                return False
            self._checked.add(key)
            return True

    # -- the run -------------------------------------------------------------------------------
    def run(self, repositories: list[str] | None = None, targets: Iterable[str] | None = None) -> Report:
        started = time.monotonic()
        chosen = self.syncer.planner.selected_targets(targets)
        for target in chosen:
            self._tally(target.name)
        repositories = self.syncer.repositories() if repositories is None else repositories
        workers = plan_concurrency(self.config.concurrency)
        with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
            listed = list(pool.map(lambda r: self._select(r, chosen), repositories))
            groups = [g for found in listed for g in found]
            list(pool.map(lambda g: self._check_tag(*g), groups))
        self.report.seconds = time.monotonic() - started
        return self.report

    def _select(
        self, repository: str, chosen: list[TargetConfig]
    ) -> list[tuple[str, TagInfo, list[tuple[TargetConfig, str]]]]:
        """The tags of ``repository`` sync would mirror, each with its (target, target repository)s."""
        wanted = [t for t in chosen if repository_wanted(self.config, t, repository)]
        if not wanted:
            return []
        try:
            tags = self.syncer.source.tags(repository)
        except Exception as exc:  # noqa: BLE001 - one repository's failure must not stop the rest
            for target in wanted:
                self._find(
                    Finding(
                        target.name,
                        repository,
                        "repository",
                        Status.ERROR,
                        detail=f"listing source tags: {describe(exc)}",
                    )
                )
            return []
        now = self.syncer.clock()
        by_tag: dict[str, tuple[TagInfo, list[tuple[TargetConfig, str]]]] = {}
        for target in wanted:
            selected = wanted_tags(self.config, target, repository, tags, now)
            if not selected:
                continue
            try:
                dst_repo = map_repository(self.config, target, repository)
            except NameRejected:
                self._count(target.name, "skipped", len(selected))
                continue
            for tag in selected:
                if not tag.readable:
                    self._count(target.name, "skipped")
                    continue
                by_tag.setdefault(tag.name, (tag, []))[1].append((target, dst_repo))
        return [(repository, tag, places) for tag, places in by_tag.values()]

    def _check_tag(self, repository: str, tag: TagInfo, places: list[tuple[TargetConfig, str]]) -> None:
        digest = tag.digest
        if digest is None:  # a plain OCI listing: ask the source (once for every target)
            try:
                info = self.syncer.source.client.head_manifest(repository, tag.name)
                digest = info.digest if info else None
            except Exception as exc:  # noqa: BLE001
                self._unchecked(places, tag.name, None, f"HEAD at the source: {describe(exc)}")
                return
            if digest is None:
                return  # gone from the source since it was listed: sync would not copy it either
        subject: str | None = None
        if fallback_tag_subject(tag.name) is not None:  # named like a referrers tag: is it one?
            try:
                source_tree = self.syncer.copier.tree(repository, tag.name)
                subject = listed_subject(tag.name, source_tree)
            except Exception as exc:  # noqa: BLE001
                self._unchecked(places, tag.name, digest, f"at the source: {describe(exc)}")
                return
        for target, dst_repo in places:
            try:
                if subject is not None:
                    self._check_referrers_tag_at(target, dst_repo, tag.name, digest, subject, source_tree.top)
                    continue
                self._check_tag_at(target, repository, dst_repo, tag.name, digest)
            except Exception as exc:  # noqa: BLE001 - this tag at this target
                self._find(
                    Finding(
                        target.name,
                        f"{dst_repo}:{tag.name}",
                        "tag",
                        Status.ERROR,
                        expected=digest,
                        detail=describe(exc),
                    )
                )

    def _check_tag_at(
        self, target: TargetConfig, repository: str, dst_repo: str, tag: str, digest: str
    ) -> None:
        client = self.syncer.target_clients[target.name]
        item = f"{dst_repo}:{tag}"
        manifest: Manifest | None = None
        if self.deep:
            try:
                manifest = client.get_manifest(dst_repo, tag)  # digest verified against the header
                actual: str | None = manifest.digest
            except NotFound:
                actual = None
        else:
            info = client.head_manifest(dst_repo, tag)
            actual = None if info is None else info.digest or client.get_manifest(dst_repo, tag).digest
        if actual is None:
            if not self._skipped_there(target, repository, tag):
                self._find(Finding(target.name, item, "tag", Status.MISSING, expected=digest))
            return
        narrowed = False
        if actual != digest and target.rules.rewrites:
            # a target that narrows indexes holds an index of its own, annotated with the source's
            manifest = manifest or client.get_manifest(dst_repo, tag)
            narrowed = narrowed_from(manifest, target.rules) == digest
        if actual != digest and not narrowed:
            self._find(Finding(target.name, item, "tag", Status.DIFFERS, expected=digest, actual=actual))
            return
        self._count(target.name, "tags")
        subjects = [digest]
        if manifest is not None and narrowed:
            # the source has no referrers of the narrowed index; its entries are the source's own
            subjects = [child.digest for child in manifest.children]
        if manifest is not None and self.deep:
            self._first(target.name, dst_repo, manifest.digest)
            found = self._walk(target, client, dst_repo, manifest, item)
            subjects = [d for d in found if d != manifest.digest] if narrowed else found
        seen: set[str] = set()
        for subject in subjects:
            where = item if subject == digest else f"{dst_repo}@{subject}"
            self._referrers(target, client, repository, dst_repo, subject, where, seen, 0)

    def _unchecked(
        self, places: list[tuple[TargetConfig, str]], tag: str, digest: str | None, detail: str
    ) -> None:
        """``tag`` could not be checked at any of ``places`` (the source failed to answer)."""
        for target, dst_repo in places:
            self._find(
                Finding(target.name, f"{dst_repo}:{tag}", "tag", Status.ERROR, expected=digest, detail=detail)
            )

    def _check_referrers_tag_at(
        self, target: TargetConfig, dst_repo: str, tag: str, digest: str, subject: str, index: Manifest
    ) -> None:
        """A source referrers tag at one target: the source's bytes, or a listing of every entry the
        target holds (sync merges where the entries differ); where the target has the referrers
        API, not written (skipped)."""
        client = self.syncer.target_clients[target.name]
        info = client.head_manifest(dst_repo, tag)
        if info is not None and info.digest == digest:
            self._count(target.name, "tags")
            return
        listing = self.listings[target.name]
        listed = {d.digest for d in listing.of(dst_repo, subject)}
        if listing.api:
            self._count(target.name, "skipped")
            return
        held = [e.digest for e in index.entries if client.head_manifest(dst_repo, e.digest) is not None]
        unlisted = [d for d in held if d not in listed]
        if not unlisted:  # nothing of it at the target (its subject is not mirrored), or all listed
            self._count(target.name, "tags" if held or info is not None else "skipped")
            return
        self._find(
            Finding(
                target.name,
                f"{dst_repo}:{tag}",
                "tag",
                Status.UNLISTED if info is not None else Status.MISSING,
                expected=digest,
                actual=info.digest if info is not None else None,
                detail=f"referrers tag of {subject}: does not list {', '.join(unlisted)}, held at the target",
            )
        )

    def _skipped_there(self, target: TargetConfig, repository: str, reference: str) -> bool:
        """Whether sync skips the source's ``reference`` for ``target`` (its skip rules): counted as skipped."""
        if not target.rules.skip_types:
            return False
        try:
            check_skip(self.syncer.copier.tree(repository, reference), target.rules.skip_types)
        except SkipImage:
            self._count(target.name, "skipped")
            return True
        return False

    # -- --deep: manifests and blobs ------------------------------------------------------------
    def _walk(
        self, target: TargetConfig, client: RegistryClient, dst_repo: str, manifest: Manifest, item: str
    ) -> list[str]:
        """Check everything below ``manifest`` at the target; returns the digests of its manifests."""
        found = [manifest.digest]
        for blob in manifest.blobs:
            if not self._first(target.name, dst_repo, blob.digest):
                continue
            size = client.blob_size(dst_repo, blob.digest)
            if size is None:
                self._find(
                    Finding(
                        target.name,
                        f"{dst_repo}@{blob.digest}",
                        "blob",
                        Status.MISSING,
                        expected=f"{blob.size} bytes",
                        detail=f"blob of {item}",
                    )
                )
            elif size >= 0 and size != blob.size:
                self._find(
                    Finding(
                        target.name,
                        f"{dst_repo}@{blob.digest}",
                        "blob",
                        Status.DIFFERS,
                        expected=f"{blob.size} bytes",
                        actual=f"{size} bytes",
                        detail=f"blob of {item}",
                    )
                )
            else:
                self._count(target.name, "blobs")
        for child in manifest.children:
            if not self._first(target.name, dst_repo, child.digest):
                continue
            child_item = f"{dst_repo}@{child.digest}"
            try:
                fetched = client.get_manifest(dst_repo, child.digest)  # bytes verified against the digest
            except NotFound:
                self._find(
                    Finding(
                        target.name,
                        child_item,
                        "manifest",
                        Status.MISSING,
                        expected=child.digest,
                        detail=f"child manifest of {item}",
                    )
                )
                continue
            self._count(target.name, "manifests")
            found.extend(self._walk(target, client, dst_repo, fetched, child_item))
        return found

    # -- referrers -----------------------------------------------------------------------------
    def _referrers(
        self,
        target: TargetConfig,
        client: RegistryClient,
        repository: str,
        dst_repo: str,
        subject: str,
        item: str,
        seen: set[str],
        depth: int,
    ) -> None:
        """The referrers the source lists for ``subject`` (that sync mirrors) at the target, recursively."""
        if depth >= MAX_REFERRER_DEPTH:
            return
        wanted = [d for d in self.finder.of(repository, subject) if d.digest not in seen]
        if not wanted:
            return
        listing = self.listings[target.name]
        listed = {d.digest for d in listing.of(dst_repo, subject)}
        where = "referrers API" if listing.api else f"referrers tag {fallback_tag(subject)}"
        for descriptor in wanted:
            seen.add(descriptor.digest)
            ref_item = f"{dst_repo}@{descriptor.digest}"
            detail = f"referrer of {item}" + (
                f" ({descriptor.artifact_type})" if descriptor.artifact_type else ""
            )
            info = client.head_manifest(dst_repo, descriptor.digest)
            if info is None:
                if not self._skipped_there(target, repository, descriptor.digest):
                    self._find(
                        Finding(
                            target.name,
                            ref_item,
                            "referrer",
                            Status.MISSING,
                            expected=descriptor.digest,
                            detail=detail,
                        )
                    )
                continue
            if descriptor.digest not in listed:
                self._find(
                    Finding(
                        target.name,
                        ref_item,
                        "referrer",
                        Status.UNLISTED,
                        expected=descriptor.digest,
                        detail=f"{detail}: the {where} does not list it",
                    )
                )
            else:
                self._count(target.name, "referrers")
            subjects = [descriptor.digest]
            if self.deep and self._first(target.name, dst_repo, descriptor.digest):
                manifest = client.get_manifest(dst_repo, descriptor.digest)
                self._count(target.name, "manifests")
                subjects = self._walk(target, client, dst_repo, manifest, ref_item)
            for digest in subjects:
                self._referrers(
                    target, client, repository, dst_repo, digest, f"{dst_repo}@{digest}", seen, depth + 1
                )
