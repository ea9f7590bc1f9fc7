"""The pure parts of ``bench/cluster_bench.py``: CPU accounting from ``/proc`` lines
(``cluster_bench_cpu.py``), percentiles, medians, the tables, and the guard against a trivial
pass (``cluster_bench_report.py``). Nothing here is timed or starts a process."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cluster_bench import node_counts, schedule
from cluster_bench_cpu import (
    MachineTicks,
    ProcStat,
    classify,
    idle_share,
    parse_machine,
    parse_stat,
    postgres_split,
    postgres_ticks,
    ticks_of,
)
from cluster_bench_report import (
    CpuUse,
    Observed,
    Run,
    Shares,
    completed_in_metrics,
    exit_code,
    markdown,
    percentile,
    problems,
    render_per_saga,
    render_runs,
    render_summary,
    shares,
    summarize,
    vs_one_node,
)

# A real line of /proc/<pid>/stat (a PostgreSQL checkpointer), and one whose command holds
# spaces and parentheses, which only the last ")" delimits.
CHECKPOINTER = (
    "2210 (postgres) S 2209 2210 2210 0 -1 4194368 2686 0 0 0 533 2059 7 3 20 0 1 0 2669 "
    "223236096 36686 18446744073709551615 93854120153088 93854125609433 140722376161472 0 0 0"
)
ODD_NAME = "77 (a (b) c) R 1 77 77 0 -1 0 0 0 0 0 10 5 0 0 20 0 1 0 900 0 0"


def stat(
    pid: int, ticks: int, *, ppid: int = 1, child: int = 0, start: int = 100, comm: str = "postgres"
) -> ProcStat:
    return ProcStat(pid=pid, comm=comm, ppid=ppid, start=start, ticks=ticks, child_ticks=child)


# -- /proc parsing --
def test_a_stat_line_gives_pid_parent_start_and_cpu_ticks() -> None:
    parsed = parse_stat(CHECKPOINTER)

    assert parsed == ProcStat(
        pid=2210, comm="postgres", ppid=2209, start=2669, ticks=533 + 2059, child_ticks=7 + 3
    )


def test_a_command_with_spaces_and_parentheses_is_cut_at_the_last_parenthesis() -> None:
    parsed = parse_stat(ODD_NAME)

    assert (parsed.pid, parsed.comm, parsed.ppid, parsed.ticks, parsed.start) == (
        77,
        "a (b) c",
        1,
        15,
        900,
    )


@pytest.mark.parametrize("line", ["", "cpu 1 2 3", "12 (x) S 1 2"])
def test_what_is_not_a_stat_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not a /proc"):
        parse_stat(line)


def test_the_machine_line_splits_busy_from_idle_and_leaves_guest_time_in_user() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    ticks = parse_machine("cpu  300 5 70 80 20 1 4 10 50 0")

    assert ticks == MachineTicks(busy=300 + 5 + 70 + 1 + 4 + 10, idle=80 + 20)
    assert idle_share(ticks, MachineTicks(busy=ticks.busy + 150, idle=ticks.idle + 50)) == 0.25
    assert math.isnan(idle_share(ticks, ticks))
    with pytest.raises(ValueError, match="cpu line"):
        parse_machine("cpu0 1 2 3 4 5 6 7 8")


# -- PostgreSQL's CPU over a window --
def test_postgres_cpu_counts_backends_that_came_and_went_through_the_postmaster() -> None:
    postmaster_before = stat(10, 50, child=1000)
    before = [
        postmaster_before,
        stat(11, 200, ppid=10),  # lives through the window: +30
        stat(12, 400, ppid=10),  # exits with 450 in all: +50, reaped into the postmaster
        stat(99, 5000, comm="python"),  # not PostgreSQL
    ]
    after = [
        stat(10, 52, child=1000 + 450 + 70),  # +2 own; reaped: 12 (450) and 14 (70)
        stat(11, 230, ppid=10),
        stat(13, 40, ppid=10, start=500),  # born in the window: +40
        stat(99, 9000, comm="python"),
    ]

    assert postgres_ticks(before, after) == 2 + 30 + 50 + 40 + 70


def test_a_reused_pid_is_a_new_process() -> None:
    before = [stat(10, 0), stat(11, 300, ppid=10, start=100)]
    after = [stat(10, 0, child=300), stat(11, 20, ppid=10, start=800)]  # old 11 exited at 300

    assert postgres_ticks(before, after) == 20
    assert ticks_of(before, after, [(11, 800)]) == 20


def test_ticks_of_named_processes_count_from_zero_when_born_in_the_window() -> None:
    before = [stat(5, 100, comm="python")]
    after = [stat(5, 160, comm="python"), stat(6, 30, comm="python", start=900)]

    assert ticks_of(before, after, [(5, 100), (6, 900), (7, 1)]) == 60 + 30


@pytest.mark.parametrize(
    ("title", "group"),
    [
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", "server"),
        ("postgres: 15/main: checkpointer", "server"),
        ("postgres: 15/main: walwriter", "server"),
        ("postgres: 15/main: postgres bench_db 127.0.0.1(4242) idle", "run"),
        ("postgres: 15/main: postgres other_db 127.0.0.1(4243) SELECT", "other"),
        ("postgres: 15/main: postgres bench_db_2 127.0.0.1(4244) idle", "other"),
        ("postgres: 15/main: autovacuum worker bench_db", "run"),
        ("postgres: 15/main: autovacuum worker other_db", "other"),
    ],
)
def test_processes_are_classified_by_their_title(title: str, group: str) -> None:
    assert classify(title, "bench_db") == group


def test_the_split_attributes_live_processes_to_the_run_the_server_or_others() -> None:
    before = [stat(1, 10), stat(2, 10, ppid=1), stat(3, 10, ppid=1)]
    after = [stat(1, 15), stat(2, 40, ppid=1), stat(3, 11, ppid=1), stat(4, 7, ppid=1, start=9)]
    titles = {
        1: "/usr/lib/postgresql/15/bin/postgres -D x",
        2: "postgres: 15/main: postgres mine 127.0.0.1(1) idle",
        3: "postgres: 15/main: postgres theirs 127.0.0.1(2) idle",
        4: "postgres: 15/main: postgres mine 127.0.0.1(3) idle",
    }

    assert postgres_split(before, after, titles, "mine") == {"run": 37, "server": 5, "other": 1}


# -- percentiles --
def test_the_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]

    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.07) == 7.0  # 0.07 * 100 is 7.000000000000001 in floats
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_a_percentile_outside_0_to_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], q)


# -- shares --
def test_shares_are_of_all_cores_over_the_wall_time_and_other_is_the_rest() -> None:
    use = CpuUse(postgres=4.0, postgres_run=3.0, nodes=8.0, loadgen=1.0, bench=1.0, idle_share=0.1)

    got = shares(use, cores=2, seconds=10.0)

    assert (got.postgres, got.postgres_run, got.nodes, got.loadgen) == (0.2, 0.15, 0.4, 0.05)
    assert got.idle == 0.1
    assert got.other == pytest.approx(1.0 - 0.1 - 0.7)


# -- the guard against a trivial pass --
def observed(**changes: object) -> Observed:
    base: dict[str, object] = {
        "sagas": 100,
        "warmup": 10,
        "statuses": {"201": 100},
        "instances": {"completed": 110},
        "finished_by_node": {"n1": 55, "n2": 55},
        "nodes": 2,
    }
    return Observed(**(base | changes))  # type: ignore[arg-type]


def test_a_clean_run_has_no_problems() -> None:
    assert problems(observed()) == []


def test_starts_that_errored_make_the_run_invalid() -> None:
    found = problems(
        observed(statuses={"201": 97, "503": 2, "0": 1}, load_errors=["start 3: HTTP 503"])
    )

    assert any("3 of 100 starts failed" in p and "HTTP 503" in p for p in found)
    assert any("97 starts answered 201" in p for p in found)


def test_a_run_where_no_saga_completed_is_invalid() -> None:
    found = problems(observed(instances={"running": 110}, finished_by_node={"n1": 0, "n2": 0}))

    assert "no saga completed" in found
    assert any("0 of 2 nodes completed sagas" in p for p in found)


@pytest.mark.parametrize(
    "changes",
    [
        {"instances": {"completed": 109, "running": 1}},  # one never ended
        {"instances": {"completed": 111}},  # a start was sent twice
        {"finished": False},
        {"finished_by_node": {"n1": 110, "n2": 0}},  # one node did nothing
        {"finished_by_node": {"n1": 110, "n2": -1}},  # its metrics could not be read
    ],
)
def test_a_run_short_of_what_was_asked_is_invalid(changes: dict[str, object]) -> None:
    assert problems(observed(**changes))


def test_the_exit_status_is_1_after_any_failure_or_without_any_run() -> None:
    run = a_run(1, 1, 100.0)

    assert exit_code([run], []) == 0
    assert exit_code([run], ["2 nodes, round 1: no saga completed"]) == 1
    assert exit_code([], []) == 1


def test_completed_sagas_are_read_from_a_nodes_metrics() -> None:
    text = "\n".join(
        [
            "# TYPE saga_instances_finished_total counter",
            'saga_instances_finished_total{saga_name="cluster-bench",status="completed"} 42.0',
            'saga_instances_finished_total{saga_name="cluster-bench",status="failed"} 3.0',
            'saga_instances_finished_total{saga_name="other",status="completed"} 7.0',
            'saga_instances_finished_created{saga_name="cluster-bench",status="completed"} 1.7e9',
        ]
    )

    assert completed_in_metrics(text, "cluster-bench") == 42
    assert completed_in_metrics("", "cluster-bench") == 0


# -- medians and tables --
SHARES = Shares(
    postgres=0.3, postgres_run=0.25, nodes=0.5, loadgen=0.05, bench=0.01, idle=0.04, other=0.1
)


def a_run(nodes: int, round_: int, rate: float) -> Run:
    return Run(
        nodes=nodes, round=round_, sagas=1000, seconds=1000 / rate, p50_ms=40.0, p99_ms=120.0,
        shares=SHARES,
    )  # fmt: skip


def test_vs_one_node_compares_within_a_round_and_the_summary_takes_medians() -> None:
    runs = [
        a_run(1, 1, 400.0), a_run(2, 1, 200.0),
        a_run(1, 2, 100.0), a_run(2, 2, 90.0),  # a noisy round: both slow
        a_run(1, 3, 300.0), a_run(2, 3, 240.0),
    ]  # fmt: skip

    ratios = vs_one_node(runs)
    summary = {s.nodes: s for s in summarize(runs)}

    assert ratios[("2", 1)] == 0.5
    assert ratios[("2", 2)] == pytest.approx(0.9)
    assert summary[1].sagas_per_s == pytest.approx(300.0)
    assert summary[2].sagas_per_s == pytest.approx(200.0)
    assert summary[2].vs_one == pytest.approx(0.8)  # median of 0.5, 0.9, 0.8
    assert summary[2].runs == 3
    assert summary[2].shares == SHARES


def test_without_a_1_node_run_there_is_no_ratio() -> None:
    (summary,) = summarize([a_run(2, 1, 200.0)])

    assert summary.vs_one is None


def squeeze(line: str) -> str:
    return " ".join(line.split())


def test_the_tables_show_every_column_aligned() -> None:
    runs = [a_run(1, 1, 400.0), a_run(3, 1, 380.0)]

    text = render_summary(summarize(runs)).splitlines()
    per_run = render_runs(runs).splitlines()

    assert squeeze(text[0]) == (
        "nodes sagas/s vs 1 node start p50/p99 ms PostgreSQL (run) nodes' CPU load gen other idle"
    )
    assert set(text[1]) == {"-"}
    assert squeeze(text[2]) == "1 400 1.00x 40 / 120 30% (25%) 50% 5% 10% 4%"
    assert text[3].split()[:3] == ["3", "380", "0.95x"]
    assert len({len(line) for line in text}) == 1
    assert per_run[0].split()[0] == "round"
    assert len({len(line) for line in per_run}) == 1


def test_the_markdown_table_keeps_its_columns_when_a_ratio_is_missing() -> None:
    lines = markdown(summarize([a_run(2, 1, 200.0)])).splitlines()

    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == 10
    assert "| 2 | 200 |  | 40 / 120 | 30% (25%) |" in lines[2]


# -- the run order --
def test_rounds_interleave_node_counts() -> None:
    order = [(r, s.label) for r, s in schedule([1, 2, 3], 3)]

    assert order == [
        (1, "1"), (1, "2"), (1, "3"), (2, "3"), (2, "2"), (2, "1"), (3, "1"), (3, "2"), (3, "3"),
    ]  # fmt: skip


def test_the_solo_reference_runs_first_in_odd_rounds_and_last_in_even_ones() -> None:
    order = [(r, s.label) for r, s in schedule([1, 2], 2, solo=True)]

    assert order == [(1, "1 solo"), (1, "1"), (1, "2"), (2, "2"), (2, "1"), (2, "1 solo")]


def test_the_solo_reference_is_compared_with_the_clustered_node_and_listed_first() -> None:
    solo = replace(a_run(1, 1, 500.0), cluster=False)
    runs = [a_run(1, 1, 400.0), a_run(2, 1, 300.0), solo]

    summaries = summarize(runs)
    text = render_runs(runs).splitlines()

    assert [s.label for s in summaries] == ["1 solo", "1", "2"]
    assert summaries[0].vs_one == pytest.approx(1.25)
    assert squeeze(text[2]).startswith("1 1 solo 500 1.25x")


def test_node_counts_are_a_comma_separated_list_of_positive_numbers() -> None:
    assert node_counts("1,2,3") == [1, 2, 3]
    with pytest.raises(argparse.ArgumentTypeError):
        node_counts("0,1")
    with pytest.raises(argparse.ArgumentTypeError):
        node_counts("")


def test_the_per_saga_table_gives_medians_and_the_hot_share() -> None:
    figures = {"node_cpu_ms_per_saga": 3.0, "postgres_run_cpu_ms_per_saga": 1.25}
    runs = [
        replace(a_run(1, r, 100.0), detail=figures | {"commits_per_saga": c,
                "instance_updates_per_saga": u, "instance_hot_share": h})
        for r, c, u, h in ((1, 6.0, 3.0, 0.1), (2, 5.0, 5.0, 0.3), (3, 7.0, 4.0, 0.2))
    ]  # fmt: skip

    lines = render_per_saga([*runs, a_run(2, 1, 50.0)]).splitlines()  # no figures: left out

    assert squeeze(lines[0]) == (
        "nodes nodes' CPU ms PostgreSQL (run) CPU ms commits instance row updates"
    )
    assert [squeeze(line) for line in lines[2:]] == ["1 3.00 1.25 6.0 4.0 (20% HOT)"]
    assert len({len(line) for line in lines}) == 1
