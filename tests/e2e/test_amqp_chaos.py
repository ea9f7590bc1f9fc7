"""RabbitMQ failing under load: 500 sagas whose steps run in a real ``saga worker`` process,
while the broker first closes every connection and is then stopped and started again.

Every saga must complete, no command may be lost (each step's effect is recorded exactly once
by the participant, which dedupes on the idempotency key), and the outbox must drain. The test
guards against trivial passes: it checks the outages really happened mid-run (sagas were still
unfinished, the relay saw the broker unreachable) and that duplicates, if any, were absorbed by
the participant rather than executed twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.store import InstanceFilter
from tests.integration.transports.rabbitmq import close_connections, rabbitmq_vhost, rabbitmqctl

SAGAS = 500
STEPS = ("reserve", "charge", "ship")

HANDLERS = textwrap.dedent(
    """
    import os
    import random
    import sqlite3
    import time

    from saga_orchestrator.sdk import StepContext, handler

    DB = os.environ["CHAOS_EFFECTS_DB"]


    def _effect(name: str, ctx: StepContext) -> dict[str, str]:
        # Some work, so the run lasts long enough for the outages to hit it.
        time.sleep(random.uniform(0.05, 0.15))
        # The participant's own dedupe: the effect happens once per idempotency key, however
        # often the command is delivered; every delivery is recorded too.
        with sqlite3.connect(DB, timeout=30) as db:
            delivery = (ctx.idempotency_key, ctx.attempt)
            db.execute("INSERT INTO calls (key, attempt) VALUES (?, ?)", delivery)
            db.execute("INSERT OR IGNORE INTO effects (key) VALUES (?)", (ctx.idempotency_key,))
        return {"done": name}


    @handler("reserve")
    def reserve(ctx: StepContext) -> dict[str, str]:
        return _effect("reserve", ctx)


    @handler("charge")
    def charge(ctx: StepContext) -> dict[str, str]:
        return _effect("charge", ctx)


    @handler("ship")
    def ship(ctx: StepContext) -> dict[str, str]:
        return _effect("ship", ctx)
    """
)

DEFINITION = {
    "name": "chaos",
    "version": "1.0.0",
    "steps": [
        {
            "name": name,
            "action": name,
            "timeout": 8,
            "retry": {"max_attempts": 20, "initial_interval": 0.2, "max_interval": 2},
        }
        for name in STEPS
    ],
}


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        yield url


@pytest_asyncio.fixture
async def effects_db(tmp_path: Path) -> Path:
    path = tmp_path / "effects.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE calls (key TEXT NOT NULL, attempt INTEGER NOT NULL)")
        db.execute("CREATE TABLE effects (key TEXT PRIMARY KEY)")
    return path


@pytest_asyncio.fixture
async def worker(tmp_path: Path, amqp_url: str, effects_db: Path) -> AsyncIterator[None]:
    (tmp_path / "chaos_handlers.py").write_text(HANDLERS)
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "CHAOS_EFFECTS_DB": str(effects_db),
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
        [sys.executable, "-m", "saga_orchestrator.cli", "worker", "--handlers", "chaos_handlers"],
        env=env,
        cwd=tmp_path,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def _finished(node: Orchestrator, ids: list[str]) -> int:
    done = InstanceFilter(status=InstanceStatus.COMPLETED)
    page = await node.store.list_instances(node.tenant_id, done, limit=SAGAS)
    return len(page.items)


async def _wait_until(node: Orchestrator, ids: list[str], count: int, timeout: float) -> int:
    async with asyncio.timeout(timeout):
        while (done := await _finished(node, ids)) < count:  # noqa: ASYNC110 - store reads
            await asyncio.sleep(0.2)
    return done


@pytest.mark.timeout(400)
async def test_sagas_survive_connection_loss_and_a_broker_restart(
    sqlite_url: str, amqp_url: str, worker: None, effects_db: Path
) -> None:
    async with Orchestrator(sqlite_url, amqp_url=amqp_url, require_known_handlers=False) as node:
        assert node.relay is not None
        await node.register(DEFINITION)
        ids = [(await node.start("chaos", {"n": n})).instance_id for n in range(SAGAS)]

        done = await _wait_until(node, ids, SAGAS // 5, timeout=120)
        assert done < SAGAS, "the outage must hit a run in progress"
        await close_connections(amqp_url)

        done = await _wait_until(node, ids, SAGAS // 2, timeout=120)
        assert done < SAGAS, "the restart must hit a run in progress"
        await rabbitmqctl("stop_app")
        try:
            async with asyncio.timeout(60):
                while node.relay.counters.failures == 0:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.1)
        finally:
            await rabbitmqctl("start_app")
            await rabbitmqctl("await_startup")

        await _wait_until(node, ids, SAGAS, timeout=240)
        views = [await node.get(i) for i in ids]
        assert [v.status for v in views] == [InstanceStatus.COMPLETED] * SAGAS

        async with asyncio.timeout(60):
            while await node.store.outbox_backlog():  # noqa: ASYNC110 - the store's count
                await asyncio.sleep(0.1)

    with sqlite3.connect(effects_db) as db:
        effects = {row[0] for row in db.execute("SELECT key FROM effects")}
        deliveries = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    expected = {f"{i}:{step}:action" for i in ids for step in STEPS}
    assert effects == expected  # every step's effect happened, exactly once per key
    assert deliveries >= len(expected)  # duplicates were delivered, and absorbed by the key
