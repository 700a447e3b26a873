"""What ``verify`` finds: each thing not as it should be at a target, counts per target, the report.

Plain records and their rendering for a person (a table) or a program (``to_dict``, JSON);
``verify.py`` fills them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "Report", "Status", "Tally", "render"]


class Status(str, enum.Enum):
    MISSING = "missing"  # not at the target
    DIFFERS = "differs"  # there, with another digest (or a blob of another size)
    UNLISTED = "unlisted-referrer"  # at the target, but its referrers listing does not name it
    ERROR = "error"  # could not be checked (a request failed)


@dataclass(frozen=True)
class Finding:
    """Something not as it should be at a target."""

    target: str
    item: str  # at the target: repository:tag, repository@digest
    kind: str  # tag | referrer | manifest | blob | repository
    status: Status
    expected: str | None = None
    actual: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "item": self.item,
            "kind": self.kind,
            "status": self.status.value,
            "expected": self.expected,
            "actual": self.actual,
            "detail": self.detail,
        }


@dataclass
class Tally:
    """What was checked at one target and found in order."""

    tags: int = 0
    referrers: int = 0
    manifests: int = 0  # --deep: child and referrer manifests fetched and verified
    blobs: int = 0  # --deep: blobs found with the right size
    skipped: int = 0  # tags and referrers sync skips there (unreadable, name refused, a skipped type)
    problems: int = 0


@dataclass
class Report:
    deep: bool
    targets: dict[str, Tally] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        order = {s: i for i, s in enumerate(Status)}
        return {
            "complete": self.complete,
            "deep": self.deep,
            "seconds": round(self.seconds, 3),
            "targets": {name: vars(t) for name, t in sorted(self.targets.items())},
            "findings": [
                f.to_dict() for f in sorted(self.findings, key=lambda f: (f.target, order[f.status], f.item))
            ],
        }


def render(report: Report) -> str:
    """The report for a person: a line, the table of findings, a line per target."""
    d = report.to_dict()
    state = "complete" if report.complete else f"INCOMPLETE: {len(report.findings)} finding(s)"
    lines = [f"verify{' --deep' if report.deep else ''}: {state} in {report.seconds:.1f}s"]
    rows = [
        (f["target"], f["item"], f["status"], f["expected"] or "", f["actual"] or "", f["detail"])
        for f in d["findings"]
    ]
    if rows:
        head = ("TARGET", "ITEM", "STATUS", "EXPECTED", "ACTUAL", "DETAIL")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
        for row in [head, *rows]:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5]
            )
    for name, t in d["targets"].items():
        deep = f", {t['manifests']} manifests and {t['blobs']} blobs" if report.deep else ""
        lines.append(
            f"  target {name}: {t['tags']} tags and {t['referrers']} referrers in order{deep}; "
            f"{t['skipped']} skipped by sync's rules; {t['problems']} finding(s)"
        )
    return "\n".join(line.rstrip() for line in lines)
