from __future__ import annotations

import asyncio

from saga_orchestrator.engine.bus import CommittedEvent
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.engine.support import Participants, saga, steps


async def test_subscribers_receive_every_committed_event_of_their_instance_in_order(
    orchestrator: Orchestrator, participants: Participants
) -> None:
    gate = participants.gates["reserve"] = asyncio.Event()
    await orchestrator.register(saga("order", steps("reserve", "charge")))
    started = await orchestrator.start("order", {})
    with orchestrator.engine.bus.subscribe(started.instance_id) as subscription:
        gate.set()
        received: list[CommittedEvent] = []
        while not received or received[-1].type != "SagaCompleted":
            item = await asyncio.wait_for(subscription.get(), timeout=10)
            assert item is not None, "a node's own events come as events, never as nudges"
            received.append(item)
    stored = await orchestrator.store.load_events("default", started.instance_id)
    assert [e.seq for e in received] == [e.seq for e in stored][2:]
    assert [e.type for e in received] == [e.type for e in stored][2:]
    assert not subscription.overflowed
