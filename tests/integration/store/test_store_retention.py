"""Contract: the retention purge deletes whole histories of old terminal instances, and only
those; outside it the event log stays append-only."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from saga_orchestrator.store import InstanceStatus, Store

from .support import TENANT, RawDatabase, append, at, create, event, message, update

REFUSED = (sqlite3.IntegrityError, asyncpg.RestrictViolationError)


async def _instance(
    store: Store, instance_id: str, status: InstanceStatus, ended: float, key: str
) -> None:
    await store.append([create(instance_id, key=key, outbox=[message(instance_id, key)])])
    await store.append(
        [append(instance_id, 1, [event(2)], state=update(status=status, updated_at=at(ended)))]
    )


async def test_old_terminal_instances_go_with_their_histories(store: Store, store_url: str) -> None:
    await _instance(store, "old-done", InstanceStatus.COMPLETED, 10, "k1")
    await _instance(store, "old-undone", InstanceStatus.COMPENSATED, 20, "k2")
    await _instance(store, "old-running", InstanceStatus.RUNNING, 10, "k3")
    await _instance(store, "old-parked", InstanceStatus.FAILED, 10, "k4")
    await _instance(store, "recent-done", InstanceStatus.COMPLETED, 500, "k5")
    [claimed] = await store.claim_outbox(1, lease_seconds=60)
    await store.mark_outbox_published([claimed.id])  # old-done's message went out

    assert await store.purge_terminal(at(100), limit=10) == 2

    for gone in ("old-done", "old-undone"):
        assert await store.get_instance(TENANT, gone) is None
        assert await store.load_events(TENANT, gone) == []
    assert await store.find_start(TENANT, "k1") is None
    for kept in ("old-running", "old-parked", "recent-done"):  # unfinished, parked, too young
        assert len(await store.load_events(TENANT, kept)) == 2
    assert await store.find_start(TENANT, "k3") is not None
    async with RawDatabase(store_url) as db:
        outbox = await db.fetch("SELECT instance_id FROM outbox ORDER BY id")
    # old-undone's message was never published: it stays for the relay.
    assert [row[0] for row in outbox] == [
        "old-undone", "old-running", "old-parked", "recent-done",
    ]  # fmt: skip


async def test_the_purge_goes_in_batches_oldest_first(store: Store) -> None:
    for n in range(5):
        await _instance(store, f"done-{n}", InstanceStatus.CANCELLED, 10 + n, f"k{n}")
    assert await store.purge_terminal(at(100), limit=2) == 2
    remaining = [n for n in range(5) if await store.get_instance(TENANT, f"done-{n}") is not None]
    assert remaining == [2, 3, 4]
    assert await store.purge_terminal(at(100), limit=10) == 3
    assert await store.purge_terminal(at(100), limit=10) == 0


async def test_outside_the_purge_events_stay_append_only(store: Store, store_url: str) -> None:
    await _instance(store, "done", InstanceStatus.COMPLETED, 10, "k1")
    async with RawDatabase(store_url) as db:
        with pytest.raises(REFUSED, match="append-only"):
            await db.execute("DELETE FROM events WHERE instance_id = ?", "done")
    assert len(await store.load_events(TENANT, "done")) == 2
    await store.purge_terminal(at(100), limit=10)
    async with RawDatabase(store_url) as db:  # the purge's permission did not outlive it
        await _instance(store, "again", InstanceStatus.COMPLETED, 1000, "k2")
        with pytest.raises(REFUSED, match="append-only"):
            await db.execute("DELETE FROM events WHERE instance_id = ?", "again")
