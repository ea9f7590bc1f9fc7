"""The program that the crash-recovery test runs, kills and runs again.

    python -m tests.e2e.crash_app --db URL --calls URL --mode start|resume --sagas 500

``start``: registers a 3-step saga (reserve, charge, ship; each with a compensation), starts
``--sagas`` instances and writes each instance id to stdout, one per line, once its start is
durable; then runs them until it is killed (it never exits by itself).

``resume``: opens an orchestrator on the same database (recovery resumes every unfinished
instance) and exits 0 once no instance is running or compensating any more, 2 on timeout.

Every handler call is recorded in a separate calls table, not in the store: at the start of the
call (the effect "happened" even if the process is killed right after) and again when it ends.
On PostgreSQL the table ``e2e_calls`` lives in the database given by ``--calls`` (asyncpg
directly); for SQLite ``--calls`` is a separate SQLite file (stdlib sqlite3 on its own thread),
so recording never contends with the store.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from saga_orchestrator.core.events import Phase
from saga_orchestrator.errors import NonRetryableStepError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.transports.handlers import StepContext, handler

SAGA = "crash-order"
STEPS = ("reserve", "charge", "ship")
FAILING_STEP = "ship"
CALLS_TABLE = "e2e_calls"
MIN_SLEEP = 0.010
MAX_SLEEP = 0.050
"""Seconds each handler call takes (uniformly random)."""
START_CONCURRENCY = 50
"""Starts in flight at once in ``start`` mode."""

_RETRY = {"max_attempts": 5, "initial_interval": 0.2, "backoff_coefficient": 2.0, "max_interval": 2}

DEFINITION: dict[str, Any] = {
    "name": SAGA,
    "version": "1.0.0",
    "description": "crash-recovery end-to-end test",
    "steps": [
        {
            "name": step,
            "action": f"{step}.action",
            "compensation": f"{step}.compensation",
            "retry": _RETRY,
            "timeout": 5,
            "compensation_retry": _RETRY,
            "compensation_timeout": 5,
        }
        for step in STEPS
    ],
}


def should_fail(index: int) -> bool:
    """The sagas whose ``ship`` step is rejected (a definite failure): they compensate."""
    return index % 5 == 0


def calls_ddl(postgres: bool) -> str:
    key = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "DOUBLE PRECISION" if postgres else "REAL"
    return f"""CREATE TABLE IF NOT EXISTS {CALLS_TABLE} (
        id {key},
        instance_id TEXT NOT NULL,
        node TEXT NOT NULL,
        phase TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at {real} NOT NULL,
        finished_at {real},
        outcome TEXT
    )"""


def sqlite_path(url: str) -> str:
    """``sqlite:////abs/path.db`` → ``/abs/path.db`` (``sqlite:///rel.db`` → ``rel.db``)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a SQLite URL: {url!r}")
    return url[len(prefix) :]


class Recorder(Protocol):
    async def open(self) -> None: ...

    async def started(self, ctx: StepContext) -> int: ...

    async def finished(self, call_id: int, outcome: str) -> None: ...

    async def close(self) -> None: ...


def _row(ctx: StepContext) -> tuple[str, str, str, int, str, int, float]:
    return (
        ctx.instance_id,
        ctx.node,
        ctx.phase.value,
        ctx.attempt,
        ctx.idempotency_key,
        os.getpid(),
        time.time(),
    )


class SqliteRecorder:
    """One connection, owned by one thread; every write commits on its own (autocommit)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-calls")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def call() -> Any:
            if self._conn is None:
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA journal_mode = WAL")
                # A SIGKILL does not lose what the OS already has: NORMAL is durable enough here.
                conn.execute("PRAGMA synchronous = NORMAL")
                self._conn = conn
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        await self._run(lambda conn: conn.execute(calls_ddl(postgres=False)))

    async def started(self, ctx: StepContext) -> int:
        row = _row(ctx)

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                f"INSERT INTO {CALLS_TABLE} (instance_id, node, phase, attempt, idempotency_key,"
                " pid, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        call_id: int = await self._run(insert)
        return call_id

    async def finished(self, call_id: int, outcome: str) -> None:
        params = (time.time(), outcome, call_id)
        await self._run(
            lambda conn: conn.execute(
                f"UPDATE {CALLS_TABLE} SET finished_at = ?, outcome = ? WHERE id = ?", params
            )
        )

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(shut)
            self._conn = None
        self._executor.shutdown(wait=True)


class PostgresRecorder:
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "open() first"
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self._url, min_size=2, max_size=8)
        await self.pool.execute(calls_ddl(postgres=True))

    async def started(self, ctx: StepContext) -> int:
        call_id: int = await self.pool.fetchval(
            f"INSERT INTO {CALLS_TABLE} (instance_id, node, phase, attempt, idempotency_key,"
            " pid, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            *_row(ctx),
        )
        return call_id

    async def finished(self, call_id: int, outcome: str) -> None:
        await self.pool.execute(
            f"UPDATE {CALLS_TABLE} SET finished_at = $1, outcome = $2 WHERE id = $3",
            time.time(),
            outcome,
            call_id,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def open_recorder(calls_url: str) -> Recorder:
    if calls_url.startswith("sqlite:"):
        return SqliteRecorder(sqlite_path(calls_url))
    return PostgresRecorder(calls_url)


def make_handlers(recorder: Recorder) -> list[Callable[[StepContext], Awaitable[Any]]]:
    """One handler per step and phase: record, sleep, then succeed (or reject ``ship``)."""

    def make(node: str, phase: Phase) -> Callable[[StepContext], Awaitable[Any]]:
        async def call(ctx: StepContext) -> dict[str, Any]:
            call_id = await recorder.started(ctx)
            outcome = "cancelled"
            try:
                await asyncio.sleep(random.uniform(MIN_SLEEP, MAX_SLEEP))
                rejected = (
                    node == FAILING_STEP
                    and phase is Phase.ACTION
                    and bool(ctx.input.get("fail", False))
                )
                if rejected:
                    outcome = "rejected"
                    raise NonRetryableStepError(f"{node} rejected saga {ctx.instance_id}")
                outcome = "ok"
            finally:
                await recorder.finished(call_id, outcome)
            return {"node": node, "phase": phase.value, "attempt": ctx.attempt}

        call.__name__ = f"{node}_{phase.value}"
        return handler(f"{node}.{phase.value}")(call)

    return [make(node, phase) for node in STEPS for phase in Phase]


async def run_start(saga: Orchestrator, count: int) -> None:
    await saga.register(DEFINITION)
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start_one(index: int) -> None:
        async with gate:
            started = await saga.start(SAGA, {"index": index, "fail": should_fail(index)})
        # The start is durable once start() returned: only now is it acknowledged.
        sys.stdout.write(f"{started.instance_id}\n")
        sys.stdout.flush()

    await asyncio.gather(*(start_one(index) for index in range(count)))
    sys.stderr.write(f"crash_app[{os.getpid()}]: all {count} sagas started\n")
    sys.stderr.flush()
    await asyncio.Event().wait()  # run until killed


async def run_resume(saga: Orchestrator, ids_file: Path | None, timeout: float) -> int:
    ids = (await asyncio.to_thread(ids_file.read_text)).split() if ids_file is not None else []
    began = time.monotonic()
    deadline = began + timeout
    reported = 0.0
    while True:
        unfinished = await saga.store.list_unfinished()
        if time.monotonic() - reported >= 1.0 or not unfinished:
            reported = time.monotonic()
            sys.stderr.write(f"crash_app: +{reported - began:.1f}s unfinished={len(unfinished)}\n")
            sys.stderr.flush()
        if not unfinished:
            break
        if time.monotonic() > deadline:
            sys.stderr.write(
                f"crash_app: {len(unfinished)} instances unfinished after {timeout}s, e.g. "
                f"{[ref.instance_id for ref in unfinished[:5]]}\n"
            )
            return 2
        await asyncio.sleep(0.2)
    unsettled = []
    for instance_id in ids:
        view = await saga.get(instance_id)
        if not view.status.is_settled:
            unsettled.append((instance_id, view.status.value))
    if unsettled:
        sys.stderr.write(f"crash_app: acknowledged instances not settled: {unsettled[:5]}\n")
        return 3
    sys.stderr.write(f"crash_app[{os.getpid()}]: every instance settled\n")
    return 0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_app")
    parser.add_argument("--db", required=True, help="the store's database URL")
    parser.add_argument("--calls", required=True, help="where handler calls are recorded")
    parser.add_argument("--mode", choices=("start", "resume"), required=True)
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--ids", type=Path, help="resume: file of acknowledged instance ids")
    parser.add_argument("--timeout", type=float, default=120.0, help="resume: seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    recorder = open_recorder(args.calls)
    await recorder.open()
    try:
        async with Orchestrator(args.db, handlers=make_handlers(recorder)) as saga:
            if args.mode == "start":
                await run_start(saga, args.sagas)
                return 0  # not reached: start mode runs until it is killed
            return await run_resume(saga, args.ids, args.timeout)
    finally:
        await recorder.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
