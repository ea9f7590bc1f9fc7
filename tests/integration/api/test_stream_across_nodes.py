"""Live events across nodes: a client streaming an instance from node B sees, at once, the
events that node A writes (PostgreSQL LISTEN/NOTIFY wakes B's stream, which reads the store),
and the stream stays whole when a notification is lost (the store is read again)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.store import PostgresStore
from tests.integration.api.support import FAST_OPTIONS, parse_stream, saga, steps
from tests.integration.engine.support import Participants

ORDER = saga("order", steps("reserve", "charge", "ship"))
QUIET = 60.0
"""Node B's polling interval: far longer than the test may take, so only a notification can
bring A's events to B's stream in time."""


@pytest_asyncio.fixture
async def two_nodes(pg_url: str) -> AsyncIterator[tuple[Orchestrator, FastAPI, Participants]]:
    participants = Participants(("reserve", "charge", "ship"))
    node_b = Orchestrator(pg_url)  # serves the API; runs nothing of its own
    app_b = create_app(
        node_b, replace(FAST_OPTIONS, stream_poll_interval=QUIET, heartbeat_interval=QUIET)
    )
    async with node_b, app_b.router.lifespan_context(app_b):
        assert isinstance(node_b.store, PostgresStore)
        watch = node_b.engine._watch
        assert watch is not None
        async with asyncio.timeout(10):
            await watch.connected.wait()  # type: ignore[attr-defined]
        async with Orchestrator(pg_url, handlers=participants.registry()) as node_a:
            await node_a.register(ORDER)
            yield node_a, app_b, participants


async def test_a_stream_on_one_node_follows_a_saga_run_by_another(
    two_nodes: tuple[Orchestrator, FastAPI, Participants],
) -> None:
    node_a, app_b, participants = two_nodes
    participants.gates["reserve"] = asyncio.Event()  # the saga waits until B is streaming
    started = await node_a.start("order", {})
    transport = httpx.ASGITransport(app_b)
    async with httpx.AsyncClient(transport=transport, base_url="http://node-b") as client:

        async def follow() -> str:
            url = f"/api/v1/sagas/instances/{started.instance_id}/stream"
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                return (await response.aread()).decode()

        streaming = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # B has replayed the start and waits
        participants.gates["reserve"].set()
        async with asyncio.timeout(QUIET / 3):
            body = await streaming
    frames, _ = parse_stream(body)
    assert frames[-1].event == "SagaCompleted"
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))  # whole, in order
    assert len(frames) == len(await node_a.history(started.instance_id))
