"""The pure parts of ``cluster_bench.py``: the checks that keep a broken run out of the table,
the shares of the machine's CPU, percentiles and medians, and the printed tables. Nothing here
does IO or reads a clock (tested in ``tests/unit/test_bench_cluster.py``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("completed", "compensated", "cancelled", "timed_out")
"""Statuses an instance never leaves (``failed`` may still be retried by an operator)."""


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``q`` of the values at or
    below it (NaN for no values)."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(round(q * len(ordered), 9))  # 0.07 * 100 is 7.000000000000001
    return ordered[max(rank, 1) - 1]


# -- the checks --
@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """What one run's checks look at."""

    sagas: int
    """Timed starts sent."""
    warmup: int
    statuses: Mapping[str, int]
    """The load generator's answers by status code (``"0"``: no answer)."""
    load_errors: Sequence[str] = ()
    instances: Mapping[str, int]
    """Instances in the database afterwards, by status (warm-up included)."""
    finished_by_node: Mapping[str, int] = field(default_factory=dict)
    """Sagas each node saw complete (its ``/metrics``), warm-up included."""
    nodes: int = 1
    finished: bool = True
    """False: the wait for every saga to end gave up."""


def problems(seen: Observed) -> list[str]:
    """Why the run's figures may not be printed; empty when the run is valid. Guards against
    a trivial pass: a run that measured errors, or nothing, is not a throughput."""
    found: list[str] = []
    answered = seen.statuses.get("201", 0)
    errors = sum(n for status, n in seen.statuses.items() if status != "201")
    if errors:
        first = f", first: {seen.load_errors[0]}" if seen.load_errors else ""
        found.append(f"{errors} of {seen.sagas} starts failed {dict(seen.statuses)}{first}")
    if answered != seen.sagas:
        found.append(f"{answered} starts answered 201 (expected {seen.sagas})")
    expected = seen.sagas + seen.warmup
    completed = seen.instances.get("completed", 0)
    if completed == 0:
        found.append("no saga completed")
    elif completed != expected or sum(seen.instances.values()) != expected:
        found.append(f"instances {dict(seen.instances)} (expected {expected} completed)")
    if not seen.finished:
        found.append("not every saga ended (progress stalled, or a start failed)")
    busy = [node for node, n in seen.finished_by_node.items() if n > 0]
    if len(busy) < seen.nodes:
        found.append(f"{len(busy)} of {seen.nodes} nodes completed sagas: {seen.finished_by_node}")
    return found


def completed_in_metrics(text: str, saga: str) -> int:
    """``saga_instances_finished_total{saga_name=saga, status="completed"}`` from a node's
    Prometheus exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name != "saga_instances_finished_total":
            continue
        labels, _, value = rest.rpartition("} ")
        if {f'saga_name="{saga}"', 'status="completed"'} <= set(labels.split(",")):
            total += float(value)
    return int(total)


def exit_code(runs: Sequence[Run], failures: Sequence[str]) -> int:
    """1 when any run failed or none was measured: a table of nothing is not a pass."""
    return 1 if failures or not runs else 0


# -- one run's figures --
@dataclass(frozen=True, slots=True, kw_only=True)
class CpuUse:
    """CPU seconds used during a run's window, by whom."""

    postgres: float
    """Every PostgreSQL process of the server (other people's backends too)."""
    postgres_run: float
    """This run's database's live backends and the server's own processes."""
    nodes: float
    loadgen: float
    bench: float
    """The bench's process: polling the database and reading ``/proc``."""
    idle_share: float
    """Unused share of all cores over the window, from ``/proc/stat``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Shares:
    """Shares of the machine's CPU over a run: of ``cores x wall seconds``."""

    postgres: float
    postgres_run: float
    nodes: float
    loadgen: float
    bench: float
    idle: float
    other: float
    """Everything else: other people's processes, steal, and measurement slack."""


def shares(use: CpuUse, *, cores: int, seconds: float) -> Shares:
    capacity = cores * seconds
    ours = use.postgres + use.nodes + use.loadgen + use.bench
    return Shares(
        postgres=use.postgres / capacity,
        postgres_run=use.postgres_run / capacity,
        nodes=use.nodes / capacity,
        loadgen=use.loadgen / capacity,
        bench=use.bench / capacity,
        idle=use.idle_share,
        other=1.0 - use.idle_share - ours / capacity,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    nodes: int
    round: int
    sagas: int
    seconds: float
    """First start sent to the last saga seen terminal."""
    p50_ms: float
    p99_ms: float
    shares: Shares
    cluster: bool = True
    """False: one node with ``CLUSTER_ENABLED=false`` (the ``--solo`` reference)."""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def sagas_per_s(self) -> float:
        return self.sagas / self.seconds

    @property
    def label(self) -> str:
        return label(self.nodes, self.cluster)


def label(nodes: int, cluster: bool) -> str:
    return str(nodes) if cluster else f"{nodes} solo"


# -- medians --
@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    nodes: int
    runs: int
    sagas_per_s: float
    vs_one: float | None
    """Median over rounds of this count's sagas/s over the 1-node run of the same round."""
    p50_ms: float
    p99_ms: float
    shares: Shares
    cluster: bool = True

    @property
    def label(self) -> str:
        return label(self.nodes, self.cluster)


def vs_one_node(runs: Sequence[Run]) -> dict[tuple[str, int], float]:
    """(label, round) -> sagas/s over the clustered 1-node run of the same round."""
    one = {r.round: r.sagas_per_s for r in runs if r.nodes == 1 and r.cluster}
    return {(r.label, r.round): r.sagas_per_s / one[r.round] for r in runs if r.round in one}


def summarize(runs: Sequence[Run]) -> list[Summary]:
    """Medians per setup: the solo reference first, then by node count."""
    ratios = vs_one_node(runs)
    out = []
    for cluster, count in sorted({(r.cluster, r.nodes) for r in runs}):
        mine = [r for r in runs if (r.cluster, r.nodes) == (cluster, count)]
        mine_ratios = [v for (name, _), v in ratios.items() if name == label(count, cluster)]
        out.append(
            Summary(
                nodes=count,
                cluster=cluster,
                runs=len(mine),
                sagas_per_s=statistics.median(r.sagas_per_s for r in mine),
                vs_one=statistics.median(mine_ratios) if mine_ratios else None,
                p50_ms=statistics.median(r.p50_ms for r in mine),
                p99_ms=statistics.median(r.p99_ms for r in mine),
                shares=Shares(
                    **{
                        name: statistics.median(getattr(r.shares, name) for r in mine)
                        for name in Shares.__dataclass_fields__
                    }
                ),
            )
        )
    return out


# -- tables --
COLUMNS = (
    ("nodes", 6),
    ("sagas/s", 8),
    ("vs 1 node", 9),
    ("start p50/p99 ms", 16),
    ("PostgreSQL (run)", 16),
    ("nodes' CPU", 10),
    ("load gen", 8),
    ("other", 6),
    ("idle", 5),
)
"""Column names and widths; shares are of the machine's CPU (cores x wall time)."""


def percent(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{share * 100:.0f}%"


def cells(row: Run | Summary, ratio: float | None) -> tuple[str, ...]:
    s = row.shares
    return (
        row.label,
        f"{row.sagas_per_s:,.0f}",
        "" if ratio is None else f"{ratio:.2f}x",
        f"{row.p50_ms:,.0f} / {row.p99_ms:,.0f}",
        f"{percent(s.postgres)} ({percent(s.postgres_run)})",
        percent(s.nodes),
        percent(s.loadgen),
        percent(s.other),
        percent(s.idle),
    )


def table(rows: Sequence[tuple[str, ...]], columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    def line(values: Iterable[str]) -> str:
        return "  ".join(v.rjust(width) for v, (_, width) in zip(values, columns, strict=True))

    head = line(name for name, _ in columns)
    return "\n".join([head, "-" * len(head), *(line(row) for row in rows)])


def render_runs(runs: Sequence[Run]) -> str:
    ratios = vs_one_node(runs)
    rows = [
        (str(r.round), *cells(r, ratios.get((r.label, r.round))))
        for r in sorted(runs, key=lambda r: (r.round, r.cluster, r.nodes))
    ]
    return table(rows, (("round", 5), *COLUMNS))


def summary_rows(summaries: Sequence[Summary]) -> list[tuple[str, ...]]:
    return [cells(s, s.vs_one) for s in summaries]


def render_summary(summaries: Sequence[Summary]) -> str:
    return table(summary_rows(summaries))


def markdown(summaries: Sequence[Summary]) -> str:
    """The medians as a Markdown table, for ``docs/scaling.md``."""
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + " ---: |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(summaries)]
    return "\n".join(lines)


PER_SAGA_COLUMNS = (
    ("nodes", 6),
    ("nodes' CPU ms", 13),
    ("PostgreSQL (run) CPU ms", 23),
    ("commits", 7),
    ("instance row updates", 20),
)
PER_SAGA_FIGURES = (
    "node_cpu_ms_per_saga",
    "postgres_run_cpu_ms_per_saga",
    "commits_per_saga",
    "instance_updates_per_saga",
    "instance_hot_share",
)
"""Keys of ``Run.detail`` that :func:`render_per_saga` reads."""


def render_per_saga(runs: Sequence[Run]) -> str:
    """Per setup, medians of what one saga cost: CPU of the nodes and of this run's database
    (timed window), database commits and updates of its ``instances`` row, with the share of
    those that were HOT (whole run). Unlike sagas/s, these hardly depend on how much of the
    machine other work left to the run."""
    rows = []
    for cluster, count in sorted({(r.cluster, r.nodes) for r in runs}):
        mine = [r.detail for r in runs if (r.cluster, r.nodes) == (cluster, count)]
        if not all(name in d for d in mine for name in PER_SAGA_FIGURES):
            continue
        node, pg, commits, updates, hot = (
            statistics.median(d[name] for d in mine) for name in PER_SAGA_FIGURES
        )
        rows.append(
            (label(count, cluster), f"{node:.2f}", f"{pg:.2f}", f"{commits:.1f}",
             f"{updates:.1f} ({percent(hot)} HOT)")
        )  # fmt: skip
    return table(rows, PER_SAGA_COLUMNS)
