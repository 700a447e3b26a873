"""What the command line prints: the summary of a run, the plan of a dry run, ``check``'s findings, and a
live progress line."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from sync_core.config.model import SyncConfig
from sync_core.jobs.check import Report as CheckReport
from sync_core.report.summary import Summary


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class Progress:
    """A one-line live status on a terminal (stderr); silent when stderr is not a terminal."""

    def __init__(self, stream: IO[str] = sys.stderr):
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, summary: Summary) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last < 0.2:
                return
            self._last = now
            done = summary.tags_copied + summary.tags_unchanged + summary.tags_failed
            self.stream.write(
                f"\r\033[K{summary.repositories} repos | {summary.tags_missing} missing | {done} done "
                f"({summary.tags_failed} failed) | {human_bytes(summary.work.bytes_uploaded)} uploaded"
            )
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def render_summary(summary: Summary) -> str:
    d = summary.to_dict()
    t = d["tags"]
    lines = [
        f"{'dry run' if summary.dry_run else 'sync'} {'succeeded' if summary.ok else 'FAILED'} "
        f"in {d['duration_seconds']:.1f}s",
        f"  repositories seen  {d['repositories']}",
        f"  tags considered    {t['considered']}",
        f"  tags missing       {t['missing']}",
        f"  tags copied        {t['copied']} (already present: {t['unchanged']})",
        f"  tags skipped       {t['skipped']}",
        f"  tags failed        {t['failed']}",
        f"  bytes uploaded     {d['bytes_uploaded']} ({human_bytes(d['bytes_uploaded'])})",
        f"  blobs              {d['blobs']['uploaded']} uploaded, {d['blobs']['mounted']} mounted, "
        f"{d['blobs']['skipped']} already present",
    ]
    for name, counts in d["targets"].items():
        lines.append(
            f"  target {name}: {counts['missing']} missing, {counts['copied']} copied, "
            f"{counts['skipped']} skipped, {counts['failed']} failed"
        )
    if d["referrers"]["copied"]:
        lines.append(f"  referrers copied   {d['referrers']['copied']}")
    for entry in d["rewritten"]:
        lines.append(
            f"  rewritten [{entry['target']}] {entry['item']}: {entry['source_digest']} -> {entry['target_digest']}"
        )
    for entry in d["warnings"]:
        lines.append(f"  warning [{entry['target']}] {entry['item']}: {entry['warning']}")
    for name, figures in d["metrics"].items():
        lag = figures["lag_seconds"]
        if lag["count"]:
            lines.append(
                f"  mirror lag {name}: avg {lag['avg']:.1f}s, min {lag['min']:.1f}s, max {lag['max']:.1f}s "
                f"over {lag['count']} copies"
            )
    for entry in d["skipped"]:
        lines.append(f"  skipped [{entry['target']}] {entry['item']}: {entry['reason']}")
    for entry in d["failures"]:
        lines.append(f"  FAILED [{entry['target']}] {entry['item']}: {entry['reason']}")
    return "\n".join(lines)


def render_plan(summary: Summary, config: SyncConfig | None = None) -> str:
    lines = []
    for target, mapped in sorted(summary.mapped.items()):
        if mapped:
            lines.append(f"target {target}: repositories placed by mapping rules")
            lines.extend(f"  {src} -> {dst}" for src, dst in sorted(mapped.items()))
    by_target: dict[str, list[Any]] = {}
    for work in summary.planned:
        by_target.setdefault(work.target, []).append(work)
    for target, items in sorted(by_target.items()):
        tags = sum(1 for w in items if w.is_tag)
        others = f" and {len(items) - tags} referrer item(s)" if len(items) > tags else ""
        lines.append(f"target {target}: {tags} tag(s) to copy{others}")
        rules = config.target(target).rules if config else None
        if rules is not None and rules.rewrites:
            narrowed = ", ".join(
                ([f"platforms {', '.join(sorted(rules.platforms))}"] if rules.platforms else [])
                + (["no attestations"] if rules.drop_attestations else [])
            )
            lines.append(f"  indexes with other entries are rewritten for {target} ({narrowed}): new digests")
        rows = [
            (w.item, w.target_repository + w.item[len(w.source_repository) :], w.reason.value)
            for w in sorted(items, key=lambda w: (w.source_repository, w.reference))
        ]
        widths = [max(len(r[i]) for r in [("SOURCE", "DESTINATION", ""), *rows]) for i in (0, 1)]
        for src, dst, reason in [("SOURCE", "DESTINATION", "REASON"), *rows]:
            lines.append(f"  {src.ljust(widths[0])}  {dst.ljust(widths[1])}  {reason}")
    if not by_target:
        lines.append("nothing to copy: every target is up to date")
    lines.append("")
    lines.append(render_summary(summary))
    return "\n".join(lines)


def render_check(report: CheckReport) -> str:
    """``check``'s findings for a person: one block per finding, failures in capitals, then a line."""
    counts = report.counts()
    state = "OK" if report.ok else f"FAILED: {counts['fail']} failure(s)"
    lines = [f"check: {state}, {counts['warn']} warning(s), {counts['ok']} ok, in {report.seconds:.1f}s"]
    for finding in report.findings:
        status = finding.status.value
        mark = status.upper() if status == "fail" else status
        lines.append(f"[{mark}] {finding.subject} {finding.check}: {finding.answered}")
        lines.append(f"    asked: {finding.asked}")
        if finding.fix:
            lines.append(f"    {'note' if status == 'ok' else 'fix'}: {finding.fix}")
    if report.sampled:
        lines.append(f"source repositories read: {', '.join(report.sampled)}")
    return "\n".join(lines)
