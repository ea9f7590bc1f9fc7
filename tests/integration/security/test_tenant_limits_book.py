"""Each node's cache of the tenants' limits, on a real store: one store read per tenant per
expiry however many requests ask at once, a change through this node applied at once, another
node's within the TTL, and a store outage that keeps the limits last read.

Time is a fake clock: nothing here waits for a TTL to pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.security.limits import Limit
from saga_orchestrator.security.tenant_limits import (
    NOT_CACHED,
    BucketLimit,
    LimitCeilings,
    TenantLimits,
    TenantLimitsBook,
)
from saga_orchestrator.store import Store, TenantLimitsEntry, open_store
from tests.support.waiting import until

LOW = TenantLimits(max_running_sagas=1)
HIGH = TenantLimits(max_running_sagas=50)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedStore:
    """The real store; its tenant-limit reads are counted, refused while ``down``, and their
    answers held back while ``gate`` is shut (read, but not yet returned)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.answered = asyncio.Event()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get_tenant_limits(self, tenant_id: str) -> TenantLimitsEntry | None:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("the database cannot be reached")
        entry = await self.store.get_tenant_limits(tenant_id)
        self.answered.set()
        await self.gate.wait()
        return entry


@pytest_asyncio.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    opened = open_store(sqlite_url)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def gated(store: Store) -> GatedStore:
    return GatedStore(store)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def book_of(store: Store | GatedStore, clock: FakeClock) -> TenantLimitsBook:
    return TenantLimitsBook(store, ttl=5.0, clock=clock)


async def test_concurrent_requests_read_the_store_once_per_expiry(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    await book_of(store, clock).put("a", LOW)
    book = book_of(gated, clock)
    gated.gate.clear()  # every caller arrives while the first read is under way
    waiting = [asyncio.ensure_future(book.overrides("a")) for _ in range(50)]
    await asyncio.sleep(0)
    gated.gate.set()
    assert set(await asyncio.gather(*waiting)) == {LOW}
    assert gated.reads == 1
    clock.now += 3.9  # before the last fifth of the TTL: no read
    assert await book.overrides("a") == LOW
    assert gated.reads == 1
    clock.now += 1.2  # expired: the next wave reads once more
    await asyncio.gather(*(book.overrides("a") for _ in range(50)))
    assert gated.reads == 2
    assert await book.overrides("nobody") is None  # none stored is cached too
    assert await book.overrides("nobody") is None
    assert gated.reads == 3


async def test_what_is_known_without_a_read_is_the_fresh_cache_only(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    await book_of(store, clock).put("a", LOW)
    book = book_of(gated, clock)
    assert book.known_overrides("a") is NOT_CACHED
    assert book.known_overrides("nobody") is NOT_CACHED
    assert await book.overrides("a") == LOW
    assert await book.overrides("nobody") is None
    assert book.known_overrides("a") == LOW
    assert book.known_overrides("nobody") is None  # known to have none
    clock.now += 5.0
    assert book.known_overrides("a") is NOT_CACHED  # expired: a read is due
    assert gated.reads == 2  # known_overrides does not read an expired entry


async def test_an_entry_in_use_is_read_again_in_the_background_before_it_expires(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    elsewhere = book_of(store, clock)
    await elsewhere.put("a", LOW)
    book = book_of(gated, clock)
    assert await book.overrides("a") == LOW
    await elsewhere.put("a", HIGH)  # another node's change
    gated.gate.clear()  # from here on, a read is held until the gate opens
    clock.now += 4.1  # the last fifth of the TTL
    # Answered from the cache while the read it started is held: no request waits for it.
    assert await asyncio.wait_for(book.overrides("a"), timeout=5) == LOW
    assert book.known_overrides("a") == LOW
    assert await asyncio.wait_for(book.overrides("a"), timeout=5) == LOW
    assert gated.reads == 2  # one read for the three
    gated.gate.set()
    await until(lambda: book.known_overrides("a") == HIGH)
    clock.now += 3.9  # the refreshed entry counts from its read
    assert book.known_overrides("a") == HIGH
    assert gated.reads == 2
    clock.now += 0.2  # the parser's check starts the background read too
    assert book.known_overrides("a") == HIGH
    await until(lambda: gated.reads == 3)


async def test_a_failed_background_read_keeps_the_entry_until_it_expires(
    store: Store, gated: GatedStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    book = await read_before_an_outage(store, gated, clock)
    clock.now += 4.5
    with caplog.at_level(logging.WARNING, logger="saga_orchestrator.limits"):
        assert await book.overrides("a") == LOW
        await until(lambda: "keeping the limits last read" in caplog.text)
    assert gated.reads == 2


async def test_a_change_here_applies_at_once_and_elsewhere_within_the_ttl(
    store: Store, clock: FakeClock
) -> None:
    here, elsewhere = book_of(store, clock), book_of(store, clock)
    assert await elsewhere.overrides("a") is None
    stored = await here.put("a", LOW)
    assert (stored.limits, stored.version) == (LOW, 1)
    assert await here.overrides("a") == LOW
    assert await elsewhere.overrides("a") is None  # its cache is still fresh
    clock.now += 5.0
    assert await elsewhere.overrides("a") == LOW
    assert await here.reset("a") is True
    assert await here.overrides("a") is None
    assert await elsewhere.overrides("a") == LOW
    clock.now += 5.0
    assert await elsewhere.overrides("a") is None
    assert await here.reset("a") is False


async def test_a_read_under_way_during_a_change_does_not_undo_it(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    await book_of(store, clock).put("a", LOW)
    book = book_of(gated, clock)
    gated.gate.clear()
    early = asyncio.ensure_future(book.overrides("a"))
    await gated.answered.wait()  # the read has its (old) answer in hand
    await book.put("a", HIGH)
    gated.gate.set()
    assert await early == LOW  # it asked before the change
    assert await book.overrides("a") == HIGH
    assert gated.reads == 1


async def test_the_admin_view_reads_past_the_cache(store: Store, clock: FakeClock) -> None:
    here, elsewhere = book_of(store, clock), book_of(store, clock)
    assert await elsewhere.stored("a") is None
    await here.put("a", LOW)
    await here.put("a", HIGH)
    stored = await elsewhere.stored("a")
    assert stored is not None
    assert (stored.limits, stored.version) == (HIGH, 2)
    assert await elsewhere.overrides("a") == HIGH  # and refreshes it


async def read_before_an_outage(
    store: Store, gated: GatedStore, clock: FakeClock
) -> TenantLimitsBook:
    """A book over ``gated`` that read tenant a's limits (LOW), then the store went down."""
    await book_of(store, clock).put("a", LOW)
    book = book_of(gated, clock)
    assert await book.overrides("a") == LOW
    gated.down = True
    return book


async def test_a_store_outage_keeps_the_limits_last_read(
    store: Store, gated: GatedStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    book = await read_before_an_outage(store, gated, clock)
    clock.now += 5.0
    with caplog.at_level(logging.WARNING, logger="saga_orchestrator.limits"):
        assert await book.overrides("a") == LOW
    assert "keeping the limits last read" in caplog.text
    assert await book.overrides("a") == LOW
    assert gated.reads == 2  # the outage is not asked again before the TTL
    with pytest.raises(StoreUnavailable):
        await book.overrides("never-read")
    gated.down = False
    clock.now += 5.0
    await book_of(store, clock).put("a", HIGH)
    assert await book.overrides("a") == HIGH


async def test_a_document_no_longer_valid_falls_back_to_the_defaults(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    await store.put_tenant_limits("a", {"max_running_sagas": 0})  # a rule tightened since
    book = book_of(store, clock)
    with caplog.at_level(logging.WARNING, logger="saga_orchestrator.limits"):
        assert await book.overrides("a") is None
    assert "no longer valid" in caplog.text


async def test_the_cache_keeps_at_most_its_bound_of_tenants(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    book = TenantLimitsBook(gated, ttl=5.0, max_tenants=2, clock=clock)
    for tenant in ("a", "b", "c"):
        await book.overrides(tenant)
    await book.overrides("c")
    await book.overrides("b")
    assert gated.reads == 3
    await book.overrides("a")  # the least recently used went first
    assert gated.reads == 4


CEILINGS = LimitCeilings(requests=Limit(rate=10.0, burst=20), max_running_sagas=5)
ABOVE = {"requests": {"per_second": 500, "burst": 900}, "max_running_sagas": 50}
"""An override above CEILINGS, as stored before they were lowered (or by an older version)."""


async def test_overrides_stored_above_the_ceilings_are_clamped_to_them(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    await store.put_tenant_limits("a", ABOVE)
    book = TenantLimitsBook(gated, ceilings=CEILINGS, ttl=5.0, clock=clock)
    clamped = TenantLimits(requests=BucketLimit(per_second=10.0, burst=20), max_running_sagas=5)
    assert await book.overrides("a") == clamped
    assert book.known_overrides("a") == clamped
    stored = await book.stored("a")  # what the admin sees as set is what is stored
    assert stored is not None
    assert stored.limits == TenantLimits.model_validate(ABOVE)
    assert book.known_overrides("a") == clamped  # the read past the cache refreshed it clamped
    await book.put("b", TenantLimits.model_validate(ABOVE))  # the API refuses; this is the store
    assert await book.overrides("b") == clamped
    gated.down = True  # what a node keeps through an outage is clamped too
    clock.now += 5.0
    assert await book.overrides("a") == clamped


async def test_a_read_under_way_answers_its_waiters_clamped(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    await store.put_tenant_limits("a", ABOVE)
    book = TenantLimitsBook(gated, ceilings=CEILINGS, ttl=5.0, clock=clock)
    gated.gate.clear()
    early = asyncio.ensure_future(book.overrides("a"))
    await gated.answered.wait()
    await book.reset("a")  # the read under way no longer counts for the cache...
    gated.gate.set()
    answered = await early
    assert answered is not None
    assert answered.max_running_sagas == 5  # ...but its waiter is answered clamped
