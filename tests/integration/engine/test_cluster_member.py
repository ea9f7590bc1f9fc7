"""The leader lease as a node lives it: chores start when it leads, and stop before its lease
can expire when it can no longer renew it (semantics §5: never two leaders at once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.engine.cluster import Chore, ClusterMember
from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.store import Leadership, PostgresStore, Store, open_store


class Flaky:
    """The real store, whose lease renewals can be made to fail (a partition)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def acquire_leadership(self, name: str, holder: str, ttl: float) -> Leadership:
        if self.down:
            raise StoreUnavailable("partitioned")
        return await self.store.acquire_leadership(name, holder, ttl)


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


def recording_chore(log: list[tuple[str, float]]) -> Chore:
    async def stop() -> None:
        log.append(("stop", time.monotonic()))

    return Chore(name="probe", start=lambda: log.append(("start", time.monotonic())), stop=stop)


async def test_a_leader_that_cannot_renew_stops_before_its_lease_ends(store: Store) -> None:
    flaky = Flaky(store)
    log: list[tuple[str, float]] = []
    member = ClusterMember(
        store=flaky,
        node_id="a",
        address="x",
        version="1",
        ttl=3.0,
        margin=1.0,  # a second of slack for a busy event loop
        chores=[recording_chore(log)],
    )
    await member.beat()
    renewed_at = time.monotonic()
    assert [kind for kind, _ in log] == ["start"]
    assert member.is_leader
    flaky.down = True
    member.start()
    try:
        async with asyncio.timeout(10):
            while len(log) < 2:  # noqa: ASYNC110 - what the member's own loop does
                await asyncio.sleep(0.01)
    finally:
        await member.stop()
    kind, stopped_at = log[1]
    assert kind == "stop"
    assert stopped_at < renewed_at + member.ttl  # before the lease could have expired
    assert not member.is_leader
    # Meanwhile nobody else could lead; once the lease has passed, another node can.
    await asyncio.sleep(max(0.0, renewed_at + member.ttl - time.monotonic()) + 0.05)
    other = await store.acquire_leadership("chores", "b", ttl=10)
    assert other.holder == "b"


async def test_a_follower_runs_no_chores_until_it_leads(store: Store) -> None:
    leader_log: list[tuple[str, float]] = []
    follower_log: list[tuple[str, float]] = []
    leader = ClusterMember(store=store, node_id="a", address="x", version="1",
                           chores=[recording_chore(leader_log)])  # fmt: skip
    follower = ClusterMember(store=store, node_id="b", address="y", version="1",
                             chores=[recording_chore(follower_log)])  # fmt: skip
    await leader.beat()
    await follower.beat()
    assert [k for k, _ in leader_log] == ["start"]
    assert follower_log == []
    await leader.stop()
    await follower.beat()
    assert [k for k, _ in leader_log] == ["start", "stop"]
    assert [k for k, _ in follower_log] == ["start"]
    await follower.stop()


@pytest.mark.postgres
async def test_a_node_leads_for_its_configured_lease_and_pools_as_told(pg_url: str) -> None:
    node = Orchestrator(pg_url, cluster=True, leader_lease_ttl=4.0, database_pool_size=3)
    assert isinstance(node.store, PostgresStore)
    assert node.store.options.max_size == 3
    async with node:
        assert node.member.is_leader
        conn = await asyncpg.connect(pg_url)
        try:
            left = await conn.fetchval(
                "SELECT extract(epoch FROM max(expires_at) - now()) FROM leader_leases"
            )
        finally:
            await conn.close()
    # A 4 s lease, not the default 10 s (renewals keep it within the last 4 s).
    assert 0 < float(left) < 5.0  # the default would leave up to 10 s
