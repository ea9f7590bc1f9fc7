"""Contract: claiming outbox messages, participant services and shared secrets."""

from __future__ import annotations

import asyncio

import pytest

from saga_orchestrator.store import LeaderFence, Store, open_store

from .support import OTHER_TENANT, TENANT, RawDatabase, append, create, event, message


async def _fill(store: Store, count: int) -> list[str]:
    ids = [f"m-{n:03d}" for n in range(count)]
    await store.append([create("a", outbox=[message("a", mid) for mid in ids])])
    return ids


async def test_claims_are_oldest_first_bounded_and_exclusive(store: Store) -> None:
    ids = await _fill(store, 7)
    first = await store.claim_outbox(3, lease_seconds=60)
    assert [row.message_id for row in first] == ids[:3]
    assert all(row.attempts == 1 for row in first)
    assert first[0].headers == {"idempotency-key": ids[0]}
    assert first[0].body == b'{"amount": 10}'
    second = await store.claim_outbox(10, lease_seconds=60)
    assert [row.message_id for row in second] == ids[3:]
    assert await store.claim_outbox(10, lease_seconds=60) == []
    assert await store.outbox_backlog() == 7


async def test_published_messages_are_never_claimed_again(store: Store, store_url: str) -> None:
    await _fill(store, 4)
    claimed = await store.claim_outbox(4, lease_seconds=0.001)
    await store.mark_outbox_published([claimed[0].id, claimed[2].id])
    assert await store.outbox_backlog() == 2
    await asyncio.sleep(0.01)  # let the short claims on the two others expire
    again = await store.claim_outbox(10, lease_seconds=60)
    assert [row.id for row in again] == [claimed[1].id, claimed[3].id]
    assert [row.attempts for row in again] == [2, 2]
    async with RawDatabase(store_url) as db:
        rows = await db.fetch(
            "SELECT published_at IS NOT NULL, body, headers FROM outbox ORDER BY id"
        )
    assert [bool(r[0]) for r in rows] == [True, False, True, False]
    # Publishing erased the bodies (no encryption here: they were plain), not the headers.
    assert [bytes(r[1]) for r in rows] == [b"", b'{"amount": 10}'] * 2
    assert all("idempotency-key" in str(r[2]) for r in rows)


async def test_released_messages_can_be_claimed_at_once(store: Store) -> None:
    await _fill(store, 2)
    claimed = await store.claim_outbox(2, lease_seconds=600)
    await store.release_outbox([row.id for row in claimed])
    assert [row.id for row in await store.claim_outbox(2, lease_seconds=600)] == [
        row.id for row in claimed
    ]


async def test_expired_claims_are_claimed_again(store: Store) -> None:
    await _fill(store, 1)
    [row] = await store.claim_outbox(1, lease_seconds=0.001)
    await asyncio.sleep(0.01)
    [again] = await store.claim_outbox(1, lease_seconds=60)
    assert again.id == row.id
    assert again.attempts == 2


async def test_concurrent_claimers_never_share_a_message(store_url: str, store: Store) -> None:
    ids = set(await _fill(store, 120))
    stores = [open_store(store_url) for _ in range(4)]
    try:

        async def drain(claimer: Store) -> list[str]:
            taken: list[str] = []
            while rows := await claimer.claim_outbox(7, lease_seconds=600):
                taken.extend(row.message_id for row in rows)
            return taken

        results = await asyncio.gather(*(drain(s) for s in stores))
    finally:
        for claimer in stores:
            await claimer.close()
    claimed = [mid for taken in results for mid in taken]
    assert len(claimed) == len(ids)
    assert set(claimed) == ids


async def test_messages_written_later_are_claimed_too(store: Store) -> None:
    await store.append([create("a", outbox=[message("a", "early")])])
    [early] = await store.claim_outbox(10, lease_seconds=600)
    await store.append([append("a", 1, [event(1)], outbox=[message("a", "late")])])
    [late] = await store.claim_outbox(10, lease_seconds=600)
    assert (early.message_id, late.message_id) == ("early", "late")


async def test_participants_are_versioned_per_tenant(store: Store) -> None:
    config = {"base_url": "https://inventory.example"}
    assert await store.get_participant(TENANT, "inventory") is None
    assert await store.put_participant(TENANT, "inventory", config) == 1
    assert await store.put_participant(TENANT, "inventory", {**config, "timeout": 5}) == 2
    assert await store.put_participant(OTHER_TENANT, "inventory", config) == 1
    assert await store.put_participant(TENANT, "billing", config) == 1
    entry = await store.get_participant(TENANT, "inventory")
    assert entry is not None
    assert (entry.name, entry.version, entry.config) == ("inventory", 2, {**config, "timeout": 5})
    assert [e.name for e in await store.list_participants(TENANT)] == ["billing", "inventory"]
    assert [e.name for e in await store.list_participants("nobody")] == []
    assert await store.delete_participant(TENANT, "inventory") is True
    assert await store.delete_participant(TENANT, "inventory") is False
    assert await store.get_participant(TENANT, "inventory") is None
    still = await store.get_participant(OTHER_TENANT, "inventory")
    assert still is not None
    assert still.version == 1


async def test_shared_secrets_keep_the_first_value(store_url: str, store: Store) -> None:
    other = open_store(store_url)
    try:
        first = await store.shared_secret("completion-tokens", b"A" * 32)
        second = await other.shared_secret("completion-tokens", b"B" * 32)
    finally:
        await other.close()
    assert first == second == b"A" * 32
    assert await store.shared_secret("another", b"C") == b"C"


@pytest.mark.postgres
async def test_a_deposed_leaders_claims_get_nothing(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        ids = await _fill(store, 3)
        old = await store.acquire_leadership("chores", "node-a", ttl=0.05)
        fence = LeaderFence(name="chores", holder="node-a", epoch=old.epoch)
        await asyncio.sleep(0.1)  # node-a's lease lapses; node-b leads now
        new = await store.acquire_leadership("chores", "node-b", ttl=60)
        assert (new.holder, new.epoch) == ("node-b", old.epoch + 1)

        assert await store.claim_outbox(10, lease_seconds=60, leader=fence) == []
        current = LeaderFence(name="chores", holder="node-b", epoch=new.epoch)
        claimed = await store.claim_outbox(10, lease_seconds=60, leader=current)
        assert [row.message_id for row in claimed] == ids
    finally:
        await store.close()
