"""``saga worker`` as a real process: it serves a handlers module over RabbitMQ and stops
gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from saga_orchestrator.core.events import Phase
from saga_orchestrator.transports.amqp import AmqpPublisher, AmqpSettings, handler_queue_name
from saga_orchestrator.transports.amqp_messages import (
    COMMAND_EXCHANGE,
    StepCommand,
    command_message,
    decode_reply,
)
from tests.integration.transports.rabbitmq import (
    QueueCollector,
    eventually,
    queue_depth,
    rabbitmq_vhost,
)

SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]
HANDLERS = """
from saga_orchestrator.sdk import StepContext, handler


@handler("greet")
async def greet(context: StepContext) -> str:
    return f"hello {context.input['name']}"
"""


def test_worker_help_names_its_options() -> None:
    result = subprocess.run(
        [*SAGA, "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    for option in ("--handlers", "--amqp-url", "AMQP_URL", "--concurrency"):
        assert option in result.stdout


def test_worker_without_handlers_is_a_usage_error() -> None:
    result = subprocess.run(
        [*SAGA, "worker"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "--handlers" in result.stderr


@pytest_asyncio.fixture
async def amqp_url() -> AsyncIterator[str]:
    async with rabbitmq_vhost() as url:
        yield url


async def queue_exists(url: str, queue: str) -> bool:
    try:
        await queue_depth(url, queue)
    except Exception:
        return False
    return True


async def test_worker_process_answers_commands_and_stops_on_sigterm(
    amqp_url: str, tmp_path: Path
) -> None:
    (tmp_path / "greetings.py").write_text(HANDLERS, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        *SAGA,
        "worker",
        "--handlers",
        "greetings",
        cwd=tmp_path,
        env={**os.environ, "AMQP_URL": amqp_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: queue_exists(amqp_url, handler_queue_name("greet")))
        command = StepCommand(
            tenant_id="t",
            instance_id="i-1",
            node="greet",
            phase=Phase.ACTION,
            attempt=1,
            idempotency_key="i-1:greet:action",
            handler="greet",
            input={"name": "Ada"},
            action_output=None,
            timeout=30.0,
            traceparent="",
        )
        message = command_message(
            command, exchange=COMMAND_EXCHANGE, routing_key="greet", reply_to="test.replies"
        )
        async with (
            QueueCollector(amqp_url, "test.replies") as replies,
            AmqpPublisher(AmqpSettings(amqp_url)) as publisher,
        ):
            assert await publisher.publish([message]) == [True]
            [raw] = await replies.wait_for_count(1)
        assert decode_reply(raw.body).outcome.output == "hello Ada"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert "Traceback" not in stderr.decode()
