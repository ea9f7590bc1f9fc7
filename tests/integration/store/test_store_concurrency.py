"""Contract: two stores (two connections or pools) racing on the same instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import asyncpg
import orjson
import pytest
import pytest_asyncio

from saga_orchestrator.store import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    Lease,
    Store,
    open_store,
)
from saga_orchestrator.store.audit import verify
from saga_orchestrator.store.postgres import PostgresOptions, PostgresStore

from .support import T0, TENANT, append, at, audit_entry, create, event, update

ROUNDS = 40


@pytest_asyncio.fixture
async def two_stores(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = open_store(store_url), open_store(store_url)
    try:
        await first.migrate()
        await second.migrate()
        yield first, second
    finally:
        await first.close()
        await second.close()


def statuses(results: Sequence[list[AppendResult]]) -> list[AppendStatus]:
    return sorted(result.status for [result] in results)


async def test_one_winner_per_round(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    await first.append([create("i-1")])
    last = 1
    winners: list[int] = []
    for n in range(ROUNDS):
        a = append("i-1", last, [event(2 * n)])
        b = append("i-1", last, [event(2 * n + 1), event(2 * n + 1)])
        results = await asyncio.gather(first.append([a]), second.append([b]))
        assert statuses(results) == [AppendStatus.APPENDED, AppendStatus.CONFLICT]
        won = 0 if results[0][0].status is AppendStatus.APPENDED else 1
        new_last = last + (1 if won == 0 else 2)
        assert results[won] == [AppendResult(status=AppendStatus.APPENDED, last_seq=new_last)]
        assert results[1 - won] == [AppendResult(status=AppendStatus.CONFLICT, last_seq=new_last)]
        winners.append(won)
        last = new_last
    events = await first.load_events(TENANT, "i-1")
    assert [e.seq for e in events] == list(range(1, last + 1))
    # Every stored event was written by the round's winner, and only by it.
    expected = [0] + [
        2 * n + won for n, won in enumerate(winners) for _ in range(1 if won == 0 else 2)
    ]
    assert [orjson.loads(e.data).get("n", 0) for e in events] == expected


async def test_racing_creates_of_one_instance(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    for n in range(ROUNDS // 4):
        results = await asyncio.gather(
            first.append([create(f"i-{n}", events=[event(1)])]),
            second.append([create(f"i-{n}", events=[event(1), event(2)])]),
        )
        assert statuses(results) == [AppendStatus.APPENDED, AppendStatus.CONFLICT]
        [winner] = next(r for r in results if r[0].status is AppendStatus.APPENDED)
        [loser] = next(r for r in results if r[0].status is AppendStatus.CONFLICT)
        assert loser.last_seq == winner.last_seq
        assert [e.seq for e in await first.load_events(TENANT, f"i-{n}")] == list(
            range(1, winner.last_seq + 1)
        )


async def test_racing_starts_with_one_key(two_stores: tuple[Store, Store]) -> None:
    first, second = two_stores
    for n in range(ROUNDS // 4):
        key = f"key-{n}"
        results = await asyncio.gather(
            first.append([create(f"a-{n}", key=key, digest="da")]),
            second.append([create(f"b-{n}", key=key, digest="db")]),
        )
        assert statuses(results) == [AppendStatus.APPENDED, AppendStatus.DUPLICATE_START]
        won = 0 if results[0][0].status is AppendStatus.APPENDED else 1
        winner_id, digest = (f"a-{n}", "da") if won == 0 else (f"b-{n}", "db")
        assert results[1 - won][0].existing_instance_id == winner_id
        assert results[1 - won][0].existing_request_digest == digest
        assert await first.find_start(TENANT, key) == (winner_id, digest)
        loser_id = f"b-{n}" if won == 0 else f"a-{n}"
        assert await first.get_instance(TENANT, loser_id) is None


async def test_racing_writers_extend_one_audit_chain(two_stores: tuple[Store, Store]) -> None:
    """Both stores record audited changes of the same tenants at once, including each
    tenant's first entry (its chain's head does not exist yet): one unbroken chain each."""
    first, second = two_stores
    tenants = [f"audited-{n}" for n in range(ROUNDS // 4)]

    def audited(tenant: str, instance_id: str) -> AppendRequest:
        entry = audit_entry(instance_id, tenant=tenant, action="instance.start")
        return replace(create(instance_id, tenant=tenant), audit=entry)

    for n in range(4):
        results = await asyncio.gather(
            first.append([audited(t, f"{t}-a{n}") for t in tenants]),
            second.append([audited(t, f"{t}-b{n}") for t in reversed(tenants)]),
        )
        assert {r.status for batch in results for r in batch} == {AppendStatus.APPENDED}
    for tenant in tenants:
        records, head = await first.audit_chain(tenant)
        assert [r.seq for r in records] == list(range(1, 9))
        assert verify(tenant, records, head) is None


@pytest.mark.postgres
async def test_postgres_replans_after_losing_a_start_key_race(pg_url: str) -> None:
    """The key is committed by another transaction after the batch read it as free."""
    store = open_store(pg_url)
    raw = await asyncpg.connect(pg_url)
    try:
        await store.migrate()
        await store.append([create("other")])
        transaction = raw.transaction()
        await transaction.start()
        await raw.execute(
            "INSERT INTO start_keys VALUES ($1, 'k', 'other', 'd-other', $2)", TENANT, T0
        )
        racing = asyncio.create_task(
            store.append([create("mine", key="k", digest="d-mine"), create("free")])
        )
        await _wait_for_lock_wait(raw)
        await transaction.commit()
        assert await racing == [
            AppendResult(
                status=AppendStatus.DUPLICATE_START,
                last_seq=0,
                existing_instance_id="other",
                existing_request_digest="d-other",
            ),
            AppendResult(status=AppendStatus.APPENDED, last_seq=1),
        ]
        assert await store.get_instance(TENANT, "mine") is None
        assert await store.get_instance(TENANT, "free") is not None
    finally:
        await raw.close()
        await store.close()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "last_seq = 2",
            AppendResult(status=AppendStatus.CONFLICT, last_seq=2),
        ),
        (
            "owner_id = 'n2', lease_epoch = 2",
            AppendResult(status=AppendStatus.LEASE_LOST, last_seq=1),
        ),
    ],
    ids=["moved on", "taken over"],
)
async def test_postgres_replans_when_an_instance_changes_under_an_unlocked_batch(
    pg_url: str, change: str, expected: AppendResult
) -> None:
    """The batch locks nothing up front: its update waits for the other writer's row,
    finds it changed and leaves it alone; the batch is planned again from the locked rows and
    gives each request its exact answer, the untouched instance's append (and wake-up)
    included, written once."""
    store = open_store(pg_url)
    raw = await asyncpg.connect(pg_url)
    lease = Lease(owner="n1", epoch=1, ttl=60)
    try:
        await store.migrate()
        await store.append([replace(create(i), lease=lease) for i in ("moving", "steady")])
        transaction = raw.transaction()
        await transaction.start()
        await raw.execute(f"UPDATE instances SET {change} WHERE instance_id = 'moving'")
        racing = asyncio.create_task(
            store.append(
                [
                    replace(
                        append("moving", 1, [event(5)]), lease=lease, audit=audit_entry("moving")
                    ),
                    replace(
                        append("steady", 1, [event(6)], state=update(wake_at=at(30))),
                        lease=lease,
                        audit=audit_entry("steady"),
                    ),
                ]
            )
        )
        await _wait_for_lock_wait(raw)
        await transaction.commit()
        assert await racing == [
            expected,
            AppendResult(status=AppendStatus.APPENDED, last_seq=2),
        ]
        assert [e.seq for e in await store.load_events(TENANT, "moving")] == [1]
        assert [e.seq for e in await store.load_events(TENANT, "steady")] == [1, 2]
        steady = await store.get_instance(TENANT, "steady")
        assert steady is not None and (steady.last_seq, steady.wake_at) == (2, at(30))
        # The audit records only what was appended, once, though the batch was written twice.
        records, head = await store.audit_chain(TENANT)
        assert [(r.seq, r.entry.target_id) for r in records] == [(1, "steady")]
        assert verify(TENANT, records, head) is None
    finally:
        await raw.close()
        await store.close()


@pytest.mark.postgres
async def test_postgres_an_append_cancelled_mid_statement_writes_nothing_and_frees_its_session(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's transactions are its own (BEGIN with the tenants): a cancelled one is
    rolled back, and the pool's only connection serves the next append at once."""
    store = PostgresStore(pg_url, PostgresOptions(min_size=1, max_size=1))
    raw = await asyncpg.connect(pg_url)
    try:
        await store.migrate()
        await store.append([create("i-1")])
        blocker = raw.transaction()
        await blocker.start()
        await raw.execute("UPDATE instances SET updated_at = now() WHERE instance_id = 'i-1'")
        stuck = asyncio.create_task(store.append([append("i-1", 1, [event(1)])]))
        await _wait_for_lock_wait(raw)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        await blocker.rollback()
        assert await store.append([append("i-1", 1, [event(2)])]) == [
            AppendResult(status=AppendStatus.APPENDED, last_seq=2)
        ]
        events = await store.load_events(TENANT, "i-1")
        assert [orjson.loads(e.data).get("n") for e in events] == [None, 2]
        assert "active transaction" not in caplog.text
    finally:
        await raw.close()
        await store.close()


async def _wait_for_lock_wait(raw: asyncpg.Connection[asyncpg.Record]) -> None:
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    for _ in range(500):
        if await raw.fetchval(query):
            return
        await asyncio.sleep(0.01)
    pytest.fail("the racing append never waited for the uncommitted key")
