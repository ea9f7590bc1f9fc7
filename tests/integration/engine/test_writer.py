"""The batch writer's group commit over a real store, with chosen transactions held open: who
waits for whose commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import pytest_asyncio

from saga_orchestrator.engine.writer import BatchWriter
from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.store import AppendRequest, AppendResult, AppendStatus, Store
from tests.integration.store.support import OTHER_TENANT, TENANT, audit_entry, create

THIRD_TENANT = "tenant-c"


class HeldCommits:
    """The store, with each transaction that holds a request of a held tenant kept open
    (before it reaches the database) until that tenant is released: a slow commit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[list[str]] = []
        """The instances of each transaction, in the order they began."""
        self._held: dict[str, asyncio.Event] = {}

    def hold(self, tenant: str) -> None:
        self._held[tenant] = asyncio.Event()

    def release(self, tenant: str) -> None:
        self._held.pop(tenant).set()

    def release_all(self) -> None:
        for tenant in list(self._held):
            self.release(tenant)

    async def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        self.batches.append([r.instance_id for r in requests])
        for tenant in {r.tenant_id for r in requests}:
            gate = self._held.get(tenant)
            if gate is not None:
                await gate.wait()
        return await self.store.append(requests)


@pytest_asyncio.fixture
async def held(store: Store) -> HeldCommits:
    return HeldCommits(store)


@pytest_asyncio.fixture
async def writer(held: HeldCommits) -> AsyncIterator[BatchWriter]:
    async with running(held, max_batch=3, max_in_flight=1) as opened:
        yield opened


async def settle() -> None:
    """Until the writer has acted on everything submitted so far."""
    for _ in range(20):
        await asyncio.sleep(0)


def started(instance_id: str, tenant: str = TENANT, *, audited: bool = False) -> AppendRequest:
    request = create(instance_id, tenant=tenant)
    return replace(request, audit=audit_entry(instance_id, tenant=tenant)) if audited else request


def submit(writer: BatchWriter, request: AppendRequest) -> asyncio.Task[AppendResult]:
    return asyncio.create_task(writer.submit(request))


async def both_lanes_held(
    held: HeldCommits, writer: BatchWriter
) -> tuple[asyncio.Task[AppendResult], asyncio.Task[AppendResult]]:
    """a1's commit open in the oldest requests' lane, then b1's in the idle tenants' lane."""
    held.hold(TENANT)
    held.hold(OTHER_TENANT)
    first = submit(writer, started("a1"))
    await settle()
    lane = submit(writer, started("b1", OTHER_TENANT))
    await settle()
    return first, lane


@asynccontextmanager
async def running(
    held: HeldCommits, *, max_batch: int, max_in_flight: int
) -> AsyncIterator[BatchWriter]:
    writer = BatchWriter(held, max_batch=max_batch, max_in_flight=max_in_flight)
    writer.start()
    try:
        yield writer
    finally:
        held.release_all()  # a failed test must not leave the writer's stop waiting
        await writer.stop()


async def appended(task: asyncio.Task[AppendResult]) -> None:
    result = await asyncio.wait_for(task, timeout=10)
    assert result.status is AppendStatus.APPENDED


async def test_a_tenant_does_not_wait_for_another_tenants_commit(
    held: HeldCommits, writer: BatchWriter
) -> None:
    held.hold(TENANT)
    first = submit(writer, started("a1", audited=True))
    await settle()
    queued = submit(writer, started("a2", audited=True))
    other = submit(writer, started("b1", OTHER_TENANT, audited=True))

    await appended(other)  # while the first tenant's commit is still open
    assert not first.done() and not queued.done()
    assert held.batches == [["a1"], ["b1"]]  # a2 waits for its own tenant, alone

    held.release(TENANT)
    await appended(first)
    await appended(queued)
    assert held.batches == [["a1"], ["b1"], ["a2"]]
    assert (writer.batches, writer.requests) == (3, 3)


async def test_the_idle_tenants_lane_is_one_beyond_the_limit(
    held: HeldCommits, writer: BatchWriter
) -> None:
    first, second = await both_lanes_held(held, writer)
    third = submit(writer, started("c1", THIRD_TENANT))
    await settle()
    assert held.batches == [["a1"], ["b1"]]  # two open: the limit, and the idle tenants' lane

    held.release(OTHER_TENANT)
    await appended(second)
    await appended(third)
    assert held.batches == [["a1"], ["b1"], ["c1"]]
    assert not first.done()
    held.release(TENANT)
    await appended(first)


async def test_one_tenant_still_waits_and_commits_in_one_batch(
    held: HeldCommits, writer: BatchWriter
) -> None:
    held.hold(TENANT)
    first = submit(writer, started("a1"))
    await settle()
    rest = [submit(writer, started(f"a{n}")) for n in (2, 3)]
    await settle()
    assert held.batches == [["a1"]]

    held.release(TENANT)
    for task in (first, *rest):
        await appended(task)
    assert held.batches == [["a1"], ["a2", "a3"]]


@pytest.mark.parametrize("max_in_flight", [1, 2])
async def test_a_full_batch_starts_beside_the_open_commit_up_to_the_limit(
    held: HeldCommits, max_in_flight: int
) -> None:
    async with running(held, max_batch=2, max_in_flight=max_in_flight) as writer:
        held.hold(TENANT)
        first = submit(writer, started("a1"))
        await settle()
        full = [submit(writer, started(f"a{n}")) for n in (2, 3)]
        await settle()
        beside = [["a1"], ["a2", "a3"]] if max_in_flight == 2 else [["a1"]]
        assert held.batches == beside

        held.release(TENANT)
        for task in (first, *full):
            await appended(task)
        assert held.batches == [["a1"], ["a2", "a3"]]


async def test_one_idle_tenants_transaction_at_a_time_so_many_tenants_still_batch(
    held: HeldCommits,
) -> None:
    async with running(held, max_batch=10, max_in_flight=2) as writer:
        first, lane = await both_lanes_held(held, writer)
        rest = [submit(writer, started(f"{t}1", t)) for t in ("c", "d", "e")]
        await settle()
        # A second lane for the oldest requests is free, but no full batch waits; the idle
        # tenants' lane is taken: c, d and e wait, to go together.
        assert held.batches == [["a1"], ["b1"]]

        held.release(OTHER_TENANT)
        await appended(lane)
        for task in rest:
            await appended(task)
        assert held.batches == [["a1"], ["b1"], ["c1", "d1", "e1"]]
        assert not first.done()

        later = submit(writer, started("b2", OTHER_TENANT))
        await appended(later)  # the lane is free again
        held.release(TENANT)
        await appended(first)
        assert held.batches[-1] == ["b2"]


async def test_an_idle_writer_sends_a_request_on_in_the_next_loop_turn(
    held: HeldCommits, writer: BatchWriter
) -> None:
    """No wake-up of a writer task and no turn of its own to gather: under load every loop
    turn the request waits through can be long."""
    writer_call = asyncio.ensure_future(writer.submit(started("a1")))
    await asyncio.sleep(0)  # the submission: it starts the transaction's task...
    await asyncio.sleep(0)  # ... which takes the request to the store
    assert held.batches == [["a1"]]
    await appended(writer_call)


async def test_requests_submitted_in_one_loop_turn_share_a_transaction(
    held: HeldCommits, writer: BatchWriter
) -> None:
    calls = [submit(writer, started(f"a{n}")) for n in range(3)]
    for call in calls:
        await appended(call)
    assert held.batches == [["a0", "a1", "a2"]]


async def test_stopping_commits_what_is_queued_and_refuses_what_comes_after(
    held: HeldCommits,
) -> None:
    writer = BatchWriter(held, max_batch=2, max_in_flight=1)
    writer.start()
    held.hold(TENANT)
    calls = [submit(writer, started(f"a{n}")) for n in range(5)]
    await settle()
    stopping = asyncio.ensure_future(writer.stop())
    await settle()
    held.release(TENANT)
    await asyncio.wait_for(stopping, timeout=10)
    for call in calls:
        await appended(call)
    assert held.batches == [["a0", "a1"], ["a2", "a3"], ["a4"]]
    with pytest.raises(StoreUnavailable):
        await writer.submit(started("late"))
