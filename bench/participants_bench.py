"""HTTP participant steps against in-process handlers: the same three-step saga, on SQLite and
PostgreSQL, with no-op handlers and then with HTTP steps to a local no-op participant.

    python bench/participants_bench.py [--sagas 3000] [--concurrency 500]
                                       [--backend sqlite|postgres|both] [--repeat 2]
                                       [--scenario A|B|both] [--json out.json]
    python bench/participants_bench.py --profile [--sagas 3000] [--backend postgres]

Issue bar: with a local no-op participant, three-step HTTP sagas reach at least half the
throughput of in-process handlers (``http/inproc`` >= 0.5).

The participant (``bench/noop_participant.py``) runs as a separate process, so it has a core of
its own as a real one would. Each row gets a fresh database (``engine_bench.fresh_database``),
warms up with ``--warmup`` untimed sagas, then ``--concurrency`` client tasks each loop
``start`` + ``wait`` (``engine_bench.drive``) until ``--sagas`` sagas are done.

Scenario A: reserve -> charge -> ship, every saga completes. Scenario B: ship fails definitely
(a ``NonRetryableStepError`` in process, a 400 from ``/fail/ship`` over HTTP), charge and
reserve are compensated, every saga ends ``compensated``.

Latency comes from the stored events, identically for both transports: a step's round trip
is its ``AttemptScheduled.at`` (the decision that scheduled it, before its commit) to its
``AttemptSucceeded.at`` (the outcome being applied): the durable commit of the schedule, the
dispatch, the call and the wait for the instance's lock. ``call`` is the transport's ``call``
alone, timed around it with ``time.perf_counter``.

Checks, any failure of which exits 1 instead of printing the row: every saga reached the
expected state, no attempt failed unexpectedly (no retries), the stored events are what the
views report, and the participant counted exactly the expected requests (3 x N in scenario A)
per route, read from its ``/stats`` before and after the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from engine_bench import (
    DEFINITION,
    EXPECTED,
    HANDLERS,
    PROBE,
    BenchFailure,
    count_events,
    drive,
    fresh_database,
    machine_facts,
    percentile,
    write_json,
)
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.orchestrator import Orchestrator

HERE = Path(__file__).resolve().parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICE = "shop"
TRANSPORTS = ("inproc", "http")
LIBRARIES = ("saga_orchestrator", "httpx", "httpcore", "h11", "anyio", "asyncpg", "asyncio")


def http_definition(scenario: str) -> dict[str, Any]:
    """``engine_bench.DEFINITION`` with every handler replaced by an HTTP call to ``shop``."""

    def step(name: str, path: str) -> dict[str, Any]:
        return {
            "name": name,
            "action": {"http": {"service": SERVICE, "path": path}},
            "compensation": {"http": {"service": SERVICE, "method": "DELETE", "path": path}},
        }

    ship = "/fail/ship" if scenario == "B" else "/ship"
    steps = [step("reserve", "/reserve"), step("charge", "/charge"), step("ship", ship)]
    return {**DEFINITION, "steps": steps}


def expected_routes(scenario: str, sagas: int) -> dict[str, int]:
    routes = ["POST /reserve", "POST /charge", "POST /ship"]
    if scenario == "B":
        routes = ["POST /reserve", "POST /charge", "POST /fail/ship"]
        routes += ["DELETE /charge", "DELETE /reserve"]
    return dict.fromkeys(routes, sagas)


def participant_config(port: int, max_concurrency: int) -> dict[str, Any]:
    return {
        "base_url": f"http://127.0.0.1:{port}",
        "allow_private_network": True,
        "max_concurrency": max_concurrency,
        "circuit_breaker": {"enabled": False},
    }


# -- the participant process --
@dataclass(slots=True, kw_only=True)
class Participant:
    process: asyncio.subprocess.Process
    port: int
    client: httpx.AsyncClient

    async def routes(self) -> Counter[str]:
        answer = await self.client.get(f"http://127.0.0.1:{self.port}/stats")
        answer.raise_for_status()
        return Counter(answer.json()["routes"])

    def cpu_seconds(self) -> float:
        return process_cpu(self.process.pid)


@contextlib.asynccontextmanager
async def participant_process() -> AsyncIterator[Participant]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "noop_participant.py"), "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        if not line.strip().isdigit():
            raise BenchFailure(f"the participant did not start (said {line!r})")
        async with httpx.AsyncClient(trust_env=False) as client:
            yield Participant(process=process, port=int(line), client=client)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.communicate(), timeout=10)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc`` (NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- one row --
@dataclass(slots=True, kw_only=True)
class Row:
    backend: str
    scenario: str
    transport: str
    run: int
    sagas: int
    concurrency: int
    elapsed: float
    sagas_per_s: float
    rt_p50_ms: float
    rt_p99_ms: float
    call_p50_ms: float
    call_p99_ms: float
    cpu_share: float
    """Orchestrator process CPU seconds (every thread) / wall seconds: 1.0 = one core busy."""
    participant_cpu_share: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class CallTimer:
    """Times every ``call`` of an orchestrator's transports (a benchmark may reach in)."""

    def __init__(self, saga: Orchestrator) -> None:
        self.samples: list[float] = []
        for transport in saga.engine.transports:
            target: Any = transport
            target.call = self._timed(transport.call)

    def _timed(self, inner: Any) -> Any:
        async def call(request: Any) -> Any:
            began = time.perf_counter()
            try:
                return await inner(request)
            finally:
                self.samples.append(time.perf_counter() - began)

        return call


async def round_trips(url: str) -> list[float]:
    """Seconds from each step's AttemptScheduled to its AttemptSucceeded, for the timed sagas
    only (warm-up sagas have a negative ``order``)."""
    query = (
        "SELECT instance_id, type, data FROM events WHERE type IN "
        "('SagaStarted', 'AttemptScheduled', 'AttemptSucceeded') ORDER BY instance_id, seq"
    )
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            rows = db.execute(query).fetchall()
    else:
        conn = await asyncpg.connect(url)
        try:
            rows = [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()
    timed: set[str] = set()
    scheduled: dict[tuple[str, str, str, int], datetime] = {}
    spans: list[float] = []
    for instance_id, kind, data in rows:
        event = orjson.loads(data)
        if kind == "SagaStarted":
            if event["input"]["order"] >= 0:
                timed.add(instance_id)
            continue
        key = (instance_id, event["node"], event["phase"], event["attempt"])
        at = datetime.fromisoformat(event["at"])
        if kind == "AttemptScheduled":
            scheduled[key] = at
        elif instance_id in timed and key in scheduled:
            spans.append((at - scheduled[key]).total_seconds())
    return spans


async def run_row(
    backend: str, scenario: str, transport: str, args: argparse.Namespace, participant: Participant
) -> Row:
    """One fresh database, one orchestrator, warm-up then the timed run, then the checks."""
    label = f"{transport}/{backend}/{scenario}"
    fail_ship = scenario == "B"
    async with fresh_database(backend, f"part_{transport}_{scenario}", args.pg) as url:
        async with Orchestrator(
            url, handlers=HANDLERS, max_concurrent_sagas=max(1000, args.concurrency)
        ) as saga:
            if transport == "http":
                config = participant_config(participant.port, args.max_concurrency)
                await saga.put_participant(SERVICE, config)
                await saga.register(http_definition(scenario))
            else:
                await saga.register(DEFINITION)
            PROBE.reset(fail_ship=fail_ship)
            await warm_up(saga, label, scenario, args)
            PROBE.reset(fail_ship=fail_ship)
            timer = CallTimer(saga)
            events_before = await count_events(url)
            before = await participant.routes()
            cpu0, peer0 = time.process_time(), participant.cpu_seconds()
            elapsed, statuses, view_events, errors = await drive(saga, args.sagas, args.concurrency)
            cpu = time.process_time() - cpu0
            peer_cpu = participant.cpu_seconds() - peer0
            routes = await participant.routes() - before
            calls = dict(PROBE.calls)
        events = await count_events(url) - events_before
        spans = await round_trips(url)
    check(
        label,
        scenario=scenario,
        transport=transport,
        sagas=args.sagas,
        statuses=statuses,
        errors=errors,
        calls=calls,
        routes=routes,
        spans=spans,
    )
    if events != view_events:
        raise BenchFailure(f"{label}: {events} events stored, the views report {view_events}")
    return Row(
        backend=backend,
        scenario=scenario,
        transport=transport,
        run=0,
        sagas=args.sagas,
        concurrency=args.concurrency,
        elapsed=elapsed,
        sagas_per_s=args.sagas / elapsed,
        rt_p50_ms=percentile(spans, 0.50) * 1000,
        rt_p99_ms=percentile(spans, 0.99) * 1000,
        call_p50_ms=percentile(timer.samples, 0.50) * 1000,
        call_p99_ms=percentile(timer.samples, 0.99) * 1000,
        cpu_share=cpu / elapsed,
        participant_cpu_share=peer_cpu / elapsed if transport == "http" else None,
        detail={"round_trips": len(spans), "calls": len(timer.samples), "routes": dict(routes)},
    )


async def warm_up(saga: Orchestrator, label: str, scenario: str, args: argparse.Namespace) -> None:
    if not args.warmup:
        return
    expected_status = EXPECTED[scenario][0]
    _, warm, _, errors = await drive(saga, args.warmup, args.concurrency, first=-args.warmup)
    if errors or warm[expected_status] != args.warmup:
        raise BenchFailure(f"{label} warm-up: {dict(warm)} {errors[:1]}")


def check(
    label: str,
    *,
    scenario: str,
    transport: str,
    sagas: int,
    statuses: Counter[InstanceStatus],
    errors: list[str],
    calls: dict[str, int],
    routes: Counter[str],
    spans: list[float],
) -> None:
    expected_status, expected_calls = EXPECTED[scenario]
    problems = []
    if errors:
        problems.append(f"{len(errors)} client errors, first: {errors[0]}")
    if statuses[expected_status] != sagas:
        problems.append(f"terminal states {dict(statuses)} (expected {sagas} {expected_status})")
    if transport == "http":
        wanted_routes = expected_routes(scenario, sagas)
        if dict(routes) != wanted_routes:
            problems.append(f"participant requests {dict(routes)} (expected {wanted_routes})")
    else:
        wanted_calls = {name: n * sagas for name, n in expected_calls.items()}
        if calls != wanted_calls or routes:
            problems.append(f"handler calls {calls} (expected {wanted_calls}), routes {routes}")
    succeeded_steps = {"A": 3, "B": 4}[scenario]  # B: ship fails, its compensations succeed
    if len(spans) != succeeded_steps * sagas:
        problems.append(f"{len(spans)} successful attempts (expected {succeeded_steps * sagas})")
    if problems:
        raise BenchFailure(f"{label}: " + "; ".join(problems))


# -- the report --
def render(rows: list[Row]) -> str:
    header = (
        f"{'backend':<9}{'scen':<5}{'run':>3} {'transport':<9}{'sagas/s':>8}{'rt p50':>9}"
        f"{'rt p99':>10}{'call p50':>10}{'call p99':>10}{'cpu':>6}{'peer':>6}{'http/inproc':>12}"
    )
    lines = [header, "-" * len(header)]
    base = {(r.backend, r.scenario, r.run): r for r in rows if r.transport == "inproc"}
    for r in rows:
        peer = base.get((r.backend, r.scenario, r.run))
        ratio = f"{ratio_of(r, peer):.2f}" if r.transport == "http" and peer else ""
        share = f"{r.participant_cpu_share:.2f}" if r.participant_cpu_share is not None else ""
        lines.append(
            f"{r.backend:<9}{r.scenario:<5}{r.run:>3} {r.transport:<9}{r.sagas_per_s:>8.0f}"
            f"{r.rt_p50_ms:>9.2f}{r.rt_p99_ms:>10.2f}{r.call_p50_ms:>10.3f}{r.call_p99_ms:>10.3f}"
            f"{r.cpu_share:>6.2f}{share:>6}{ratio:>12}"
        )
    return "\n".join(lines)


def ratio_of(http: Row, inproc: Row | None) -> float:
    return http.sagas_per_s / inproc.sagas_per_s if inproc else float("nan")


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    base = {(r.backend, r.scenario, r.run): r for r in rows if r.transport == "inproc"}
    return [
        {
            "backend": r.backend,
            "scenario": r.scenario,
            "run": r.run,
            "http_over_inproc": ratio_of(r, base[(r.backend, r.scenario, r.run)]),
        }
        for r in rows
        if r.transport == "http" and (r.backend, r.scenario, r.run) in base
    ]


async def main_async(args: argparse.Namespace) -> int:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    scenarios = ["A", "B"] if args.scenario == "both" else [args.scenario]
    facts = await machine_facts(args.pg, "postgres" in backends)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
    rows: list[Row] = []
    failures: list[str] = []
    async with participant_process() as participant:
        for run in range(1, args.repeat + 1):
            for backend in backends:
                for scenario in scenarios:
                    for transport in TRANSPORTS:
                        try:
                            row = await run_row(backend, scenario, transport, args, participant)
                        except BenchFailure as failure:
                            failures.append(str(failure))
                            print(f"FAILED {failure}", file=sys.stderr, flush=True)
                            continue
                        row.run = run
                        rows.append(row)
                        print(f"  run {run} {transport}/{backend}/{scenario}: "
                              f"{row.sagas_per_s:.0f} sagas/s", flush=True)  # fmt: skip
    print()
    print(render(rows))
    print(
        f"\n{args.sagas} sagas per row, {args.concurrency} client tasks, {args.warmup} warm-up, "
        f"participant max_concurrency {args.max_concurrency}. "
        "rt: step round trip, AttemptScheduled.at -> AttemptSucceeded.at (ms). call: the "
        "transport's call alone (ms). cpu: orchestrator CPU / wall (2 = both cores). peer: "
        "participant CPU / wall. http/inproc: sagas/s ratio within one run (bar: >= 0.5)."
    )
    if args.json:
        payload = {"machine": facts, "results": [asdict(r) for r in rows]}
        write_json(args.json, {**payload, "ratios": ratios(rows), "failures": failures})
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


# -- the profile --
async def profile_http(args: argparse.Namespace) -> int:
    """Scenario A over HTTP under pyinstrument (event-loop thread, 1 ms samples)."""
    from pyinstrument import Profiler

    backend = "postgres" if args.backend == "postgres" else "sqlite"
    profiler = Profiler(interval=0.001, async_mode="disabled")
    async with (
        participant_process() as participant,
        fresh_database(backend, "part_profile", args.pg) as url,
        Orchestrator(url, max_concurrent_sagas=max(1000, args.concurrency)) as saga,
    ):
        config = participant_config(participant.port, args.max_concurrency)
        await saga.put_participant(SERVICE, config)
        await saga.register(http_definition("A"))
        await warm_up(saga, "profile", "A", args)
        before = await participant.routes()
        profiler.start()
        elapsed, statuses, _, errors = await drive(saga, args.sagas, args.concurrency)
        profiler.stop()
        routes = await participant.routes() - before
    if errors or statuses[InstanceStatus.COMPLETED] != args.sagas:
        raise BenchFailure(f"profile run: {dict(statuses)} {errors[:1]}")
    if dict(routes) != expected_routes("A", args.sagas):
        raise BenchFailure(f"profile run: participant requests {dict(routes)}")
    print(f"sampled {args.sagas} HTTP sagas ({backend}): {args.sagas / elapsed:.0f} sagas/s")
    write_reports(profiler, Path(args.profile_out))
    session = profiler.last_session
    root = session.root_frame() if session else None
    if root is not None:
        print_summary(root, args.top)
    return 0


def write_reports(profiler: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profiler.output_html(), encoding="utf-8")
    tree = out.with_suffix(".txt")
    tree.write_text(profiler.output_text(unicode=False, color=False), encoding="utf-8")
    print(f"HTML report: {out}; call tree: {tree}")


def library_of(path: str) -> str:
    if "saga_orchestrator" in path:
        return "transports/http.py" if path.endswith("transports/http.py") else "saga_orchestrator"
    for name in LIBRARIES[1:]:
        if f"/{name}/" in path:
            return name
    return "idle (selector wait)" if "selectors" in path else "other"


def print_summary(root: Any, top: int) -> None:
    """Self time by library and by function, then the HTTP path's functions by inclusive time
    (each function counted once per stack), as shares of the sampled event-loop time."""
    by_library: defaultdict[str, float] = defaultdict(float)
    by_self: defaultdict[tuple[str, str, int], float] = defaultdict(float)
    inclusive: defaultdict[tuple[str, str, int], float] = defaultdict(float)
    pending: list[tuple[Any, frozenset[tuple[str, str, int]]]] = [(root, frozenset())]
    while pending:
        frame, above = pending.pop()
        path = str(frame.file_path or "")
        key = (str(frame.function), path, int(frame.line_no or 0))
        if not frame.is_synthetic:  # a synthetic child's time is in its parent's self time
            by_library[library_of(path)] += float(frame.total_self_time)
            by_self[key] += float(frame.total_self_time)
        if key not in above:
            inclusive[key] += float(frame.time)
        pending.extend((child, above | {key}) for child in frame.children)
    total = float(root.time) or 1.0
    print(f"\nself time by library (% of {total:.2f}s sampled on the event-loop thread):")
    for library, seconds in sorted(by_library.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / total * 100:5.1f}%  {library}")
    http_path = {
        k: v
        for k, v in inclusive.items()
        if library_of(k[1]) in ("transports/http.py", "httpx", "httpcore", "h11", "anyio")
    }
    print_top(f"top {top} functions by self time:", by_self, total, top)
    print_top(f"top {top} functions of the HTTP path by inclusive time:", http_path, total, top)


def print_top(
    title: str, seconds: dict[tuple[str, str, int], float], total: float, top: int
) -> None:
    print(f"\n{title}")
    for (function, path, line), spent in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
        where = path.rsplit("site-packages/", 1)[-1].split("saga_orchestrator/", 1)[-1]
        where = where.rsplit("/lib/python3.11/", 1)[-1]
        print(f"  {spent / total * 100:5.1f}%  {function:<30} {where}:{line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=500, help="client tasks in flight")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1000,
        help="the participant service's max_concurrency: HTTP requests in flight at once",
    )
    parser.add_argument("--warmup", type=int, default=300, help="untimed sagas first, per row")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--scenario", choices=["A", "B", "both"], default="A")
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times")
    parser.add_argument("--pg", default=os.environ.get("SAGA_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--profile", action="store_true", help="profile HTTP scenario A instead")
    parser.add_argument(
        "--profile-out", default=str(Path(tempfile.gettempdir()) / "participants_bench.html")
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = profile_http if args.profile else main_async
    try:
        sys.exit(asyncio.run(work(args)))
    except BenchFailure as failure:
        print(f"FAILED {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
