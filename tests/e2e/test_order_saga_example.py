"""``examples/order-saga/run.py``, the README's one command for participants in other services,
run as a newcomer runs it: HTTP participants, a RabbitMQ worker, a 202 completed by callback
and a compensation, all in real processes (on a RabbitMQ virtual host of this test's own)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from tests.integration.transports.rabbitmq import rabbitmq_vhost

ROOT = Path(__file__).parents[2]
RUN = ROOT / "examples" / "order-saga" / "run.py"
WAIT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run_example(amqp_url: str) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, str(RUN), "--port", str(free_port()), "--amqp-url", amqp_url),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), WAIT)
    finally:
        if process.returncode is None:  # SIGTERM: the script stops its children on the way out
            process.terminate()
            await process.wait()
    return await process.wait(), output.decode()


async def test_the_example_completes_two_orders_and_compensates_the_declined_one() -> None:
    async with rabbitmq_vhost() as amqp_url:
        code, output = await run_example(amqp_url)

    assert code == 0, output
    for line in (
        "order A-1: completed (as expected)",
        "order A-2: completed (as expected)",
        "order A-3: compensated (as expected)",
        "inventory: A-1 reserved, A-2 reserved, A-3 released",
        "payment:   A-1 charged, A-2 charged",
    ):
        assert line in output.splitlines(), output
    large_order = output.split("order A-2:", 1)[1].split("order A-3:", 1)[0]
    assert "awaiting the participant's callback" in large_order  # answered 202, then called back
    assert "HTTP402: card declined" in output
    assert "Traceback" not in output
