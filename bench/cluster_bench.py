"""Throughput of 1, 2 and 3 clustered ``saga serve`` nodes sharing one PostgreSQL database on
this machine, and who used the CPU meanwhile (issue 5: show scaling honestly).

    python bench/cluster_bench.py [--nodes 1,2,3] [--rounds 3] [--sagas 3000] [--solo]
        [--concurrency 64] [--warmup 300] [--client wire|httpx] [--pg URL] [--json out.json]
        [--markdown]

Figures and their reading: ``docs/scaling.md``.

Each run gets a fresh PostgreSQL database (created on the ``--pg`` server, dropped after) and
N node processes on it: ``saga serve --handlers cluster_bench_handlers`` with
``CLUSTER_ENABLED=true``, distinct ``NODE_ID`` and ports, a JWT key of the bench's run, and rate
limits (``RATE_LIMIT_REQUESTS``/``RATE_LIMIT_STARTS``) far above what is sent, so the limiter is
not what is measured. Once every node answers ``/ready``, the three-step saga of
``cluster_bench_handlers.py`` (no-op steps) is registered, ``--warmup`` untimed starts go
round-robin over the nodes and end, and then ``cluster_bench_load.py`` — a process of its own —
sends ``--sagas`` starts round-robin over the nodes, ``--concurrency`` in flight.

Measured per run:

- **sagas/s**: ``--sagas`` / (first start sent -> every saga seen terminal). The end is seen
  by polling ``count(*)`` of terminal instances with asyncpg every ``--poll`` seconds
  (directly in the database, not through a node).
- **start p50/p99**: the load generator's ``POST`` latency, send to whole answer (201).
- **CPU**, over the same window, as shares of the machine (cores x wall seconds):
  every PostgreSQL process of the server (``cluster_bench_cpu.py`` explains how backends that
  exit are still counted), in parentheses this run's database's backends plus the server's own
  processes; the N node processes; the load generator; **other** (the rest of the machine's
  busy time: other people's work on this shared box, steal, and this bench's own polling); and
  **idle** (``/proc/stat``).
- **per saga**: the nodes' and this run's PostgreSQL CPU over the window / ``--sagas`` (these
  depend far less on what else the machine runs than sagas/s does), and, over the whole run
  (read from ``pg_stat_database``/``pg_stat_user_tables`` once the nodes have exited), the
  database's commits and the updates of ``instances`` rows (with the share that were HOT).

Node counts are interleaved: round 1 runs them in the order given, round 2 in reverse, and so
on; the summary gives each count's medians, and ``vs 1 node`` is the median over rounds of
(N-node sagas/s / 1-node sagas/s of the same round). ``--solo`` adds, to every round, one node
with ``CLUSTER_ENABLED=false`` (shown as ``1 solo``): what clustering itself costs.

Checks (``cluster_bench_report.problems``), any failure of which leaves the run out of the
table and makes the exit status 1: every start answered 201, every instance (warm-up
included) ``completed`` and no more instances than starts, the sagas ended before progress
stalled for ``--stall`` seconds, and every node completed some of them (its ``/metrics``,
``saga_instances_finished_total``). A run with no valid row exits 1 too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

import cluster_bench_cpu as cpu
from cluster_bench_handlers import SAGA
from cluster_bench_load import LoadProcess, LoadReport, Order, drive
from cluster_bench_nodes import BenchFailure, Node, Setup, cluster, completed_by_node, register
from cluster_bench_report import (
    TERMINAL,
    CpuUse,
    Observed,
    Run,
    exit_code,
    markdown,
    percentile,
    problems,
    render_per_saga,
    render_runs,
    render_summary,
    shares,
    summarize,
)
from engine_bench import DEFAULT_PG, fresh_database, machine_facts
from saga_orchestrator.security.tokens import Role, generate_secret, mint_token

REPORT_TIMEOUT = 3600.0
"""Seconds the timed load may take (a start that gets no answer times out after 30 s)."""


# -- the database, read directly --
async def wait_terminal(
    conn: asyncpg.Connection[Any],
    expected: int,
    poll: float,
    stall: float,
    doomed: Callable[[], bool] = lambda: False,
) -> tuple[bool, float]:
    """Poll until ``expected`` instances are terminal: (all ended, when it was seen). Gives up
    after ``stall`` seconds without progress, or as soon as ``doomed()`` says they never will
    (a start failed)."""
    seen, progress_at = -1, time.monotonic()
    while True:
        done = int(await conn.fetchval(
            "SELECT count(*) FROM instances WHERE status = ANY($1::text[])", list(TERMINAL)
        ))  # fmt: skip
        now = time.monotonic()
        if done >= expected:
            return True, now
        if done != seen:
            seen, progress_at = done, now
        elif now - progress_at > stall or doomed():
            return False, now
        await asyncio.sleep(poll)


async def instance_statuses(conn: asyncpg.Connection[Any]) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) FROM instances GROUP BY status")
    return {row[0]: int(row[1]) for row in rows}


DATABASE_STATS = """
SELECT d.xact_commit, d.xact_rollback, t.n_tup_upd, t.n_tup_hot_upd
FROM pg_stat_database d, pg_stat_user_tables t
WHERE d.datname = current_database() AND t.relname = 'instances'
"""


async def database_stats(url: str) -> dict[str, float]:
    """The run's database's activity, whole run (warm-up, the bench's polls, ~20/s, too):
    transactions and updates of ``instances`` rows, HOT ones apart (an update that changes an
    indexed column is not HOT: it adds an entry to every index of the table)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(DATABASE_STATS)
    finally:
        await conn.close()
    if row is None:
        return dict.fromkeys(("commits", "rollbacks", "instance_updates", "hot_updates"), 0.0)
    return {
        "commits": float(row[0]),
        "rollbacks": float(row[1]),
        "instance_updates": float(row[2]),
        "hot_updates": float(row[3]),
    }


# -- one run --
@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The timed run: when it began and ended, the CPU used meanwhile, the load's report."""

    began: float
    ended: float
    finished: bool
    use: CpuUse
    report: LoadReport


def _failed(reporting: asyncio.Task[LoadReport]) -> bool:
    """Whether the load already reported a failed start (so not every saga will end)."""
    if not reporting.done():
        return False
    return reporting.exception() is not None or reporting.result().error_count > 0


async def timed(
    args: argparse.Namespace, nodes: list[Node], conn: asyncpg.Connection[Any], order: Order
) -> Window:
    """Start the load generator, read /proc, go, wait for every saga to end, read /proc."""
    database = str(await conn.fetchval("SELECT current_database()"))
    load = await LoadProcess.spawn(order)
    reporting: asyncio.Task[LoadReport] | None = None
    try:
        pids = [n.process.pid for n in nodes] + [load.pid]
        bench0 = time.process_time()
        before = cpu.snapshot(pids)
        began = time.monotonic()
        await load.go(began)
        reporting = asyncio.create_task(load.report(timeout=REPORT_TIMEOUT))
        expected = args.warmup + args.sagas
        finished, ended = await wait_terminal(
            conn, expected, args.poll, args.stall, lambda: _failed(reporting)
        )
        after = cpu.snapshot(pids)
        bench = time.process_time() - bench0
        report = await reporting
        await load.finish()
    finally:
        await load.kill()
        if reporting is not None and not reporting.done():
            reporting.cancel()
        if reporting is not None:
            await asyncio.gather(reporting, return_exceptions=True)  # retrieved either way
    hz = cpu.clock_ticks()
    keys = {p.pid: p.key for p in after.processes}
    node_keys = [keys[pid] for pid in pids[:-1] if pid in keys]
    load_keys = [keys[load.pid]] if load.pid in keys else []
    split = cpu.postgres_split(before.processes, after.processes, after.titles, database)
    use = CpuUse(
        postgres=cpu.postgres_ticks(before.processes, after.processes) / hz,
        postgres_run=(split["run"] + split["server"]) / hz,
        nodes=cpu.ticks_of(before.processes, after.processes, node_keys) / hz,
        loadgen=cpu.ticks_of(before.processes, after.processes, load_keys) / hz,
        bench=bench,
        idle_share=cpu.idle_share(before.machine, after.machine),
    )
    return Window(began=began, ended=ended, finished=finished, use=use, report=report)


async def measure(
    args: argparse.Namespace, nodes: list[Node], conn: asyncpg.Connection[Any], token: str
) -> tuple[Window, Observed, int]:
    """Warm up, then the timed run; the window, what the checks look at, the events stored."""
    warmup = Order(
        urls=[n.url for n in nodes], token=token, saga=SAGA, sagas=args.warmup,
        concurrency=args.concurrency, first=-args.warmup, client=args.client,
    )  # fmt: skip
    warm = await drive(warmup)
    ended, _ = await wait_terminal(conn, args.warmup, args.poll, args.stall)
    if warm.error_count or not ended:
        raise BenchFailure(f"warm-up: answers {warm.statuses}, ended {ended}, {warm.errors[:1]}")
    order = replace(warmup, sagas=args.sagas, first=0)
    window = await timed(args, nodes, conn, order)
    observed = Observed(
        sagas=args.sagas,
        warmup=args.warmup,
        statuses=window.report.statuses,
        load_errors=window.report.errors,
        instances=await instance_statuses(conn),
        finished_by_node=await completed_by_node(nodes, token),
        nodes=len(nodes),
        finished=window.finished,
    )
    return window, observed, int(await conn.fetchval("SELECT count(*) FROM events"))


async def one_run(args: argparse.Namespace, setup: Setup, round_: int, secret: str) -> Run:
    token = mint_token(
        secret, subject="cluster-bench", tenant_id="default", roles=[Role.ADMIN], ttl=6 * 3600
    )
    loadavg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="saga-cluster-bench-") as directory:
        async with fresh_database("postgres", f"cluster_{setup.nodes}", args.pg) as url:
            async with cluster(
                setup, url, secret, Path(directory), args.max_concurrent_sagas
            ) as nodes:
                await register(nodes[0], token)
                conn = await asyncpg.connect(url)
                try:
                    window, observed, events = await measure(args, nodes, conn, token)
                finally:
                    await conn.close()
            stats = await database_stats(url)  # the nodes' backends have exited: all flushed
    found = problems(observed)
    if found:
        raise BenchFailure("; ".join(found))
    seconds = window.ended - window.began
    latencies = window.report.latencies
    return Run(
        nodes=setup.nodes,
        cluster=setup.cluster,
        round=round_,
        sagas=args.sagas,
        seconds=seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        shares=shares(window.use, cores=os.cpu_count() or 1, seconds=seconds),
        detail={
            "cpu_seconds": asdict(window.use),
            "node_cpu_ms_per_saga": window.use.nodes / args.sagas * 1000,
            "postgres_run_cpu_ms_per_saga": window.use.postgres_run / args.sagas * 1000,
            "loadgen_cpu_ms_per_saga": window.use.loadgen / args.sagas * 1000,
            "completed_by_node": dict(observed.finished_by_node),
            "events_per_saga": events / (args.sagas + args.warmup),
            **{f"{k}_per_saga": v / (args.sagas + args.warmup) for k, v in stats.items()},
            "instance_hot_share": stats["hot_updates"] / max(stats["instance_updates"], 1),
            "loadgen_cpu_self_reported": window.report.cpu_seconds,
            "loadavg_1min_before": loadavg,
        },
    )


async def wait_for_server(pg: str, timeout: float = 120.0) -> None:
    """Until the PostgreSQL server accepts connections (other people's crash tests restart
    the shared server now and then; a run it interrupts fails, the next one waits here)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(pg)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
            continue
        await conn.close()
        return


# -- the rounds --
def schedule(counts: list[int], rounds: int, *, solo: bool = False) -> list[tuple[int, Setup]]:
    """(round, setup) in run order: the setups as given in odd rounds, reversed in even ones;
    with ``solo``, a 1-node run with clustering off comes first (odd rounds) or last."""
    setups = [Setup(nodes=1, cluster=False)] if solo else []
    setups += [Setup(nodes=n) for n in counts]
    return [(r, s) for r in range(1, rounds + 1) for s in (setups if r % 2 else setups[::-1])]


def progress(run: Run) -> str:
    s = run.shares
    return (
        f"  round {run.round}, {run.label} node(s): {run.sagas_per_s:,.0f} sagas/s, start p50 "
        f"{run.p50_ms:.0f} ms p99 {run.p99_ms:.0f} ms; CPU postgres {s.postgres:.0%} "
        f"nodes {s.nodes:.0%} load {s.loadgen:.0%} other {s.other:.0%} idle {s.idle:.0%}"
    )


async def main_async(args: argparse.Namespace) -> int:
    facts = await machine_facts(args.pg, True)
    facts.pop("dbos", None)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
    secret = generate_secret()
    runs: list[Run] = []
    failures: list[str] = []
    for round_, setup in schedule(args.nodes, args.rounds, solo=args.solo):
        try:
            await wait_for_server(args.pg)
            run = await one_run(args, setup, round_, secret)
        except (
            BenchFailure,
            RuntimeError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as error:
            failure = f"{setup.label} node(s), round {round_}: {type(error).__name__}: {error}"
            failures.append(failure)
            print(f"FAILED {failure}", file=sys.stderr, flush=True)
            continue
        runs.append(run)
        print(progress(run), flush=True)
    summaries = summarize(runs)
    print("\nEvery run:\n" + render_runs(runs))
    print("\nMedians:\n" + render_summary(summaries))
    print("\nPer saga (medians):\n" + render_per_saga(runs))
    print(
        f"\n{args.sagas} timed sagas per run after {args.warmup} warm-up, {args.concurrency} "
        f"starts in flight ({args.client} client), round-robin over the nodes. CPU shares are "
        f"of {os.cpu_count()} cores x the run's wall time; PostgreSQL = every postgres "
        "process of the server, (run) = this run's database's backends + the server's own "
        "processes; other = the rest of the machine's busy time (other work on the box, steal, "
        "this bench's polling). vs 1 node: median of per-round ratios."
    )
    if args.markdown:
        print("\n" + markdown(summaries))
    if args.json:
        payload = {
            "machine": facts,
            "setup": vars(args),
            "runs": [{**asdict(r), "sagas_per_s": r.sagas_per_s} for r in runs],
            "medians": [asdict(s) for s in summaries],
            "failures": failures,
        }
        text = json.dumps(payload, indent=2)
        await asyncio.to_thread(Path(args.json).write_text, text, encoding="utf-8")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    return exit_code(runs, failures)


def node_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("a comma-separated list of node counts >= 1")
    return counts


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parse.add_argument
    add("--nodes", type=node_counts, default=[1, 2, 3], help="node counts, e.g. 1,2,3")
    add("--rounds", type=positive, default=3, help="every node count this many times, interleaved")
    add("--sagas", type=positive, default=3000, help="timed starts per run")
    add("--concurrency", type=positive, default=64, help="starts in flight")
    add("--warmup", type=int, default=300, help="untimed starts per run, first")
    add("--solo", action="store_true", help="also 1 node with CLUSTER_ENABLED=false, per round")
    add("--client", choices=["wire", "httpx"], default="wire", help="the load's HTTP client")
    add("--max-concurrent-sagas", type=positive, default=1000, help="MAX_CONCURRENT_SAGAS per node")
    add("--poll", type=float, default=0.05, help="seconds between counts of ended sagas")
    add("--stall", type=float, default=60.0, help="give up after this long without progress")
    add("--pg", default=os.environ.get("SAGA_BENCH_PG", DEFAULT_PG), help="PostgreSQL server")
    add("--json", default=None, help="also write the results here")
    add("--markdown", action="store_true", help="also print the medians as Markdown")
    return parse


def main() -> None:
    args = parser().parse_args()
    try:
        sys.exit(asyncio.run(main_async(args)))
    except BenchFailure as failure:
        print(f"FAILED {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
