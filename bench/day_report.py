"""The figures of ``bench/day.py``: per day, per phase, the goals of issue 20, and a cost model.

Everything here is arithmetic on :class:`bench.day.Figures`; the one scaling is the previous
design's, measured on ``old_ticks`` ticks and multiplied by ``ticks / old_ticks`` (its cost is the
same every tick: each repository listed at the source and at every target).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench.day import INTERVAL, DayProfile, Figures
from bench.day_world import TARGETS, Usage

#: "within a few percent of what the pushes and the spread full checks need"
NEED_MARGIN = 0.05
KINDS = ("timer", "full check", "copy", "other")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank (``q`` in 0..100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def phase(figures: Figures, scale: float = 1.0) -> dict[str, Any]:
    """One phase's figures as JSON (``scale``: the previous design's day from its sample)."""
    total = figures.total().scaled(scale)
    lags = [lag for push in figures.pushes for lag in push.lags()]
    app = [lag for values in figures.app_lags.values() for lag in values]
    executions = {k: round(figures.executions.get(k, 0) * scale) for k in ("timer", "event", "queue")}
    return {
        "ticks": figures.ticks,
        "scale": scale,
        "seconds": round(figures.seconds, 1),
        "executions": executions,
        "executions_total": sum(executions.values()),
        **asdict(total),
        "target_requests_total": total.target_requests,
        "by_work": {
            kind: {
                "units": round(figures.units.get(kind, 0) * scale),
                **asdict(figures.usage[kind].scaled(scale)),
                "target_requests_total": figures.usage[kind].scaled(scale).target_requests,
            }
            for kind in KINDS
            if kind in figures.usage
        },
        "timer_target_requests": figures.timer_target_requests,
        "pushes": [
            {
                "kind": p.kind,
                "repository": p.repository,
                "reference": p.reference,
                "at": p.at.isoformat() if p.at else None,
                "first_tick": p.first_tick,
                "done": {
                    t: {"lag_seconds": round((w - p.at).total_seconds(), 3), "tick": k}
                    for t, (w, k) in p.done.items()
                }
                if p.at
                else {},
            }
            for p in figures.pushes
        ],
        "lag_seconds": {
            "p50": percentile(lags, 50),
            "p95": percentile(lags, 95),
            "max": max(lags, default=None),
            "n": len(lags),
        },
        "app_mirror_lag_seconds": {"p50": percentile(app, 50), "p95": percentile(app, 95), "n": len(app)},
        "within_one_tick": sum(
            1
            for p in figures.pushes
            if len(p.done) == len(TARGETS) and all(k <= p.first_tick for _, k in p.done.values())
        ),
        "staleness_max_seconds": {t: round(s, 1) for t, s in figures.staleness.items()},
        "failure_count": len(figures.failures),
        "failures": figures.failures[:20],
    }


def summarize(profile: DayProfile, phases: dict[str, Figures]) -> dict[str, Any]:
    out: dict[str, Any] = {"profile": {**profile.__dict__, "full_check_hours": profile.full_check_hours}}
    for label, figures in phases.items():
        out[label] = phase(figures)
    if "previous" in phases:
        out["previous_day"] = phase(phases["previous"], profile.ticks / profile.old_ticks)
    out["model"] = model(profile, phases)
    out["goals"] = [{"goal": g, "met": ok, "measured": m} for g, ok, m in goals(profile, out)]
    out["ok"] = all(out[label]["failure_count"] == 0 for label in phases)
    return out


# -- the goals --------------------------------------------------------------------------------------


def _per_repository(noop: dict[str, Any], n: int) -> float:
    """Source requests per repository, tokens included, the catalog's (once a tick) not."""
    return (noop["source"] + noop["source_tokens"] - noop["catalog"] - noop["catalog_tokens"]) / n


def goals(profile: DayProfile, out: dict[str, Any]) -> list[tuple[str, bool, str]]:
    n = profile.repositories
    found: list[tuple[str, bool, str]] = []
    noop = out.get("noop")
    if noop:
        ex = noop["executions"]
        found.append(
            (
                "day: a no-op tick <= 2 executions",
                noop["executions_total"] <= 2,
                f"{noop['executions_total']} (timer {ex['timer']}, queue messages {ex['queue']})",
            )
        )
        found.append(
            (
                "day: a no-op tick sends 0 requests to the targets",
                noop["target_requests_total"] == 0,
                f"{sum(noop['targets'].values())} requests + {sum(noop['target_tokens'].values())} token requests",
            )
        )
        per = _per_repository(noop, n)
        found.append(
            (
                "day: a no-op tick <= 3 source requests per repository",
                per <= 3,
                f"{per:.3f} per repository ({noop['source']} requests + {noop['source_tokens']} tokens for {n} "
                f"repositories, {noop['catalog']} + {noop['catalog_tokens']} of them the catalog's)",
            )
        )
    ticks = [out[k] for k in ("onboarding", "events", "lost", "noop") if k in out]
    if ticks:
        found.append(
            (
                "day: the timer never sends a request to a target",
                all(t["timer_target_requests"] == 0 for t in ticks),
                f"{sum(t['timer_target_requests'] for t in ticks)} requests in {sum(t['ticks'] for t in ticks)} timer runs",
            )
        )
    lost = out.get("lost")
    if lost:
        pushes = len(lost["pushes"])
        found.append(
            (
                "day: every event lost: each push at every target within one tick",
                lost["within_one_tick"] == pushes and pushes > 0,
                f"{lost['within_one_tick']} of {pushes} pushes at both targets by the end of the first tick after "
                f"them; lag p50 {_duration(lost['lag_seconds']['p50'])}, max {_duration(lost['lag_seconds']['max'])}",
            )
        )
    for label, name in (("events", "events delivered"), ("lost", "every event lost")):
        day = out.get(label)
        if not day:
            continue
        work = day["by_work"]
        need = sum(work[k]["target_requests_total"] for k in ("full check", "copy") if k in work)
        total = day["target_requests_total"]
        found.append(
            (
                f"day: {name}: target requests within {NEED_MARGIN:.0%} of what copies and full checks need",
                need > 0 and total <= (1 + NEED_MARGIN) * need,
                f"{total} requests (tokens included) for {need} on copies and full checks: "
                f"{(total / need - 1) if need else 0:+.1%}",
            )
        )
    return found


# -- the model --------------------------------------------------------------------------------------

FIELDS = ("source", "source_tokens", "target", "target_tokens")


def _unit(usage: Usage | None, units: int) -> dict[str, float]:
    """``usage`` per unit (per repository and target, or per event message); target: summed over targets."""
    if usage is None or not units:
        return dict.fromkeys(FIELDS, 0.0)
    counts = (
        usage.source,
        usage.source_tokens,
        sum(usage.targets.values()),
        sum(usage.target_tokens.values()),
    )
    return {k: v / units for k, v in zip(FIELDS, counts, strict=True)}


def _work(phases: list[Figures | None], kinds: tuple[str, ...]) -> tuple[Usage, int]:
    usage, units = Usage(), 0
    for figures in phases:
        for kind in kinds:
            if figures is not None and kind in figures.usage:
                usage.add(figures.usage[kind])
                units += figures.units.get(kind, 0)
    return usage, units


def model(profile: DayProfile, phases: dict[str, Figures]) -> dict[str, Any]:
    """Measured constants, and the day they give for 200, 2,000 and 20,000 repositories."""
    n = profile.repositories
    noop, events, lost, previous = (phases.get(k) for k in ("noop", "events", "lost", "previous"))
    constants: dict[str, Any] = {}
    if noop is not None:
        u = noop.total()
        constants["tick_per_repository"] = {
            "source": (u.source - u.catalog) / n,
            "source_tokens": (u.source_tokens - u.catalog_tokens) / n,
        }
        constants["catalog_per_tick"] = {
            "source": u.catalog,
            "source_tokens": u.catalog_tokens,
            "repositories": n,
        }
    constants["full_check"] = _unit(*_work([events, lost], ("full check",)))  # per repository and target
    constants["event_copy"] = _unit(*_work([events], ("copy",)))  # per event message (a push, a target)
    constants["event_confirm"] = _unit(*_work([events], ("other",)))  # the next tick's look at it
    constants["found_copy"] = _unit(*_work([lost], ("copy",)))  # per push and target, its event lost
    if previous is not None:
        constants["previous_look"] = _unit(*_work([previous], ("full check", "copy", "other")))
    rows = [project(constants, size, profile) for size in (200, 2000, 20000)]
    return {"constants": constants, "rows": rows}


def project(constants: dict[str, Any], n: int, profile: DayProfile) -> dict[str, Any]:
    """A day of ``n`` repositories by the measured constants: 96 ticks, 2 targets, a full check of
    each repository once a day, pushes in proportion to the catalog as measured, events delivered."""
    targets, ticks = len(TARGETS), round(24 * 3600 / INTERVAL.total_seconds())
    pushes = round(n * profile.pushes / profile.repositories)
    tick = constants.get("tick_per_repository", {"source": 2.0, "source_tokens": 1.0})
    catalog_pages = math.ceil(n / 100)  # the catalog in pages of 100, and its token
    full, copy_, confirm = constants["full_check"], constants["event_copy"], constants["event_confirm"]

    def per_day(key: str, timer: float) -> int:
        work = n * targets * full[key] + pushes * targets * (copy_[key] + confirm[key])
        return round(ticks * timer + (work if key.startswith("source") else work / targets))

    per_tick = (n + pushes) / ticks  # repositories in a target's work each tick: 50 a message
    row: dict[str, Any] = {
        "repositories": n,
        "pushes": pushes,
        "executions": ticks + pushes * (1 + targets) + ticks * targets * math.ceil(per_tick / 50),
        "source": per_day("source", catalog_pages + n * tick["source"]),
        "source_tokens": per_day("source_tokens", 1 + n * tick["source_tokens"]),
        "target_each": per_day("target", 0),
        "target_tokens_each": per_day("target_tokens", 0),
    }
    old = constants.get("previous_look")
    if old:
        row["previous"] = {
            "executions": ticks * (1 + n * targets) + pushes * (1 + targets),
            "source": round(ticks * (catalog_pages + n * targets * old["source"])),
            "source_tokens": round(ticks * (1 + n * targets * old["source_tokens"])),
            "target_each": round(ticks * n * old["target"]),
            "target_tokens_each": round(ticks * n * old["target_tokens"]),
        }
    return row


# -- the tables -------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _n(value: float) -> str:
    return f"{round(value):,}"


def table(summary: dict[str, Any]) -> str:
    p = summary["profile"]
    columns = [
        (k, t)
        for k, t in (
            ("events", "events delivered"),
            ("lost", "every event lost"),
            ("previous_day", "previous design *"),
        )
        if k in summary
    ]
    head = (
        f"| a day: {p['repositories']:,} repositories x {p['tags']} tags, 2 targets, {p['ticks']} ticks of 15 min, "
        f"{p['pushes']} pushes | " + " | ".join(t for _, t in columns) + " |"
    )
    lines = [head, "|---|" + "---|" * len(columns)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(summary[k]) for k, _ in columns) + " |")

    row(
        "executions: timer + Event Grid + queue",
        lambda d: (
            f"{d['executions']['timer']:,} + {d['executions']['event']:,} + {d['executions']['queue']:,} = **{d['executions_total']:,}**"
        ),
    )
    row("source requests + token requests", lambda d: f"{d['source']:,} + {d['source_tokens']:,}")
    for target in TARGETS:
        row(
            f"{target} requests + token requests",
            lambda d, t=target: f"**{d['targets'].get(t, 0):,}** + {d['target_tokens'].get(t, 0):,}",
        )
    row(
        "target requests (tokens included) on full checks / copies / other",
        lambda d: " / ".join(
            _n(d["by_work"].get(k, {}).get("target_requests_total", 0))
            for k in ("full check", "copy", "other")
        ),
    )
    row(
        "mirror lag p50 / p95 (max), per push and target",
        lambda d: (
            f"{_duration(d['lag_seconds']['p50'])} / {_duration(d['lag_seconds']['p95'])} ({_duration(d['lag_seconds']['max'])})"
        ),
    )
    row(
        "the app's registry_sync.mirror_lag p50 / p95",
        lambda d: (
            f"{_duration(d['app_mirror_lag_seconds']['p50'])} / {_duration(d['app_mirror_lag_seconds']['p95'])}"
        ),
    )
    row("pushes at both targets within one tick", lambda d: f"{d['within_one_tick']} of {len(d['pushes'])}")
    row(
        "highest staleness the timer recorded",
        lambda d: ", ".join(f"{_duration(s)}" for s in d["staleness_max_seconds"].values()) or "-",
    )
    row(
        "wall time of the phase here",
        lambda d: f"{d['seconds']:.0f} s" + (f" ({d['ticks']} ticks)" if d["scale"] != 1 else ""),
    )
    prev = summary.get("previous_day")
    if prev:
        lines += [
            "",
            f"\\* the design before issue 20 (one message per repository and target every tick, each worker "
            f"listing the source and the target): {summary['previous']['ticks']} ticks measured, each with one "
            f"push whose event was lost, every figure x{prev['scale']:g}; its lag is those "
            f"{len(summary['previous']['pushes'])} pushes'.",
        ]
    noop, onboarding = summary.get("noop"), summary.get("onboarding")
    if noop:
        n = p["repositories"]
        lines += [
            "",
            "| one tick | executions | source requests + tokens (per repository) | target requests + tokens |",
            "|---|---|---|---|",
            f"| no-op (nothing changed, no full check due) | {noop['executions_total']} | {noop['source']:,} + "
            f"{noop['source_tokens']:,} ({_per_repository(noop, n):.2f}; the catalog {noop['catalog']}) | "
            f"{sum(noop['targets'].values())} + {sum(noop['target_tokens'].values())} |",
        ]
        if onboarding:
            lines.append(
                f"| onboarding: state empty (lost or reset), mirrors complete: one full pass | "
                f"{onboarding['executions_total']} | {onboarding['source']:,} + {onboarding['source_tokens']:,} | "
                + " + ".join(f"{sum(onboarding[k].values()):,}" for k in ("targets", "target_tokens"))
                + " |"
            )
    return "\n".join(lines)


def model_table(summary: dict[str, Any]) -> str:
    rows = summary["model"]["rows"]
    lines = [
        "| repositories (pushes a day) | executions | source requests + tokens | requests + tokens at each target |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['repositories']:,} ({r['pushes']}) | {r['executions']:,} | {r['source']:,} + {r['source_tokens']:,} "
            f"| {r['target_each']:,} + {r['target_tokens_each']:,} |"
        )
        old = r.get("previous")
        if old:
            lines.append(
                f"| previous design | {old['executions']:,} | {old['source']:,} + {old['source_tokens']:,} "
                f"| {old['target_each']:,} + {old['target_tokens_each']:,} |"
            )
    return "\n".join(lines)
