"""Contract: instance leases for clustering (semantics §5), on PostgreSQL.

Expiry is judged by the database's clock: a lease is made to expire either by a tiny ``ttl``
and a wait, or by moving ``lease_expires_at`` into the past with raw SQL. SQLite serves a
single node and refuses every lease (the last tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

import pytest
import pytest_asyncio

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.store import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    ClaimedInstance,
    InstanceRef,
    InstanceStatus,
    Lease,
    Store,
    open_store,
)
from saga_orchestrator.store.postgres_listen import EventListener

from .support import OTHER_TENANT, TENANT, RawDatabase, append, create, event, message, update

APPENDED, CONFLICT, LEASE_LOST = (
    AppendStatus.APPENDED,
    AppendStatus.CONFLICT,
    AppendStatus.LEASE_LOST,
)
UNFINISHED = (InstanceStatus.RUNNING, InstanceStatus.COMPENSATING)
SETTLED = tuple(s for s in InstanceStatus if s not in UNFINISHED)
TERMINAL = tuple(s for s in InstanceStatus if s.is_terminal)
LONG = 600.0
"""A ttl no test outlives."""

postgres = pytest.mark.postgres


@pytest_asyncio.fixture
async def pg(pg_url: str) -> AsyncIterator[Store]:
    store = open_store(pg_url)
    try:
        yield store
    finally:
        await store.close()


@pytest_asyncio.fixture
async def db(pg_url: str) -> AsyncIterator[RawDatabase]:
    async with RawDatabase(pg_url) as raw:
        yield raw


# -- builders and raw reads --


def leased(request: AppendRequest, owner: str, epoch: int = 1, ttl: float = LONG) -> AppendRequest:
    return replace(request, lease=Lease(owner=owner, epoch=epoch, ttl=ttl))


def owned(
    instance_id: str,
    owner: str,
    *,
    ttl: float = LONG,
    status: InstanceStatus = InstanceStatus.RUNNING,
    tenant: str = TENANT,
) -> AppendRequest:
    """A create under ``owner``'s lease (epoch 1)."""
    return leased(create(instance_id, tenant=tenant, state=update(status=status)), owner, ttl=ttl)


def unowned(
    instance_id: str, status: InstanceStatus = InstanceStatus.RUNNING, tenant: str = TENANT
) -> AppendRequest:
    return create(instance_id, tenant=tenant, state=update(status=status))


def ok(last_seq: int) -> AppendResult:
    return AppendResult(status=APPENDED, last_seq=last_seq)


def lost(last_seq: int) -> AppendResult:
    return AppendResult(status=LEASE_LOST, last_seq=last_seq)


class Row(NamedTuple):
    owner: str | None
    epoch: int
    live: bool | None
    """``lease_expires_at > now()`` of the database (None: no expiry at all)."""
    takeovers: int
    quarantined: bool


async def row(db: RawDatabase, instance_id: str) -> Row:
    [found] = await db.fetch(
        "SELECT owner_id, lease_epoch, lease_expires_at > now(), takeovers, "
        "quarantined_at IS NOT NULL FROM instances WHERE instance_id = ?",
        instance_id,
    )
    return Row(*found)


async def seconds_left(db: RawDatabase, instance_id: str) -> float:
    [(left,)] = await db.fetch(
        "SELECT extract(epoch FROM lease_expires_at - now()) FROM instances WHERE instance_id = ?",
        instance_id,
    )
    assert left is not None, f"{instance_id} has no lease expiry"
    return float(left)


async def expire(db: RawDatabase, *instance_ids: str) -> None:
    await db.execute(
        "UPDATE instances SET lease_expires_at = now() - interval '1 second' "
        "WHERE instance_id = ANY(?::text[])",
        list(instance_ids),
    )


async def seqs(store: Store, instance_id: str, tenant: str = TENANT) -> list[int]:
    return [e.seq for e in await store.load_events(tenant, instance_id)]


def epochs(claimed: Sequence[ClaimedInstance]) -> dict[str, int]:
    return {c.instance_id: c.epoch for c in claimed}


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Generous, never a timed assertion: notifications may take a while on a loaded host."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"waited 10 s for {what}")


# -- 1. appends under a lease --


@postgres
async def test_a_create_under_a_lease_makes_its_owner_own_it_at_epoch_one(
    pg: Store, db: RawDatabase
) -> None:
    assert await pg.append([owned("mine", "node-a", ttl=30), unowned("free")]) == [ok(1), ok(1)]
    assert await row(db, "mine") == Row("node-a", 1, True, 0, False)
    assert 0 < await seconds_left(db, "mine") <= 30
    assert await row(db, "free") == Row(None, 0, None, 0, False)


@postgres
async def test_appends_under_the_lease_succeed_and_leave_its_expiry_to_renewals(
    pg: Store, db: RawDatabase
) -> None:
    """An append does not touch lease_expires_at (an indexed column): the row's update stays
    HOT; renewals extend leases in batches."""
    await pg.append([owned("i-1", "node-a", ttl=5)])
    expiry = await db.fetch("SELECT lease_expires_at FROM instances WHERE instance_id = ?", "i-1")
    request = leased(append("i-1", 1, [event(1), event(2)]), "node-a", 1, ttl=LONG)
    assert await pg.append([request]) == [ok(3)]
    assert (
        await db.fetch("SELECT lease_expires_at FROM instances WHERE instance_id = ?", "i-1")
        == expiry
    )
    assert await row(db, "i-1") == Row("node-a", 1, True, 0, False)
    assert await seqs(pg, "i-1") == [1, 2, 3]


@postgres
async def test_a_lease_expired_but_not_taken_over_still_writes(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("i-1", "node-a")])
    await expire(db, "i-1")
    assert (await row(db, "i-1")).live is False
    assert await pg.append([leased(append("i-1", 1, [event(1)]), "node-a")]) == [ok(2)]
    # Written, but not extended: the next renewal does that (or a claim takes it over).
    assert await row(db, "i-1") == Row("node-a", 1, False, 0, False)


@postgres
async def test_an_append_under_a_lost_lease_writes_nothing(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("i-1", "node-a"), unowned("other")])
    before = await seconds_left(db, "i-1")
    refused = [
        leased(append("i-1", 1, [event(1)], outbox=[message("i-1", "m-1")]), "node-a", epoch=2),
        leased(append("i-1", 1, [event(2)]), "node-b", epoch=1),
        leased(append("i-1", 0, [event(3)]), "node-b", epoch=1),  # stale seq too
    ]
    for request in refused:
        assert await pg.append([request]) == [lost(1)]
    # In one batch with a good request: only the refused one is left out.
    batch = [leased(append("i-1", 1, [event(4)]), "node-b"), append("other", 1, [event(5)])]
    assert await pg.append(batch) == [lost(1), ok(2)]
    assert await seqs(pg, "i-1") == [1]
    record = await pg.get_instance(TENANT, "i-1")
    assert record is not None
    assert record.last_seq == 1
    assert await pg.outbox_backlog() == 0
    assert await row(db, "i-1") == Row("node-a", 1, True, 0, False)
    assert await seconds_left(db, "i-1") <= before  # a refused write renews nothing
    # The right lease with a stale sequence is an ordinary conflict; with the right one, a write.
    right = leased(append("i-1", 0, [event(6)]), "node-a", epoch=1)
    assert await pg.append([right]) == [AppendResult(status=CONFLICT, last_seq=1)]
    assert await pg.append([replace(right, expected_seq=1)]) == [ok(2)]
    assert await seqs(pg, "i-1") == [1, 2]


@postgres
async def test_a_lease_on_an_unowned_instance_is_lost(pg: Store) -> None:
    await pg.append([unowned("free")])
    assert await pg.append([leased(append("free", 1, [event(1)]), "node-a", 0)]) == [lost(1)]
    assert await seqs(pg, "free") == [1]


@postgres
async def test_an_append_without_a_lease_leaves_the_owner_alone(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("i-1", "node-a", ttl=30)])
    [(expires_before,)] = await db.fetch(
        "SELECT lease_expires_at FROM instances WHERE instance_id = 'i-1'"
    )
    outside = append("i-1", 1, [event(1, "SignalReceived")])  # recorded at another node
    assert await pg.append([outside]) == [ok(2)]
    assert await seqs(pg, "i-1") == [1, 2]
    assert await row(db, "i-1") == Row("node-a", 1, True, 0, False)
    [(expires_after,)] = await db.fetch(
        "SELECT lease_expires_at FROM instances WHERE instance_id = 'i-1'"
    )
    assert expires_after == expires_before
    # ... and is still fenced by the sequence alone.
    assert await pg.append([outside]) == [AppendResult(status=CONFLICT, last_seq=2)]


@postgres
async def test_a_create_and_appends_under_its_lease_in_one_batch(
    pg: Store, db: RawDatabase
) -> None:
    batch = [
        owned("i-1", "node-a"),
        leased(append("i-1", 1, [event(1)]), "node-a", epoch=1),
        leased(append("i-1", 2, [event(2)]), "node-a", epoch=2),
    ]
    assert await pg.append(batch) == [ok(1), ok(2), lost(2)]
    assert await seqs(pg, "i-1") == [1, 2]
    assert await row(db, "i-1") == Row("node-a", 1, True, 0, False)


def settle_then_write(instance_id: str, settler: str) -> list[AppendRequest]:
    """A request settling the instance, then one under the lease it had (epoch 1)."""
    cancelled = update(status=InstanceStatus.CANCELLED)
    if settler == "create":
        return [
            owned(instance_id, "node-a", status=InstanceStatus.CANCELLED),
            leased(append(instance_id, 1, [event(2)]), "node-a"),
        ]
    cancel = append(instance_id, 1, [event(1)], state=cancelled)
    if settler == "owner":
        cancel = leased(cancel, "node-a")
    return [cancel, leased(append(instance_id, 2, [event(2)]), "node-a")]


@postgres
@pytest.mark.parametrize("settler", ["outside", "owner", "create"])
async def test_a_batch_decides_leases_as_its_requests_would_one_by_one(
    pg: Store, db: RawDatabase, settler: str
) -> None:
    if settler != "create":
        await pg.append([owned("one-by-one", "node-a"), owned("batched", "node-a")])
    alone = [
        result
        for request in settle_then_write("one-by-one", settler)
        for result in await pg.append([request])
    ]
    first_seq = 1 if settler == "create" else 2
    assert alone == [ok(first_seq), lost(first_seq)]
    assert await pg.append(settle_then_write("batched", settler)) == alone
    assert await row(db, "batched") == await row(db, "one-by-one")


# -- 2. settling gives the lease up --


@postgres
@pytest.mark.parametrize("status", SETTLED)
@pytest.mark.parametrize("under_lease", [True, False], ids=["owner", "outside"])
async def test_settling_clears_the_owner(
    pg: Store, db: RawDatabase, status: InstanceStatus, under_lease: bool
) -> None:
    await pg.append([owned("i-1", "node-a")])
    settle = append("i-1", 1, [event(1)], state=update(status=status))
    if under_lease:
        settle = leased(settle, "node-a")
    assert await pg.append([settle]) == [ok(2)]
    assert await row(db, "i-1") == Row(None, 1, None, 0, False)


@postgres
async def test_compensating_keeps_the_owner(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("i-1", "node-a")])
    state = update(status=InstanceStatus.COMPENSATING)
    assert await pg.append([leased(append("i-1", 1, [event(1)], state=state), "node-a")]) == [ok(2)]
    assert await row(db, "i-1") == Row("node-a", 1, True, 0, False)


@postgres
@pytest.mark.parametrize("status", SETTLED)
async def test_a_create_in_a_settled_status_has_no_owner(
    pg: Store, db: RawDatabase, status: InstanceStatus
) -> None:
    assert await pg.append([owned("i-1", "node-a", status=status)]) == [ok(1)]
    assert (await row(db, "i-1"))[::2] == (None, None, False)  # owner, live, quarantined


# -- 3. claims of orphaned instances --


@postgres
async def test_claims_take_unowned_and_expired_instances_never_live_ones(
    pg: Store, db: RawDatabase
) -> None:
    await pg.append(
        [
            owned("live", "node-a"),
            owned("expired", "node-a", ttl=0.05),
            owned("expired-comp", "node-a", status=InstanceStatus.COMPENSATING),
            unowned("free"),
            unowned("free-comp", InstanceStatus.COMPENSATING),
            *(unowned(f"settled-{s}", s) for s in SETTLED),
        ]
    )
    await expire(db, "expired-comp")
    await asyncio.sleep(0.2)  # past the 0.05 s lease of "expired", by the database's clock
    assert (await row(db, "expired")).live is False
    claims = await pg.claim_instances("node-b", LONG, limit=50, max_takeovers=5)
    assert claims.quarantined == []
    assert epochs(claims.claimed) == {"expired": 2, "expired-comp": 2, "free": 1, "free-comp": 1}
    assert {c.tenant_id for c in claims.claimed} == {TENANT}
    # A take-over from a silent owner counts; a claim of an unowned instance does not.
    assert await row(db, "expired") == Row("node-b", 2, True, 1, False)
    assert await row(db, "expired-comp") == Row("node-b", 2, True, 1, False)
    assert await row(db, "free") == Row("node-b", 1, True, 0, False)
    assert await row(db, "live") == Row("node-a", 1, True, 0, False)
    for status in SETTLED:
        assert (await row(db, f"settled-{status}")).owner is None
    # Everything claimable is now live: another claimer gets nothing.
    nothing = await pg.claim_instances("node-c", LONG, limit=50, max_takeovers=5)
    assert (nothing.claimed, nothing.quarantined) == ([], [])


@postgres
async def test_the_deposed_owner_can_no_longer_write(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("i-1", "node-a")])
    await expire(db, "i-1")
    [taken] = (await pg.claim_instances("node-b", LONG, 10, 5)).claimed
    assert (taken.instance_id, taken.epoch) == ("i-1", 2)
    assert await pg.append([leased(append("i-1", 1, [event(1)]), "node-a", 1)]) == [lost(1)]
    assert await pg.append([leased(append("i-1", 1, [event(2)]), "node-b", 2)]) == [ok(2)]
    assert await row(db, "i-1") == Row("node-b", 2, True, 1, False)


@postgres
async def test_claims_respect_the_limit_exactly(pg: Store) -> None:
    ids = {f"i-{n:02d}" for n in range(11)}
    await pg.append([unowned(iid) for iid in sorted(ids)])
    taken: list[str] = []
    sizes: list[int] = []
    for n in range(5):
        claims = await pg.claim_instances(f"node-{n}", LONG, limit=4, max_takeovers=5)
        sizes.append(len(claims.claimed))
        taken.extend(c.instance_id for c in claims.claimed)
    assert sizes == [4, 4, 3, 0, 0]
    assert sorted(taken) == sorted(ids)


@postgres
async def test_concurrent_claimers_never_share_an_instance(pg_url: str, pg: Store) -> None:
    total, limit = 53, 7
    await pg.append([unowned(f"i-{n:03d}") for n in range(total)])
    claimers = [open_store(pg_url), open_store(pg_url)]
    try:
        for claimer in claimers:  # open both pools first, so the claims really race
            await claimer.list_quarantined(TENANT)
        owners: dict[str, str] = {}
        remaining = total
        while True:
            rounds = await asyncio.gather(
                *(c.claim_instances(f"node-{n}", LONG, limit, 5) for n, c in enumerate(claimers))
            )
            got = [[c.instance_id for c in r.claimed] for r in rounds]
            assert sum(map(len, got)) == min(remaining, 2 * limit)
            for n, ids in enumerate(got):
                assert len(ids) <= limit
                for iid in ids:
                    assert iid not in owners, f"{iid} claimed twice"
                    owners[iid] = f"node-{n}"
            remaining -= sum(map(len, got))
            if not any(got):
                break
    finally:
        for claimer in claimers:
            await claimer.close()
    assert remaining == 0
    assert sorted(owners) == [f"i-{n:03d}" for n in range(total)]
    async with RawDatabase(pg_url) as raw:
        stored = dict(await raw.fetch("SELECT instance_id, owner_id FROM instances"))
    assert stored == owners


@postgres
async def test_released_and_reclaimed_instances_never_count_as_takeovers(
    pg: Store, db: RawDatabase
) -> None:
    await pg.append([unowned("i-1")])
    for n in range(4):
        claims = await pg.claim_instances(f"node-{n}", LONG, 10, max_takeovers=1)
        assert epochs(claims.claimed) == {"i-1": n + 1}
        assert claims.quarantined == []
        await pg.release_leases(f"node-{n}", [("i-1", n + 1)])
    assert await row(db, "i-1") == Row(None, 4, None, 0, False)


# -- 4. quarantine --


@postgres
async def test_an_instance_orphaned_too_often_is_quarantined(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("poison", "node-0"), unowned("healthy")])
    # Two take-overs from silent owners are allowed ...
    for n in (1, 2):
        await expire(db, "poison")
        claims = await pg.claim_instances(f"node-{n}", LONG, 10, max_takeovers=2)
        assert epochs(claims.claimed) == ({"poison": 2, "healthy": 1} if n == 1 else {"poison": 3})
        assert claims.quarantined == []
        assert await row(db, "poison") == Row(f"node-{n}", n + 1, True, n, False)
    # ... the third orphaning parks it for an operator.
    await expire(db, "poison")
    claims = await pg.claim_instances("node-3", LONG, 10, max_takeovers=2)
    assert claims.claimed == []
    assert claims.quarantined == [InstanceRef(tenant_id=TENANT, instance_id="poison")]
    assert await row(db, "poison") == Row(None, 3, None, 3, True)
    assert await pg.append([leased(append("poison", 1, [event(1)]), "node-2", 3)]) == [lost(1)]
    [parked] = await pg.list_quarantined(TENANT)
    assert (parked.tenant_id, parked.instance_id, parked.takeovers) == (TENANT, "poison", 3)
    [(quarantined_at,)] = await db.fetch(
        "SELECT quarantined_at FROM instances WHERE instance_id = 'poison'"
    )
    assert parked.quarantined_at == quarantined_at
    # Unowned and unfinished, yet never claimed while quarantined.
    nothing = await pg.claim_instances("node-4", LONG, 10, max_takeovers=2)
    assert (nothing.claimed, nothing.quarantined) == ([], [])
    assert (await row(db, "healthy")).owner == "node-1"
    # Released (by its own tenant only): claimable again, with a fresh count.
    assert await pg.release_quarantine(OTHER_TENANT, "poison") is False
    assert await pg.release_quarantine(TENANT, "poison") is True
    assert await pg.release_quarantine(TENANT, "poison") is False
    assert await pg.list_quarantined(TENANT) == []
    again = await pg.claim_instances("node-4", LONG, 10, max_takeovers=2)
    assert [c.instance_id for c in again.claimed] == ["poison"]
    assert await row(db, "poison") == Row("node-4", again.claimed[0].epoch, True, 0, False)
    assert again.claimed[0].epoch > 3
    assert await pg.append(
        [leased(append("poison", 1, [event(2)]), "node-4", again.claimed[0].epoch)]
    ) == [ok(2)]


@postgres
async def test_release_quarantine_of_an_unknown_or_healthy_instance(pg: Store) -> None:
    await pg.append([unowned("healthy")])
    assert await pg.release_quarantine(TENANT, "healthy") is False
    assert await pg.release_quarantine(TENANT, "missing") is False
    assert await pg.list_quarantined(TENANT) == []


# -- 5. claiming one instance --


@postgres
async def test_claim_instance_takes_what_no_other_live_lease_holds(
    pg: Store, db: RawDatabase
) -> None:
    await pg.append(
        [
            unowned("free"),
            owned("expired", "node-a"),
            owned("own", "node-b"),
            unowned("parked", InstanceStatus.FAILED),
            owned("live", "node-a"),
        ]
    )
    await expire(db, "expired")
    assert await pg.claim_instance("node-b", LONG, TENANT, "free") == 1
    assert await pg.claim_instance("node-b", LONG, TENANT, "expired") == 2
    assert await pg.claim_instance("node-b", LONG, TENANT, "own") == 2
    assert await pg.claim_instance("node-b", LONG, TENANT, "parked") == 1
    assert await pg.claim_instance("node-b", LONG, TENANT, "live") is None
    for iid, epoch in {"free": 1, "expired": 2, "own": 2, "parked": 1}.items():
        current = await row(db, iid)
        assert (current.owner, current.epoch, current.live) == ("node-b", epoch, True), iid
    assert await row(db, "live") == Row("node-a", 1, True, 0, False)
    # The new epochs fence the old ones.
    assert await pg.append([leased(append("expired", 1, [event(1)]), "node-a", 1)]) == [lost(1)]
    assert await pg.append([leased(append("own", 1, [event(1)]), "node-b", 1)]) == [lost(1)]
    resume = append("parked", 1, [event(1)], state=update(status=InstanceStatus.RUNNING))
    assert await pg.append([leased(resume, "node-b", 1)]) == [ok(2)]
    assert await pg.append([leased(append("own", 1, [event(2)]), "node-b", 2)]) == [ok(2)]


@postgres
@pytest.mark.parametrize("status", TERMINAL)
async def test_claim_instance_refuses_terminal_instances(
    pg: Store, db: RawDatabase, status: InstanceStatus
) -> None:
    await pg.append([unowned("done", status), unowned("control")])
    assert await pg.claim_instance("node-b", LONG, TENANT, "done") is None
    assert await row(db, "done") == Row(None, 0, None, 0, False)
    assert await pg.claim_instance("node-b", LONG, TENANT, "control") == 1


@postgres
async def test_claim_instance_never_crosses_tenants(pg: Store, db: RawDatabase) -> None:
    await pg.append([unowned("theirs", tenant=OTHER_TENANT)])
    assert await pg.claim_instance("node-b", LONG, TENANT, "theirs") is None
    assert await pg.claim_instance("node-b", LONG, TENANT, "missing") is None
    assert await row(db, "theirs") == Row(None, 0, None, 0, False)
    assert await pg.claim_instance("node-b", LONG, OTHER_TENANT, "theirs") == 1


# -- 6. a restarted node takes its own instances back --


@postgres
async def test_reclaim_own_raises_the_epochs_of_the_owners_unfinished_instances(
    pg: Store, db: RawDatabase
) -> None:
    await pg.append(
        [
            owned("a-live", "node-a"),
            owned("a-expired", "node-a"),
            owned("a-comp", "node-a", status=InstanceStatus.COMPENSATING),
            owned("a-done", "node-a"),
            owned("b-live", "node-b"),
            unowned("free"),
        ]
    )
    await expire(db, "a-expired")
    done = update(status=InstanceStatus.COMPLETED)
    assert await pg.append([leased(append("a-done", 1, [event(1)], state=done), "node-a")]) == [
        ok(2)
    ]
    reclaimed = await pg.reclaim_own("node-a", LONG)
    assert epochs(reclaimed) == {"a-live": 2, "a-expired": 2, "a-comp": 2}
    assert {c.tenant_id for c in reclaimed} == {TENANT}
    for iid in ("a-live", "a-expired", "a-comp"):
        assert await row(db, iid) == Row("node-a", 2, True, 0, False)
    assert await row(db, "b-live") == Row("node-b", 1, True, 0, False)
    assert await row(db, "free") == Row(None, 0, None, 0, False)
    # The previous incarnation's writes are fenced off; the new one's go through.
    assert await pg.append([leased(append("a-live", 1, [event(1)]), "node-a", 1)]) == [lost(1)]
    assert await pg.append([leased(append("a-live", 1, [event(2)]), "node-a", 2)]) == [ok(2)]
    assert await pg.reclaim_own("node-z", LONG) == []


# -- 7. renewals --


@postgres
async def test_renew_leases_reports_only_the_leases_still_held(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("x", "node-a", ttl=5), owned("y", "node-a", ttl=5)])
    await pg.append([leased(append("x", 1, [event(1), event(2)]), "node-a", ttl=5)])
    held = await pg.renew_leases("node-a", LONG, [("x", 1), ("y", 1), ("y", 7), ("nope", 1)])
    assert held == {"x": 3, "y": 1}
    assert await seconds_left(db, "x") > LONG - 60
    assert await seconds_left(db, "y") > LONG - 60
    assert await pg.renew_leases("node-a", LONG, []) == {}
    # After a take-over the old pair is lost (and the new owner's lease is left as it was).
    await expire(db, "y")
    assert epochs((await pg.claim_instances("node-b", 30, 10, 5)).claimed) == {"y": 2}
    assert await pg.renew_leases("node-a", LONG, [("x", 1), ("y", 1)]) == {"x": 3}
    assert await pg.renew_leases("node-a", LONG, [("y", 2)]) == {}
    assert await seconds_left(db, "y") <= 30
    assert await pg.renew_leases("node-b", LONG, [("y", 2)]) == {"y": 1}


@postgres
async def test_an_expired_lease_nobody_took_can_be_renewed(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("x", "node-a", ttl=0.05)])
    await asyncio.sleep(0.2)
    assert (await row(db, "x")).live is False
    assert await pg.renew_leases("node-a", LONG, [("x", 1)]) == {"x": 1}
    assert await row(db, "x") == Row("node-a", 1, True, 0, False)
    nothing = await pg.claim_instances("node-b", LONG, 10, 5)
    assert nothing.claimed == []


# -- 8. releases and the wake-up channel --


@postgres
async def test_release_leases_frees_the_held_ones_and_wakes_the_claimers(
    pg: Store, db: RawDatabase
) -> None:
    await pg.append(
        [
            owned("i-1", "node-a"),
            owned("i-2", "node-a"),
            owned("again", "node-a"),
            owned("b", "node-b"),
        ]
    )
    assert await pg.claim_instance("node-a", LONG, TENANT, "again") == 2
    woken: list[int] = []
    watcher = pg.watch(lambda _changed: None, lambda: woken.append(1))
    assert isinstance(watcher, EventListener)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), timeout=10)
        # Connecting already counts as a wake-up (releases made while away were not heard).
        assert woken == [1]
        woken.clear()
        # b is not node-a's, and "again" is node-a's under a newer epoch than the one given.
        await pg.release_leases("node-a", [("i-1", 1), ("b", 1), ("again", 1)])
        await wait_until(lambda: bool(woken), "the release's notification")
    finally:
        await watcher.close()
    assert await row(db, "i-1") == Row(None, 1, None, 0, False)
    assert await row(db, "i-2") == Row("node-a", 1, True, 0, False)
    assert await row(db, "again") == Row("node-a", 2, True, 0, False)
    assert await row(db, "b") == Row("node-b", 1, True, 0, False)
    claims = await pg.claim_instances("node-c", LONG, 10, 5)
    assert epochs(claims.claimed) == {"i-1": 2}
    assert await row(db, "i-1") == Row("node-c", 2, True, 0, False)
    await pg.release_leases("node-a", [("again", 2)])
    assert await row(db, "again") == Row(None, 2, None, 0, False)


@postgres
async def test_release_quarantine_wakes_the_claimers(pg: Store, db: RawDatabase) -> None:
    await pg.append([owned("poison", "node-a")])
    await expire(db, "poison")
    claims = await pg.claim_instances("node-b", LONG, 10, max_takeovers=0)
    assert claims.quarantined == [InstanceRef(tenant_id=TENANT, instance_id="poison")]
    woken: list[int] = []
    watcher = pg.watch(lambda _changed: None, lambda: woken.append(1))
    assert isinstance(watcher, EventListener)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), timeout=10)
        woken.clear()
        assert await pg.release_quarantine(TENANT, "poison") is True
        await wait_until(lambda: bool(woken), "the quarantine release's notification")
    finally:
        await watcher.close()


@postgres
async def test_watch_reports_appended_instances_with_their_last_sequence(pg: Store) -> None:
    seen: list[tuple[str, int]] = []
    watcher = pg.watch(seen.extend)
    assert isinstance(watcher, EventListener)
    watcher.start()
    try:
        await asyncio.wait_for(watcher.connected.wait(), timeout=10)
        assert seen == []
        await pg.append([owned("i-1", "node-a"), unowned("order:42")])
        await wait_until(lambda: {("i-1", 1), ("order:42", 1)} <= set(seen), "the creates")
        more = leased(append("i-1", 1, [event(1), event(2)]), "node-a")
        assert await pg.append([more]) == [ok(3)]
        await wait_until(lambda: ("i-1", 3) in seen, "the append")
        # A refused append writes nothing, so it is not announced.
        assert await pg.append([leased(append("i-1", 3, [event(3)]), "node-x")]) == [lost(3)]
        assert await pg.append([append("order:42", 1, [event(4)])]) == [ok(2)]
        await wait_until(lambda: ("order:42", 2) in seen, "the later append")
    finally:
        await watcher.close()
    assert ("i-1", 4) not in seen
    assert seen.index(("i-1", 3)) < seen.index(("order:42", 2))


# -- SQLite: one node per file, nothing to lease --


@pytest_asyncio.fixture
async def lite(sqlite_url: str) -> AsyncIterator[Store]:
    store = open_store(sqlite_url)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


async def test_sqlite_refuses_every_lease(lite: Store) -> None:
    assert await lite.append([unowned("i-1")]) == [ok(1)]
    refused: list[Callable[[], Awaitable[object]]] = [
        lambda: lite.claim_instances("node-a", LONG, 10, 3),
        lambda: lite.claim_instance("node-a", LONG, TENANT, "i-1"),
        lambda: lite.reclaim_own("node-a", LONG),
        lambda: lite.renew_leases("node-a", LONG, [("i-1", 1)]),
        lambda: lite.release_leases("node-a", [("i-1", 1)]),
        lambda: lite.append([unowned("other"), owned("leased", "node-a")]),
        lambda: lite.append([append("i-1", 1, [event(1)]), leased(append("i-1", 2, []), "a")]),
    ]
    for call in refused:
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            await call()
    # The refused batches wrote nothing, not even their requests without a lease.
    assert await lite.get_instance(TENANT, "other") is None
    assert await seqs(lite, "i-1") == [1]
    assert await lite.append([append("i-1", 1, [event(1)])]) == [ok(2)]


async def test_sqlite_has_nothing_quarantined_and_no_watch(lite: Store) -> None:
    await lite.append([unowned("i-1")])
    assert await lite.list_quarantined(TENANT) == []
    assert await lite.release_quarantine(TENANT, "i-1") is False
    assert lite.watch(lambda _changed: None, lambda: None) is None
    assert await lite.get_instance(TENANT, "i-1") is not None
