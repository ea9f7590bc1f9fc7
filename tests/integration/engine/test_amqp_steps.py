"""Steps over RabbitMQ end to end: a node whose handlers run in a worker, commands through the
transactional outbox, replies fed back, lifecycle events published; against a real broker and
a real store (a fresh virtual host per test)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import orjson
import pytest_asyncio

from saga_orchestrator.api import create_app
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.errors import NonRetryableStepError, RetryableStepError
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.sdk.worker import Worker
from saga_orchestrator.transports.amqp import AmqpSettings
from saga_orchestrator.transports.amqp_messages import (
    INTEGRATION_EXCHANGE,
    StepReply,
    decode_command,
    encode_reply,
)
from saga_orchestrator.transports.base import StepOutcome
from saga_orchestrator.transports.handlers import HandlerRegistry, StepContext, handler
from tests.integration.transports.rabbitmq import QueueCollector, eventually, rabbitmq_vhost

FAST = {"max_attempts": 3, "initial_interval": 0.05, "max_interval": 0.1}


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        yield url


class Remote:
    """Handlers served by a worker; they record every call (name, attempt, key)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []
        self.script: dict[str, list[str]] = {}

    def registry(self) -> HandlerRegistry:
        def make(name: str) -> Any:
            @handler(name)
            async def run(ctx: StepContext) -> Any:
                self.calls.append((ctx.instance_id, name, ctx.attempt, ctx.idempotency_key))
                plan = self.script.get(name, [])
                count = sum(1 for c in self.calls if c[1] == name and c[0] == ctx.instance_id)
                action = plan[count - 1] if count <= len(plan) else "ok"
                if action == "retry":
                    raise RetryableStepError(f"{name} busy")
                if action == "reject":
                    raise NonRetryableStepError(f"{name} says no", error_type="Rejected")
                return {"by": name, "input": ctx.input}

            return run

        names = ("reserve", "charge", "ship")
        return HandlerRegistry([make(n) for n in names] + [make(f"undo.{n}") for n in names])

    def called(self, instance_id: str) -> list[str]:
        return [c[1] for c in self.calls if c[0] == instance_id]


def remote_saga(name: str = "order", **options: Any) -> dict[str, Any]:
    steps = [
        {"name": n, "action": n, "compensation": f"undo.{n}", "retry": FAST, **options}
        for n in ("reserve", "charge", "ship")
    ]
    return {"name": name, "version": "1.0.0", "steps": steps}


@pytest_asyncio.fixture
async def remote() -> Remote:
    return Remote()


@pytest_asyncio.fixture
async def worker(amqp_url: str, remote: Remote) -> AsyncIterator[Worker]:
    running = Worker(AmqpSettings(amqp_url), remote.registry())
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.request_stop()
        await task


@pytest_asyncio.fixture
async def node(store_url: str, amqp_url: str) -> AsyncIterator[Orchestrator]:
    # No handler runs in this process: every handler step goes to the worker.
    async with Orchestrator(
        store_url,
        amqp_url=amqp_url,
        require_known_handlers=False,
        integration_event_tenants=["*"],
    ) as running:
        assert running.relay is not None
        running.relay.poll_interval = 0.05
        yield running


async def test_handler_steps_run_in_a_worker_and_complete(
    node: Orchestrator, worker: Worker, remote: Remote
) -> None:
    await node.register(remote_saga())
    started = [await node.start("order", {"n": n}) for n in range(20)]
    views = [await node.wait(s.instance_id, timeout=30) for s in started]
    assert [v.status for v in views] == [InstanceStatus.COMPLETED] * 20
    for view in views:
        assert remote.called(view.instance_id) == ["reserve", "charge", "ship"]
        assert view.steps["ship"].output == {"by": "ship", "input": {"n": view.input["n"]}}
    keys = {(c[0], c[1]): c[3] for c in remote.calls}
    assert all(key == f"{iid}:{step}:action" for (iid, step), key in keys.items())

    async def drained() -> bool:  # the last lifecycle events go out just after the commit
        return await node.store.outbox_backlog() == 0

    await eventually(drained)


async def test_the_relays_totals_are_on_metrics(
    node: Orchestrator, worker: Worker, remote: Remote
) -> None:
    await node.register(remote_saga())
    for n in range(3):
        started = await node.start("order", {"n": n})
        assert (await node.wait(started.instance_id, timeout=30)).status is InstanceStatus.COMPLETED

    async def drained() -> bool:
        return await node.store.outbox_backlog() == 0

    await eventually(drained)
    app = create_app(node)  # no authenticator: the embedding sees every series
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        text = (await client.get("/metrics")).text
    assert node.relay is not None
    published = node.relay.counters.published
    assert published >= 9  # three commands a saga, at the least
    assert f"saga_outbox_published_total {float(published)}" in text
    assert "saga_outbox_unreadable_total 0.0" in text


async def test_with_encryption_keys_commands_are_sealed_and_published_ones_erased(
    store_url: str, amqp_url: str, worker: Worker, remote: Remote
) -> None:
    from saga_orchestrator.store.encryption import generate_key
    from tests.integration.store.support import RawDatabase

    card = "4242-4242-4242-4242"
    async with Orchestrator(
        store_url,
        amqp_url=amqp_url,
        require_known_handlers=False,
        integration_event_tenants=["*"],
        encryption_keys=f"main={generate_key()}",
    ) as sealed:
        assert sealed.relay is not None
        sealed.relay.poll_interval = 0.05
        await sealed.register(remote_saga())
        started = await sealed.start("order", {"card": card})
        view = await sealed.wait(started.instance_id, timeout=30)

        async def drained() -> bool:
            return await sealed.store.outbox_backlog() == 0

        await eventually(drained)
    # The worker got the step input, opened; the table keeps the messages, bodiless.
    assert view.status is InstanceStatus.COMPLETED
    assert view.steps["ship"].output == {"by": "ship", "input": {"card": card}}
    async with RawDatabase(store_url) as db:
        rows = await db.fetch("SELECT message_id, body, sealed_with FROM outbox")
    assert len(rows) == 5  # three commands, two lifecycle events
    assert all((bytes(r[1]), r[2]) == (b"", None) for r in rows)


async def test_retries_and_compensation_through_the_worker(
    node: Orchestrator, worker: Worker, remote: Remote
) -> None:
    remote.script["charge"] = ["retry", "ok"]
    remote.script["ship"] = ["reject"]
    await node.register(remote_saga())
    started = await node.start("order", {})
    view = await node.wait(started.instance_id, timeout=30)
    assert view.status is InstanceStatus.COMPENSATED
    assert remote.called(started.instance_id) == [
        "reserve", "charge", "charge", "ship", "undo.charge", "undo.reserve",
    ]  # fmt: skip
    charges = [c for c in remote.calls if c[1] == "charge"]
    assert [c[2] for c in charges] == [1, 2]
    assert len({c[3] for c in charges}) == 1


async def test_lifecycle_events_are_published_through_the_outbox(
    node: Orchestrator, worker: Worker, amqp_url: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            INTEGRATION_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("test.lifecycle", durable=True)
        await queue.bind(exchange, "default.order.*")
    finally:
        await connection.close()
    await node.register(remote_saga())
    started = await node.start("order", {"n": 1})
    await node.wait(started.instance_id, timeout=30)
    async with QueueCollector(amqp_url, "test.lifecycle", declare=False) as lifecycle:
        messages = await lifecycle.wait_for_count(2)
    bodies = [orjson.loads(m.body) for m in messages]
    assert [b["type"] for b in bodies] == ["saga.started", "saga.completed"]
    assert {b["instance_id"] for b in bodies} == {started.instance_id}
    assert bodies[1]["output"] is None or isinstance(bodies[1]["output"], dict)
    assert [m.routing_key for m in messages] == ["default.order.started", "default.order.completed"]


async def test_an_amqp_target_is_answered_by_any_consumer(
    node: Orchestrator, amqp_url: str
) -> None:
    definition = {
        "name": "notify",
        "version": "1.0.0",
        "steps": [
            {
                "name": "email",
                "retry": FAST,
                "action": {
                    "amqp": {
                        "routing_key": "mailer.send",
                        "body": {"to": "${input.email}", "template": "receipt"},
                    }
                },
            }
        ],
    }
    connection = await aio_pika.connect(amqp_url)
    seen: list[dict[str, Any]] = []
    try:
        channel = await connection.channel()
        inbox = await channel.declare_queue("mailer.send", durable=True)

        async def answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                command = decode_command(message.body)
                seen.append({"input": command.input, "message_id": message.message_id})
                reply = StepReply(
                    tenant_id=command.tenant_id,
                    instance_id=command.instance_id,
                    node=command.node,
                    phase=command.phase,
                    attempt=command.attempt,
                    outcome=StepOutcome(output={"sent": True}),
                )
                assert message.reply_to is not None
                await channel.default_exchange.publish(
                    aio_pika.Message(encode_reply(reply)), routing_key=message.reply_to
                )

        await inbox.consume(answer)
        await node.register(definition)
        started = await node.start("notify", {"email": "ada@example.com"})
        view = await node.wait(started.instance_id, timeout=30)
    finally:
        await connection.close()
    assert view.status is InstanceStatus.COMPLETED
    assert view.steps["email"].output == {"sent": True}
    assert seen == [
        {
            "input": {"to": "ada@example.com", "template": "receipt"},
            "message_id": f"{started.instance_id}:email:action",
        }
    ]


async def test_commands_wait_in_the_outbox_until_a_worker_comes(
    node: Orchestrator, remote: Remote, amqp_url: str
) -> None:
    """No worker yet: the command is unroutable, stays in the outbox, and is delivered once a
    worker declares its queue (within the attempt's timeout)."""
    assert node.relay is not None
    node.relay.refused_retry = 0.05
    await node.register(remote_saga(timeout=30))
    started = await node.start("order", {})
    async with asyncio.timeout(30):
        while node.relay.counters.unconfirmed == 0:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.02)
    assert await node.store.outbox_backlog() >= 1
    late = Worker(AmqpSettings(amqp_url), remote.registry())
    task = asyncio.create_task(late.run())
    try:
        view = await node.wait(started.instance_id, timeout=30)
    finally:
        late.request_stop()
        await task
    assert view.status is InstanceStatus.COMPLETED
    assert Counter(remote.called(started.instance_id)) == {"reserve": 1, "charge": 1, "ship": 1}
