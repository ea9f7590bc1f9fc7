"""The event stream (Server-Sent Events): replay after Last-Event-ID, live events until the
terminal one, heartbeats, overflow recovery, and clients that go away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from saga_orchestrator.api import ApiOptions
from saga_orchestrator.engine.bus import EventBus
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.api.support import (
    FAST_OPTIONS,
    INSTANCES,
    Frame,
    assert_problem,
    history,
    parse_stream,
    register,
    saga,
    start,
    steps,
    until,
    wait_status,
)
from tests.integration.engine.support import Participants

ORDER = saga("order", steps("reserve", "charge", "ship"))


@pytest.fixture
def options() -> ApiOptions:
    """Without the metrics' own subscriptions, the bus's subscribers are the streams."""
    return FAST_OPTIONS


def _assert_whole(frames: list[Frame], first: int = 1) -> None:
    seqs = [frame.id for frame in frames]
    assert seqs == list(range(first, first + len(frames))), seqs
    for frame in frames:
        assert frame.data["seq"] == frame.id
        assert frame.data["type"] == frame.event
        assert set(frame.data) == {"seq", "type", "recorded_at", "data"}


async def _finished_instance(client: httpx.AsyncClient) -> str:
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    await wait_status(client, instance_id)
    return instance_id


async def _subscribed(node: Orchestrator, instance_id: str) -> None:
    await until(lambda: node.engine.bus.has_subscribers(instance_id))


async def test_replay_after_last_event_id_ends_at_the_terminal_event(
    client: httpx.AsyncClient,
) -> None:
    instance_id = await _finished_instance(client)
    total = len(await history(client, instance_id))
    response = await client.get(f"{INSTANCES}/{instance_id}/stream", headers={"Last-Event-ID": "2"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    frames, _ = parse_stream(response.text)
    _assert_whole(frames, first=3)
    assert frames[-1].id == total
    assert frames[-1].event == "SagaCompleted"


async def test_after_replays_and_last_event_id_wins(client: httpx.AsyncClient) -> None:
    instance_id = await _finished_instance(client)
    url = f"{INSTANCES}/{instance_id}/stream"
    whole, _ = parse_stream((await client.get(url)).text)
    _assert_whole(whole)
    assert whole[0].event == "SagaStarted"
    after, _ = parse_stream((await client.get(url, params={"after": 4})).text)
    assert after == whole[4:]
    both, _ = parse_stream(
        (await client.get(url, params={"after": 1}, headers={"Last-Event-ID": "5"})).text
    )
    assert both == whole[5:]


async def test_live_events_follow_the_replay_until_completion(
    client: httpx.AsyncClient, node: Orchestrator, participants: Participants
) -> None:
    gate = participants.gates["charge"] = asyncio.Event()
    await register(client, ORDER)
    instance_id = await start(client, "order", {})
    await asyncio.wait_for(participants.reached("charge").wait(), 10)
    streaming = asyncio.create_task(client.get(f"{INSTANCES}/{instance_id}/stream"))
    await _subscribed(node, instance_id)
    before = len(await history(client, instance_id))
    await asyncio.sleep(0.2)  # quiet: heartbeats go out
    gate.set()
    response = await asyncio.wait_for(streaming, 10)
    frames, heartbeats = parse_stream(response.text)
    _assert_whole(frames)
    assert len(frames) > before, "later events must have arrived live"
    assert frames[-1].event == "SagaCompleted"
    assert heartbeats >= 1
    assert [f.event for f in frames] == [e["type"] for e in await history(client, instance_id)]


async def test_a_parked_saga_keeps_streaming_until_resolved(
    client: httpx.AsyncClient, node: Orchestrator, participants: Participants
) -> None:
    participants.script["charge"] = ["reject"]
    participants.script["undo.reserve"] = ["retry"]
    fragile = saga("order", steps("reserve", "charge", compensation_retry={"max_attempts": 1}))
    await register(client, fragile)
    instance_id = await start(client, "order", {})
    assert (await wait_status(client, instance_id))["status"] == "failed"
    streaming = asyncio.create_task(client.get(f"{INSTANCES}/{instance_id}/stream"))
    await _subscribed(node, instance_id)
    await asyncio.sleep(0.1)
    assert not streaming.done()
    resolved = await client.post(f"{INSTANCES}/{instance_id}/resolve", json={"reason": "done"})
    assert resolved.status_code == 200
    frames, _ = parse_stream((await asyncio.wait_for(streaming, 10)).text)
    _assert_whole(frames)
    events = [frame.event for frame in frames]
    assert "SagaParked" in events
    assert events[-1] == "OperatorResolved"


async def test_an_overflowed_subscription_is_caught_up_from_the_store(
    client: httpx.AsyncClient,
    node: Orchestrator,
    participants: Participants,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node.engine, "bus", EventBus(queue_size=1))
    gate = participants.gates["reserve"] = asyncio.Event()
    await register(client, saga("order", steps(*("reserve", "charge", "ship", "notify", "pack"))))
    instance_id = await start(client, "order", {})
    streaming = asyncio.create_task(client.get(f"{INSTANCES}/{instance_id}/stream"))
    await _subscribed(node, instance_id)
    gate.set()
    frames, _ = parse_stream((await asyncio.wait_for(streaming, 10)).text)
    _assert_whole(frames)
    assert frames[-1].event == "SagaCompleted"
    assert len(frames) == len(await history(client, instance_id))


async def test_streams_of_unknown_instances_and_bad_positions(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{INSTANCES}/{uuid.uuid4()}/stream"), 404, "not-found")
    assert_problem(await client.get(f"{INSTANCES}/nope/stream"), 422, "invalid-request")
    instance_id = await _finished_instance(client)
    url = f"{INSTANCES}/{instance_id}/stream"
    assert_problem(await client.get(url, params={"after": -1}), 422, "invalid-request")
    assert_problem(await client.get(url, headers={"Last-Event-ID": "x"}), 422, "invalid-request")


# --- a real server: the client goes away --------------------------------------------------


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await until(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


async def test_a_client_that_goes_away_releases_its_subscription(
    served: str, node: Orchestrator, participants: Participants
) -> None:
    participants.gates["charge"] = asyncio.Event()  # never opened: the saga waits
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        await register(client, ORDER)
        instance_id = await start(client, "order", {})
        await asyncio.wait_for(participants.reached("charge").wait(), 10)
        async with client.stream("GET", f"{INSTANCES}/{instance_id}/stream") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            async with asyncio.timeout(10):
                while not (await anext(lines)).startswith("event: SagaStarted"):
                    pass
            assert node.engine.bus.has_subscribers(instance_id)
    await until(lambda: not node.engine.bus.has_subscribers(instance_id))
