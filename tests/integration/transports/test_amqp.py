"""The RabbitMQ transport against a real broker: publisher confirms, reconnection, and the
reply consumer's acks and dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from saga_orchestrator.core.events import ErrorInfo, Phase
from saga_orchestrator.errors import NotFound
from saga_orchestrator.transports.amqp import (
    DEAD_LETTER_REASON_HEADER,
    AmqpPublisher,
    AmqpSettings,
    BrokerUnavailable,
    ReplyConsumer,
)
from saga_orchestrator.transports.amqp_messages import (
    DEAD_LETTER_QUEUE,
    REPLY_QUEUE,
    AmqpMessage,
    StepReply,
    encode_reply,
)
from saga_orchestrator.transports.base import StepOutcome
from tests.integration.transports.rabbitmq import (
    QueueCollector,
    close_connections,
    declare_queue,
    queue_depth,
    rabbitmq_vhost,
    wait_for,
)

QUEUE = "test.inbox"


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        yield url


def settings(url: str) -> AmqpSettings:
    return AmqpSettings(url, reconnect_initial=0.05, reconnect_max=0.5, requeue_delay=0.05)


def message(n: int, *, exchange: str = "", routing_key: str = QUEUE) -> AmqpMessage:
    return AmqpMessage(
        key=f"key-{n}",
        exchange=exchange,
        routing_key=routing_key,
        body=b'{"n": %d}' % n,
        headers={
            "x-saga-message-id": f"message-{n}",
            "x-saga-correlation-id": f"attempt-{n}",
            "x-saga-reply-to": "replies-here",
            "x-saga-expiration-ms": "60000",
            "saga-step": "reserve",
        },
    )


def reply(instance: str = "i-1", *, output: object = None) -> StepReply:
    return StepReply(
        tenant_id="t",
        instance_id=instance,
        node="reserve",
        phase=Phase.ACTION,
        attempt=2,
        outcome=StepOutcome(output=output),
    )


def to_reply_queue(body: bytes, key: str) -> AmqpMessage:
    return AmqpMessage(key=key, exchange="", routing_key=REPLY_QUEUE, body=body, headers={})


# --- publisher ---------------------------------------------------------------------------


async def test_every_confirmed_message_is_queued_with_its_properties(amqp_url: str) -> None:
    async with QueueCollector(amqp_url, QUEUE) as inbox, AmqpPublisher(settings(amqp_url)) as pub:
        confirmed = await pub.publish([message(n) for n in range(50)])
        assert confirmed == [True] * 50
        received = await inbox.barrier()
    assert [m.message_id for m in received] == [f"message-{n}" for n in range(50)]
    first = received[0]
    assert first.body == b'{"n": 0}'
    assert first.correlation_id == "attempt-0"
    assert first.reply_to == "replies-here"
    assert first.expiration == 60.0
    assert first.delivery_mode == 2
    assert first.content_type == "application/json"
    assert first.headers == {"saga-step": "reserve"}


async def test_unroutable_messages_are_not_reported_confirmed(amqp_url: str) -> None:
    batch = [
        message(1),
        message(2, routing_key="no.such.queue"),
        message(3, exchange="no.such.exchange"),
        message(4),
    ]
    async with QueueCollector(amqp_url, QUEUE) as inbox, AmqpPublisher(settings(amqp_url)) as pub:
        assert await pub.publish(batch) == [True, False, False, True]
        # The channel survived the missing exchange: the next batch goes out normally.
        assert await pub.publish([message(5)]) == [True]
        received = await inbox.barrier()
        assert pub.connections == 1
    assert [m.message_id for m in received] == ["message-1", "message-4", "message-5"]


async def test_same_message_id_twice_in_one_batch_is_confirmed_separately(amqp_url: str) -> None:
    again = AmqpMessage(
        key="key-1-again",
        exchange="",
        routing_key="no.such.queue",
        body=b"{}",
        headers={"x-saga-message-id": "message-1"},
    )
    async with QueueCollector(amqp_url, QUEUE) as inbox, AmqpPublisher(settings(amqp_url)) as pub:
        assert await pub.publish([message(1), again, message(2)]) == [True, False, True]
        received = await inbox.barrier()
    assert [m.message_id for m in received] == ["message-1", "message-2"]


async def test_publisher_reconnects_after_the_broker_closed_its_connection(
    amqp_url: str,
) -> None:
    confirmed_ids: list[str] = []
    outages = 0
    await declare_queue(amqp_url, QUEUE)
    async with AmqpPublisher(settings(amqp_url)) as pub:
        for round_ in range(40):
            batch = [message(round_ * 10 + n) for n in range(10)]
            try:
                results = await pub.publish(batch)
            except BrokerUnavailable:
                outages += 1
                results = [False] * len(batch)
            confirmed_ids += [
                m.headers["x-saga-message-id"] for m, ok in zip(batch, results, strict=True) if ok
            ]
            if round_ == 10:
                await close_connections(amqp_url)
        assert pub.connections == 2
    # The queue is durable: read it once the outage is over (it closed every connection).
    async with QueueCollector(amqp_url, QUEUE) as inbox:
        received = await inbox.barrier()
    # Every confirmed message is in the queue, and the rounds after the outage all succeeded.
    ids = [m.message_id for m in received]
    assert set(confirmed_ids) <= set(ids)
    assert all(f"message-{n}" in confirmed_ids for n in range(300, 400))
    assert outages <= 1


async def test_an_unreachable_broker_raises_broker_unavailable_and_backs_off() -> None:
    dead = AmqpSettings(
        "amqp://guest:guest@127.0.0.1:1/", reconnect_initial=30.0, reconnect_max=60.0
    )
    async with AmqpPublisher(dead) as pub:
        with pytest.raises(BrokerUnavailable) as first:
            await pub.publish([message(1)])
        assert 15.0 <= first.value.retry_after <= 30.0
        with pytest.raises(BrokerUnavailable, match="backing off") as second:
            await pub.publish([message(1)])
        assert 0 < second.value.retry_after <= first.value.retry_after
        assert pub.connections == 0
        assert await pub.publish([]) == []


# --- reply consumer ----------------------------------------------------------------------


class Replies:
    def __init__(self, *, fail_first: int = 0, unknown: set[str] | None = None) -> None:
        self.seen: list[StepReply] = []
        self.fail_first = fail_first
        self.unknown = unknown or set()

    async def __call__(self, reply: StepReply) -> None:
        self.seen.append(reply)
        if reply.instance_id in self.unknown:
            raise NotFound(f"instance {reply.instance_id} does not exist")
        if len(self.seen) <= self.fail_first:
            raise RuntimeError("database briefly unavailable")


@pytest_asyncio.fixture
async def publisher(amqp_url: str) -> AsyncIterator[AmqpPublisher]:
    async with AmqpPublisher(settings(amqp_url)) as pub:
        yield pub


async def consuming(consumer: ReplyConsumer) -> ReplyConsumer:
    await consumer.start()
    await wait_for(consumer.connected.is_set)
    return consumer


async def test_a_valid_reply_is_handled_once_then_acked(
    amqp_url: str, publisher: AmqpPublisher
) -> None:
    handled = Replies()
    consumer = await consuming(ReplyConsumer(settings(amqp_url), handled))
    try:
        sent = reply(output={"reserved": 2})
        assert await publisher.publish([to_reply_queue(encode_reply(sent), "r1")]) == [True]
        await wait_for(lambda: len(handled.seen) == 1)
    finally:
        await consumer.stop()
    # Stopping closed the connection: an unacked reply would be back in the queue.
    assert handled.seen == [sent]
    assert await queue_depth(amqp_url, REPLY_QUEUE) == 0


async def test_a_transient_failure_redelivers_the_reply(
    amqp_url: str, publisher: AmqpPublisher
) -> None:
    handled = Replies(fail_first=2)
    consumer = await consuming(ReplyConsumer(settings(amqp_url), handled))
    try:
        assert await publisher.publish([to_reply_queue(encode_reply(reply()), "r1")]) == [True]
        await wait_for(lambda: len(handled.seen) == 3)
    finally:
        await consumer.stop()
    assert handled.seen == [reply()] * 3
    assert await queue_depth(amqp_url, REPLY_QUEUE) == 0


async def test_malformed_and_unknown_replies_are_dead_lettered_with_a_reason(
    amqp_url: str, publisher: AmqpPublisher
) -> None:
    handled = Replies(unknown={"ghost"})
    consumer = await consuming(ReplyConsumer(settings(amqp_url), handled))
    unknown = encode_reply(reply("ghost"))
    failed = StepReply(
        tenant_id="t",
        instance_id="i-2",
        node="charge",
        phase=Phase.COMPENSATION,
        attempt=1,
        outcome=StepOutcome(error=ErrorInfo(type="Declined", message="no", retryable=False)),
    )
    try:
        async with QueueCollector(amqp_url, DEAD_LETTER_QUEUE, declare=False) as dead:
            batch = [
                to_reply_queue(b"not json", "bad"),
                to_reply_queue(unknown, "ghost"),
                to_reply_queue(encode_reply(failed), "good"),
            ]
            assert await publisher.publish(batch) == [True, True, True]
            letters = await dead.wait_for_count(2)
            await wait_for(lambda: len(handled.seen) == 2)
            letters = await dead.barrier()
    finally:
        await consumer.stop()
    reasons = {m.body: m.headers[DEAD_LETTER_REASON_HEADER] for m in letters}
    assert len(letters) == 2
    assert set(reasons) == {b"not json", unknown}
    assert str(reasons[b"not json"]).startswith("InvalidInput: not JSON")
    assert reasons[unknown] == "NotFound: instance ghost does not exist"
    assert [r.instance_id for r in handled.seen] == ["ghost", "i-2"]
    assert handled.seen[1] == failed
    assert await queue_depth(amqp_url, REPLY_QUEUE) == 0


async def test_the_reply_consumer_consumes_again_after_losing_its_connection(
    amqp_url: str, publisher: AmqpPublisher
) -> None:
    handled = Replies()
    consumer = await consuming(ReplyConsumer(settings(amqp_url), handled))
    try:
        await close_connections(amqp_url)
        await wait_for(lambda: consumer.connections == 2 and consumer.connected.is_set())
        body = encode_reply(reply(f"i-{uuid.uuid4().hex}"))
        for _ in range(50):  # the publisher's connection was closed too
            try:
                if await publisher.publish([to_reply_queue(body, "after")]) == [True]:
                    break
            except BrokerUnavailable as error:
                await asyncio.sleep(error.retry_after)
        else:
            pytest.fail("could not publish after the outage")
        await wait_for(lambda: len(handled.seen) == 1)
    finally:
        await consumer.stop()
    assert handled.seen[0].instance_id.startswith("i-")
    assert consumer.connections == 2
