from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.engine.support import Participants

NAMES = ("reserve", "charge", "ship", "notify", "email", "sms", "review", "pack", "label")


@pytest_asyncio.fixture
async def participants() -> Participants:
    return Participants(NAMES)


OrchestratorFactory = Callable[..., Orchestrator]


@pytest_asyncio.fixture
async def orchestrator(store_url: str, participants: Participants) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(store_url, handlers=participants.registry()) as running:
        yield running


@pytest_asyncio.fixture
async def make_orchestrator(
    store_url: str, participants: Participants
) -> AsyncIterator[Callable[..., Orchestrator]]:
    """Build extra nodes on the same database (opened and closed by the test)."""
    built: list[Orchestrator] = []

    def make(**options: Any) -> Orchestrator:
        node = Orchestrator(store_url, handlers=participants.registry(), **options)
        built.append(node)
        return node

    yield make
    for node in built:
        await node.close(grace=0.1)
