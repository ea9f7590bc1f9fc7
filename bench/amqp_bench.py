"""Steps over RabbitMQ: the three-step saga with its handlers in a ``saga worker`` process,
beside the same saga with in-process handlers, in the same run.

    python bench/amqp_bench.py [--sagas 2000] [--concurrency 500] [--backend sqlite|postgres]
                               [--repeat 2] [--json out.json]

Each AMQP step is: the attempt's command written to the outbox in the commit that schedules
it, published by the relay with a publisher confirm, consumed by the worker (a separate
process, so it has a core of its own), run, its reply published with a confirm, consumed by
the node's reply consumer and applied. The round trip of a step is its ``AttemptScheduled.at``
to its ``AttemptSucceeded.at`` in the stored history (the same measure as
``participants_bench.py``). Each row gets a fresh database and a fresh RabbitMQ virtual host.

Checks, any failure of which exits 1 instead of printing the row: every saga completed, and
the outbox is empty afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aio_pika

from engine_bench import (
    DEFINITION,
    HANDLERS,
    PROBE,
    BenchFailure,
    drive,
    fresh_database,
    percentile,
    write_json,
)
from participants_bench import round_trips
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.orchestrator import Orchestrator

HERE = Path(__file__).resolve().parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
BROKER = "amqp://guest:guest@127.0.0.1:5672"


@dataclass(slots=True, kw_only=True)
class Row:
    backend: str
    transport: str
    run: int
    sagas: int
    sagas_per_s: float
    rt_p50_ms: float
    rt_p99_ms: float


async def rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise BenchFailure(f"rabbitmqctl {' '.join(args)}: {err.decode()}")


@contextlib.asynccontextmanager
async def fresh_vhost() -> AsyncIterator[str]:
    vhost = f"saga-bench-{uuid.uuid4().hex[:8]}"
    await rabbitmqctl("add_vhost", vhost)
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{BROKER}/{vhost}"
    finally:
        await rabbitmqctl("delete_vhost", vhost)


@contextlib.asynccontextmanager
async def worker(url: str, concurrency: int) -> AsyncIterator[None]:
    env = {**os.environ, "AMQP_URL": url, "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "saga_orchestrator.cli", "worker", "--handlers"]
    process = await asyncio.create_subprocess_exec(
        *command, "amqp_handlers", "--concurrency", str(concurrency), env=env, cwd=HERE
    )
    try:
        await consuming(url, "saga.handler.bench.cancel")
        yield
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def consuming(url: str, queue: str) -> None:
    """Until the worker has declared its queues (commands before that are unroutable)."""
    connection = await aio_pika.connect(url)
    try:
        async with asyncio.timeout(60):
            while True:
                channel = await connection.channel()
                try:
                    await channel.declare_queue(queue, passive=True)
                    return
                except aio_pika.exceptions.ChannelClosed:
                    await asyncio.sleep(0.1)
    finally:
        await connection.close()


async def run_row(backend: str, transport: str, args: argparse.Namespace, run: int) -> Row:
    label = f"{transport}/{backend}"
    async with fresh_database(backend, f"amqp_{transport}", args.pg) as url:
        if transport == "inproc":
            node = Orchestrator(url, handlers=HANDLERS, max_concurrent_sagas=args.concurrency)
            async with node:
                await node.register(DEFINITION)
                PROBE.reset(fail_ship=False)
                elapsed, statuses, _, errors = await drive(node, args.sagas, args.concurrency)
        else:
            async with fresh_vhost() as vhost, worker(vhost, args.worker_concurrency):
                node = Orchestrator(
                    url,
                    amqp_url=vhost,
                    require_known_handlers=False,
                    max_concurrent_sagas=args.concurrency,
                )
                async with node:
                    await node.register(DEFINITION)
                    elapsed, statuses, _, errors = await drive(node, args.sagas, args.concurrency)
                    backlog = await node.store.outbox_backlog()
                if backlog:
                    raise BenchFailure(f"{label}: {backlog} messages left in the outbox")
        spans = await round_trips(url)
    if errors or statuses[InstanceStatus.COMPLETED] != args.sagas:
        raise BenchFailure(f"{label}: {dict(statuses)} {errors[:2]}")
    return Row(
        backend=backend,
        transport=transport,
        run=run,
        sagas=args.sagas,
        sagas_per_s=args.sagas / elapsed,
        rt_p50_ms=percentile(spans, 0.5) * 1000,
        rt_p99_ms=percentile(spans, 0.99) * 1000,
    )


async def main_async(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    try:
        for run in range(1, args.repeat + 1):
            for transport in ("inproc", "amqp"):
                row = await run_row(args.backend, transport, args, run)
                rows.append(row)
                print(
                    f"{row.backend:9} {row.transport:7} run {run}: {row.sagas_per_s:8.0f} sagas/s"
                    f"  step round trip p50 {row.rt_p50_ms:7.1f} ms  p99 {row.rt_p99_ms:7.1f} ms",
                    flush=True,
                )
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    if args.json:
        payload: dict[str, Any] = {"rows": [asdict(r) for r in rows], "args": vars(args)}
        write_json(args.json, payload)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--json")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
