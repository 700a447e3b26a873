"""``check``: before the first sync, what each registry allows of this configuration and what will fail.

Reads everything, writes nothing durable: one :class:`~sync_core.jobs.check_findings.Finding` per
thing looked at, ``ok``, ``warn`` or ``fail``, with what was asked, what was answered and the
setting or action that fixes it. The order: Key Vault secrets, the source
(:mod:`~sync_core.jobs.check_source`), then each target (:mod:`~sync_core.jobs.check_targets`).
A failure of one step never stops the others that do not depend on it. docs/check.md lists every
finding. The CLI exits 0 when nothing fails, 1 when something does (:attr:`Report.ok`).

The request budget of a target (requests per second) is what :func:`configured_budget` returns;
the ``rate-limit`` finding compares the registry's limit with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync_core.config.model import TargetConfig
from sync_core.jobs.check_findings import Finding, Status
from sync_core.jobs.check_names import MAX_NAMESPACES
from sync_core.jobs.check_source import secret_findings, source_findings
from sync_core.jobs.check_targets import target_findings
from sync_core.jobs.syncer import Syncer

DEFAULT_SAMPLE = 3  # source repositories whose tags, a manifest and referrers are read

COST = f"""\
Requests (nothing is written: no POST, PUT, PATCH or DELETE anywhere):
  Key Vault          1 GET per secret the configuration names (read fresh; never shown)
  source             GET /v2/ and a token; the catalog (every page) unless SOURCE_REPOSITORIES
                     is set; per sampled repository (--sample, default {DEFAULT_SAMPLE}): 1 tag listing
                     (ACR: /acr/v1/<repo>/_tags) and 1 manifest HEAD, with a token each; then 1
                     referrers request (GET /v2/<repo>/referrers/<digest>) for the first sample
  each target        GET /v2/ and a token; per target namespace the names fall in (at most
                     {MAX_NAMESPACES}): 1 new token for pull,push on one repository, whose claims say what
                     is granted; 1 token for a mount's scopes (pull,push on one repository, pull on
                     another); 1 referrers request; 1 manifest HEAD for its rate-limit headers
                     (Docker Hub: of ratelimitpreview/test:latest, as its documentation shows;
                     a HEAD does not count against its pull limit)
Push rights and mounts are read from the token's claims where the registry issues a readable JWT
(Docker Hub, ACR, distribution's token servers); elsewhere the finding says they cannot be told
without writing.
"""


def configured_budget(target: TargetConfig) -> float | None:
    """The request budget configured for ``target``, in requests per second (None: none configured)."""
    return target.requests_per_second


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    sampled: list[str] = field(default_factory=list)  # source repositories read
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing fails (warnings allowed)."""
        return not any(f.status is Status.FAIL for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for f in self.findings if f.status is s) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "sampled": self.sampled,
            "seconds": round(self.seconds, 3),
            "findings": [f.to_dict() for f in self.findings],
        }


class Checker:
    """Runs every check of one configuration with a :class:`Syncer`'s clients and secrets.

    ``sample``: how many selected source repositories are read; ``budget``: a target's request
    budget (requests per second; None: none), compared with the limits registries state.
    """

    def __init__(
        self,
        syncer: Syncer,
        *,
        sample: int = DEFAULT_SAMPLE,
        budget: Callable[[TargetConfig], float | None] = configured_budget,
    ):
        self.syncer = syncer
        self.sample = sample
        self.budget = budget

    def run(self, targets: list[str] | None = None) -> Report:
        """Every finding for the source and ``targets`` (default: all)."""
        started = time.monotonic()
        config = self.syncer.config
        chosen = [config.target(n) for n in targets] if targets else list(config.targets)
        report = Report()
        report.findings.extend(secret_findings(self.syncer, chosen))
        found, view = source_findings(self.syncer, chosen, self.sample, self.syncer.clock())
        report.findings.extend(found)
        report.sampled = [s.repository for s in view.samples]
        for target in chosen:
            report.findings.extend(target_findings(self.syncer, target, view, self.budget(target)))
        report.seconds = time.monotonic() - started
        return report
