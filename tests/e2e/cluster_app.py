"""Participants of the cluster tests (``tests/e2e/test_cluster*.py``), run in-process by each
node: ``saga serve --handlers tests.e2e.cluster_app``.

Every call is recorded in the table ``e2e_cluster_calls`` of the database named by the
environment variable ``E2E_CALLS_URL`` (its own connections, named ``e2e-calls``, so a test that
terminates the nodes' database sessions leaves them alone): the node (``NODE_ID``) and process
that made it, the instance, step, phase, attempt and idempotency key, and when it started and
ended (``time.time()``). The row is written before the call does anything (its start is when it
was written), so a call cut short by SIGKILL is still on record, without an end; any other call
gets its end recorded, even when it is cancelled. A call that gives up because the table is
unreachable did nothing: its row, if written, is marked ``abandoned`` (empty interval).

A call sleeps a random time between ``input.min_sleep`` and ``input.max_sleep`` seconds (0 and
0.2 by default; the first attempt of ``reserve`` sleeps ``input.hang`` seconds if given), then
succeeds, except ``ship`` when ``input.fail`` is true: a definite
rejection, so the saga compensates ``reserve`` and ``charge``. Its output (or its error message)
names the call, so a test can tell whether the result of a given call reached the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import asyncpg

from saga_orchestrator import NonRetryableStepError, RetryableStepError, StepContext, handler

SAGA: Final = "cluster-order"
STEPS: Final = ("reserve", "charge", "ship")
FAILING_STEP: Final = "ship"
CALLS_TABLE: Final = "e2e_cluster_calls"
CALLS_APPLICATION: Final = "e2e-calls"

_RETRY: Final = {
    "max_attempts": 30,
    "initial_interval": 0.1,
    "backoff_coefficient": 1.5,
    "max_interval": 1.0,
}
DEFINITION: Final[dict[str, Any]] = {
    "name": SAGA,
    "version": "1.0.0",
    "description": "cluster end-to-end test: three compensatable steps",
    "steps": [
        {
            "name": step,
            "action": f"cluster.{step}",
            "compensation": f"cluster.undo_{step}",
            "retry": _RETRY,
            "timeout": 10,
            "compensation_retry": _RETRY,
            "compensation_timeout": 10,
        }
        for step in STEPS
    ],
}

CALLS_DDL: Final = f"""
CREATE TABLE IF NOT EXISTS {CALLS_TABLE} (
    call_id         uuid PRIMARY KEY,
    node_id         text NOT NULL,
    pid             integer NOT NULL,
    instance_id     text NOT NULL,
    step            text NOT NULL,
    phase           text NOT NULL,
    attempt         integer NOT NULL,
    idempotency_key text NOT NULL,
    started_at      double precision NOT NULL,
    finished_at     double precision,
    outcome         text
)
"""
_INSERT: Final = f"""
INSERT INTO {CALLS_TABLE} (call_id, node_id, pid, instance_id, step, phase, attempt,
                           idempotency_key, started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (call_id) DO NOTHING
"""
_FINISH: Final = f"UPDATE {CALLS_TABLE} SET finished_at = $2, outcome = $3 WHERE call_id = $1"
_ABANDON: Final = f"""
UPDATE {CALLS_TABLE} SET finished_at = started_at, outcome = 'abandoned'
WHERE call_id = $1 AND finished_at IS NULL
"""

START_PATIENCE: Final = 5.0
"""Seconds a call waits for the calls table before giving up (retryably: it did nothing)."""
FINISH_PATIENCE: Final = 120.0
"""Seconds a call keeps trying to record its end (the effect happened: it must be on record)."""


class _Recorder:
    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()

    async def _get(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    os.environ["E2E_CALLS_URL"],
                    min_size=1,
                    max_size=8,
                    server_settings={"application_name": CALLS_APPLICATION},
                )
            return self._pool

    async def _execute(
        self, patience: float, query: str, args: Callable[[], tuple[Any, ...]]
    ) -> bool:
        """Run ``query`` until it succeeds, with ``args()`` of each try, or ``patience`` ends."""
        deadline = time.monotonic() + patience
        while True:
            try:
                pool = await self._get()
                await pool.execute(query, *args(), timeout=10)
                return True
            except Exception:  # whatever the database or the driver went through: try again
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.2)

    async def started(self, call_id: uuid.UUID, step: StepContext) -> None:
        """Record the call as started now: the time of the try that records it, since the
        call does nothing before it is on record."""

        def row() -> tuple[Any, ...]:
            return (
                call_id,
                os.environ["NODE_ID"],
                os.getpid(),
                step.instance_id,
                step.node,
                step.phase.value,
                step.attempt,
                step.idempotency_key,
                time.time(),
            )

        if not await self._execute(START_PATIENCE, _INSERT, row):
            raise RetryableStepError("the calls table is unreachable", error_type="CallsDown")

    async def finished(self, call_id: uuid.UUID, at: float, outcome: str) -> None:
        await self._execute(FINISH_PATIENCE, _FINISH, lambda: (call_id, at, outcome))

    def abandon(self, call_id: uuid.UUID) -> None:
        """The call gives up before doing anything, though its row may have been written (the
        answer lost): mark it done at once, in the background, when the database answers."""
        task = asyncio.create_task(self._execute(FINISH_PATIENCE, _ABANDON, lambda: (call_id,)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


_recorder = _Recorder()


def _dump_tasks() -> None:
    """What every task of the node awaits (SIGUSR2), for a test to see why a node stalls."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


# A node that stops answering can be asked where it is: SIGUSR1 dumps the threads (even with
# the event loop blocked), SIGUSR2 the event loop's tasks.
if "E2E_CALLS_URL" in os.environ:  # in a node, not in the test that imports the definition
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with contextlib.suppress(RuntimeError):  # no running loop: no task dump
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)


async def _call(step: StepContext) -> dict[str, Any]:
    call_id = uuid.uuid4()
    outcome = "cancelled"
    on_record = True
    try:
        try:
            await _recorder.started(call_id, step)
        except RetryableStepError:
            on_record = False  # nothing done
            _recorder.abandon(call_id)
            raise
        low = float(step.input.get("min_sleep", 0.0))
        high = float(step.input.get("max_sleep", 0.2))
        hang = step.input.get("hang") if (step.node, step.attempt) == ("reserve", 1) else None
        await asyncio.sleep(float(hang) if hang else random.uniform(low, high))
        if step.node == FAILING_STEP and step.phase.value == "action" and step.input.get("fail"):
            outcome = "rejected"
            raise NonRetryableStepError(f"call {call_id}: rejected", error_type="Rejected")
        outcome = "ok"
    finally:
        # Also when cancelled (maybe just after the row was written): every row gets an end,
        # the end of the effect, not of its recording (which may wait for the database).
        if on_record:
            ended = time.time()
            await asyncio.shield(_recorder.finished(call_id, ended, outcome))
    return {"call_id": str(call_id), "node_id": os.environ["NODE_ID"], "pid": os.getpid()}


@handler("cluster.reserve")
async def reserve(step: StepContext) -> dict[str, Any]:
    return await _call(step)


@handler("cluster.charge")
async def charge(step: StepContext) -> dict[str, Any]:
    return await _call(step)


@handler("cluster.ship")
async def ship(step: StepContext) -> dict[str, Any]:
    return await _call(step)


@handler("cluster.undo_reserve")
async def undo_reserve(step: StepContext) -> dict[str, Any]:
    return await _call(step)


@handler("cluster.undo_charge")
async def undo_charge(step: StepContext) -> dict[str, Any]:
    return await _call(step)


@handler("cluster.undo_ship")
async def undo_ship(step: StepContext) -> dict[str, Any]:
    return await _call(step)
