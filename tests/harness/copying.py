"""One image to one target repository: the engine's multi-target API, as the copy tests use it.

The engine has no single-destination mode; these tests copy to one placement at a time through
:meth:`Copier.copy_to` and want an exception when that placement failed.
"""

from __future__ import annotations

from typing import Any

from sync_core.config.model import TargetRules
from sync_core.engine.copier import Copier
from sync_core.engine.destination import AtTarget, Destination, Placement
from sync_core.engine.ledger import BlobLedger
from sync_core.engine.results import CopyResult
from sync_core.registry.client import RegistryClient
from sync_core.registry.names import is_digest


class OneTarget:
    """A :class:`Copier` from ``source`` and one :class:`Destination` at ``destination``."""

    def __init__(
        self,
        source: RegistryClient,
        destination: RegistryClient,
        *,
        ledger: BlobLedger | None = None,
        chunked: bool = False,
        **copier: Any,
    ):
        self.copier = Copier(source, **copier)
        self.destination = Destination("target", destination, ledger=ledger)
        if chunked:
            self.destination.learned.use_chunked_uploads()

    def copy(
        self,
        src_repo: str,
        reference: str,
        dst_repo: str,
        dst_tag: str | None = None,
        *,
        expected_digest: str | None = None,
        skip_media_types: frozenset[str] = frozenset(),
        at_target: AtTarget = AtTarget.UNKNOWN,
    ) -> CopyResult:
        """Copy ``src_repo:reference`` to ``dst_repo`` (under ``dst_tag``, else the same tag); raise on failure."""
        tag = dst_tag or (None if is_digest(reference) else reference)
        placement = Placement(self.destination, dst_repo, tag, at_target, TargetRules(skip_media_types))
        (result,) = self.copier.copy_to(src_repo, reference, [placement], expected_digest=expected_digest)
        if result.error is not None:
            raise result.error
        return result

    def close(self) -> None:
        self.copier.close()

    def __enter__(self) -> OneTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
