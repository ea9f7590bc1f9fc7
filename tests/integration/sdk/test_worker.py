"""The worker against a real RabbitMQ: commands in, handlers run once, replies out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from saga_orchestrator.core.events import Phase
from saga_orchestrator.errors import NonRetryableStepError
from saga_orchestrator.sdk.worker import Worker
from saga_orchestrator.transports.amqp import (
    DEAD_LETTER_REASON_HEADER,
    AmqpPublisher,
    AmqpSettings,
)
from saga_orchestrator.transports.amqp_messages import (
    COMMAND_EXCHANGE,
    DEAD_LETTER_QUEUE,
    AmqpMessage,
    StepCommand,
    StepReply,
    command_message,
    decode_reply,
)
from saga_orchestrator.transports.handlers import HandlerRegistry, StepContext, handler
from tests.integration.transports.rabbitmq import (
    QueueCollector,
    close_connections,
    eventually,
    queue_depth,
    rabbitmq_vhost,
    wait_for,
)

REPLIES = "test.replies"


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        yield url


class Handlers:
    """Handlers that count their runs; ``slow.step`` waits for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, StepContext]] = []
        self.release = asyncio.Event()

    def registry(self) -> HandlerRegistry:
        @handler("inventory.reserve")
        async def reserve(context: StepContext) -> dict[str, Any]:
            self.calls.append(("inventory.reserve", context))
            return {"reserved": context.input["qty"], "attempt": context.attempt}

        @handler("payment.charge")
        def charge(context: StepContext) -> None:
            self.calls.append(("payment.charge", context))
            raise NonRetryableStepError("card declined", error_type="CardDeclined")

        @handler("slow.step")
        async def slow(context: StepContext) -> str:
            self.calls.append(("slow.step", context))
            await self.release.wait()
            return "done"

        return HandlerRegistry([reserve, charge, slow])

    def runs(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)


def command(handler_name: str | None, *, attempt: int = 1, node: str = "reserve") -> StepCommand:
    return StepCommand(
        tenant_id="t",
        instance_id="i-1",
        node=node,
        phase=Phase.ACTION,
        attempt=attempt,
        idempotency_key=f"i-1:{node}:action",
        handler=handler_name,
        input={"qty": 2},
        action_output=None,
        timeout=30.0,
        traceparent="",
    )


def message(cmd: StepCommand, routing_key: str | None = None) -> AmqpMessage:
    return command_message(
        cmd,
        exchange=COMMAND_EXCHANGE,
        routing_key=routing_key or cmd.handler or "",
        reply_to=REPLIES,
    )


def settings(url: str) -> AmqpSettings:
    return AmqpSettings(url, reconnect_initial=0.05, reconnect_max=0.5, requeue_delay=0.05)


@pytest_asyncio.fixture
async def handlers() -> Handlers:
    return Handlers()


@pytest_asyncio.fixture
async def worker(amqp_url: str, handlers: Handlers) -> AsyncIterator[Worker]:
    running = Worker(settings(amqp_url), handlers.registry(), concurrency=4)
    task = asyncio.create_task(running.run())
    await wait_for(running.connected.is_set)
    yield running
    handlers.release.set()
    running.request_stop()
    await task


@pytest_asyncio.fixture
async def replies(amqp_url: str) -> AsyncIterator[QueueCollector]:
    async with QueueCollector(amqp_url, REPLIES) as collector:
        yield collector


@pytest_asyncio.fixture
async def publisher(amqp_url: str) -> AsyncIterator[AmqpPublisher]:
    async with AmqpPublisher(settings(amqp_url)) as pub:
        yield pub


async def has_depth(url: str, queue: str, depth: int) -> bool:
    return await queue_depth(url, queue) == depth


def decoded(collector: QueueCollector) -> list[StepReply]:
    return [decode_reply(m.body) for m in collector.messages]


async def test_a_command_runs_its_handler_and_the_reply_names_the_attempt(
    worker: Worker, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    sent = command("inventory.reserve", attempt=3)
    assert await publisher.publish([message(sent)]) == [True]
    [raw] = await replies.wait_for_count(1)
    reply = decode_reply(raw.body)
    assert raw.correlation_id == sent.correlation_id
    assert (reply.instance_id, reply.node, reply.phase, reply.attempt) == (
        "i-1",
        "reserve",
        Phase.ACTION,
        3,
    )
    assert reply.outcome.error is None
    assert reply.outcome.output == {"reserved": 2, "attempt": 3}
    [(_, context)] = handlers.calls
    assert context.idempotency_key == "i-1:reserve:action"
    assert context.input == {"qty": 2}


async def test_a_non_retryable_error_is_a_failed_reply_that_is_not_retryable(
    worker: Worker, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    assert await publisher.publish([message(command("payment.charge", node="charge"))]) == [True]
    await replies.wait_for_count(1)
    [reply] = decoded(replies)
    assert reply.outcome.error is not None
    assert reply.outcome.error.type == "CardDeclined"
    assert reply.outcome.error.message == "card declined"
    assert reply.outcome.error.retryable is False
    assert handlers.runs("payment.charge") == 1


async def test_a_command_for_a_handler_this_worker_lacks_gets_handler_not_found(
    worker: Worker, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    stray = message(command("shipping.book"), routing_key="inventory.reserve")
    assert await publisher.publish([stray]) == [True]
    await replies.wait_for_count(1)
    [reply] = decoded(replies)
    assert reply.outcome.error is not None
    assert reply.outcome.error.type == "HandlerNotFound"
    assert reply.outcome.error.retryable is False
    assert handlers.calls == []


async def test_a_command_delivered_again_is_answered_without_running_twice(
    worker: Worker, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    sent = message(command("inventory.reserve", attempt=2))
    assert await publisher.publish([sent]) == [True]
    await replies.wait_for_count(1)
    assert await publisher.publish([sent]) == [True]
    await replies.wait_for_count(2)
    await replies.barrier()
    first, second = replies.messages[:2]
    assert first.body == second.body
    assert handlers.runs("inventory.reserve") == 1
    assert await queue_depth(worker.settings.url, "saga.handler.inventory.reserve") == 0


async def test_a_command_redelivered_after_a_connection_loss_runs_once(
    amqp_url: str, worker: Worker, handlers: Handlers, publisher: AmqpPublisher
) -> None:
    assert await publisher.publish([message(command("slow.step", node="slow"))]) == [True]
    await wait_for(lambda: handlers.runs("slow.step") == 1)
    # The broker drops every connection while the handler runs: the command goes back to
    # its queue, unacked, and the worker gets it again on its next connection.
    await close_connections(amqp_url)
    await wait_for(lambda: worker.connections == 2 and worker.connected.is_set())
    handlers.release.set()
    async with QueueCollector(amqp_url, REPLIES) as replies:
        await replies.wait_for_count(1)
        await wait_for(lambda: worker.in_flight == 0)
        received = await replies.barrier()
    assert [decode_reply(m.body).outcome.output for m in received] == ["done"]
    assert handlers.runs("slow.step") == 1
    assert await queue_depth(amqp_url, "saga.handler.slow.step") == 0


async def test_a_malformed_command_is_dead_lettered(
    amqp_url: str, worker: Worker, handlers: Handlers, publisher: AmqpPublisher
) -> None:
    bad = AmqpMessage(
        key="bad",
        exchange=COMMAND_EXCHANGE,
        routing_key="inventory.reserve",
        body=b'{"v": 1, "tenant_id": "t"}',
        headers={},
    )
    async with QueueCollector(amqp_url, DEAD_LETTER_QUEUE, declare=False) as dead:
        assert await publisher.publish([bad]) == [True]
        await dead.wait_for_count(1)
        letters = await dead.barrier()
    [letter] = letters
    assert letter.body == bad.body
    assert str(letter.headers[DEAD_LETTER_REASON_HEADER]).startswith(
        "InvalidInput: malformed step command"
    )
    assert handlers.calls == []
    assert await queue_depth(amqp_url, "saga.handler.inventory.reserve") == 0


async def test_stop_lets_the_command_in_flight_finish_and_reply(
    amqp_url: str, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    running = Worker(settings(amqp_url), handlers.registry())
    task = asyncio.create_task(running.run())
    await wait_for(running.connected.is_set)
    assert await publisher.publish([message(command("slow.step", node="slow"))]) == [True]
    await wait_for(lambda: handlers.runs("slow.step") == 1)
    running.request_stop()
    # Stopping takes no new command, but the one in flight is not cut short.
    assert await publisher.publish([message(command("inventory.reserve"))]) == [True]
    reserve_queue = "saga.handler.inventory.reserve"
    await eventually(lambda: has_depth(amqp_url, reserve_queue, 1))
    assert not task.done()
    handlers.release.set()
    await task
    await replies.wait_for_count(1)
    [reply] = [decode_reply(m.body) for m in await replies.barrier()]
    assert reply.outcome.output == "done"
    assert handlers.runs("slow.step") == 1
    assert handlers.runs("inventory.reserve") == 0
    assert await queue_depth(amqp_url, reserve_queue) == 1
    assert await queue_depth(amqp_url, "saga.handler.slow.step") == 0


async def test_commands_wait_in_their_queue_while_no_worker_runs(
    amqp_url: str, handlers: Handlers, replies: QueueCollector, publisher: AmqpPublisher
) -> None:
    # No queue yet: the command is unroutable, so the publisher does not confirm it (the
    # outbox keeps it); once a worker declared its queue, it waits there for the worker.
    sent = message(command("inventory.reserve"))
    assert await publisher.publish([sent]) == [False]
    first = Worker(settings(amqp_url), handlers.registry())
    await first.start()
    await wait_for(first.connected.is_set)
    await first.stop()
    assert await publisher.publish([sent]) == [True]
    assert handlers.calls == []
    second = Worker(settings(amqp_url), handlers.registry())
    await second.start()
    try:
        await replies.wait_for_count(1)
    finally:
        await second.stop()
    assert handlers.runs("inventory.reserve") == 1
