"""The pure parts of ``tenant_isolation_bench.py``: percentiles, the check of a 429's headers,
each phase's figures and the verdict (the table is ``tenant_isolation_table.py``). No IO
here, so all of it is unit-tested (``tests/unit/test_bench_tenant_isolation.py``).

A run is *invalid* (exit 1, whatever the ratio) when anything shows the measurement did not
happen as intended: the quiet tenant got an error or nothing admitted, any answer was a 5xx or
no answer at all, a 429 lacked a correct ``Retry-After``/``RateLimit``/``RateLimit-Policy``,
the noisy tenant had nothing admitted, a flood was never refused, or more was admitted than
the bucket holds. Otherwise the verdict compares the median, over rounds, of the quiet
tenant's p99 ratio (flood / baseline) with the bar. A flood that reached under half its rate
(a broken load generator, or a node answering it no faster) invalidates a run that looks like
a pass, and is only a caveat to a miss: a stronger flood would not have done better.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

BAR: Final = 1.2
"""Issue 6: the quiet tenant's p99 start latency under the flood, over its baseline."""
WEAKEST_FLOOD: Final = 0.5
"""Below this share of the asked rate the noisy load was not the one asked for."""
ADMISSION_SLACK: Final = 0.05
"""Share of the bucket's allowance a run may exceed (clock reads, a refill in flight)."""

PhaseKind = Literal["baseline", "at-quota", "flood", "redis-stop"]
"""``baseline``: the quiet tenant alone. ``at-quota``: the noisy tenant sends exactly its
quota beside it (a control: what another tenant's entitled load costs). ``flood``: the noisy
tenant sends its flood. ``redis-stop``: a flood during which Redis is stopped."""

_NAME: Final = r'"(?:[^"\\]|\\.)*"'
_ITEM: Final = re.compile(rf"^({_NAME})((?:;[a-z][a-z0-9_.*-]*=[^;,]*)+)$")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` of the values at or
    below it (NaN when there are none). ``q`` is a fraction in (0, 1]."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1] (got {q})")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)  # 0.07 * 100 is 7.000000000000001
    return ordered[max(0, rank - 1)]


# -- a 429's headers --
def _items(value: str) -> list[tuple[str, dict[str, str]]] | None:
    """A structured-field list of ``"name";key=value...`` items, or ``None`` if malformed."""
    parsed = []
    for raw in value.split(","):
        match = _ITEM.match(raw.strip())
        if match is None:
            return None
        params = dict(p.split("=", 1) for p in match.group(2).split(";")[1:])
        parsed.append((match.group(1), params))
    return parsed


def _whole(params: Mapping[str, str], *keys: str) -> bool:
    return all(params.get(key, "").isdigit() for key in keys)


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """What is wrong with a 429's rate-limit headers (empty: nothing). Wanted:
    ``Retry-After`` in whole seconds >= 1; ``RateLimit-Policy`` items ``"name";q=N;w=N``;
    ``RateLimit`` items ``"name";r=N;t=N``, each naming a policy; and a refused policy
    (``r=0``) whose ``t`` is the ``Retry-After``."""
    found = {key.lower(): value for key, value in headers.items()}
    names = ("Retry-After", "RateLimit", "RateLimit-Policy")
    problems = [f"no {name}" for name in names if name.lower() not in found]
    if problems:
        return problems
    retry = found["retry-after"].strip()
    if not retry.isdigit() or int(retry) < 1:
        problems.append(f"Retry-After is not whole seconds >= 1: {retry!r}")
    policies = _items(found["ratelimit-policy"])
    limits = _items(found["ratelimit"])
    if policies is None or not all(_whole(p, "q", "w") for _, p in policies):
        problems.append(f"malformed RateLimit-Policy: {found['ratelimit-policy']!r}")
    if limits is None or not all(_whole(p, "r", "t") for _, p in limits):
        problems.append(f"malformed RateLimit: {found['ratelimit']!r}")
    if problems or policies is None or limits is None:
        return problems
    unknown = {name for name, _ in limits} - {name for name, _ in policies}
    if unknown:
        problems.append(f"RateLimit names no policy: {', '.join(sorted(unknown))}")
    if not any(p["r"] == "0" and p["t"] == retry for _, p in limits):
        problems.append(f"no policy at r=0 with t={retry} (RateLimit: {found['ratelimit']!r})")
    return problems


# -- what the clients saw --
@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One start request as its client saw it."""

    sent: float
    """Seconds from the phase's start to the send."""
    latency: float
    """Seconds from the send to the whole answer read (or to the transport's failure)."""
    status: int
    """The HTTP status; 0 when no answer came (a transport error)."""
    late: float = 0.0
    """Seconds the send came after its scheduled time (the client's own lateness)."""
    note: str | None = None
    """A 429's header problems, a transport error, or the start of an unexpected body."""

    @property
    def admitted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        """A 5xx, an answer the bench does not expect, or none at all."""
        return not self.admitted and self.status != 429


@dataclass(frozen=True, slots=True, kw_only=True)
class QuietStats:
    sent: int
    admitted: int
    errors: int
    """Every request not admitted: the quiet tenant stays under its limits."""
    p50_ms: float
    p99_ms: float
    late_p99_ms: float
    """p99 of the client's own lateness: large values mean the client, not the node, lagged."""
    first_error: str | None
    latencies_ms: tuple[float, ...] = ()
    """Every admitted start's latency, for percentiles over several phases."""


def quiet_stats(outcomes: Sequence[Outcome]) -> QuietStats:
    admitted = [o.latency for o in outcomes if o.admitted]
    errors = [o for o in outcomes if not o.admitted]
    return QuietStats(
        sent=len(outcomes),
        admitted=len(admitted),
        errors=len(errors),
        p50_ms=percentile(admitted, 0.50) * 1000,
        p99_ms=percentile(admitted, 0.99) * 1000,
        late_p99_ms=percentile([o.late for o in outcomes], 0.99) * 1000,
        first_error=_describe(errors[0]) if errors else None,
        latencies_ms=tuple(latency * 1000 for latency in admitted),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NoisyStats:
    seconds: float
    sent: int
    admitted: int
    refused: int
    server_errors: int
    """5xx answers."""
    other: int
    """Transport errors and any other unexpected status."""
    bad_headers: int
    """429s whose rate-limit headers :func:`header_problems` rejects."""
    first_problem: str | None
    p50_ms: float = math.nan
    """The noisy tenant's answers (mostly 429s): how long the node took to give them."""
    p99_ms: float = math.nan

    @property
    def sent_rate(self) -> float:
        return self.sent / self.seconds if self.seconds else math.nan

    @property
    def admitted_rate(self) -> float:
        return self.admitted / self.seconds if self.seconds else math.nan


def noisy_stats(outcomes: Sequence[Outcome]) -> NoisyStats:
    """Rates are over the span from the first send to the last answer."""
    refused = [o for o in outcomes if o.status == 429]
    bad = [o for o in refused if o.note]
    failed = [o for o in outcomes if o.failed]
    server = [o for o in failed if o.status >= 500]
    worst = next(iter(server or failed or bad), None)
    return NoisyStats(
        seconds=span(outcomes),
        sent=len(outcomes),
        admitted=sum(o.admitted for o in outcomes),
        refused=len(refused),
        server_errors=len(server),
        other=len(failed) - len(server),
        bad_headers=len(bad),
        first_problem=None if worst is None else _describe(worst),
        p50_ms=percentile([o.latency for o in outcomes], 0.50) * 1000,
        p99_ms=percentile([o.latency for o in outcomes], 0.99) * 1000,
    )


def span(outcomes: Sequence[Outcome]) -> float:
    """Seconds from the first send to the last answer (0 without outcomes)."""
    if not outcomes:
        return 0.0
    return max(o.sent + o.latency for o in outcomes) - min(o.sent for o in outcomes)


def _describe(outcome: Outcome) -> str:
    status = "no answer" if outcome.status == 0 else str(outcome.status)
    return f"{status} at {outcome.sent:.2f}s: {outcome.note or ''}".rstrip(": ")


# -- phases and the verdict --
@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The noisy tenant's start bucket and the flood asked of it."""

    quota: float
    """Starts per second (``RATE_LIMIT_STARTS``)."""
    burst: int
    """The start bucket's size (``saga serve`` makes it twice the rate)."""
    flood_rate: float
    """Starts per second the noisy tenant is asked to send."""

    def asked(self, kind: PhaseKind) -> float:
        """The noisy tenant's rate in a phase of this kind."""
        return {"baseline": 0.0, "at-quota": self.quota}.get(kind, self.flood_rate)

    def allowance(self, seconds: float, buckets: int = 1) -> float:
        """The most a bucket refilling for ``seconds`` can admit, from ``buckets`` full ones
        (a Redis bucket, then a node's own once Redis is gone)."""
        return buckets * self.burst + self.quota * seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    round: int
    kind: PhaseKind
    quiet: QuietStats
    noisy: NoisyStats | None
    node_cpu: float
    """Cores the ``saga serve`` process used over the phase (1.0: one core busy)."""
    flood_cpu: float | None = None
    """Cores the flood's process used while it sent."""
    machine_cpu: float = math.nan
    """Cores busy machine-wide over the phase: the node, the flood, the bench, Redis, and
    whatever else shares the machine."""
    cpu_stall: float = math.nan
    """Share of the phase during which some task of the machine waited for a CPU (PSI): near
    1.0, every process, the node included, queued for a core."""


def phase_problems(phase: Phase, limits: Limits, buckets: int = 1) -> list[str]:
    """Why this phase's figures cannot count (empty: they can)."""
    label = f"round {phase.round} {phase.kind}"
    quiet, noisy = phase.quiet, phase.noisy
    problems = []
    if quiet.errors:
        problems.append(f"{label}: quiet got {quiet.errors} errors, first {quiet.first_error}")
    if not quiet.admitted:
        problems.append(f"{label}: quiet had no start admitted")
    if noisy is None:
        return problems
    if noisy.server_errors or noisy.other:
        problems.append(
            f"{label}: noisy got {noisy.server_errors} 5xx and {noisy.other} other failures, "
            f"first {noisy.first_problem}"
        )
    if noisy.bad_headers:
        problems.append(
            f"{label}: {noisy.bad_headers} 429s with bad headers, first {noisy.first_problem}"
        )
    if not noisy.admitted:
        problems.append(f"{label}: noisy had nothing admitted (a limiter refusing everything)")
    if not noisy.refused and phase.kind != "at-quota":
        problems.append(f"{label}: noisy was never refused (the flood never met its limit)")
    allowed = limits.allowance(noisy.seconds, buckets) * (1 + ADMISSION_SLACK)
    if noisy.admitted > allowed:
        problems.append(
            f"{label}: noisy had {noisy.admitted} admitted, its bucket allows "
            f"{allowed:.0f} in {noisy.seconds:.1f}s"
        )
    return problems


def shortfall(phase: Phase, limits: Limits) -> str | None:
    """The noisy load fell under half of what was asked: a broken load generator, or a node
    too slow to answer it (the flood's connections wait for their answers)."""
    asked = limits.asked(phase.kind)
    noisy = phase.noisy
    if noisy is None or noisy.sent_rate >= WEAKEST_FLOOD * asked:
        return None
    return (
        f"round {phase.round} {phase.kind}: the flood reached {noisy.sent_rate:.0f}/s of the "
        f"{asked:.0f}/s asked (its answers took {noisy.p50_ms:.0f} ms p50)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    ratios: tuple[float, ...]
    """Per round: the quiet p99 under the flood over the baseline's."""
    ratio: float
    """Their median (NaN without a complete round)."""
    bar: float
    problems: tuple[str, ...]
    """Why the run is invalid (exit 1); empty for a valid run."""
    caveats: tuple[str, ...] = ()
    """Floods that fell short of their rate in a run that missed the bar anyway: a stronger
    flood would not have done better, so the miss stands (a pass would not: see
    :func:`verdict`)."""

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def met(self) -> bool:
        return self.valid and self.ratio <= self.bar

    @property
    def exit_code(self) -> int:
        """1 when the run is invalid; a valid run exits 0 whether or not the bar is met."""
        return 0 if self.valid else 1


def round_ratios(
    phases: Iterable[Phase], over: PhaseKind = "baseline", kind: PhaseKind = "flood"
) -> tuple[float, ...]:
    """Per round that has both: the quiet p99 of the ``kind`` phase over the ``over`` one's."""
    by_round: dict[int, dict[PhaseKind, Phase]] = {}
    for phase in phases:
        by_round.setdefault(phase.round, {})[phase.kind] = phase
    return tuple(
        kinds[kind].quiet.p99_ms / kinds[over].quiet.p99_ms
        for _, kinds in sorted(by_round.items())
        if kind in kinds and over in kinds
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pooled:
    """The quiet p99 over every start of every round of two kinds of phase, and their ratio.

    A phase of 300 starts makes its p99 of the three slowest, which moves a lot between rounds
    with nothing changed; pooled over five rounds, the p99 rests on fifteen. Reported beside
    the verdict (the median of the per-round ratios), which pairs phases run minutes apart."""

    over_p99_ms: float
    kind_p99_ms: float
    over_starts: int
    kind_starts: int

    @property
    def ratio(self) -> float:
        return self.kind_p99_ms / self.over_p99_ms


def pooled(
    phases: Iterable[Phase], over: PhaseKind = "baseline", kind: PhaseKind = "flood"
) -> Pooled:
    over_ms = [ms for p in phases if p.kind == over for ms in p.quiet.latencies_ms]
    kind_ms = [ms for p in phases if p.kind == kind for ms in p.quiet.latencies_ms]
    return Pooled(
        over_p99_ms=percentile(over_ms, 0.99),
        kind_p99_ms=percentile(kind_ms, 0.99),
        over_starts=len(over_ms),
        kind_starts=len(kind_ms),
    )


def verdict(
    phases: Sequence[Phase], limits: Limits, bar: float = BAR, stop: RedisStop | None = None
) -> Verdict:
    problems = [p for phase in phases for p in phase_problems(phase, limits, _buckets(phase))]
    if stop is not None:
        problems += redis_stop_problems(stop)
    ratios = round_ratios(phases)
    if not ratios:
        problems.append("no round has both a baseline and a flood phase")
    ratio = statistics.median(ratios) if ratios else math.nan
    if math.isnan(ratio) and ratios:
        problems.append("a phase had no admitted quiet start to take a p99 of")
    shortfalls = [s for phase in phases if (s := shortfall(phase, limits)) is not None]
    if ratio > bar:
        return Verdict(
            ratios=ratios, ratio=ratio, bar=bar, problems=tuple(problems), caveats=tuple(shortfalls)
        )
    # A pass under a weaker flood than asked proves nothing.
    problems += shortfalls
    return Verdict(ratios=ratios, ratio=ratio, bar=bar, problems=tuple(problems))


def _buckets(phase: Phase) -> int:
    # Once Redis is gone the node's own bucket takes over, full: one more burst may pass.
    return 2 if phase.kind == "redis-stop" else 1


def split_at(outcomes: Sequence[Outcome], at: float) -> tuple[list[Outcome], list[Outcome]]:
    """The outcomes sent before ``at`` seconds into the phase, and the others."""
    return [o for o in outcomes if o.sent < at], [o for o in outcomes if o.sent >= at]


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisStop:
    """A flood during which the bench stopped Redis: the figures after the stop."""

    stopped_at: float
    """Seconds into the phase."""
    quiet: QuietStats
    noisy: NoisyStats


def redis_stop_problems(stop: RedisStop) -> list[str]:
    """After Redis is gone the node must keep answering, from its own buckets: the quiet
    tenant admitted, the noisy one both admitted and refused (neither fail-open nor
    fail-closed), and no 5xx (the phase's own checks count those)."""
    label = "after the Redis stop"
    problems = []
    if not stop.quiet.admitted or stop.quiet.errors:
        problems.append(
            f"{label}: quiet had {stop.quiet.admitted} admitted, "
            f"{stop.quiet.errors} errors, first {stop.quiet.first_error}"
        )
    if not stop.noisy.admitted or not stop.noisy.refused:
        problems.append(
            f"{label}: noisy had {stop.noisy.admitted} admitted and "
            f"{stop.noisy.refused} refused: the fallback did not limit"
        )
    return problems
