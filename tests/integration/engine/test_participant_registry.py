"""The participant registry on a real store: validated entries, cached lookups that read the
store once per expiry however many steps ask at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from saga_orchestrator.definition.participants import ParticipantService
from saga_orchestrator.engine.participants import ParticipantRegistry, parse_service
from saga_orchestrator.errors import InvalidInput, NotFound
from saga_orchestrator.store import ParticipantEntry, Store, open_store


class CountingStore:
    """The real store, counting participant reads."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get_participant(self, tenant_id: str, name: str) -> ParticipantEntry | None:
        self.reads += 1
        await asyncio.sleep(0.01)  # a read that takes a while, so callers overlap
        return await self.store.get_participant(tenant_id, name)


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


SERVICE = ParticipantService(base_url="https://inventory.example.com")


async def test_put_get_list_delete(store: Store) -> None:
    registry = ParticipantRegistry(store)
    assert (await registry.put("t", "inventory", SERVICE)).created
    again = await registry.put("t", "inventory", SERVICE.model_copy(update={"timeout": 5.0}))
    assert (again.created, again.record.version) == (False, 2)
    assert (await registry.get("t", "inventory")).service.timeout == 5.0
    assert await registry.names("t") == {"inventory"}
    assert await registry.names("other") == frozenset()
    await registry.delete("t", "inventory")
    assert await registry.lookup("t", "inventory") is None
    with pytest.raises(NotFound):
        await registry.delete("t", "inventory")


async def test_concurrent_lookups_read_the_store_once_per_expiry(store: Store) -> None:
    await ParticipantRegistry(store).put("t", "inventory", SERVICE)
    counting = CountingStore(store)
    registry = ParticipantRegistry(counting)
    found = await asyncio.gather(*(registry.lookup("t", "inventory") for _ in range(50)))
    assert {r.version if r else None for r in found} == {1}
    assert counting.reads == 1
    registry.lookup_ttl = 0.0  # expired at once: the next wave reads once more
    await asyncio.gather(*(registry.lookup("t", "inventory") for _ in range(50)))
    assert counting.reads == 2


def test_a_bad_body_names_the_field() -> None:
    with pytest.raises(InvalidInput, match="base_url"):
        parse_service({"base_url": "ftp://x"})
