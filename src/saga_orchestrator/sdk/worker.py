"""A worker: runs ``@handler`` functions for steps dispatched over RabbitMQ.

Each registered handler name gets a durable queue ``saga.handler.<name>`` bound to the
command exchange. A command runs through :class:`InProcessTransport`, exactly as it would
inside a node, so moving a step into a worker changes configuration, not behaviour; the
reply goes to the command's ``reply_to`` with a publisher confirm, and only then is the
command acked. A command redelivered after its reply was sent (an ack lost with its
connection) is answered again from a bounded cache, without running the handler twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import OrderedDict
from collections.abc import Sequence

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from saga_orchestrator.definition.models import HandlerCall
from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.transports.amqp import (
    AmqpSettings,
    ConsumerService,
    dead_letter,
    declare_handler_queue,
    declare_topology,
    publish_confirmed,
    settle,
)
from saga_orchestrator.transports.amqp_messages import (
    PROPERTY_CORRELATION_ID,
    PROPERTY_MESSAGE_ID,
    REPLY_QUEUE,
    AmqpMessage,
    StepCommand,
    StepReply,
    decode_command,
    encode_reply,
)
from saga_orchestrator.transports.base import StepOutcome, StepRequest
from saga_orchestrator.transports.handlers import HandlerRegistry
from saga_orchestrator.transports.inprocess import InProcessTransport

__all__ = ["Worker", "run_worker"]

log = logging.getLogger("saga_orchestrator.worker")


class Worker(ConsumerService):
    def __init__(
        self,
        settings: AmqpSettings,
        registry: HandlerRegistry,
        *,
        concurrency: int = 16,
        answered_cache: int = 10_000,
    ) -> None:
        super().__init__(settings, prefetch=concurrency)
        self.registry = registry
        self.concurrency = concurrency
        self.answered_cache = answered_cache
        """How many recent replies are kept to answer redelivered commands."""
        self._transport = InProcessTransport(registry)
        self._slots = asyncio.Semaphore(concurrency)
        self._answered: OrderedDict[str, bytes] = OrderedDict()
        self._running: dict[str, asyncio.Future[bytes]] = {}

    async def run(self) -> None:
        """Work until :meth:`request_stop` or :meth:`stop`; in-flight commands finish first."""
        await self.start()
        await self._stopping.wait()
        await self.stop()

    async def setup(self, channel: AbstractChannel) -> Sequence[AbstractQueue]:
        await declare_topology(channel)
        return [await declare_handler_queue(channel, name) for name in sorted(self.registry)]

    async def process(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        try:
            command = decode_command(message.body)
        except InvalidInput as error:
            log.warning("dead-lettering command %s: %s", message.message_id, error)
            await self._dead_letter(channel, message, f"InvalidInput: {error}")
            return
        body = await self._answer(command)
        reply = AmqpMessage(
            key=command.correlation_id,
            exchange="",
            routing_key=message.reply_to or REPLY_QUEUE,
            body=body,
            headers={
                PROPERTY_MESSAGE_ID: f"{command.correlation_id}:reply",
                PROPERTY_CORRELATION_ID: command.correlation_id,
                "traceparent": command.traceparent,
            },
        )
        if await publish_confirmed(channel, reply, timeout=self.settings.confirm_timeout):
            await settle(message, ack=True)
        else:  # e.g. no reply queue yet: the command comes back and is answered from cache
            await self._requeue_later(message)

    async def _answer(self, command: StepCommand) -> bytes:
        """The reply to ``command``: from the cache, from a run of the same attempt already
        in progress (a redelivery while the first delivery runs), or by running it."""
        key = command.correlation_id
        cached = self._answered.get(key)
        if cached is not None:
            self._answered.move_to_end(key)
            return cached
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            async with self._slots:
                outcome = await self._run(command)
            body = encode_reply(_reply(command, outcome))
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: whoever shares this run re-raises it
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            self._remember(key, body)
            future.set_result(body)
            return body
        finally:
            del self._running[key]

    async def _run(self, command: StepCommand) -> StepOutcome:
        """Exactly as in a node: a handler this worker lacks (or a command naming none) is a
        non-retryable ``HandlerNotFound``."""
        handler_name = command.handler if isinstance(command.handler, str) else ""
        request = StepRequest(
            tenant_id=command.tenant_id,
            instance_id=command.instance_id,
            node=command.node,
            phase=command.phase,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            # Not validated: any name is looked up, an unknown one answers HandlerNotFound.
            target=HandlerCall.model_construct(handler=handler_name),
            input=command.input,
            action_output=command.action_output,
            timeout=command.timeout,
            traceparent=command.traceparent,
        )
        return await self._transport.call(request)

    def _remember(self, key: str, body: bytes) -> None:
        self._answered[key] = body
        while len(self._answered) > self.answered_cache:
            self._answered.popitem(last=False)

    async def _dead_letter(
        self, channel: AbstractChannel, message: AbstractIncomingMessage, reason: str
    ) -> None:
        if await dead_letter(channel, message, reason, timeout=self.settings.confirm_timeout):
            await settle(message, ack=True)
        else:
            await self._requeue_later(message)


def _reply(command: StepCommand, outcome: StepOutcome) -> StepReply:
    return StepReply(
        tenant_id=command.tenant_id,
        instance_id=command.instance_id,
        node=command.node,
        phase=command.phase,
        attempt=command.attempt,
        outcome=outcome,
    )


async def run_worker(
    settings: AmqpSettings, registry: HandlerRegistry, *, concurrency: int = 16
) -> None:
    """Run a worker until SIGINT or SIGTERM; in-flight commands finish before it returns."""
    worker = Worker(settings, registry, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, worker.request_stop)
    try:
        log.info("worker running %d handlers: %s", len(registry), ", ".join(sorted(registry)))
        await worker.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
