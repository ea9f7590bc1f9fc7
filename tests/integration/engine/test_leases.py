"""Instance leases as nodes live them (semantics §5), several nodes in one process over one
PostgreSQL: ownership, hand-over, outside inputs at a non-owner, fencing of a deposed owner.

Killed and paused processes are tested end to end in tests/e2e/test_cluster.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.orchestrator import Orchestrator
from tests.integration.engine.support import FAST_RETRY, Participants, saga, steps
from tests.support.waiting import until

pytestmark = pytest.mark.postgres

NAMES = ("reserve", "charge", "ship")
ORDER = saga("order", steps(*NAMES, retry=FAST_RETRY))

Node = Callable[..., Orchestrator]


@pytest_asyncio.fixture
async def node(pg_url: str) -> AsyncIterator[Node]:
    """Open cluster nodes on the test's database; closed at the end of the test."""
    opened: list[Orchestrator] = []

    def make(participants: Participants, name: str, **options: Any) -> Orchestrator:
        options.setdefault("lease_ttl", 30.0)
        options.setdefault("claim_poll_interval", 0.2)
        built = Orchestrator(
            pg_url, handlers=participants.registry(), cluster=True, node_id=name, **options
        )
        opened.append(built)
        return built

    yield make
    for built in opened:
        await built.close(grace=0.1)


async def lease_of(pg_url: str, instance_id: str) -> tuple[str | None, int, int]:
    """(owner, epoch, takeovers) of the instance's row."""
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT owner_id, lease_epoch, takeovers FROM instances WHERE instance_id = $1",
            instance_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return row[0], int(row[1]), int(row[2])


async def event_types(pg_url: str, instance_id: str) -> list[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE instance_id = $1 ORDER BY seq", instance_id
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


async def test_cluster_mode_is_refused_on_sqlite(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        Orchestrator(sqlite_url, cluster=True)


async def test_the_starting_node_owns_the_instance_until_it_settles(
    node: Node, pg_url: str
) -> None:
    participants = Participants(NAMES)
    gate = participants.gates["charge"] = asyncio.Event()
    a = await node(participants, "a").open()
    await a.register(ORDER)
    started = await a.start("order", {})
    await participants.reached("charge").wait()
    owner, epoch, _ = await lease_of(pg_url, started.instance_id)
    assert (owner, epoch) == ("a", 1)
    gate.set()
    assert (await a.wait(started.instance_id, timeout=30)).status == "completed"
    owner, _, _ = await lease_of(pg_url, started.instance_id)
    assert owner is None  # settled: whoever acts next claims it


async def test_graceful_shutdown_hands_unfinished_instances_over_at_once(
    node: Node, pg_url: str
) -> None:
    first, second = Participants(NAMES), Participants(NAMES)
    first.script["charge"] = ["hang"] * 10  # node a never finishes a charge
    a = await node(first, "a").open()
    b = await node(second, "b").open()
    await a.register(ORDER)
    ids = [(await a.start("order", {"n": n})).instance_id for n in range(10)]
    await until(
        lambda: not (len({call[0] for call in first.calls if call[1] == "charge"}) < len(ids))
    )
    assert second.calls == []

    await a.close(grace=0.1)  # releases its leases: b claims at once, not after 30 s

    for instance_id in ids:
        assert (await b.wait(instance_id, timeout=20)).status == "completed"
        owner, epoch, takeovers = await lease_of(pg_url, instance_id)
        assert (owner, epoch, takeovers) == (None, 2, 0)  # released, not orphaned
    assert first.counts() == {"reserve": 10, "charge": 10}
    # b re-attempts the interrupted charge (attempt 2) and goes on from there.
    assert sorted({(c[1], c[3]) for c in second.calls}) == [
        ("charge", 2),
        ("ship", 1),
    ]
    assert second.counts() == {"charge": 10, "ship": 10}


async def test_an_input_at_a_node_that_does_not_drive_the_instance_reaches_its_owner(
    node: Node, pg_url: str
) -> None:
    owner_side, other_side = Participants(NAMES), Participants(NAMES)
    gate = owner_side.gates["charge"] = asyncio.Event()
    a = await node(owner_side, "a").open()
    b = await node(other_side, "b").open()
    await a.register(ORDER)
    started = await a.start("order", {})
    await owner_side.reached("charge").wait()

    await b.cancel(started.instance_id, "customer changed their mind")
    gate.set()

    final = await a.wait(started.instance_id, timeout=30)
    assert final.status == "cancelled"
    assert other_side.calls == []  # b recorded the input; a, the owner, acted on it
    assert owner_side.called(started.instance_id) == [
        "reserve",
        "charge",
        "undo.charge",
        "undo.reserve",
    ]
    _, epoch, _ = await lease_of(pg_url, started.instance_id)
    assert epoch == 1  # never changed hands


async def test_a_deposed_owner_stops_at_once_and_calls_no_participant(
    node: Node, pg_url: str
) -> None:
    participants = Participants(NAMES)
    gate = participants.gates["reserve"] = asyncio.Event()
    a = await node(participants, "a").open()
    await a.register(ORDER)
    started = await a.start("order", {})
    await participants.reached("reserve").wait()
    conn = await asyncpg.connect(pg_url)
    try:  # another node takes the instance over while a's attempt runs
        await conn.execute(
            "UPDATE instances SET owner_id = 'thief', lease_epoch = lease_epoch + 1 "
            "WHERE instance_id = $1",
            started.instance_id,
        )
    finally:
        await conn.close()
    before = await event_types(pg_url, started.instance_id)

    gate.set()  # a's attempt finishes: its result is fenced off
    await until(lambda: a.engine.live_instances == 0)

    assert await event_types(pg_url, started.instance_id) == before
    assert participants.called() == ["reserve"]  # never went on to charge


async def test_a_waiter_at_a_deposed_owner_learns_the_outcome_from_the_node_that_took_over(
    node: Node, pg_url: str
) -> None:
    first, taker = Participants(NAMES), Participants(NAMES)
    gate = first.gates["reserve"] = asyncio.Event()
    a = await node(first, "a").open()
    await a.register(ORDER)
    started = await a.start("order", {})
    await first.reached("reserve").wait()
    keeper = a.engine.keeper
    assert keeper is not None
    keeper.stop_claiming()  # a must not claim the instance back before b does
    waiting = asyncio.create_task(a.wait(started.instance_id, timeout=30))
    await asyncio.sleep(0)  # the waiter waits on a's live copy
    conn = await asyncpg.connect(pg_url)
    try:  # a loses its lease, and it has expired: another node may claim the instance
        await conn.execute(
            "UPDATE instances SET owner_id = 'thief', lease_epoch = lease_epoch + 1, "
            "lease_expires_at = now() - interval '1 second' WHERE instance_id = $1",
            started.instance_id,
        )
    finally:
        await conn.close()
    gate.set()  # a's result is fenced off: a stops driving the instance
    await until(lambda: a.engine.live_instances == 0)
    await node(taker, "b").open()  # b claims it and completes it

    assert (await waiting).status == "completed"
    assert taker.counts() == {"reserve": 1, "charge": 1, "ship": 1}


async def test_a_silent_owners_instances_are_taken_over_when_their_leases_expire(
    node: Node, pg_url: str
) -> None:
    silent, taker = Participants(NAMES), Participants(NAMES)
    silent.script["charge"] = ["hang"] * 5
    a = await node(silent, "a", lease_ttl=1.5).open()
    await a.register(ORDER)
    ids = [(await a.start("order", {"n": n})).instance_id for n in range(5)]
    await until(lambda: silent.counts()["charge"] == len(ids))
    keeper = a.engine.keeper
    assert keeper is not None
    await keeper.stop()  # a stops renewing, as if its process froze
    b = await node(taker, "b", lease_ttl=1.5).open()

    for instance_id in ids:
        assert (await b.wait(instance_id, timeout=30)).status == "completed"
        owner, epoch, takeovers = await lease_of(pg_url, instance_id)
        assert (owner, epoch, takeovers) == (None, 2, 1)
    assert taker.counts() == {"charge": 5, "ship": 5}
    assert {c[3] for c in taker.calls if c[1] == "charge"} == {2}


async def test_a_node_restarted_under_the_same_id_takes_its_leases_back(
    node: Node, pg_url: str
) -> None:
    before, after = Participants(NAMES), Participants(NAMES)
    before.script["charge"] = ["hang"] * 3
    first = await node(before, "n1").open()
    await first.register(ORDER)
    ids = [(await first.start("order", {"n": n})).instance_id for n in range(3)]
    await until(lambda: before.counts()["charge"] == len(ids))
    keeper = first.engine.keeper
    assert keeper is not None
    await keeper.stop()  # the first incarnation freezes with its 30 s leases

    second = await node(after, "n1").open()  # same id: no waiting for the leases to expire

    for instance_id in ids:
        assert (await second.wait(instance_id, timeout=20)).status == "completed"
        _, epoch, takeovers = await lease_of(pg_url, instance_id)
        assert (epoch, takeovers) == (2, 0)
    assert after.counts() == {"charge": 3, "ship": 3}


async def test_instances_are_shared_between_idle_nodes(node: Node, pg_url: str) -> None:
    silent = Participants(NAMES)
    silent.script["reserve"] = ["hang"] * 60
    a = await node(silent, "a", lease_ttl=3.0).open()
    await a.register(ORDER)
    ids = [(await a.start("order", {"n": n})).instance_id for n in range(60)]
    await until(lambda: silent.counts()["reserve"] >= len(ids), "a to call every reserve")
    keeper = a.engine.keeper
    assert keeper is not None
    await keeper.stop()
    takers = [Participants(NAMES) for _ in range(2)]
    gates = [asyncio.Event() for _ in takers]
    for taker, gate in zip(takers, gates, strict=True):
        taker.gates["reserve"] = gate
    nodes = [
        await node(t, f"t{i}", lease_ttl=3.0, max_concurrent_sagas=40).open()
        for i, t in enumerate(takers)
    ]
    # Each can hold 40; neither may take all 60.
    await until(
        lambda: sum(t.counts()["reserve"] for t in takers) >= len(ids), "takers to call reserve"
    )
    shares = [t.counts()["reserve"] for t in takers]
    assert all(share >= 20 for share in shares), shares
    for gate in gates:
        gate.set()
    for instance_id in ids:
        assert (await nodes[0].wait(instance_id, timeout=30)).status == "completed"


async def test_the_leaders_retention_chore_purges_old_terminal_instances(pg_url: str) -> None:
    participants = Participants(NAMES)
    async with Orchestrator(pg_url, handlers=participants.registry(), retention_days=30) as node:
        await node.register(ORDER)
        done = [(await node.start("order", {"n": n})).instance_id for n in range(3)]
        for instance_id in done:
            await node.wait(instance_id, timeout=30)
        conn = await asyncpg.connect(pg_url)
        try:  # two of them ended 31 days ago
            await conn.execute(
                "UPDATE instances SET updated_at = now() - interval '31 days' "
                "WHERE instance_id = ANY($1::text[])",
                done[:2],
            )
            assert node.retention is not None and node.member.is_leader
            assert await node.retention.run_once() == 2
            left = await conn.fetch("SELECT instance_id FROM instances")
            events = await conn.fetchval("SELECT count(DISTINCT instance_id) FROM events")
        finally:
            await conn.close()
        assert [row[0] for row in left] == done[2:]
        assert events == 1


async def test_a_clustered_node_settles_each_instance_once_without_rereading_its_own_commits(
    node: Node,
) -> None:
    participants = Participants(NAMES)
    a = await node(participants, "a").open()
    settled: list[str] = []
    a.engine.settled_listeners.append(lambda state: settled.append(state.instance_id))
    reads: list[str] = []
    load_events = a.store.load_events

    async def counting(tenant_id: str, instance_id: str, *args: Any, **kw: Any) -> Any:
        reads.append(instance_id)
        return await load_events(tenant_id, instance_id, *args, **kw)

    a.store.load_events = counting  # type: ignore[method-assign]
    await a.register(ORDER)
    ids = [(await a.start("order", {"n": n})).instance_id for n in range(20)]
    await until(lambda: len(settled) >= len(ids), "every instance to settle")
    await asyncio.sleep(0.5)  # late notifications of its own commits have arrived
    assert sorted(settled) == sorted(ids)
    assert reads == []  # every instance was driven from memory: its own commits not re-read
    assert participants.counts() == {"reserve": 20, "charge": 20, "ship": 20}
