"""A real RabbitMQ for tests: a fresh virtual host per test, and helpers to read its queues.

The broker comes from ``SAGA_TEST_AMQP_URL`` (default: guest on 127.0.0.1:5672) and is driven
with ``rabbitmqctl`` on this machine, which also closes a test's connections to simulate an
outage. Without a reachable broker the tests are skipped, except on CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

AMQP_URL_ENV = "SAGA_TEST_AMQP_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
WAIT = 30.0
"""Seconds a condition may take before a test gives up (generous: never a timed assertion)."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode() or out.decode()}")
    return out.decode()


def vhost_url(vhost: str) -> str:
    parts = urlsplit(os.environ.get(AMQP_URL_ENV, DEFAULT_AMQP_URL))
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@asynccontextmanager
async def rabbitmq_vhost() -> AsyncIterator[str]:
    """The URL of a virtual host of this test's own, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not installed")
    vhost = f"saga-test-{uuid.uuid4().hex[:12]}"
    try:
        await rabbitmqctl("add_vhost", vhost)
    except RuntimeError as error:
        _unavailable(f"RabbitMQ is unavailable: {error}")
    try:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost_url(vhost)
    finally:
        await rabbitmqctl("delete_vhost", vhost)


async def close_connections(url: str) -> None:
    """What an outage looks like to clients: the broker closes every connection of the vhost."""
    vhost = urlsplit(url).path.removeprefix("/")
    await rabbitmqctl("close_all_connections", "--vhost", vhost, "test")


async def wait_for(condition: Callable[[], bool], *, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = WAIT) -> None:
    """Like :func:`wait_for`, for a condition that needs IO to check."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


class QueueCollector:
    """Consumes a queue (auto-ack) into ``messages`` so a test can wait for a count."""

    def __init__(self, url: str, queue: str, *, declare: bool = True) -> None:
        self.url = url
        self.queue = queue
        self.declare = declare
        self.messages: list[AbstractIncomingMessage] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> QueueCollector:
        self._connection = await aio_pika.connect(self.url)
        channel = await self._connection.channel()
        if self.declare:
            queue = await channel.declare_queue(self.queue, durable=True)
        else:
            queue = await channel.get_queue(self.queue, ensure=True)
        await queue.consume(self._collect, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._connection is not None
        await self._connection.close()

    async def _collect(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    async def wait_for_count(self, count: int) -> list[AbstractIncomingMessage]:
        await wait_for(lambda: len(self.messages) >= count)
        return self.messages

    async def barrier(self) -> list[AbstractIncomingMessage]:
        """Every message the broker had confirmed into the queue before this call, so a test
        can count exactly: a marker published now (confirmed) is queued behind all of them,
        and the queue delivers in order."""
        assert self._connection is not None
        marker = f"barrier-{uuid.uuid4().hex}"
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id=marker), self.queue, mandatory=True
        )
        await channel.close()
        await wait_for(lambda: any(m.message_id == marker for m in self.messages))
        return [m for m in self.messages if not (m.message_id or "").startswith("barrier-")]


async def declare_queue(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)


async def queue_depth(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return count or 0
