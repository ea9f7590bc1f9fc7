"""Engine throughput: three-step sagas per second, embedded (SQLite) and on PostgreSQL, beside
DBOS Transact running the same saga on the same kind of database in the same run.

    python bench/engine_bench.py [--sagas 10000] [--backend sqlite|postgres|both]
                                 [--peer/--no-peer] [--peer-sagas 1000] [--json out.json]
    python bench/engine_bench.py --profile 3000 [--profiler cprofile|pyinstrument]

Rows with concurrency 1 (``--latency-sagas``) run scenario A one saga at a time: latency
without queueing. DBOS runs fewer sagas (``--peer-sagas``, ``--peer-sagas-sqlite``): it is
slow enough that 10,000 would take minutes; throughput is per second either way.

Scenario A: reserve -> charge -> ship, no-op async handlers, every saga completes.
Scenario B: the same, ship raises NonRetryableStepError: refund and release run, every saga
ends ``compensated``.

Each (backend, scenario) gets a fresh database: a SQLite file in a temporary directory, or a
PostgreSQL database the script creates and drops. A client of ``--concurrency`` tasks (1,000 by
default) each loops ``start`` + ``wait``; the throughput is wall time from the first start to
the last terminal state. Afterwards every saga's terminal state, the handler calls and the
stored events are checked: any mismatch fails the run (exit 1) instead of printing a number.

Dispatch latency is measured in the handlers: from the previous step's handler returning to the
next step's handler being invoked for the same instance (``time.perf_counter``), compensations
included. The writer's ``batches``/``requests`` give the mean group-commit size.

DBOS runs in a subprocess (``bench/dbos_peer.py``) because it keeps global state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import asyncpg

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.errors import NonRetryableStepError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.transports.handlers import StepContext, handler

HERE = Path(__file__).resolve().parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SCENARIOS = ("A", "B")

DEFINITION: dict[str, Any] = {
    "name": "bench-order",
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "bench.reserve", "compensation": "bench.release"},
        {"name": "charge", "action": "bench.charge", "compensation": "bench.refund"},
        {"name": "ship", "action": "bench.ship", "compensation": "bench.cancel"},
    ],
}
EXPECTED: dict[str, tuple[InstanceStatus, dict[str, int]]] = {
    "A": (InstanceStatus.COMPLETED, {"reserve": 1, "charge": 1, "ship": 1}),
    "B": (
        InstanceStatus.COMPENSATED,
        {"reserve": 1, "charge": 1, "ship": 1, "refund": 1, "release": 1},
    ),
}


class BenchFailure(Exception):
    """A run did not reach the expected outcome: no figure may be printed for it."""


# -- handlers: no-ops that timestamp the gap between consecutive steps of one instance --
class Probe:
    def __init__(self) -> None:
        self.fail_ship = False
        self.last_return: dict[str, float] = {}
        self.latencies: list[float] = []
        self.calls: Counter[str] = Counter()

    def reset(self, *, fail_ship: bool) -> None:
        self.fail_ship = fail_ship
        self.last_return.clear()
        self.latencies.clear()
        self.calls.clear()

    def enter(self, ctx: StepContext, name: str) -> None:
        now = time.perf_counter()
        previous = self.last_return.get(ctx.instance_id)
        if previous is not None:
            self.latencies.append(now - previous)
        self.calls[name] += 1

    def leave(self, ctx: StepContext) -> None:
        self.last_return[ctx.instance_id] = time.perf_counter()


PROBE = Probe()


@handler("bench.reserve")
async def reserve(ctx: StepContext) -> dict[str, str]:
    PROBE.enter(ctx, "reserve")
    PROBE.leave(ctx)
    return {"reservation": "r-1"}


@handler("bench.charge")
async def charge(ctx: StepContext) -> dict[str, str]:
    PROBE.enter(ctx, "charge")
    PROBE.leave(ctx)
    return {"payment": "p-1"}


@handler("bench.ship")
async def ship(ctx: StepContext) -> dict[str, str]:
    PROBE.enter(ctx, "ship")
    PROBE.leave(ctx)
    if PROBE.fail_ship:
        raise NonRetryableStepError("no carrier", error_type="NoCarrier")
    return {"tracking": "t-1"}


@handler("bench.release")
async def release(ctx: StepContext) -> None:
    PROBE.enter(ctx, "release")
    PROBE.leave(ctx)


@handler("bench.refund")
async def refund(ctx: StepContext) -> None:
    PROBE.enter(ctx, "refund")
    PROBE.leave(ctx)


@handler("bench.cancel")
async def cancel(ctx: StepContext) -> None:
    PROBE.enter(ctx, "cancel")
    PROBE.leave(ctx)


HANDLERS = [reserve, charge, ship, release, refund, cancel]


# -- results --
@dataclass(slots=True, kw_only=True)
class Result:
    backend: str
    scenario: str
    system: str
    concurrency: int
    sagas: int
    elapsed: float
    sagas_per_s: float
    events: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None = None
    batches: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- databases --
@contextlib.asynccontextmanager
async def fresh_database(backend: str, label: str, pg_admin: str) -> AsyncIterator[str]:
    """A URL to an empty database, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="saga-bench-") as directory:
            yield f"sqlite:///{directory}/{label}.db"
        return
    name = f"saga_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}".lower()
    admin = await asyncpg.connect(pg_admin)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield pg_admin.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(pg_admin)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def count_events(url: str) -> int:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


# -- our engine --
@dataclass(slots=True)
class CpuClock:
    """CPU seconds spent since it was made: by the whole process (the SQLite store's thread
    included) and by the calling thread alone (the event loop). On a shared machine these vary
    far less than wall time, so A/B comparisons use them."""

    process0: float = field(default_factory=time.process_time)
    thread0: float = field(default_factory=time.thread_time)

    def spent(self) -> tuple[float, float]:
        return time.process_time() - self.process0, time.thread_time() - self.thread0


async def drive(
    saga: Orchestrator, count: int, concurrency: int, first: int = 0
) -> tuple[float, Counter[InstanceStatus], int, list[str]]:
    """``count`` start+wait loops over ``concurrency`` client tasks; (seconds, statuses,
    events the views report, errors)."""
    statuses: Counter[InstanceStatus] = Counter()
    errors: list[str] = []
    events = 0
    numbers = iter(range(first, first + count))

    async def client() -> None:
        nonlocal events
        for number in numbers:
            try:
                started = await saga.start("bench-order", {"order": number})
                view = await saga.wait(started.instance_id, timeout=120)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            statuses[view.status] += 1
            events += view.events

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, count))))
    return time.perf_counter() - began, statuses, events, errors


async def run_ours(
    backend: str,
    scenario: str,
    *,
    sagas: int,
    concurrency: int,
    warmup: int,
    pg_admin: str,
    tune_gc: bool,
) -> Result:
    expected_status, expected_calls = EXPECTED[scenario]
    async with fresh_database(backend, f"ours_{scenario}", pg_admin) as url:
        async with Orchestrator(
            url, handlers=HANDLERS, max_concurrent_sagas=1000, tune_gc=tune_gc
        ) as saga:
            await saga.register(DEFINITION)
            PROBE.reset(fail_ship=scenario == "B")
            if warmup:
                _, warm, _, warm_errors = await drive(saga, warmup, concurrency, first=-warmup)
                if warm_errors or warm[expected_status] != warmup:
                    raise BenchFailure(f"ours/{backend}/{scenario} warm-up: {warm} {warm_errors}")
            before = await count_events(url)
            writer = saga.engine.writer
            batches0, requests0 = writer.batches, writer.requests
            PROBE.reset(fail_ship=scenario == "B")
            cpu = CpuClock()
            elapsed, statuses, view_events, errors = await drive(saga, sagas, concurrency)
            process_cpu, loop_cpu = cpu.spent()
            batches = writer.batches - batches0
            requests = writer.requests - requests0
            latencies = list(PROBE.latencies)
            calls = dict(PROBE.calls)
            live = saga.engine.live_instances
        events = await count_events(url) - before
    label = f"ours/{backend}/scenario {scenario}"
    problems = []
    if errors:
        problems.append(f"{len(errors)} client errors, first: {errors[0]}")
    if statuses[expected_status] != sagas:
        problems.append(f"terminal states {dict(statuses)} (expected {sagas} {expected_status})")
    wanted_calls = {name: n * sagas for name, n in expected_calls.items()}
    if calls != wanted_calls:
        problems.append(f"handler calls {calls} (expected {wanted_calls})")
    if events != view_events or events < sagas * (len(expected_calls) + 1):
        problems.append(f"{events} events stored, the views report {view_events}")
    if problems:
        raise BenchFailure(f"{label}: " + "; ".join(problems))
    return Result(
        backend=backend,
        scenario=scenario,
        system="ours",
        concurrency=concurrency,
        sagas=sagas,
        elapsed=elapsed,
        sagas_per_s=sagas / elapsed,
        events=events,
        events_per_s=events / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_batch=requests / batches if batches else None,
        batches=batches,
        detail={
            "events_per_saga": events / sagas,
            "requests": requests,
            "latency_samples": len(latencies),
            "live_after": live,
            "cpu_us_per_saga": round(process_cpu / sagas * 1e6),
            "loop_cpu_us_per_saga": round(loop_cpu / sagas * 1e6),
            "loadavg_1m": os.getloadavg()[0],
        },
    )


# -- the DBOS peer --
async def run_peer(
    backend: str,
    scenario: str,
    args: argparse.Namespace,
    *,
    sagas: int,
    concurrency: int,
    pg_admin: str,
) -> Result:
    async with fresh_database(backend, f"dbos_{scenario}", pg_admin) as ours_url:
        url = ours_url.removesuffix(".db") + ".sqlite" if backend == "sqlite" else ours_url
        with tempfile.TemporaryDirectory(prefix="saga-bench-dbos-") as directory:
            out = Path(directory) / "result.json"
            command = [
                sys.executable,
                str(HERE / "dbos_peer.py"),
                f"--url={url}",
                f"--sagas={sagas}",
                f"--scenario={scenario}",
                f"--mode={args.peer_mode}",
                f"--concurrency={concurrency}",
                f"--pool-size={args.peer_pool}",
                f"--warmup={min(100, max(sagas // 10, 1))}",
                f"--json={out}",
            ]
            completed = await asyncio.to_thread(
                subprocess.run, command, capture_output=True, text=True, timeout=900, check=False
            )
            if not out.exists():
                raise BenchFailure(
                    f"dbos/{backend}/{scenario}: peer exited {completed.returncode}: "
                    f"{completed.stderr[-2000:]}"
                )
            report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    if not report["ok"] or completed.returncode != 0:
        raise BenchFailure(f"dbos/{backend}/{scenario}: outcomes {report['outcomes']}")
    return Result(
        backend=backend,
        scenario=scenario,
        system="dbos",
        concurrency=concurrency,
        sagas=sagas,
        elapsed=report["elapsed"],
        sagas_per_s=report["sagas_per_s"],
        events=report["records"],
        events_per_s=report["records"] / report["elapsed"],
        p50_ms=report["p50_ms"],
        p99_ms=report["p99_ms"],
        detail={
            key: report[key]
            for key in ("mode", "concurrency", "pool_size", "rows", "calls", "sqlite_journal")
        },
    )


# -- profile --
async def sample_ours(
    backend: str,
    sagas: int,
    *,
    concurrency: int,
    out: Path,
    top: int,
    pg_admin: str,
    tune_gc: bool,
) -> int:
    """SQLite scenario A under pyinstrument (sampling, event-loop thread only): less distorted
    than cProfile for many cheap calls. Prints the call tree and writes an HTML report."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    async with (
        fresh_database(backend, "sample", pg_admin) as url,
        Orchestrator(url, handlers=HANDLERS, max_concurrent_sagas=1000, tune_gc=tune_gc) as saga,
    ):
        await saga.register(DEFINITION)
        PROBE.reset(fail_ship=False)
        await drive(saga, 200, concurrency, first=-200)
        profiler.start()
        elapsed, statuses, _, errors = await drive(saga, sagas, concurrency)
        profiler.stop()
    if errors or statuses[InstanceStatus.COMPLETED] != sagas:
        raise BenchFailure(f"profile run: {dict(statuses)} {errors[:1]}")
    print(f"sampled {sagas} sagas ({backend}, scenario A): {sagas / elapsed:.0f} sagas/s")
    print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
    path = out.with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profiler.output_html(), encoding="utf-8")
    print(f"HTML report: {path}")
    root = profiler.last_session.root_frame() if profiler.last_session else None
    if root is not None:
        print_inclusive(root, top)
    return 0


def print_inclusive(root: Any, top: int) -> None:
    """Our functions by inclusive sampled time (each function counted once per stack)."""
    totals: dict[tuple[str, str, int], float] = {}
    pending: list[tuple[Any, frozenset[tuple[str, str, int]]]] = [(root, frozenset())]
    while pending:
        frame, above = pending.pop()
        key = (str(frame.function), str(frame.file_path or ""), int(frame.line_no or 0))
        if key not in above:
            totals[key] = totals.get(key, 0.0) + float(frame.time)
        pending.extend((child, above | {key}) for child in frame.children)
    total = float(root.time) or 1.0
    print(f"top {top} of our functions by inclusive time (% of {total:.2f}s sampled):")
    ours = [(k, v) for k, v in totals.items() if "saga_orchestrator" in k[1]]
    for (function, filename, line), seconds in sorted(ours, key=lambda kv: -kv[1])[:top]:
        where = filename.split("saga_orchestrator/", 1)[-1]
        print(f"  {seconds / total * 100:5.1f}%  {function:<28} {where}:{line}")


async def profile_ours(
    backend: str,
    sagas: int,
    *,
    concurrency: int,
    out: Path,
    top: int,
    pg_admin: str,
    tune_gc: bool,
) -> int:
    """SQLite scenario A under cProfile: the event-loop thread, and the SQLite store's own
    thread when it has one (profilers are per thread). Prints our hotspots by cumulative and
    by self time as a share of each thread's profiled time."""
    import cProfile
    import pstats
    from concurrent.futures import ThreadPoolExecutor

    main_profile = cProfile.Profile()
    store_profile = cProfile.Profile()
    threaded = False
    async with (
        fresh_database(backend, "profile", pg_admin) as url,
        Orchestrator(url, handlers=HANDLERS, max_concurrent_sagas=1000, tune_gc=tune_gc) as saga,
    ):
        await saga.register(DEFINITION)
        PROBE.reset(fail_ship=False)
        await drive(saga, 200, concurrency, first=-200)
        # Reaching into the store for its thread is fine for a profiler, not for the engine.
        executor = getattr(saga.store, "_executor", None)
        if isinstance(executor, ThreadPoolExecutor):
            threaded = True
            await asyncio.wrap_future(executor.submit(store_profile.enable))
        main_profile.enable()
        elapsed, statuses, _, errors = await drive(saga, sagas, concurrency)
        main_profile.disable()
        if isinstance(executor, ThreadPoolExecutor):
            await asyncio.wrap_future(executor.submit(store_profile.disable))
    if errors or statuses[InstanceStatus.COMPLETED] != sagas:
        raise BenchFailure(f"profile run: {dict(statuses)} {errors[:1]}")
    print(
        f"profiled {sagas} sagas ({backend}, scenario A): "
        f"{sagas / elapsed:.0f} sagas/s under cProfile"
    )
    threads = [("event loop thread", main_profile, "main")]
    if threaded:
        threads.append(("SQLite store thread", store_profile, "store"))
    for title, profile, suffix in threads:
        path = out.with_name(f"{out.stem}-{suffix}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(path))
        stats: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        total = sum(entry[2] for entry in stats.values()) or 1.0
        ours = [
            (key, entry)
            for key, entry in stats.items()
            if "saga_orchestrator" in key[0] and "/bench/" not in key[0]
        ]
        print(f"\n{title}: {total:.2f}s profiled, written to {path}")
        for label, index in (("cumulative", 3), ("self", 2)):
            print(f"  top {top} of our functions by {label} time (% of the thread's time):")
            ranked = sorted(ours, key=lambda item: item[1][index], reverse=True)[:top]
            for (filename, line, function), entry in ranked:
                where = filename.split("saga_orchestrator/", 1)[-1]
                print(
                    f"    {entry[index] / total * 100:5.1f}%  {function:<28} "
                    f"{where}:{line}  ({entry[1]} calls)"
                )
        everything = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
        print(f"  top {top} of all functions by self time:")
        for (filename, line, function), entry in everything:
            where = filename.rsplit("site-packages/", 1)[-1].split("/src/", 1)[-1]
            print(f"    {entry[2] / total * 100:5.1f}%  {function:<28} {where}:{line}")
    return 0


# -- machine facts and the table --
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_json(path: str, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")


async def machine_facts(pg_admin: str, with_pg: bool) -> dict[str, str]:
    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    facts = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "loadavg": " ".join(os.getloadavg().__repr__().strip("()").split(", ")),
        "python": platform.python_version(),
        "saga_orchestrator": package("saga-orchestrator"),
        "dbos": package("dbos"),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": "not used",
    }
    if with_pg:
        conn = await asyncpg.connect(pg_admin)
        try:
            facts["postgresql"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    return facts


def render(results: list[Result]) -> str:
    dbos = {(r.backend, r.scenario, r.concurrency > 1): r for r in results if r.system == "dbos"}
    header = (
        f"{'backend':<9} {'scen':<4} {'system':<6} {'conc':>5} {'sagas':>6} {'sagas/s':>9} "
        f"{'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'ours/DBOS':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        peer = dbos.get((r.backend, r.scenario, r.concurrency > 1))
        ratio = (
            f"{r.sagas_per_s / peer.sagas_per_s:>8.1f}x"
            if r.system == "ours" and peer is not None
            else ""
        )
        batch = f"{r.mean_batch:6.1f}" if r.mean_batch is not None else f"{'':6}"
        lines.append(
            f"{r.backend:<9} {r.scenario:<4} {r.system:<6} {r.concurrency:>5} {r.sagas:>6} "
            f"{r.sagas_per_s:>9.0f} "
            f"{r.events_per_s:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {batch} {ratio:>9}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    facts = await machine_facts(args.pg, "postgres" in backends)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
    results: list[Result] = []
    failures: list[str] = []
    steps: list[tuple[str, str, str, Callable[[], Any]]] = []
    for backend in backends:
        runs = [(scenario, False) for scenario in args.scenarios]
        if args.latency_sagas:
            runs.append(("A", True))
        for scenario, unloaded in runs:

            def ours(b: str = backend, s: str = scenario, one: bool = unloaded) -> Any:
                return run_ours(
                    b,
                    s,
                    sagas=args.latency_sagas if one else args.sagas,
                    concurrency=1 if one else args.concurrency,
                    warmup=min(args.warmup, 20) if one else args.warmup,
                    pg_admin=args.pg,
                    tune_gc=args.gc_tuning,
                )

            def peer(b: str = backend, s: str = scenario, one: bool = unloaded) -> Any:
                n = (args.peer_sagas_sqlite if b == "sqlite" else args.peer_sagas) or args.sagas
                return run_peer(
                    b,
                    s,
                    args,
                    sagas=args.latency_sagas if one else n,
                    concurrency=1 if one else args.peer_concurrency,
                    pg_admin=args.pg,
                )

            steps.append((backend, scenario, "ours", ours))
            if args.peer:
                steps.append((backend, scenario, "dbos", peer))
    for backend, scenario, system, make in steps:
        began = time.perf_counter()
        try:
            result: Result = await make()
        except BenchFailure as failure:
            failures.append(str(failure))
            print(f"FAILED {system}/{backend}/{scenario}: {failure}", file=sys.stderr, flush=True)
            continue
        results.append(result)
        print(
            f"  {system}/{backend}/{scenario} x{result.concurrency}: {result.sagas} sagas, "
            f"{result.sagas_per_s:.0f}/s "
            f"({time.perf_counter() - began:.1f}s incl. setup) {result.detail}",
            flush=True,
        )
    print()
    print(render(results))
    print(
        "\nsagas/s: wall time from the first start to the last terminal state, "
        "client concurrency "
        f"{args.concurrency} (DBOS: {args.peer_mode}, concurrency {args.peer_concurrency}, "
        f"pool {args.peer_pool}); conc 1 rows: one saga at a time (unloaded latency). "
        "events/s: ours = stored events; DBOS = workflow_status + operation_outputs rows. "
        "p50/p99: step dispatch latency. batch: mean group-commit size."
    )
    if args.json:
        write_json(
            args.json,
            {"machine": facts, "results": [asdict(r) for r in results], "failures": failures},
        )
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--peer-sagas", type=int, default=1000, help="DBOS sagas on PostgreSQL (0: --sagas)"
    )
    parser.add_argument(
        "--peer-sagas-sqlite", type=int, default=500, help="DBOS sagas on SQLite (0: --sagas)"
    )
    parser.add_argument("--peer-mode", choices=["async", "threads"], default="threads")
    parser.add_argument("--peer-concurrency", type=int, default=32)
    parser.add_argument("--peer-pool", type=int, default=32, help="DBOS sys_db_pool_size")
    parser.add_argument("--concurrency", type=int, default=1000, help="client tasks in flight")
    parser.add_argument(
        "--scenarios",
        type=lambda value: [s for s in value.upper().split(",") if s],
        default=list(SCENARIOS),
        help="which scenarios to run, e.g. A or A,B (default: A,B)",
    )
    parser.add_argument(
        "--latency-sagas",
        type=int,
        default=200,
        help="also run scenario A one saga at a time with this many sagas (0: skip)",
    )
    parser.add_argument("--warmup", type=int, default=200, help="untimed sagas first")
    parser.add_argument("--pg", default=os.environ.get("SAGA_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of the benchmark, profile N scenario-A sagas (SQLite unless --backend "
        "postgres) with --profiler",
    )
    parser.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    parser.add_argument(
        "--profile-out",
        default=str(Path(tempfile.gettempdir()) / "engine_bench.prof"),
        help="where profiles go: <stem>-main.prof, <stem>-store.prof or <stem>.html",
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--gc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tune the garbage collector as `saga serve` does (Orchestrator(tune_gc=True))",
    )
    args = parser.parse_args()
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: choose from {','.join(SCENARIOS)}")
    if args.profile:
        out = Path(args.profile_out)
        backend = "postgres" if args.backend == "postgres" else "sqlite"
        work = sample_ours if args.profiler == "pyinstrument" else profile_ours
        sys.exit(
            asyncio.run(
                work(
                    backend,
                    args.profile,
                    concurrency=args.concurrency,
                    out=out,
                    top=args.top,
                    pg_admin=args.pg,
                    tune_gc=args.gc_tuning,
                )
            )
        )
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
