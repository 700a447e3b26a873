"""Writes at a target whose answer may contradict what this copy just verified.

A manifest is pushed with bytes that hash to its digest, after everything it references was
verified present at the target; a blob upload ends only after its bytes were verified. When the
registry answers such a write with 400 ``DIGEST_INVALID`` or ``MANIFEST_BLOB_UNKNOWN`` /
``BLOB_UNKNOWN``, the answer contradicts what was verified: distribution's filesystem storage
rewrites the link files of a blob or manifest in place when another client pushes it too, and a
request that reads one meanwhile sees it half-written. Concurrent copies of one repository are
normal (an event and the timer, a redelivered queue message, several processes), so such answers
are :class:`~sync_core.errors.Contradicted` (transient): the write is tried again, a bounded
number of times with backoff (:class:`Patience`); a registry that keeps answering so refuses, and
its last answer is raised as the error it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sync_core.errors import Contradicted, RegistryError
from sync_core.registry.client import RegistryClient
from sync_core.registry.manifest import Manifest
from sync_core.registry.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTRADICTIONS = frozenset({"DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"})
# distribution rewrites a link file in well under a second; six tries span a few seconds
CONTRADICTION_RETRY = RetryPolicy(attempts=6, backoff_base=0.2, backoff_cap=4.0)


@dataclass(frozen=True)
class Patience:
    """How often and how long a write whose answer contradicts what was verified is tried again."""

    retry: RetryPolicy = CONTRADICTION_RETRY
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


def contradiction(error: RegistryError) -> bool:
    """A 400 that says content is missing or damaged which the writer verified just before."""
    return error.status == 400 and error.code in CONTRADICTIONS


def insisting(write: Callable[[], T], what: str, verified: str, patience: Patience) -> T:
    """``write()``, tried again while its answer contradicts what was verified (``verified`` says what).

    The last contradicting answer, when the registry keeps giving it, is raised as a (permanent)
    :class:`RegistryError` naming how often it came.
    """
    tries = 0

    def attempt(number: int) -> T:
        nonlocal tries
        tries = number + 1
        try:
            return write()
        except Contradicted:
            raise
        except RegistryError as exc:
            if contradiction(exc):
                raise Contradicted(str(exc), status=exc.status, code=exc.code) from None
            raise

    def again(error: BaseException, attempt: int, delay: float) -> None:
        log.warning(
            "%s: %s; %s; trying again (%d/%d)", what, error, verified, attempt + 2, patience.retry.attempts
        )

    try:
        return retrying(
            attempt,
            patience.retry,
            what=what,
            transient=lambda e: isinstance(e, Contradicted),
            on_retry=again,
            sleep=patience.sleep,
        )
    except Contradicted as exc:
        raise RegistryError(
            f"{exc}: the same answer {tries} times, though {verified}", status=exc.status, code=exc.code
        ) from None


def put_manifest(
    client: RegistryClient, repository: str, reference: str, manifest: Manifest, patience: Patience
) -> str | None:
    """PUT ``manifest`` (its exact bytes) as ``reference``; returns the ``OCI-Subject`` answer."""
    return insisting(
        lambda: client.put_manifest(repository, reference, manifest),
        f"PUT manifest {client.host}/{repository}:{reference}",
        f"its bytes hash to {manifest.digest} and what it references was verified present",
        patience,
    )
