"""RabbitMQ plumbing: the topology, a publisher with confirms, and consumers that survive
connection loss (the engine's :class:`ReplyConsumer`; the SDK's worker builds on
:class:`ConsumerService` too).

Connections are plain (not aio-pika's robust ones): losing one is handled here, by
reconnecting with exponential backoff and jitter and then declaring and consuming again, so
what a caller sees during an outage is explicit. The only error of this module::

    SagaError
    └── BrokerUnavailable   RabbitMQ cannot be reached; ``retry_after`` says when to try again

Delivery is at least once everywhere: a confirm or an ack lost with its connection means the
message comes again, and its consumers dedupe on the message or correlation id.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError

from saga_orchestrator.errors import InvalidInput, NotFound, SagaError
from saga_orchestrator.transports.amqp_messages import (
    COMMAND_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    INTEGRATION_EXCHANGE,
    PROPERTY_BROADCAST,
    PROPERTY_CORRELATION_ID,
    PROPERTY_EXPIRATION,
    PROPERTY_HEADERS,
    PROPERTY_MESSAGE_ID,
    PROPERTY_REPLY_TO,
    REPLY_QUEUE,
    AmqpMessage,
    StepReply,
    decode_reply,
)

__all__ = [
    "DEAD_LETTER_REASON_HEADER",
    "DEFAULT_AMQP_URL",
    "AmqpPublisher",
    "AmqpSettings",
    "Backoff",
    "BrokerUnavailable",
    "ConsumerService",
    "ReplyConsumer",
    "declare_handler_queue",
    "declare_topology",
    "handler_queue_name",
    "publish_confirmed",
]

log = logging.getLogger("saga_orchestrator.amqp")

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEAD_LETTER_REASON_HEADER = "x-saga-dead-letter-reason"
HANDLER_QUEUE_PREFIX = "saga.handler."
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError,
    OSError,
    TimeoutError,
    ChannelInvalidStateError,
)
"""What a lost or refused connection raises (ChannelInvalidStateError: a closed channel)."""


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """How to reach RabbitMQ and how patiently."""

    url: str = DEFAULT_AMQP_URL
    """``amqp://user:password@host:port/vhost``."""
    _: KW_ONLY
    prefetch: int = 32
    """Unacknowledged deliveries a consumer holds at once."""
    reconnect_initial: float = 0.2
    """Seconds before the first reconnection attempt; doubles per failure (with jitter)."""
    reconnect_max: float = 10.0
    """Cap of the reconnection delay."""
    connect_timeout: float = 5.0
    """Seconds one connection attempt may take."""
    confirm_timeout: float = 15.0
    """Seconds a publish may wait for its confirm (keep it below the outbox lease)."""
    requeue_delay: float = 1.0
    """Seconds to wait before giving a message that failed transiently back to its queue,
    so a failing dependency is not hammered by redeliveries."""


class BrokerUnavailable(SagaError):
    """RabbitMQ cannot be reached (connection refused or lost, or still backing off)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the next connection attempt is worth making."""


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from the upper half of
    ``initial * 2**failures`` (capped), so reconnecting clients do not stampede together."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


async def connect(settings: AmqpSettings) -> AbstractConnection:
    try:
        return await aio_pika.connect(settings.url, timeout=settings.connect_timeout)
    except BROKER_ERRORS as error:
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ: {type(error).__name__}: {error}", retry_after=0.0
        ) from error


# --- topology ----------------------------------------------------------------------------


async def declare_topology(
    channel: AbstractChannel, *, reply_queue: str = REPLY_QUEUE
) -> AbstractQueue:
    """The command exchange, the reply queue (returned) and the dead-letter exchange and
    queue. Idempotent: every participant declares what it uses."""
    dead_letters = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
    await queue.bind(dead_letters)
    await channel.declare_exchange(COMMAND_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    await channel.declare_exchange(INTEGRATION_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    return await channel.declare_queue(
        reply_queue, durable=True, arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    )


def handler_queue_name(handler_name: str) -> str:
    return f"{HANDLER_QUEUE_PREFIX}{handler_name}"


async def declare_handler_queue(channel: AbstractChannel, handler_name: str) -> AbstractQueue:
    """The durable queue of one handler, bound to the command exchange by its name."""
    queue = await channel.declare_queue(handler_queue_name(handler_name), durable=True)
    await queue.bind(COMMAND_EXCHANGE, routing_key=handler_name)
    return queue


# --- publishing --------------------------------------------------------------------------


def _pika_message(message: AmqpMessage) -> aio_pika.Message:
    headers = message.headers
    return aio_pika.Message(
        message.body,
        headers={k: v for k, v in headers.items() if k not in PROPERTY_HEADERS},
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=headers.get(PROPERTY_MESSAGE_ID) or message.key,
        correlation_id=headers.get(PROPERTY_CORRELATION_ID),
        reply_to=headers.get(PROPERTY_REPLY_TO),
        expiration=_seconds(headers.get(PROPERTY_EXPIRATION)),
    )


def _seconds(milliseconds: str | None) -> float | None:
    if not milliseconds:
        return None
    try:
        return max(0, int(milliseconds)) / 1000
    except ValueError:
        log.warning("ignoring invalid %s header %r", PROPERTY_EXPIRATION, milliseconds)
        return None


async def publish_confirmed(
    channel: AbstractChannel, message: AmqpMessage, *, timeout: float
) -> bool:
    """Publish one persistent message, ``mandatory`` unless it is a broadcast event; True once
    the broker confirmed it. False if it was returned (unroutable) or nacked; connection
    errors propagate.

    The channel must have publisher confirms and ``on_return_raises`` on."""
    exchange = (
        channel.default_exchange
        if not message.exchange
        else await channel.get_exchange(message.exchange, ensure=False)
    )
    try:
        await exchange.publish(
            _pika_message(message),
            message.routing_key,
            mandatory=PROPERTY_BROADCAST not in message.headers,
            timeout=timeout,
        )
    except DeliveryError as error:  # PublishError (returned) is a DeliveryError too
        log.debug("message %s to %r was not confirmed: %s", message.key, message.exchange, error)
        return False
    return True


def closure_of(connection: AbstractConnection) -> asyncio.Event:
    """Set once the connection closes, by either side: aio-pika's ``is_closed`` and
    ``closed()`` only see a close made by this process."""
    lost = asyncio.Event()

    def closed(_sender: object, _error: BaseException | None) -> None:
        lost.set()

    connection.close_callbacks.add(closed)
    return lost


async def open_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel with publisher confirms on which an unroutable message is not confirmed."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


class AmqpPublisher:
    """One connection and one confirming channel, opened on first use.

    :meth:`publish` says per message whether the broker confirmed it. It raises
    :class:`BrokerUnavailable` when it cannot (re)connect; after a failed attempt it waits
    out an exponential backoff, raising at once meanwhile without touching the network."""

    def __init__(self, settings: AmqpSettings) -> None:
        self.settings = settings
        self.connections = 0
        """Connections opened so far (a reconnection adds one)."""
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lost = asyncio.Event()
        self._exchanges: set[str] = set()
        self._backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AmqpPublisher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def publish(self, messages: Sequence[AmqpMessage]) -> list[bool]:
        if not messages:
            return []
        async with self._lock:
            channel = await self._ready_channel()
            confirmed = [False] * len(messages)
            try:
                for wave in _waves(messages):
                    await self._publish_wave(channel, messages, wave, confirmed)
            except BROKER_ERRORS as error:
                log.warning("RabbitMQ connection lost while publishing: %s", error)
                await self._drop()
            return confirmed

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _publish_wave(
        self,
        channel: AbstractChannel,
        messages: Sequence[AmqpMessage],
        wave: list[int],
        confirmed: list[bool],
    ) -> None:
        missing = await self._missing_exchanges({messages[i].exchange for i in wave})
        sendable = [i for i in wave if messages[i].exchange not in missing]
        timeout = self.settings.confirm_timeout
        results = await asyncio.gather(
            *(publish_confirmed(channel, messages[i], timeout=timeout) for i in sendable),
            return_exceptions=True,
        )
        lost: BaseException | None = None
        for index, result in zip(sendable, results, strict=True):
            if isinstance(result, BaseException):
                lost = result
            else:
                confirmed[index] = result
        if lost is not None:
            raise lost

    async def _missing_exchanges(self, names: set[str]) -> set[str]:
        """Publishing to a missing exchange would close the shared channel and fail every
        message in flight, so unknown exchanges are checked first, on a channel of their own."""
        assert self._connection is not None
        missing: set[str] = set()
        for name in names - self._exchanges - {""}:
            checker = await self._connection.channel(publisher_confirms=False)
            try:
                await checker.get_exchange(name, ensure=True)
                self._exchanges.add(name)
            except AMQPError as error:
                if self._connection.is_closed:
                    raise
                log.warning("exchange %r is not declared: %s", name, error)
                missing.add(name)
            finally:
                if not checker.is_closed:
                    await checker.close()
        return missing

    async def _ready_channel(self) -> AbstractChannel:
        if self._channel is not None and not (self._channel.is_closed or self._lost.is_set()):
            return self._channel
        now = time.monotonic()
        if now < self._retry_at:
            raise BrokerUnavailable(
                "RabbitMQ is unreachable (backing off)", retry_after=self._retry_at - now
            )
        await self._drop()
        try:
            self._connection = await connect(self.settings)
            self._lost = closure_of(self._connection)
            # The orchestrator's own exchanges exist before its first publish, whoever
            # (worker, reply consumer) comes up first; bounded, as a starting broker can
            # accept a connection and leave a declaration unanswered.
            async with asyncio.timeout(self.settings.connect_timeout * 2):
                self._channel = await open_channel(self._connection)
                await declare_topology(self._channel)
        except _CONNECT_ERRORS as error:
            await self._drop()
            delay = self._backoff.next_delay()
            self._retry_at = now + delay
            raise BrokerUnavailable(str(error), retry_after=delay) from error
        self._backoff.reset()
        self.connections += 1
        return self._channel

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges.clear()
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()


def _waves(messages: Sequence[AmqpMessage]) -> list[list[int]]:
    """Indexes split so that no message id repeats within a wave: the client matches a
    returned message to its publish by message id, so two in flight at once would be
    confused (every attempt of a step shares its idempotency key)."""
    waves: list[list[int]] = []
    seen: list[set[str]] = []
    for index, message in enumerate(messages):
        message_id = message.headers.get(PROPERTY_MESSAGE_ID) or message.key
        for wave, ids in zip(waves, seen, strict=True):
            if message_id not in ids:
                wave.append(index)
                ids.add(message_id)
                break
        else:
            waves.append([index])
            seen.append({message_id})
    return waves


# --- consuming ---------------------------------------------------------------------------


async def settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack, or nack with requeue; a channel already gone redelivers the message anyway."""
    try:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except BROKER_ERRORS as error:
        log.debug("could not settle delivery %s: %s", message.delivery_tag, error)


async def dead_letter(
    channel: AbstractChannel, message: AbstractIncomingMessage, reason: str, *, timeout: float
) -> bool:
    """Publish the message's body to the dead-letter exchange with the reason in a header."""
    headers = {str(k): _text(v) for k, v in (message.headers or {}).items()}
    headers[DEAD_LETTER_REASON_HEADER] = reason[:1000]
    properties = {
        PROPERTY_MESSAGE_ID: message.message_id,
        PROPERTY_CORRELATION_ID: message.correlation_id,
    }
    headers.update({k: v for k, v in properties.items() if v})
    copy = AmqpMessage(
        key=message.message_id or f"dead-letter:{message.delivery_tag}",
        exchange=DEAD_LETTER_EXCHANGE,
        routing_key=message.routing_key or "",
        body=message.body,
        headers=headers,
    )
    return await publish_confirmed(channel, copy, timeout=timeout)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class ConsumerService(abc.ABC):
    """Consumes queues with manual acks on one connection, and starts over (connect, declare,
    consume) with backoff whenever the connection is lost, until :meth:`stop`.

    Each delivery is processed in a task of its own; :meth:`stop` stops consuming, lets those
    tasks finish, then closes the connection. Subclasses declare in :meth:`setup` and process
    in :meth:`process`, which must settle the message."""

    def __init__(self, settings: AmqpSettings, *, prefetch: int | None = None) -> None:
        self.settings = settings
        self.prefetch = prefetch or settings.prefetch
        self.connected = asyncio.Event()
        """Set while consuming (for readiness checks and tests)."""
        self.connections = 0
        """Connections that reached consuming so far (a reconnection adds one)."""
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @abc.abstractmethod
    async def setup(self, channel: AbstractChannel) -> Sequence[AbstractQueue]:
        """Declare what is needed; return the queues to consume."""

    @abc.abstractmethod
    async def process(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        """Handle one delivery and settle it (ack, or dead-letter and ack, or requeue)."""

    async def start(self) -> None:
        """Start consuming in the background (returns at once, even if RabbitMQ is down)."""
        if self._supervisor is None:
            self._stopping.clear()
            self._supervisor = asyncio.create_task(self._supervise(), name=type(self).__name__)

    def request_stop(self) -> None:
        """Ask to stop (safe from a signal handler); :meth:`stop` waits for it."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            await self._supervisor
            self._supervisor = None

    async def _supervise(self) -> None:
        backoff = Backoff(self.settings.reconnect_initial, self.settings.reconnect_max)
        while not self._stopping.is_set():
            try:
                connection = await connect(self.settings)
            except BrokerUnavailable as error:
                log.warning("%s: %s", type(self).__name__, error)
                await self._pause(backoff.next_delay())
                continue
            try:
                await self._consume(connection, backoff)
            except BROKER_ERRORS as error:
                log.warning("%s lost its connection: %s", type(self).__name__, error)
            finally:
                self.connected.clear()
                with contextlib.suppress(*BROKER_ERRORS):
                    await connection.close()
            if not self._stopping.is_set():
                await self._pause(backoff.next_delay())
        await self._drain()

    async def _consume(self, connection: AbstractConnection, backoff: Backoff) -> None:
        lost = closure_of(connection)
        # A broker that is still starting can accept a connection and then never answer a
        # declaration: bounded, so the next attempt starts over instead of waiting forever.
        async with asyncio.timeout(self.settings.connect_timeout * 2):
            channel = await open_channel(connection)
            await channel.set_qos(prefetch_count=self.prefetch, global_=True)
            queues = await self.setup(channel)
            consumers = []
            for queue in queues:
                tag = await queue.consume(functools.partial(self._on_message, channel))
                consumers.append((queue, tag))
        backoff.reset()
        self.connections += 1
        self.connected.set()
        log.info("consuming %s", ", ".join(queue.name for queue in queues))
        stopping = asyncio.ensure_future(self._stopping.wait())
        closed = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((stopping, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            closed.cancel()
        if not lost.is_set():  # stopping: no new deliveries, finish the ones we hold
            for queue, tag in consumers:
                await queue.cancel(tag)
            await self._drain()

    async def _on_message(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await settle(message, ack=False)
            return
        # Our own task: aio-pika's would be cancelled with the channel, and a handler that
        # outlives its connection should still finish (its reply goes out on redelivery).
        task = asyncio.create_task(self._guarded(channel, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        try:
            await self.process(channel, message)
        except BROKER_ERRORS as error:
            # Connection lost (nothing to settle: the broker requeues), or a confirm timed out
            # on a live channel (give the message back so it is not held forever).
            log.warning("delivery %s: %s: %s", message.message_id, type(error).__name__, error)
            await settle(message, ack=False)
        except Exception:
            log.exception("processing delivery %s failed", message.message_id)
            await settle(message, ack=False)

    @property
    def in_flight(self) -> int:
        """Deliveries being processed."""
        return len(self._tasks)

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _requeue_later(self, message: AbstractIncomingMessage) -> None:
        await asyncio.sleep(self.settings.requeue_delay)
        await settle(message, ack=False)


class ReplyConsumer(ConsumerService):
    """Feeds step replies to ``on_reply``, acking each only after ``on_reply`` returned.

    A malformed reply, or one ``on_reply`` refuses with :class:`NotFound` or
    :class:`InvalidInput` (an unknown instance or step), is dead-lettered with its reason; any
    other exception is transient: the reply is requeued after ``requeue_delay``."""

    def __init__(
        self,
        settings: AmqpSettings,
        on_reply: Callable[[StepReply], Awaitable[None]],
        *,
        queue: str = REPLY_QUEUE,
    ) -> None:
        super().__init__(settings)
        self.on_reply = on_reply
        self.queue = queue

    async def setup(self, channel: AbstractChannel) -> Sequence[AbstractQueue]:
        return [await declare_topology(channel, reply_queue=self.queue)]

    async def process(self, channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
        try:
            reply = decode_reply(message.body)
            await self.on_reply(reply)
        except (InvalidInput, NotFound) as error:
            reason = f"{type(error).__name__}: {error}"
            timeout = self.settings.confirm_timeout
            if await dead_letter(channel, message, reason, timeout=timeout):
                await settle(message, ack=True)
            else:
                await self._requeue_later(message)
        except Exception:
            log.exception("handling reply %s failed; it will be redelivered", message.message_id)
            await self._requeue_later(message)
        else:
            await settle(message, ack=True)
