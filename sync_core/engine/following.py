"""Referrers follow their subject: mirrored after it, recursively, and listed where a target has no API.

The referrers half of the copy engine (:class:`Following`, a base of
:class:`~sync_core.engine.copier.Copier`):

* the referrers of every manifest a copy placed (signatures, SBOMs, attestations, found at the
  source by ``referrers.ReferrerFinder``) are copied after it, side by side, recursively;
* at a target without the referrers API, what was pushed with a ``subject`` is listed in the
  subject's referrers tag, one write per subject (:meth:`Following._list_referrers`, the one step
  that writes referrers tags, repairs included): with the source's bytes when the source's
  referrers tag lists exactly the same referrers, else merged into what the tag holds;
* a source tag that *is* a referrers tag, by content (an OCI index named ``sha256-<hex>`` whose
  every entry is a manifest with that subject), is mirrored as what it lists, not as a tag of its
  own (:meth:`Following._copy_referrers_tag`); a tag that only looks like one by name is copied
  as the tag it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sync_core.config.model import ReferrerPolicy
from sync_core.engine import manifests
from sync_core.engine.destination import Placement
from sync_core.engine.narrowing import view
from sync_core.engine.pushing import Patience
from sync_core.engine.referrers import MAX_REFERRER_DEPTH, ReferrerFinder
from sync_core.engine.results import CopyResult, CopyStatus, ReferrerFailure
from sync_core.engine.tree import ImageTree, SourceTrees
from sync_core.errors import NotFound, describe
from sync_core.logs import InvocationPool
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Descriptor, Manifest
from sync_core.registry.names import MANIFEST_TYPES, OCI_INDEX, fallback_tag, fallback_tag_subject

log = logging.getLogger(__name__)

REFERRER_CONCURRENCY = 4  # referrers of one subject copied side by side

Todo = list[tuple[Placement, CopyResult]]


@dataclass(frozen=True)
class Listing:
    """A referrer to be listed in its subject's referrers tag at one placement.

    ``manifest``: pushed now, or held at the target and found left out of the tag (``repair``: a
    run that died between the two writes, or another writer's lost update). None: held and listed
    already; a write of the tag keeps it (a writer that saw an older tag puts back what it dropped).
    """

    placement: Placement
    result: CopyResult
    digest: str
    subject: str
    manifest: Manifest | None = None
    repair: bool = False


def pushed(placement: Placement, result: CopyResult, manifest: Manifest) -> list[Listing]:
    """What listing ``manifest``, just pushed, takes: one entry when it has a subject."""
    subject = manifest.subject
    return [] if subject is None else [Listing(placement, result, manifest.digest, subject.digest, manifest)]


def listed_subject(reference: str, tree: ImageTree) -> str | None:
    """The subject whose referrers the source tag ``reference`` lists, when it is a referrers tag.

    Decided by content, not by name: an OCI index (itself no referrer) named ``sha256-<hex>`` whose
    every entry is a manifest with the subject ``sha256:<hex>``. Anything else is the tag it is.
    """
    subject = fallback_tag_subject(reference)
    top = tree.top
    if subject is None or top.media_type != OCI_INDEX or top.subject is not None:
        return None
    below = {m.digest: m for m in tree.manifests}
    for entry in top.entries:
        child = below.get(entry.digest)
        if entry.media_type not in MANIFEST_TYPES or child is None or child.subject is None:
            return None
        if child.subject.digest != subject:
            return None
    return subject


def _serves_api(client: RegistryClient, repository: str, subject: str) -> bool:
    """Whether ``client``'s registry answers the referrers API (one that does not know the
    repository or manifest yet answers it too, with ``NAME_UNKNOWN``)."""
    try:
        return client.referrers(repository, subject) is not None
    except NotFound:
        return True


def _given(manifest: Manifest) -> Manifest | None:
    return manifest


def copied_only(todo: Todo) -> Todo:
    """The placements whose copy ended copied."""
    return [(p, r) for p, r in todo if r.copied]


class Following:
    """Referrers after their subject (see the module docstring); the copier provides the rest."""

    trees: SourceTrees
    finder: ReferrerFinder
    patience: Patience

    def _copy_tree(self, src_repo: str, tree: ImageTree, todo: Todo) -> list[Listing]:
        raise NotImplementedError  # the copier's

    def _result(self, src_repo: str, reference: str, placement: Placement) -> CopyResult:
        raise NotImplementedError  # the copier's

    @property
    def policy(self) -> ReferrerPolicy:
        return self.finder.policy

    def _not_a_wanted_referrer(self, manifest: Manifest) -> str | None:
        if manifest.subject is None:
            return "not a referrer (no subject): an index child or an untagged image"
        if not self.policy.wants(manifest.referrer_type):
            return f"SYNC_REFERRERS does not include artifact type {manifest.referrer_type}"
        return None

    def _mirror_referrers(
        self, src_repo: str, tree: ImageTree, todo: Todo, seen: set[str], depth: int
    ) -> None:
        """The referrers of every manifest of ``tree`` (placed at each target), recursively.

        A target that narrows indexes gets the referrers of the manifests it holds only: not those
        of the source index (its own index has another digest) or of the platforms it leaves out.
        """
        if not todo or not self.policy.enabled:
            return
        held = [{m.digest for m in view(tree, p.rules).all_manifests} for p, _ in todo]
        for manifest in tree.all_manifests:
            there = [item for item, digests in zip(todo, held, strict=True) if manifest.digest in digests]
            if there:
                self._referrers_of(src_repo, manifest.digest, there, seen, depth)

    def _referrers_of(self, src_repo: str, subject: str, todo: Todo, seen: set[str], depth: int) -> None:
        if depth >= MAX_REFERRER_DEPTH:
            for _, result in todo:
                result.warnings.append(
                    f"referrers nested deeper than {MAX_REFERRER_DEPTH} below {subject}: not followed"
                )
            return
        found = [d for d in self.finder.of(src_repo, subject) if d.digest not in seen]
        seen.update(d.digest for d in found)

        def mirror(descriptor: Descriptor) -> tuple[Todo, list[Listing]]:
            """One referrer (and its own referrers) to every placement: its results, one each, and
            what is to be listed in the subject's referrers tag."""
            subs = [(p.by_digest(), self._result(src_repo, descriptor.digest, p)) for p, _ in todo]
            waiting = manifests.not_up_to_date(subs, descriptor.digest)
            listings = [
                listing
                for placement, sub in subs
                if sub.status is CopyStatus.UNCHANGED and sub.error is None
                for listing in self._unlisted(src_repo, placement, sub, descriptor.digest, subject)
            ]
            try:
                if waiting:
                    tree = self.trees.tree(src_repo, descriptor.digest)
                    listings += self._copy_tree(src_repo, tree, waiting)
                    self._mirror_referrers(src_repo, tree, copied_only(waiting), seen, depth + 1)
            except Exception as exc:  # noqa: BLE001 - recorded on the subject's results
                for _, sub in waiting:
                    sub.fail(exc)
            return subs, listings

        if len(found) > 1:  # a subject's referrers are independent of each other: side by side
            with InvocationPool(min(REFERRER_CONCURRENCY, len(found)), thread_name_prefix="referrer") as pool:
                outcomes = list(pool.map(mirror, found))
        else:
            outcomes = [mirror(d) for d in found]
        self._list_referrers(src_repo, [listing for _, listings in outcomes for listing in listings])
        for descriptor, (subs, _) in zip(found, outcomes, strict=True):
            for (_, sub), (_, result) in zip(subs, todo, strict=True):
                if sub.error is not None:
                    result.referrer_errors.append(ReferrerFailure(descriptor.digest, sub.error))
                elif sub.status is CopyStatus.COPIED:
                    result.count(referrers_copied=1)
                    result.absorb(sub)
                result.referrer_errors.extend(sub.referrer_errors)
                if sub.status is CopyStatus.SKIPPED:
                    result.warnings.append(f"referrer {descriptor.digest} not mirrored: {sub.reason}")

    def _list_referrers(
        self,
        src_repo: str,
        listings: list[Listing],
        *,
        exact: tuple[str, Manifest] | None = None,
        tags: Todo | None = None,
    ) -> None:
        """List each referrer in its subject's referrers tag where the target has no referrers API:
        one write per (target repository, subject) for all of them, only when one of them needs it.
        The tag gets the source's bytes when the source's referrers tag lists exactly what it is to
        list. A failure is theirs.

        ``exact``: (subject, the source's referrers tag) copied as such (:meth:`_copy_referrers_tag`)
        to the placements ``tags``: each gets its tag written when its bytes are not the source's,
        even when no entry is missing (or none is to be listed).
        """
        tags = tags or []
        groups: dict[tuple[int, str, str], tuple[Placement, list[Listing]]] = {}
        for placement, _ in tags:
            assert exact is not None
            groups.setdefault((id(placement.destination), placement.repository, exact[0]), (placement, []))
        for listing in listings:
            placement = listing.placement
            destination = placement.destination
            try:
                if destination.learned.has_referrers_api(
                    partial(_serves_api, destination.client, placement.repository, listing.subject)
                ):
                    continue  # the registry lists them itself
            except Exception as exc:  # noqa: BLE001 - this referrer at this target
                listing.result.fail(exc)
                continue
            key = (id(placement.destination), placement.repository, listing.subject)
            groups.setdefault(key, (placement, []))[1].append(listing)
        for (_, repo, subject), (placement, group) in groups.items():
            destination = placement.destination
            copied = [g for g in group if g.manifest is not None]
            owners = [
                r
                for p, r in tags
                if p.destination is destination and p.repository == repo and exact and exact[0] == subject
            ]
            if not copied and not owners:
                continue  # every entry is listed already
            source: Callable[[], Manifest | None] = (
                partial(_given, exact[1])
                if exact and owners
                else partial(self._source_listing, src_repo, subject)
            )
            try:
                wrote = destination.referrers_tags.add(
                    repo,
                    subject,
                    [g.manifest for g in copied if g.manifest is not None],
                    keep=[g.digest for g in group if g.manifest is None],
                    describe=lambda digest: self.trees.manifest(src_repo, digest),
                    source=source,
                    exact=bool(owners),
                    patience=self.patience,
                )
            except Exception as exc:  # noqa: BLE001 - these referrers at this target
                for failed in [*(g.result for g in copied), *owners]:
                    failed.fail(exc)
                continue
            for owner in owners:
                owner.status = CopyStatus.COPIED if wrote else owner.status
                if wrote:
                    owner.count(manifests_pushed=1)
            repairs = [g for g in copied if g.repair]
            if wrote and repairs:
                repairs[0].result.count(manifests_pushed=1)
                for listing in repairs:
                    listing.result.status = CopyStatus.COPIED  # the mirror changed: it is visible now
                    log.info(
                        "listed referrer %s in %s/%s:%s (it was missing)",
                        listing.digest,
                        destination.host,
                        repo,
                        fallback_tag(subject),
                    )

    def _source_listing(self, src_repo: str, subject: str) -> Manifest | None:
        """The source's referrers tag of ``subject``, to write its bytes; None when there is none, or
        when it cannot be read now (the target's tag is then merged: listed all the same)."""
        try:
            return self.finder.listing(src_repo, subject)
        except Exception as exc:  # noqa: BLE001 - only the digest of the target's tag depends on it
            log.warning("referrers tag of %s at the source not read (%s); merging", subject, describe(exc))
            return None

    def _unlisted(
        self,
        src_repo: str,
        placement: Placement,
        result: CopyResult,
        referrer: str,
        subject: str | None = None,
    ) -> list[Listing]:
        """A referrer the target holds already: at a target without the referrers API, whether its
        subject's referrers tag lists it (a run that died between the two PUTs, a failed tag PUT or
        another process's write may have left it out). Reads the tag (once a minute per subject);
        the source is asked only for an entry to add. Listed: an entry any write keeps. A failure
        is this referrer's.
        """
        destination, repo = placement.destination, placement.repository
        if destination.learned.referrers_api:
            return []
        try:
            if subject is None:  # the referrer's own manifest names it: read it where it is
                found = destination.client.get_manifest(repo, referrer).subject
                if found is None:
                    return []  # not a referrer there
                subject = found.digest
            about = subject
            try:
                api = destination.learned.has_referrers_api(
                    lambda: destination.client.referrers(repo, about) is not None
                )
            except NotFound:
                return []
            if api:
                return []
            if referrer in destination.referrers_tags.listed(repo, subject):
                return [Listing(placement, result, referrer, subject)]
            manifest = self.trees.manifest(src_repo, referrer)
            return [Listing(placement, result, referrer, subject, manifest, repair=True)]
        except Exception as exc:  # noqa: BLE001 - this referrer at this target
            result.fail(exc)
            return []

    def _copy_referrers_tag(self, src_repo: str, tree: ImageTree, subject: str, todo: Todo) -> None:
        """A source referrers tag (by content): its referrers follow their subject, and at a target
        without the referrers API the tag lists those the target holds (the source's bytes when it
        holds them all). A target with the API lists them itself: the tag is not written there."""
        for _, result in todo:
            result.status, result.digest, result.media_type = CopyStatus.UNCHANGED, tree.top.digest, OCI_INDEX
        if not self.policy.enabled:
            for _, result in todo:
                result.status = CopyStatus.SKIPPED
                result.reason = f"a referrers tag (the referrers of {subject}); SYNC_REFERRERS is none"
            return
        holding: Todo = []
        for placement, result in todo:
            try:
                if manifests.holds(placement.by_digest(), subject):
                    holding.append((placement, result))
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
        self._referrers_of(src_repo, subject, holding, set(), 0)
        listings: list[Listing] = []
        tags: Todo = []
        for placement, result in todo:
            if result.error is not None:
                continue
            destination, repo = placement.destination, placement.repository
            try:
                if destination.learned.has_referrers_api(
                    partial(_serves_api, destination.client, repo, subject)
                ):
                    result.status = CopyStatus.SKIPPED
                    result.reason = (
                        f"a referrers tag: {destination.host} serves the referrers API, which lists the "
                        f"referrers of {subject}"
                    )
                    continue
                by_digest = placement.by_digest()
                held = [e.digest for e in tree.top.entries if manifests.holds(by_digest, e.digest)]
            except Exception as exc:  # noqa: BLE001 - this target only
                result.fail(exc)
                continue
            if tree.top.entries and not held:
                result.status = CopyStatus.SKIPPED
                result.reason = (
                    f"a referrers tag listing referrers of {subject}, none of them at the target "
                    "(a referrer follows its subject)"
                )
                continue
            listings += [
                Listing(placement, result, digest, subject, self.trees.manifest(src_repo, digest))
                for digest in held
            ]
            tags.append((placement, result))
        self._list_referrers(src_repo, listings, exact=(subject, tree.top), tags=tags)
        for _, result in todo:
            if (
                result.error is None
                and result.work.referrers_copied
                and result.status is CopyStatus.UNCHANGED
            ):
                result.status = CopyStatus.COPIED
