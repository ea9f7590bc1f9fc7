"""The printed report of ``tenant_isolation_bench.py``: one row per phase, the Redis stop, and
the summary of the ratios against the bar."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from tenant_isolation_report import (
    Limits,
    Phase,
    PhaseKind,
    RedisStop,
    Verdict,
    pooled,
    round_ratios,
)


def render_redis_stop(stop: RedisStop) -> str:
    n, q = stop.noisy, stop.quiet
    return (
        f"Redis stopped {stop.stopped_at:.1f}s into the phase; afterwards: quiet "
        f"{q.admitted}/{q.sent} admitted, p50 {q.p50_ms:.1f} ms, p99 {q.p99_ms:.1f} ms; noisy "
        f"{n.sent} sent, {n.admitted} admitted ({n.admitted_rate:.1f}/s), {n.refused} refused, "
        f"{n.server_errors} 5xx, {n.other} other failures, {n.bad_headers} bad headers"
    )


def render(phases: Sequence[Phase], limits: Limits) -> str:
    header = (
        f"{'round':>5} {'phase':<10}{'q sent':>7}{'q ok':>6}{'q err':>6}{'q p50':>8}{'q p99':>8}"
        f"{'late99':>7} {'n sent/s':>9}{'n adm/s':>8}{'n 429':>7}{'5xx':>5}{'bad h':>6}"
        f"{'n p50':>7}{'node cpu':>9}{'flood cpu':>10}{'box cpu':>8}{'stall':>6}"
    )
    lines = [header, "-" * len(header)]
    for phase in phases:
        q, n = phase.quiet, phase.noisy
        noisy = (
            f"{n.sent_rate:>9.0f}{n.admitted_rate:>8.1f}{n.refused:>7}{n.server_errors:>5}"
            f"{n.bad_headers:>6}{n.p50_ms:>7.1f}"
            if n is not None
            else f"{'':>42}"
        )
        flood_cpu = f"{phase.flood_cpu:>10.2f}" if phase.flood_cpu is not None else f"{'':>10}"
        lines.append(
            f"{phase.round:>5} {phase.kind:<10}{q.sent:>7}{q.admitted:>6}{q.errors:>6}"
            f"{q.p50_ms:>8.1f}{q.p99_ms:>8.1f}{q.late_p99_ms:>7.1f} {noisy}"
            f"{phase.node_cpu:>9.2f}{flood_cpu}{phase.machine_cpu:>8.2f}{phase.cpu_stall:>6.2f}"
        )
    lines.append(
        f"\nq: the quiet tenant (ms from send to answer; late99: p99 of its client's lateness); "
        f"n: the noisy tenant (n p50: its answers, ms), quota {limits.quota:g} starts/s "
        f"(bucket {limits.burst}), flooding at {limits.flood_rate:g}/s. cpu: cores used by the "
        f"process over the phase (box: by every process of the machine); stall: share of the "
        f"phase some task waited for a CPU."
    )
    return "\n".join(lines)


def summary(result: Verdict, phases: Sequence[Phase], limits: Limits) -> str:
    floods = [p.noisy for p in phases if p.kind == "flood" and p.noisy is not None]
    admitted = statistics.median(n.admitted_rate for n in floods) if floods else math.nan
    sent = statistics.median(n.sent_rate for n in floods) if floods else math.nan
    state = "met" if result.met else ("MISSED" if result.valid else "INVALID RUN")
    p99s = ", ".join(
        f"{kind} {_median_p99(phases, kind):.1f} ms"
        for kind in ("baseline", "at-quota", "flood")
        if any(p.kind == kind for p in phases)
    )
    lines = [
        f"quiet p99 per round, flood/baseline: {_listed(result.ratios)}",
        f"median quiet p99: {p99s}; median of the per-round ratios {result.ratio:.2f} "
        f"(bar <= {result.bar:g}): {state}",
    ]
    lines += [line for over, kind in _POOLED_PAIRS if (line := _pooled_line(phases, over, kind))]
    controlled = round_ratios(phases, over="at-quota")
    if controlled:
        entitled = round_ratios(phases, kind="at-quota")
        lines.append(
            f"control: at-quota/baseline {_listed(entitled)} (median "
            f"{statistics.median(entitled):.2f}), flood/at-quota {_listed(controlled)} (median "
            f"{statistics.median(controlled):.2f})"
        )
    lines.append(
        f"noisy, median over floods: sent {sent:.0f}/s ({sent / limits.quota:.1f}x its quota), "
        f"admitted {admitted:.1f}/s ({admitted / limits.quota:.2f}x its quota)"
    )
    lines += [f"caveat: {caveat}; the miss stands" for caveat in result.caveats]
    return "\n".join(lines)


_POOLED_PAIRS: tuple[tuple[PhaseKind, PhaseKind], ...] = (
    ("baseline", "flood"),
    ("baseline", "at-quota"),
    ("at-quota", "flood"),
)


def _pooled_line(phases: Sequence[Phase], over: PhaseKind, kind: PhaseKind) -> str:
    both = pooled(phases, over, kind)
    if not (both.over_starts and both.kind_starts):
        return ""
    return (
        f"pooled over rounds, {kind}/{over}: quiet p99 {both.kind_p99_ms:.1f} ms "
        f"({both.kind_starts} starts) over {both.over_p99_ms:.1f} ms ({both.over_starts}): "
        f"{both.ratio:.2f}"
    )


def _listed(ratios: Iterable[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in ratios) or "none"


def _median_p99(phases: Sequence[Phase], kind: PhaseKind) -> float:
    values = [p.quiet.p99_ms for p in phases if p.kind == kind]
    return statistics.median(values) if values else math.nan
