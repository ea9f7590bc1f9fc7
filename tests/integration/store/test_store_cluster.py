"""Contract: cluster membership and leader leases, judged by the database's clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from saga_orchestrator.store import NodeRecord, Store, open_store

from .support import RawDatabase

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(node_id: str, address: str = "10.0.0.1:8000") -> NodeRecord:
    return NodeRecord(
        node_id=node_id, address=address, version="1.0", started_at=T0, heartbeat_at=T0
    )


async def test_nodes_heartbeat_list_and_leave(store: Store) -> None:
    await store.heartbeat_node(node("b"))
    await store.heartbeat_node(node("a"))
    first = {n.node_id: n.heartbeat_at for n in await store.list_nodes()}
    await asyncio.sleep(0.01)
    await store.heartbeat_node(node("a", address="10.0.0.9:8000"))
    listed = await store.list_nodes()
    assert [n.node_id for n in listed] == ["a", "b"]
    assert listed[0].address == "10.0.0.9:8000"
    assert listed[0].heartbeat_at > first["a"]  # stamped by the store, not by the caller
    assert listed[0].started_at == T0
    await store.remove_node("b")
    assert [n.node_id for n in await store.list_nodes()] == ["a"]


async def test_one_leader_at_a_time_with_a_rising_epoch(store: Store) -> None:
    first = await store.acquire_leadership("chores", "node-a", ttl=60)
    assert (first.holder, first.epoch) == ("node-a", 1)
    contender = await store.acquire_leadership("chores", "node-b", ttl=60)
    assert (contender.holder, contender.epoch) == ("node-a", 1)  # not expired: still a's
    renewed = await store.acquire_leadership("chores", "node-a", ttl=60)
    assert (renewed.holder, renewed.epoch) == ("node-a", 1)
    assert renewed.expires_at >= first.expires_at
    await store.release_leadership("chores", "node-b")  # not b's to release: nothing happens
    assert (await store.acquire_leadership("chores", "node-b", ttl=60)).holder == "node-a"
    await store.release_leadership("chores", "node-a")
    taken = await store.acquire_leadership("chores", "node-b", ttl=60)
    assert (taken.holder, taken.epoch) == ("node-b", 2)


async def test_an_expired_lease_is_taken_over(store: Store) -> None:
    await store.acquire_leadership("chores", "node-a", ttl=0.05)
    await asyncio.sleep(0.1)
    taken = await store.acquire_leadership("chores", "node-b", ttl=60)
    assert (taken.holder, taken.epoch) == ("node-b", 2)
    late = await store.acquire_leadership("chores", "node-a", ttl=60)  # a comes back: too late
    assert (late.holder, late.epoch) == ("node-b", 2)


async def test_concurrent_contenders_elect_exactly_one(store_url: str, store: Store) -> None:
    stores = [open_store(store_url) for _ in range(5)]
    try:
        results = await asyncio.gather(
            *(s.acquire_leadership("chores", f"node-{n}", ttl=60) for n, s in enumerate(stores))
        )
    finally:
        for opened in stores:
            await opened.close()
    assert len({r.holder for r in results}) == 1
    assert {r.epoch for r in results} == {1}


async def test_silent_nodes_are_reaped(store: Store, store_url: str) -> None:
    started = datetime.now(UTC)
    for node_id in ("alive", "dead"):
        await store.heartbeat_node(
            NodeRecord(
                node_id=node_id,
                address="x",
                version="1",
                started_at=started,
                heartbeat_at=started,
            )
        )
    async with RawDatabase(store_url) as db:  # "dead" last beat an hour ago
        back = "3600000000" if db.dialect == "sqlite" else "interval '1 hour'"
        await db.execute(
            f"UPDATE nodes SET heartbeat_at = heartbeat_at - {back} WHERE node_id = ?", "dead"
        )
    assert await store.reap_nodes(silent_for=600) == ["dead"]
    assert [node.node_id for node in await store.list_nodes()] == ["alive"]
    assert await store.reap_nodes(silent_for=600) == []
