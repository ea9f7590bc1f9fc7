"""Tenant isolation under a flood (issue 6): a tenant sending starts at 10x its quota gets 429s
with correct headers, while another tenant's p99 start latency stays within 1.2x of its
baseline.

    python bench/tenant_isolation_bench.py [--rounds 3] [--seconds 15] [--quiet-rate 20]
        [--quota 50] [--flood-factor 10] [--flood-clients 16] [--steps 3]
        [--redis private|none|URL] [--at-quota] [--stop-redis] [--database-url URL]
        [--workers N] [--json out.json] [--profile-node out.html]

One ``saga serve`` subprocess (``--handlers tenant_isolation_handlers``: no-op steps) on a
fresh SQLite file in a temporary directory, or on a PostgreSQL database the bench creates on
the ``--database-url`` server and drops afterwards; there, ``--workers N`` makes it a cluster
of N worker processes behind one port (``CLUSTER_ENABLED``), whose CPU is counted together. It
gets a JWT key of the run, a start quota of ``--quota`` per second per tenant
(``RATE_LIMIT_STARTS``; its bucket holds twice as many), ``RATE_LIMIT_REQUESTS``
``--request-quota`` and Redis-backed limits: by default a ``redis-server`` of the bench's own
on a free port, without persistence (so stopping it disturbs nobody), or ``--redis URL``
(nothing is flushed: the tenant ids carry a suffix of the run, so the run's bucket keys are its
own), or ``--redis none`` (per-node buckets). Two tenants, ``quiet-<run>`` and ``noisy-<run>``,
each register the saga (``--steps`` no-op steps).

Each round has two phases (three with ``--at-quota``), in the opposite order in even rounds,
each after the node drained (no running instance) and the noisy buckets refilled:

- **baseline**: the quiet tenant starts ``--quiet-rate`` sagas per second (open loop, below
  its quota) for ``--seconds``; each start's latency is timed (send to whole answer).
- **flood**: the same quiet load while, from a separate process (``tenant_isolation_load.py``),
  the noisy tenant sends ``--flood-factor`` times its quota over ``--flood-clients``
  connections, starting ``--lead`` seconds before the quiet load and ending as long after.
- **at-quota** (``--at-quota``, a control): the same, the noisy tenant sending exactly its
  quota, all of it admitted. It tells what the other tenant's *entitled* load costs the quiet
  one, apart from what the refusals cost (flood/at-quota).

The flood's process runs at CPU niceness ``--flood-nice`` (19 by default). A flooding
tenant sends from its own machines, so its client's CPU does not compete with the node's.
Here the client shares the node's two cores, and at the default priority the scheduler
splits them between the flood's client (about 0.3 cores at 500 requests/s) and the node, so
the quiet tenant's latency measures that competition as well as the node. At nice 19 the
flood still gets every idle cycle, and the report checks the rate it actually reached.
``--flood-nice 0`` measures the shared-box case. The quiet tenant's client and Redis keep
the node's priority.

Before the rounds, an untimed warm-up flood of ``--warmup`` seconds. With ``--stop-redis``
(the private Redis only) a last flood phase stops Redis halfway through and reports what the
node answered afterwards (its own buckets take over: neither 5xx nor fail-open).

Reported per phase: the quiet tenant's p50/p99, its client's lateness, the noisy tenant's sent
and admitted rates, 429s, 5xx, 429s with bad headers, and the cores used by the node, the
flood and the whole machine; then the per-round p99 ratio (flood/baseline) and their median
against the bar (with ``--at-quota``, also at-quota/baseline and flood/at-quota), and beside
them the same ratios of p99s pooled over every round's starts (a 300-start phase's p99 rests on
its three slowest starts; five rounds pooled rest on fifteen). ``--json`` keeps every admitted
quiet start's latency. A run whose
checks fail (``tenant_isolation_report.py``: quiet errors, any 5xx or unanswered request, bad
429 headers, nothing admitted, a flood never refused, more admitted than the bucket allows,
a pass under a flood that reached under half its rate) exits 1; a valid run exits 0 whether
or not the bar is met, since on a shared machine the ratio is a measurement, not an
assertion.

``--profile-node PATH`` runs the node under pyinstrument (its event-loop thread, 1 ms
samples, the whole run) and writes ``PATH`` (HTML) and ``PATH.txt``, and prints self time
by library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from engine_bench import DEFAULT_PG, fresh_database, machine_facts
from saga_orchestrator.security.limits import Limit
from saga_orchestrator.security.tokens import Role, generate_secret, mint_token
from tenant_isolation_handlers import ACTION
from tenant_isolation_load import Caller, FloodOrder, FloodProcess, FloodReport, paced
from tenant_isolation_node import (
    BenchFailure,
    CpuMeter,
    CpuUse,
    Node,
    RedisChoice,
    node,
    node_env,
    redis_for,
)
from tenant_isolation_profile import summarize_profile
from tenant_isolation_report import (
    Limits,
    Outcome,
    Phase,
    PhaseKind,
    RedisStop,
    noisy_stats,
    quiet_stats,
    split_at,
    verdict,
)
from tenant_isolation_table import render, render_redis_stop, summary

SAGA = "tenant-isolation"
INSTANCES = "/api/v1/sagas/instances"


# -- tenants --
@dataclass(frozen=True, slots=True, kw_only=True)
class Tenant:
    name: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def tenant(secret: str, name: str) -> Tenant:
    token = mint_token(
        secret, subject=f"bench-{name}", tenant_id=name, roles=[Role.ADMIN], ttl=6 * 3600
    )
    return Tenant(name=name, token=token)


def definition(steps: int) -> dict[str, Any]:
    return {
        "name": SAGA,
        "version": "1.0.0",
        "steps": [{"name": f"s{n}", "action": ACTION} for n in range(steps)],
    }


async def register(client: httpx.AsyncClient, url: str, who: Tenant, steps: int) -> None:
    answer = await client.post(
        f"{url}/api/v1/sagas/definitions", json=definition(steps), headers=who.auth
    )
    if answer.status_code not in (200, 201):
        raise BenchFailure(f"registering for {who.name}: {answer.status_code} {answer.text}")


async def drain(
    client: httpx.AsyncClient, url: str, tenants: list[Tenant], timeout: float = 120
) -> None:
    """Wait until no instance of these tenants is still running (the last phase's sagas)."""
    deadline = time.monotonic() + timeout
    for who in tenants:
        while True:
            params = {"status": "running", "limit": "1"}
            answer = await client.get(f"{url}{INSTANCES}", params=params, headers=who.auth)
            if answer.status_code == 200 and not answer.json()["items"]:
                break
            if time.monotonic() > deadline:
                raise BenchFailure(f"{who.name}'s sagas did not drain: {answer.status_code}")
            await asyncio.sleep(0.2)


# -- phases --
@dataclass(slots=True, kw_only=True)
class Bench:
    args: argparse.Namespace
    limits: Limits
    node: Node
    client: httpx.AsyncClient
    redis: RedisChoice
    quiet: Tenant
    noisy: Tenant

    def caller(self, who: Tenant) -> Caller:
        return Caller(base_url=self.node.url, token=who.token, saga=SAGA)

    async def settle(self) -> None:
        """Drain, then let the noisy buckets refill (they hold two seconds' worth)."""
        await drain(self.client, self.node.url, [self.quiet, self.noisy])
        await asyncio.sleep(self.args.pause)


async def _at(instant: float, action: Callable[[], Awaitable[None]]) -> None:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))
    await action()


async def run_phase(
    bench: Bench, round_: int, kind: PhaseKind, seconds: float
) -> tuple[Phase, RedisStop | None]:
    """One phase: the quiet load, and with it the flood unless this is a baseline."""
    args = bench.args
    flood = None
    if kind != "baseline":
        order = FloodOrder(
            caller=bench.caller(bench.noisy),
            rate=bench.limits.asked(kind),
            clients=args.flood_clients,
            seconds=seconds + 2 * args.lead,
        )
        flood = await FloodProcess.spawn(order, niceness=args.flood_nice)
    try:
        quiet, cpu, report = await _loads(bench, flood, kind, seconds)
    finally:
        if flood is not None:
            await flood.kill()
    noisy = None if report is None else noisy_stats(report.outcomes)
    phase = Phase(
        round=round_,
        kind=kind,
        quiet=quiet_stats(quiet),
        noisy=noisy,
        node_cpu=cpu.node,
        machine_cpu=cpu.machine,
        cpu_stall=cpu.stall,
        flood_cpu=report.cpu_seconds / noisy.seconds
        if report and noisy and noisy.seconds
        else None,
    )
    if kind != "redis-stop" or report is None:
        return phase, None
    half = seconds / 2
    quiet_after = split_at(quiet, half)[1]
    noisy_after = split_at(report.outcomes, args.lead + half)[1]
    stop = RedisStop(
        stopped_at=half, quiet=quiet_stats(quiet_after), noisy=noisy_stats(noisy_after)
    )
    return phase, stop


async def _loads(
    bench: Bench, flood: FloodProcess | None, kind: PhaseKind, seconds: float
) -> tuple[list[Outcome], CpuUse, FloodReport | None]:
    """The quiet outcomes, the CPU used meanwhile, and the flood's report."""
    args = bench.args
    flood_at = time.monotonic() + 0.5
    quiet_at = flood_at + (args.lead if flood is not None else 0.0)
    if flood is not None:
        await flood.go(flood_at)
    stopper = None
    if kind == "redis-stop":
        stopper = asyncio.create_task(_at(quiet_at + seconds / 2, bench.redis.stop))
    await asyncio.sleep(max(0.0, quiet_at - time.monotonic()))
    meter = CpuMeter(bench.node)
    quiet = await paced(
        bench.caller(bench.quiet), rate=args.quiet_rate, start_at=quiet_at, seconds=seconds
    )
    cpu = meter.read()
    report = None if flood is None else await flood.report(timeout=seconds + 2 * args.lead + 60)
    if stopper is not None:
        await stopper
    return quiet, cpu, report


def _progress(phase: Phase) -> str:
    line = (
        f"  round {phase.round} {phase.kind:<10} quiet p50 {phase.quiet.p50_ms:6.1f} ms "
        f"p99 {phase.quiet.p99_ms:6.1f} ms, {phase.quiet.errors} errors"
    )
    if phase.noisy is not None:
        line += (
            f"; noisy {phase.noisy.sent_rate:.0f}/s sent, {phase.noisy.admitted_rate:.1f}/s "
            f"admitted, {phase.noisy.refused} refused"
        )
    return line


async def rounds(bench: Bench) -> tuple[list[Phase], RedisStop | None]:
    args = bench.args
    if args.warmup:
        await bench.settle()
        await run_phase(bench, 0, "flood", args.warmup)  # untimed: connections, caches
    phases: list[Phase] = []
    for round_ in range(1, args.rounds + 1):
        kinds: list[PhaseKind] = ["baseline", "at-quota", "flood"]
        if not args.at_quota:
            kinds.remove("at-quota")
        for kind in kinds if round_ % 2 else kinds[::-1]:
            await bench.settle()
            phase, _ = await run_phase(bench, round_, kind, args.seconds)
            phases.append(phase)
            print(_progress(phase), flush=True)
    stop = None
    if args.stop_redis:
        await bench.settle()
        phase, stop = await run_phase(bench, args.rounds + 1, "redis-stop", args.seconds)
        phases.append(phase)
        print(_progress(phase), flush=True)
    return phases, stop


# -- the run --
@contextlib.asynccontextmanager
async def database(args: argparse.Namespace, directory: Path) -> AsyncIterator[str]:
    if args.database_url is None:
        yield f"sqlite:///{directory / 'tenant-isolation.db'}"
        return
    async with fresh_database("postgres", "tenant_isolation", args.database_url) as url:
        yield url


async def measure(args: argparse.Namespace, limits: Limits) -> tuple[list[Phase], RedisStop | None]:
    secret = generate_secret()
    run = uuid.uuid4().hex[:6]  # bucket keys of this run only, even in a shared Redis
    quiet, noisy = tenant(secret, f"quiet-{run}"), tenant(secret, f"noisy-{run}")
    with tempfile.TemporaryDirectory(prefix="saga-tenant-isolation-") as name:
        directory = Path(name)
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(database(args, directory))
            redis = await stack.enter_async_context(redis_for(args.redis))
            settings = {
                "DATABASE_URL": url,
                "JWT_SECRET": secret,
                "RATE_LIMIT_STARTS": repr(float(args.quota)),
                "RATE_LIMIT_REQUESTS": repr(float(args.request_quota)),
            }
            if redis.url is not None:
                settings["REDIS_URL"] = redis.url
            if args.workers > 1:
                settings["CLUSTER_ENABLED"] = "true"
            env = node_env(settings)
            running = await stack.enter_async_context(
                node(env, directory, args.profile_node, args.workers)
            )
            client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False, timeout=30))
            for who in (quiet, noisy):
                await register(client, running.url, who, args.steps)
            bench = Bench(
                args=args,
                limits=limits,
                node=running,
                client=client,
                redis=redis,
                quiet=quiet,
                noisy=noisy,
            )
            return await rounds(bench)
    raise AssertionError("unreachable")  # mypy: AsyncExitStack may swallow exceptions


def describe_setup(args: argparse.Namespace, limits: Limits) -> str:
    store = "PostgreSQL (fresh database)" if args.database_url else "SQLite (fresh file)"
    if args.workers > 1:
        store += f", {args.workers} worker processes"
    redis = {"private": "a private redis-server", "none": "none (per-node buckets)"}
    return (
        f"saga serve on {store}, Redis: {redis.get(args.redis, args.redis)}; {args.steps} "
        f"no-op steps per saga. Quota {limits.quota:g} starts/s per tenant (bucket "
        f"{limits.burst}), {args.request_quota:g} requests/s. Quiet: {args.quiet_rate:g} "
        f"starts/s; noisy: {limits.flood_rate:g}/s over {args.flood_clients} connections "
        f"(its process at nice {args.flood_nice}). "
        f"{args.rounds} rounds of {args.seconds:g} s phases."
    )


async def main_async(args: argparse.Namespace) -> int:
    pg = args.database_url or DEFAULT_PG
    facts = await machine_facts(pg, args.database_url is not None)
    facts.pop("dbos", None)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
    burst = Limit.per_second(args.quota).burst  # the rule saga serve applies to RATE_LIMIT_*
    limits = Limits(quota=args.quota, burst=burst, flood_rate=args.quota * args.flood_factor)
    print(describe_setup(args, limits), flush=True)
    phases, stop = await measure(args, limits)
    result = verdict(phases, limits, args.bar, stop)
    print()
    print(render(phases, limits))
    if stop is not None:
        print(render_redis_stop(stop))
    print()
    print(summary(result, phases, limits))
    if args.json:
        payload = {
            "machine": facts,
            "setup": {k: v for k, v in vars(args).items() if k != "profile_node"},
            "phases": [asdict(p) for p in phases],
            "redis_stop": asdict(stop) if stop else None,
            "verdict": {**asdict(result), "met": result.met, "valid": result.valid},
        }
        text = json.dumps(payload, indent=2)
        await asyncio.to_thread(Path(args.json).write_text, text, encoding="utf-8")
    if args.profile_node is not None:
        session = args.profile_node.with_suffix(".pyisession")
        await asyncio.to_thread(summarize_profile, session, args.profile_node, args.top)
    if not result.valid:
        print("\nINVALID RUN:\n  " + "\n  ".join(result.problems), file=sys.stderr)
    return result.exit_code


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parse.add_argument
    add("--rounds", type=int, default=3, help="baseline + flood pairs, in alternating order")
    add("--seconds", type=float, default=15.0, help="length of each phase's quiet load")
    add("--quiet-rate", type=float, default=20.0, help="the quiet tenant's starts/s")
    add("--quota", type=float, default=50.0, help="starts/s per tenant (RATE_LIMIT_STARTS)")
    add("--request-quota", type=float, default=100.0, help="RATE_LIMIT_REQUESTS (the default)")
    add("--flood-factor", type=float, default=10.0, help="the noisy tenant's rate / its quota")
    add("--flood-clients", type=int, default=16, help="the flood's concurrent connections")
    add(
        "--flood-nice",
        type=int,
        default=19,
        help="CPU niceness of the flood's process (0: the node's priority)",
    )
    add("--lead", type=float, default=1.0, help="flood seconds before and after the quiet load")
    add("--steps", type=int, default=3, help="no-op steps per saga")
    add("--warmup", type=float, default=3.0, help="seconds of untimed flood first (0: none)")
    add("--pause", type=float, default=2.5, help="seconds between phases, after the drain")
    add("--bar", type=float, default=1.2, help="the p99 ratio the issue allows")
    add("--redis", default="private", help="'private' (default), 'none', or a Redis URL")
    add("--stop-redis", action="store_true", help="a last flood that stops the private Redis")
    add("--at-quota", action="store_true", help="a control phase: noisy at exactly its quota")
    add("--database-url", help="a PostgreSQL server: the bench makes a database there, drops it")
    add("--workers", type=int, default=1, help="saga serve --workers (more: PostgreSQL only)")
    add("--json", default=None, help="also write the results here")
    add("--profile-node", type=Path, default=None, help="pyinstrument the node: HTML report")
    add("--top", type=int, default=25, help="functions listed by the profile summary")
    return parse


def main() -> None:
    parse = parser()
    args = parse.parse_args()
    if args.stop_redis and args.redis != "private":
        parse.error("--stop-redis stops the bench's own Redis only (--redis private)")
    if args.database_url is not None and not args.database_url.startswith("postgres"):
        parse.error("--database-url must be a PostgreSQL URL (SQLite is the default)")
    if args.workers > 1 and args.database_url is None:
        parse.error("--workers above 1 runs a cluster: it needs --database-url")
    if args.workers > 1 and args.profile_node is not None:
        parse.error("--profile-node profiles one process: use it with --workers 1")
    try:
        sys.exit(asyncio.run(main_async(args)))
    except BenchFailure as failure:
        print(f"FAILED {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
