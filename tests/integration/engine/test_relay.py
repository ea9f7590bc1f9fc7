"""The outbox relay between a real store and a real RabbitMQ: every committed message is
published exactly once, whatever the interleaving of commits, outages and relays; bodies sealed
at rest go out opened, and no published message keeps its body."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aio_pika.abc import AbstractIncomingMessage

from saga_orchestrator.engine.relay import OutboxRelay
from saga_orchestrator.store import OutboxMessage, Store, open_store
from saga_orchestrator.store.encryption import EventCipher, generate_key
from saga_orchestrator.transports.amqp import AmqpPublisher, AmqpSettings
from tests.integration.store.support import TENANT, RawDatabase, create
from tests.integration.transports.rabbitmq import (
    QueueCollector,
    declare_queue,
    eventually,
    rabbitmq_vhost,
    wait_for,
)

QUEUE = "test.outbox"
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        await declare_queue(url, QUEUE)
        yield url


def settings(url: str) -> AmqpSettings:
    return AmqpSettings(url, reconnect_initial=0.05, reconnect_max=0.2)


@dataclass
class Publishing:
    relay: OutboxRelay
    inbox: QueueCollector
    received: list[AbstractIncomingMessage] = field(default_factory=list)
    """What the test queue got, read once the relay stopped."""


@asynccontextmanager
async def publishing(store: Store, amqp_url: str, **options: Any) -> AsyncIterator[Publishing]:
    """A relay publishing ``store``'s outbox to the test queue while the block runs."""
    async with (
        QueueCollector(amqp_url, QUEUE) as inbox,
        AmqpPublisher(settings(amqp_url)) as publisher,
    ):
        run = Publishing(OutboxRelay(store, publisher, **options), inbox)
        run.relay.start()
        try:
            yield run
        finally:
            await run.relay.stop()
        run.received = await inbox.barrier()


SECRET_BODY = b'{"n": %d, "card": "4242-4242-4242-4242"}'


def outbox(instance_id: str, count: int, body: bytes = b'{"n": %d}') -> list[OutboxMessage]:
    return [
        OutboxMessage(
            tenant_id=TENANT,
            instance_id=instance_id,
            message_id=f"{instance_id}:m{n}",
            exchange="",
            routing_key=QUEUE,
            body=body % n,
            headers={"x-saga-message-id": f"{instance_id}:m{n}", "saga-step": "reserve"},
        )
        for n in range(count)
    ]


async def write(
    store: Store,
    writer: int,
    instances: int,
    *,
    jitter: float = 0.0,
    body: bytes = b'{"n": %d}',
) -> set[str]:
    """Create ``instances`` instances with two outbox messages each, one commit apiece."""
    written: set[str] = set()
    for n in range(instances):
        instance_id = f"w{writer}-i{n}"
        messages = outbox(instance_id, 2, body)
        [result] = await store.append([create(instance_id, outbox=messages)])
        assert result.status == "appended"
        written |= {m.message_id for m in messages}
        if jitter:
            await asyncio.sleep(random.uniform(0, jitter))
    return written


def exactly_once(ids: list[str | None], expected: set[str]) -> None:
    counts = Counter(ids)
    assert {i for i, c in counts.items() if c > 1} == set()
    assert set(counts) == expected


async def test_every_committed_message_is_published_exactly_once(
    store: Store, amqp_url: str
) -> None:
    async with publishing(store, amqp_url, batch=25, poll_interval=0.05) as run:
        writers = [write(store, w, 30, jitter=0.01) for w in range(6)]
        written = set().union(*await asyncio.gather(*writers))
        await run.inbox.wait_for_count(len(written))
        await eventually(lambda: backlog_is(store, 0))
    assert len(written) == 360
    exactly_once([m.message_id for m in run.received], written)
    assert run.relay.counters.published == 360
    assert run.relay.counters.unconfirmed == 0
    assert run.relay.counters.failures == 0


async def test_wake_publishes_without_waiting_for_the_poll(store: Store, amqp_url: str) -> None:
    async with publishing(store, amqp_url, poll_interval=3600) as run:
        await wait_for(lambda: run.relay.counters.claims == 1)  # then it idles for an hour
        written = await write(store, 0, 3)
        run.relay.wake()
        await run.inbox.wait_for_count(6)
    exactly_once([m.message_id for m in run.received], written)


async def test_an_unreachable_broker_loses_nothing(store: Store, amqp_url: str) -> None:
    written = await write(store, 0, 20)
    async with AmqpPublisher(settings(UNREACHABLE)) as dead:
        relay = OutboxRelay(store, dead, batch=15, poll_interval=0.05)
        relay.start()
        try:
            await wait_for(lambda: relay.counters.failures >= 3)
            written |= await write(store, 1, 5)
            relay.wake()
            await wait_for(lambda: relay.counters.failures >= 5)
        finally:
            await relay.stop()
    assert relay.counters.published == 0
    assert str(relay.counters.last_error).startswith("BrokerUnavailable")
    assert await store.outbox_backlog() == 50
    async with publishing(store, amqp_url, batch=15, poll_interval=0.05) as run:
        await run.inbox.wait_for_count(50)
        await eventually(lambda: backlog_is(store, 0))
    exactly_once([m.message_id for m in run.received], written)


async def test_unroutable_messages_stay_in_the_outbox_until_they_can_be_delivered(
    store: Store, amqp_url: str
) -> None:
    lost = OutboxMessage(
        tenant_id=TENANT,
        instance_id="i-lost",
        message_id="i-lost:m0",
        exchange="",
        routing_key="test.later",
        body=b"{}",
    )
    [result] = await store.append([create("i-lost", outbox=[lost])])
    assert result.status == "appended"
    written = await write(store, 0, 2)
    async with publishing(store, amqp_url, poll_interval=0.05, refused_retry=0.05) as run:
        await run.inbox.wait_for_count(4)
        await wait_for(lambda: run.relay.counters.unconfirmed >= 2)
        assert await store.outbox_backlog() == 1
        async with QueueCollector(amqp_url, "test.later") as later:
            await later.wait_for_count(1)
            await eventually(lambda: backlog_is(store, 0))
            assert [m.message_id for m in await later.barrier()] == ["i-lost:m0"]
    exactly_once([m.message_id for m in run.received], written)
    assert run.relay.counters.published == 5


@pytest.mark.postgres
async def test_two_relays_on_one_database_never_publish_a_row_twice(
    pg_url: str, amqp_url: str
) -> None:
    stores = [open_store(pg_url), open_store(pg_url)]
    try:
        written = set().union(*[await write(stores[0], w, 100) for w in range(3)])
        async with (
            QueueCollector(amqp_url, QUEUE) as inbox,
            AmqpPublisher(settings(amqp_url)) as first,
            AmqpPublisher(settings(amqp_url)) as second,
        ):
            relays = [
                OutboxRelay(stores[0], first, batch=10, poll_interval=0.05),
                OutboxRelay(stores[1], second, batch=10, poll_interval=0.05),
            ]
            for relay in relays:
                relay.start()
            try:
                await inbox.wait_for_count(len(written))
                await eventually(lambda: backlog_is(stores[0], 0))
            finally:
                for relay in relays:
                    await relay.stop()
            received = await inbox.barrier()
    finally:
        for store in stores:
            await store.close()
    assert len(written) == 600
    exactly_once([m.message_id for m in received], written)
    assert sum(relay.counters.published for relay in relays) == 600


async def keyed(url: str, keys: str) -> Store:
    store = open_store(url, cipher=EventCipher.parse(keys))
    await store.migrate()
    return store


async def raw_outbox(url: str) -> dict[str, tuple[bytes, str | None]]:
    """message id -> (body, sealed_with), as a dump of the table shows them."""
    async with RawDatabase(url) as db:
        rows = await db.fetch("SELECT message_id, body, sealed_with FROM outbox")
    return {row[0]: (bytes(row[1]), row[2]) for row in rows}


def secret_body(message_id: str) -> bytes:
    return SECRET_BODY % int(message_id.rpartition(":m")[2])


async def test_sealed_messages_go_out_opened_and_keep_no_body(
    store_url: str, amqp_url: str
) -> None:
    store = await keyed(store_url, f"k1={generate_key()}")
    try:
        written = await write(store, 0, 3, body=SECRET_BODY)
        before = await raw_outbox(store_url)
        async with publishing(store, amqp_url, poll_interval=0.05) as run:
            await run.inbox.wait_for_count(len(written))
            await eventually(lambda: backlog_is(store, 0))
    finally:
        await store.close()
    assert set(before) == written
    assert all(b"4242" not in body and key == "k1" for body, key in before.values())
    exactly_once([m.message_id for m in run.received], written)
    assert {m.message_id: m.body for m in run.received} == {
        mid: secret_body(mid) for mid in written
    }
    assert await raw_outbox(store_url) == dict.fromkeys(written, (b"", None))


async def test_a_rotated_key_still_opens_older_messages_and_nothing_goes_out_unopened(
    store_url: str, amqp_url: str
) -> None:
    old, new = generate_key(), generate_key()
    store = await keyed(store_url, f"k1={old}")
    try:
        older = await write(store, 0, 1, body=SECRET_BODY)
    finally:
        await store.close()
    rotated = await keyed(store_url, f"k2={new},k1={old}")
    forgotten = await keyed(store_url, f"k2={new}")
    try:
        newer = await write(rotated, 1, 1, body=SECRET_BODY)
        assert {mid: key for mid, (_, key) in (await raw_outbox(store_url)).items()} == {
            **dict.fromkeys(older, "k1"),
            **dict.fromkeys(newer, "k2"),
        }
        async with (
            QueueCollector(amqp_url, QUEUE) as inbox,
            AmqpPublisher(settings(amqp_url)) as publisher,
        ):
            # k1 dropped too early: its messages are held back, the others are not.
            relay = OutboxRelay(forgotten, publisher, poll_interval=0.05, lease_seconds=0.3)
            relay.start()
            try:
                await inbox.wait_for_count(len(newer))
                await wait_for(lambda: relay.counters.unreadable >= 2 * len(older))
            finally:
                await relay.stop()
            assert "key 'k1', which is not configured" in str(relay.counters.last_error)
            assert await rotated.outbox_backlog() == len(older)
            # With k1 listed again (second), the older messages open and go out.
            relay = OutboxRelay(rotated, publisher, poll_interval=0.05)
            relay.start()
            try:
                await inbox.wait_for_count(len(older | newer))
                await eventually(lambda: backlog_is(rotated, 0))
            finally:
                await relay.stop()
            received = await inbox.barrier()
    finally:
        await rotated.close()
        await forgotten.close()
    exactly_once([m.message_id for m in received], older | newer)
    assert [m.message_id for m in received[: len(newer)]] == sorted(newer)
    assert {m.message_id: m.body for m in received} == {
        mid: secret_body(mid) for mid in older | newer
    }


async def backlog_is(store: Store, count: int) -> bool:
    return await store.outbox_backlog() == count
