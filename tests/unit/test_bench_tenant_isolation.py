"""The pure parts of ``bench/tenant_isolation_bench.py`` (``bench/tenant_isolation_report.py``):
percentiles, the check of a 429's headers, and the verdict with its guards against a run that
measured nothing. Nothing here is timed."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from saga_orchestrator.security.limits import Decision, combined_headers
from tenant_isolation_report import (
    Limits,
    NoisyStats,
    Outcome,
    Phase,
    QuietStats,
    RedisStop,
    header_problems,
    noisy_stats,
    percentile,
    pooled,
    quiet_stats,
    round_ratios,
    split_at,
    verdict,
)
from tenant_isolation_table import render, summary

LIMITS = Limits(quota=50, burst=100, flood_rate=500)
GOOD_429 = {
    "Retry-After": "1",
    "RateLimit-Policy": '"requests";q=200;w=2, "starts";q=100;w=2',
    "RateLimit": '"requests";r=150;t=1, "starts";r=0;t=1',
}


# -- percentiles --
def test_the_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]  # 1..100, shuffled order must not matter
    values.reverse()

    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.07) == 7.0  # 0.07 * 100 is 7.000000000000001 in floats


def test_the_p99_of_few_samples_is_their_maximum_and_of_none_is_nan() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0
    assert percentile([5.0], 0.5) == 5.0
    assert math.isnan(percentile([], 0.99))


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
def test_a_percentile_outside_0_to_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], q)


# -- a 429's headers --
def test_the_headers_the_limiter_builds_pass_the_check() -> None:
    refused = Decision(
        allowed=False, limit=100, remaining=0, reset_after=2.0, retry_after=0.4, policy="starts"
    )
    allowed = replace(refused, allowed=True, remaining=3, retry_after=0.0, policy="requests")

    assert header_problems(combined_headers([allowed, refused])) == []
    assert header_problems(GOOD_429) == []


def test_header_names_are_matched_whatever_their_case() -> None:
    assert header_problems({k.lower(): v for k, v in GOOD_429.items()}) == []


@pytest.mark.parametrize("missing", ["Retry-After", "RateLimit", "RateLimit-Policy"])
def test_a_missing_header_is_a_problem(missing: str) -> None:
    headers = {k: v for k, v in GOOD_429.items() if k != missing}

    assert header_problems(headers) == [f"no {missing}"]


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("Retry-After", "0", "Retry-After is not whole seconds"),
        ("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT", "Retry-After is not whole seconds"),
        ("RateLimit", '"starts";r=0', "malformed RateLimit"),
        ("RateLimit", "starts;r=0;t=1", "malformed RateLimit"),
        ("RateLimit-Policy", '"starts";q=100', "malformed RateLimit-Policy"),
        ("RateLimit", '"other";r=0;t=1', 'RateLimit names no policy: "other"'),
        ("RateLimit", '"requests";r=5;t=1, "starts";r=3;t=1', "no policy at r=0"),
        ("RateLimit", '"requests";r=5;t=1, "starts";r=0;t=2', "no policy at r=0 with t=1"),
    ],
)
def test_a_malformed_or_inconsistent_header_is_a_problem(
    name: str, value: str, problem: str
) -> None:
    problems = header_problems({**GOOD_429, name: value})

    assert len(problems) == 1
    assert problems[0].startswith(problem)


# -- figures of a phase --
def admitted(at: float, ms: float) -> Outcome:
    return Outcome(sent=at, latency=ms / 1000, status=201)


def refused(at: float, note: str | None = None) -> Outcome:
    return Outcome(sent=at, latency=0.001, status=429, note=note)


def test_quiet_figures_count_anything_not_admitted_as_an_error() -> None:
    outcomes = [admitted(n / 10, 10.0 + n) for n in range(10)]
    outcomes += [refused(1.0), Outcome(sent=1.1, latency=0.0, status=0, note="ConnectError")]

    stats = quiet_stats(outcomes)

    assert (stats.sent, stats.admitted, stats.errors) == (12, 10, 2)
    assert stats.p50_ms == pytest.approx(14.0)
    assert stats.p99_ms == pytest.approx(19.0)
    assert stats.latencies_ms == pytest.approx([10.0 + n for n in range(10)])
    assert stats.first_error is not None
    assert stats.first_error.startswith("429 at 1.00s")


def test_noisy_figures_sort_answers_and_rates_use_the_span_of_the_flood() -> None:
    outcomes = [admitted(0.0, 1.0), refused(0.5), refused(1.0, "no Retry-After")]
    outcomes += [
        Outcome(sent=1.5, latency=0.5, status=503),
        Outcome(sent=1.9, latency=0.1, status=0),
    ]

    stats = noisy_stats(outcomes)

    assert stats.seconds == pytest.approx(2.0)
    assert (stats.sent, stats.admitted, stats.refused) == (5, 1, 2)
    assert (stats.server_errors, stats.other, stats.bad_headers) == (1, 1, 1)
    assert stats.admitted_rate == pytest.approx(0.5)
    assert stats.first_problem is not None
    assert stats.first_problem.startswith("503")


def test_outcomes_split_at_an_instant_of_the_phase() -> None:
    before, after = split_at([admitted(0.5, 1.0), admitted(2.0, 1.0), admitted(3.0, 1.0)], 2.0)

    assert [o.sent for o in before] == [0.5]
    assert [o.sent for o in after] == [2.0, 3.0]


# -- the verdict --
def quiet(p99_ms: float, **changes: object) -> QuietStats:
    stats = QuietStats(
        sent=300, admitted=300, errors=0, p50_ms=8.0, p99_ms=p99_ms, late_p99_ms=1.0,
        first_error=None,
    )  # fmt: skip
    return replace(stats, **changes)  # type: ignore[arg-type]


def noisy(**changes: object) -> NoisyStats:
    stats = NoisyStats(
        seconds=17.0, sent=8400, admitted=900, refused=7500, server_errors=0, other=0,
        bad_headers=0, first_problem=None,
    )  # fmt: skip
    return replace(stats, **changes)  # type: ignore[arg-type]


def pair(round_: int, baseline_p99: float, flood_p99: float) -> list[Phase]:
    return [
        Phase(round=round_, kind="baseline", quiet=quiet(baseline_p99), noisy=None, node_cpu=0.1),
        Phase(round=round_, kind="flood", quiet=quiet(flood_p99), noisy=noisy(), node_cpu=0.6),
    ]


def test_the_verdict_is_the_median_of_the_per_round_ratios() -> None:
    phases = pair(1, 10.0, 11.0) + pair(2, 10.0, 30.0) + pair(3, 20.0, 22.0)

    result = verdict(phases, LIMITS)

    assert round_ratios(phases) == pytest.approx((1.1, 3.0, 1.1))
    assert result.ratio == pytest.approx(1.1)
    assert result.valid
    assert result.met
    assert result.exit_code == 0


def test_a_valid_run_that_misses_the_bar_still_exits_0() -> None:
    result = verdict(pair(1, 10.0, 13.0), LIMITS)

    assert result.valid
    assert not result.met
    assert result.exit_code == 0


def test_quiet_errors_invalidate_a_run_even_when_the_ratio_is_fine() -> None:
    phases = pair(1, 10.0, 10.0)
    phases[1] = replace(phases[1], quiet=quiet(10.0, errors=1, first_error="429 at 3.00s"))

    result = verdict(phases, LIMITS)

    assert not result.met
    assert result.exit_code == 1
    assert any("quiet got 1 errors" in p for p in result.problems)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"admitted": 0}, "noisy had nothing admitted"),
        ({"refused": 0}, "noisy was never refused"),
        ({"server_errors": 2}, "noisy got 2 5xx"),
        ({"other": 1}, "1 other failures"),
        ({"bad_headers": 3}, "3 429s with bad headers"),
        ({"admitted": 2000}, "its bucket allows"),
    ],
)
def test_a_flood_that_did_not_happen_as_intended_invalidates_the_run(
    changes: dict[str, object], problem: str
) -> None:
    phases = pair(1, 10.0, 10.0)
    phases[1] = replace(phases[1], noisy=noisy(**changes))

    result = verdict(phases, LIMITS)

    assert result.exit_code == 1
    assert any(problem in p for p in result.problems), result.problems


def test_the_at_quota_control_may_go_unrefused_but_must_send_its_quota() -> None:
    control = Phase(
        round=1, kind="at-quota", quiet=quiet(12.0), node_cpu=0.3,
        noisy=noisy(sent=850, admitted=850, refused=0),
    )  # fmt: skip
    phases = [*pair(1, 10.0, 15.0), control]

    result = verdict(phases, LIMITS)

    assert result.valid, result.problems
    assert round_ratios(phases, kind="at-quota") == pytest.approx((1.2,))
    assert round_ratios(phases, over="at-quota") == pytest.approx((1.25,))
    weak = replace(control, noisy=noisy(sent=300, admitted=300, refused=0, p50_ms=5.0))
    weak_run = verdict([*pair(1, 10.0, 15.0), weak], LIMITS)
    assert weak_run.valid
    assert weak_run.caveats == (
        "round 1 at-quota: the flood reached 18/s of the 50/s asked (its answers took 5 ms p50)",
    )


def test_a_pass_under_a_weaker_flood_than_asked_is_invalid() -> None:
    phases = pair(1, 10.0, 11.0)
    phases[1] = replace(phases[1], noisy=noisy(sent=2000, p50_ms=40.0))

    result = verdict(phases, LIMITS)

    assert result.exit_code == 1
    assert result.problems == (
        "round 1 flood: the flood reached 118/s of the 500/s asked (its answers took 40 ms p50)",
    )


def test_a_miss_under_a_weaker_flood_than_asked_stands_with_a_caveat() -> None:
    phases = pair(1, 10.0, 30.0)
    phases[1] = replace(phases[1], noisy=noisy(sent=2000))

    result = verdict(phases, LIMITS)

    assert result.valid
    assert not result.met
    assert len(result.caveats) == 1
    assert "the flood reached 118/s" in result.caveats[0]


def test_nothing_admitted_to_the_quiet_tenant_is_not_a_pass() -> None:
    empty = quiet(math.nan, admitted=0, sent=0)
    phases = [replace(p, quiet=empty) for p in pair(1, 10.0, 10.0)]

    result = verdict(phases, LIMITS)

    assert result.exit_code == 1
    assert any("quiet had no start admitted" in p for p in result.problems)


def test_a_run_without_a_complete_round_is_invalid() -> None:
    result = verdict(pair(1, 10.0, 10.0)[:1], LIMITS)

    assert math.isnan(result.ratio)
    assert result.exit_code == 1
    assert "no round has both a baseline and a flood phase" in result.problems


def test_after_a_redis_stop_the_node_s_own_bucket_may_admit_one_more_burst() -> None:
    stop_phase = Phase(
        round=2, kind="redis-stop", quiet=quiet(50.0), noisy=noisy(admitted=1050), node_cpu=0.6
    )
    phases = [*pair(1, 10.0, 10.0), stop_phase]

    assert verdict(phases, LIMITS).valid
    assert not verdict([*phases[:2], replace(stop_phase, kind="flood", round=1)], LIMITS).valid


@pytest.mark.parametrize(
    ("changes", "problem"),
    [({"admitted": 0}, "the fallback did not limit"), ({"refused": 0}, "the fallback did not")],
)
def test_a_fallback_that_fails_open_or_closed_invalidates_the_run(
    changes: dict[str, object], problem: str
) -> None:
    stop = RedisStop(stopped_at=7.5, quiet=quiet(30.0), noisy=noisy(**changes))

    result = verdict(pair(1, 10.0, 10.0), LIMITS, stop=stop)

    assert result.exit_code == 1
    assert any(problem in p for p in result.problems)


def test_limits_allow_a_full_bucket_and_the_refill() -> None:
    assert LIMITS.allowance(10.0) == 600.0
    assert LIMITS.allowance(10.0, buckets=2) == 700.0


def test_the_report_names_the_state_of_the_bar_and_every_caveat() -> None:
    phases = pair(1, 10.0, 30.0)
    phases[1] = replace(phases[1], noisy=noisy(sent=2000))
    result = verdict(phases, LIMITS)

    text = summary(result, phases, LIMITS)
    table = render(phases, LIMITS)

    assert "median of the per-round ratios 3.00 (bar <= 1.2): MISSED" in text
    assert "caveat: round 1 flood: the flood reached 118/s" in text
    assert [line.split()[:2] for line in table.splitlines()[2:4]] == [
        ["1", "baseline"],
        ["1", "flood"],
    ]


def with_latencies(phase: Phase, latencies_ms: list[float]) -> Phase:
    return replace(phase, quiet=replace(phase.quiet, latencies_ms=tuple(latencies_ms)))


def test_the_pooled_p99_takes_every_start_of_every_round_of_a_kind() -> None:
    # Round 1's flood has three slow starts, round 2's none: their p99s (the 99th of 100) are
    # 45 and 6 ms; the pool's (the 198th of 200) is the third-slowest start of both rounds.
    phases = [
        with_latencies(pair(1, 10.0, 30.0)[0], [5.0] * 100),
        with_latencies(pair(1, 10.0, 30.0)[1], [6.0] * 97 + [40.0, 45.0, 50.0]),
        with_latencies(pair(2, 10.0, 10.0)[0], [5.0] * 99 + [9.0]),
        with_latencies(pair(2, 10.0, 10.0)[1], [6.0] * 100),
    ]

    both = pooled(phases)

    assert (both.over_starts, both.kind_starts) == (200, 200)
    assert both.over_p99_ms == pytest.approx(5.0)  # one 9 ms start of 200 is above it
    assert both.kind_p99_ms == pytest.approx(40.0)
    assert both.ratio == pytest.approx(8.0)
    text = summary(verdict(phases, LIMITS), phases, LIMITS)
    assert "pooled over rounds, flood/baseline: quiet p99 40.0 ms (200 starts) over 5.0 ms" in text
    assert "at-quota" not in text  # no such phase, so no pooled line for it


def test_without_latencies_the_pooled_p99_is_nan() -> None:
    both = pooled(pair(1, 10.0, 11.0))

    assert (both.over_starts, both.kind_starts) == (0, 0)
    assert math.isnan(both.kind_p99_ms)
