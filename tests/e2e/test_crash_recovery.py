"""Crash recovery with a real process (semantics §3-§4).

A subprocess (:mod:`tests.e2e.crash_app`) starts 500 sagas whose handlers are slow and record
every call, idempotency key included, in a table of their own. Mid-run it is killed with
SIGKILL; a new process on the same database then brings every saga to its terminal state. From
the store and the calls table we check that no acknowledged start was lost, every step ran at
least once, exactly the succeeded steps were compensated, every call was scheduled in the
history before it happened, and every history is gap-free.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from saga_orchestrator.core import codec
from saga_orchestrator.core.events import (
    AttemptFailed,
    AttemptScheduled,
    Event,
    Phase,
    SagaCompensated,
    SagaCompleted,
    SagaStarted,
)
from saga_orchestrator.core.state import fold
from saga_orchestrator.core.status import InstanceStatus, StepStatus
from saga_orchestrator.store import InstanceFilter, Store, open_store
from tests.e2e.crash_app import CALLS_TABLE, FAILING_STEP, STEPS, calls_ddl, sqlite_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SAGAS = 500
KILL_AFTER_STARTED = 400
KILL_AFTER_CALLS = 300
START_TIMEOUT = 60.0
"""Seconds for the first process to reach the kill point."""
RESUME_TIMEOUT = 90.0
"""Seconds for the second process to settle every instance."""
TENANT = "default"


@dataclass(frozen=True, slots=True)
class Call:
    instance_id: str
    node: str
    phase: str
    attempt: int
    idempotency_key: str
    pid: int
    started_at: float
    finished_at: float | None
    outcome: str | None


_SELECT_CALLS = (
    "SELECT instance_id, node, phase, attempt, idempotency_key, pid, started_at, finished_at,"
    f" outcome FROM {CALLS_TABLE} ORDER BY id"
)


class Calls:
    """Reads the calls table that the subprocesses write (the test never writes to it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = not url.startswith("sqlite:")

    async def create(self) -> None:
        """Create the table up front, so the test can poll it from the first moment."""
        if self.postgres:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(calls_ddl(postgres=True))
            finally:
                await conn.close()
        else:
            await asyncio.to_thread(self._sqlite, calls_ddl(postgres=False))

    async def count(self) -> int:
        query = f"SELECT count(*) FROM {CALLS_TABLE}"
        if self.postgres:
            conn = await asyncpg.connect(self.url)
            try:
                found: int = await conn.fetchval(query)
            finally:
                await conn.close()
            return found
        rows = await asyncio.to_thread(self._sqlite, query)
        return int(rows[0][0])

    async def all(self) -> list[Call]:
        if self.postgres:
            conn = await asyncpg.connect(self.url)
            try:
                records = await conn.fetch(_SELECT_CALLS)
            finally:
                await conn.close()
            return [Call(*record.values()) for record in records]
        return [Call(*row) for row in await asyncio.to_thread(self._sqlite, _SELECT_CALLS)]

    def _sqlite(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(sqlite_path(self.url), timeout=10)
        try:
            with conn:
                return conn.execute(query).fetchall()
        finally:
            conn.close()


class Child:
    """One run of the crash app, its stdout and stderr in files under ``tmp_path``."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.stdout = tmp_path / f"{name}.out"
        self.stderr = tmp_path / f"{name}.err"
        self.process: asyncio.subprocess.Process | None = None

    async def spawn(self, *args: str) -> None:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.e2e.crash_app",
                *args,
                cwd=ROOT,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def acknowledged(self) -> list[str]:
        """Instance ids printed so far (complete lines only)."""
        text = self.stdout.read_text()
        return text[: text.rfind("\n") + 1].split()

    def report(self) -> str:
        return f"--- {self.stderr.name} ---\n{self.stderr.read_text()[-20_000:]}"

    async def kill(self) -> int:
        """SIGKILL, reap, and return the exit status (idempotent)."""
        assert self.process is not None
        if self.process.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
        return await self.process.wait()


@contextmanager
def reported(*children: Child) -> Iterator[None]:
    """On failure, show what the subprocesses wrote to stderr."""
    try:
        yield
    except BaseException:
        for child in children:
            if child.stderr.exists():
                sys.stderr.write(child.report() + "\n")
        raise


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process reused the pid
        return True
    return True


async def every_instance(store: Store) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list_instances(TENANT, InstanceFilter(), limit=500, cursor=cursor)
        ids.extend(record.instance_id for record in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def histories(store: Store, ids: list[str]) -> dict[str, list[tuple[int, Event]]]:
    result: dict[str, list[tuple[int, Event]]] = {}
    for instance_id in ids:
        stored = await store.load_events(TENANT, instance_id)
        result[instance_id] = [(e.seq, codec.decode(e.type, e.data)) for e in stored]
    return result


async def test_sigkill_mid_run_then_recovery_loses_nothing(store_url: str, tmp_path: Path) -> None:
    calls_url = store_url if store_url.startswith("postgres") else f"sqlite:///{tmp_path / 'c.db'}"
    calls = Calls(calls_url)
    await calls.create()
    common = ["--db", store_url, "--calls", calls_url, "--sagas", str(SAGAS)]
    first = Child(tmp_path, "first")
    second = Child(tmp_path, "second")
    began = time.monotonic()

    with reported(first, second):
        # -- run 1: start the sagas, kill the process mid-run --
        await first.spawn(*common, "--mode", "start")
        try:
            limit = time.monotonic() + START_TIMEOUT
            while True:
                assert first.process is not None
                assert first.process.returncode is None, "the start process exited by itself"
                started = len(first.acknowledged())
                recorded = await calls.count()
                if started >= KILL_AFTER_STARTED and recorded >= KILL_AFTER_CALLS:
                    break
                assert time.monotonic() < limit, f"kill point not reached: {started=} {recorded=}"
                await asyncio.sleep(0.02)
        finally:
            status = await first.kill()
        killed_at = time.monotonic()
        assert status == -signal.SIGKILL
        assert not pid_exists(first.pid), "the killed process is still there"
        acknowledged = first.acknowledged()
        assert len(acknowledged) == len(set(acknowledged))
        calls_before = await calls.all()

        store = open_store(store_url)
        try:
            unfinished_at_kill = {ref.instance_id for ref in await store.list_unfinished()}
        finally:
            await store.close()
        # Otherwise the test would pass trivially: the crash must land mid-flight.
        assert unfinished_at_kill & set(acknowledged), (
            "every acknowledged saga had already finished when the process was killed"
        )

        # -- run 2: a new process on the same database resumes and finishes everything --
        ids_file = tmp_path / "acknowledged.txt"
        ids_file.write_text("\n".join(acknowledged) + "\n")
        await second.spawn(
            *common, "--mode", "resume", "--ids", str(ids_file), "--timeout", str(RESUME_TIMEOUT)
        )
        assert second.process is not None
        try:
            code = await asyncio.wait_for(second.process.wait(), RESUME_TIMEOUT + 30)
        finally:
            await second.kill()
        resumed_in = time.monotonic() - killed_at
        assert code == 0, f"the resume process exited with {code}"
        # Recovery went through cleanly: no failed resume, no task dying with a traceback.
        for child in (first, second):
            log = child.stderr.read_text()
            assert "Traceback" not in log and "ERROR" not in log, child.report()

        # -- what the store says --
        store = open_store(store_url)
        try:
            assert await store.list_unfinished() == []
            stored = await every_instance(store)
            missing = set(acknowledged) - set(stored)
            assert not missing, f"acknowledged starts lost: {sorted(missing)[:5]}"
            events = await histories(store, stored)
        finally:
            await store.close()
        all_calls = await calls.all()
        check_outcome(acknowledged, events, all_calls, first.pid, second.pid)

        retried = retried_after_crash(all_calls, first.pid, second.pid)
        sys.stderr.write(
            f"\n[{'postgres' if calls.postgres else 'sqlite'}] acknowledged={len(acknowledged)}"
            f" unfinished_at_kill={len(unfinished_at_kill)} calls_before_kill={len(calls_before)}"
            f" unfinished_calls_at_kill={sum(c.finished_at is None for c in calls_before)}"
            f" calls_total={len(all_calls)} retried_after_crash={len(retried)}"
            f" kill_after={killed_at - began:.1f}s resume={resumed_in:.1f}s\n"
        )


def check_outcome(
    acknowledged: list[str],
    events: dict[str, list[tuple[int, Event]]],
    all_calls: list[Call],
    first_pid: int,
    second_pid: int,
) -> None:
    """``events``: the history of every instance in the store, acknowledged or not (a start
    can be durable without the killed process having printed it)."""
    by_instance: dict[str, list[Call]] = defaultdict(list)
    for call in all_calls:
        assert call.pid in (first_pid, second_pid)
        by_instance[call.instance_id].append(call)
    # Every call is of an instance in the store.
    assert set(by_instance) <= set(events)
    assert len(events) <= SAGAS

    for instance_id, history in events.items():
        assert history, f"instance {instance_id} has no history"
        check_history(instance_id, history)
        check_calls(instance_id, history, by_instance[instance_id])

    # The crash landed mid-flight: some saga was begun by the killed process and finished by
    # the new one, and some attempt in flight at the kill was retried after it.
    crossed = [
        instance_id
        for instance_id in acknowledged
        if {c.pid for c in by_instance[instance_id]} == {first_pid, second_pid}
    ]
    assert crossed, "no saga was called by both processes"
    assert retried_after_crash(all_calls, first_pid, second_pid), (
        "no step was called again after the crash"
    )


def check_history(instance_id: str, history: list[tuple[int, Event]]) -> None:
    sequences = [seq for seq, _ in history]
    assert sequences == list(range(1, len(history) + 1)), f"{instance_id}: gaps {sequences}"
    first_event = history[0][1]
    assert isinstance(first_event, SagaStarted)
    assert first_event.instance_id == instance_id
    fail = bool(first_event.input["fail"])
    state = fold(event for _, event in history)
    last = history[-1][1]
    if fail:
        assert state.status is InstanceStatus.COMPENSATED, f"{instance_id}: {state.status}"
        assert isinstance(last, SagaCompensated)
        assert state.node("reserve").status is StepStatus.COMPENSATED
        assert state.node("charge").status is StepStatus.COMPENSATED
        assert state.node(FAILING_STEP).status is StepStatus.FAILED
        error = state.node(FAILING_STEP).error
        assert error is not None and not error.unknown and not error.retryable
    else:
        assert state.status is InstanceStatus.COMPLETED, f"{instance_id}: {state.status}"
        assert isinstance(last, SagaCompleted)
        for step in STEPS:
            assert state.node(step).status is StepStatus.SUCCEEDED
            assert state.node(step).compensation.attempts == 0


def check_calls(instance_id: str, history: list[tuple[int, Event]], calls: list[Call]) -> None:
    fail = bool(history[0][1].input["fail"])  # type: ignore[attr-defined]
    scheduled = {
        (e.node, e.phase.value, e.attempt): e.idempotency_key
        for _, e in history
        if isinstance(e, AttemptScheduled)
    }
    per_step: dict[tuple[str, str], list[Call]] = defaultdict(list)
    # One dispatch per scheduled attempt: a retry (after the crash too) is a new attempt.
    dispatched = Counter((c.node, c.phase, c.attempt) for c in calls)
    assert max(dispatched.values(), default=1) == 1, f"{instance_id}: {dispatched}"
    for call in calls:
        # Every call is an attempt that was scheduled in the history before it was dispatched,
        # with the key that is stable across retries and crashes.
        assert call.idempotency_key == f"{instance_id}:{call.node}:{call.phase}"
        key = scheduled.get((call.node, call.phase, call.attempt))
        assert key == call.idempotency_key, f"{instance_id}: unscheduled call {call}"
        per_step[(call.node, call.phase)].append(call)

    for step in STEPS:
        actions = per_step[(step, Phase.ACTION.value)]
        assert actions, f"{instance_id}: {step} never called"
        # The attempt that decided the step really ran to its end.
        last_attempt = max(a for (n, p, a) in scheduled if n == step and p == "action")
        assert any(c.attempt == last_attempt and c.finished_at is not None for c in actions), (
            f"{instance_id}: the last attempt of {step} has no finished call"
        )
        compensations = per_step[(step, Phase.COMPENSATION.value)]
        if fail and step != FAILING_STEP:
            assert compensations, f"{instance_id}: succeeded step {step} not compensated"
            assert all(c.outcome != "rejected" for c in compensations)
        else:
            assert not compensations, f"{instance_id}: {step} compensated but should not be"
    if fail:
        rejected = [c for c in per_step[(FAILING_STEP, "action")] if c.outcome == "rejected"]
        assert rejected, f"{instance_id}: {FAILING_STEP} was never rejected"
    # Recovery records each attempt that was in flight in the killed process as an unknown
    # failure: at most once per step and phase, and the next attempt follows it.
    interrupted = [
        e for _, e in history if isinstance(e, AttemptFailed) and e.error.type == "Interrupted"
    ]
    assert all(e.error.unknown and e.error.retryable for e in interrupted)
    assert len({(e.node, e.phase) for e in interrupted}) == len(interrupted)
    for e in interrupted:
        assert (e.node, e.phase.value, e.attempt + 1) in scheduled, f"{instance_id}: {e}"


def retried_after_crash(calls: list[Call], first_pid: int, second_pid: int) -> list[Call]:
    """Calls by the new process of a step that the killed one had called already (its attempt
    was in flight, or finished without its outcome being recorded)."""
    last_before: dict[tuple[str, str, str], int] = {}
    for call in calls:
        if call.pid == first_pid:
            step = (call.instance_id, call.node, call.phase)
            last_before[step] = max(last_before.get(step, 0), call.attempt)
    return [
        call
        for call in calls
        if call.pid == second_pid
        and (call.instance_id, call.node, call.phase) in last_before
        and call.attempt > last_before[(call.instance_id, call.node, call.phase)]
    ]
