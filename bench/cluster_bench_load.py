"""The load generator of ``cluster_bench.py``: ``POST /api/v1/sagas/instances`` spread
round-robin over the nodes (start ``i`` goes to node ``i mod N``), closed loop with a bounded
number of requests in flight, each start's latency timed from send to whole answer.

The timed load runs in a process of its own (this file, run as a script), so its CPU is
measured apart from the nodes' and the bench's; the bench's untimed warm-up calls
:func:`drive` in its own process.

Two clients (``--client``):

- ``wire`` (the default): httpx's request and response types over the node's own lean
  HTTP/1.1 transport (``saga_orchestrator.transports.http_wire.WireTransport``, ~50 us of CPU
  per request);
- ``httpx``: ``httpx.AsyncClient`` over its default transport (httpcore), which costs about a
  millisecond of CPU per request on this machine (``bench/README.md``, participants) — on two
  cores that is a visible slice of what the nodes could have had.

The process reads its order (a JSON line) on stdin, prints ``READY``, waits for a line with
the start instant (``time.monotonic``: ``CLOCK_MONOTONIC``, the same clock in every process),
drives, prints one JSON line (its report), then waits for stdin to close, so the bench can
read its CPU counters at the end of the measured window.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson

from saga_orchestrator.transports.http_wire import WireTransport

START_PATH = "/api/v1/sagas/instances"
KEEPALIVE = 1.0
"""Seconds a client keeps an idle connection: well under uvicorn's 5 s, so the client never
reuses a connection the server is closing (the wire transport would send that start again)."""
KEPT_ERRORS = 5

Send = Callable[[httpx.Request], Awaitable[int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    urls: list[str]
    token: str
    saga: str
    sagas: int
    concurrency: int
    first: int = 0
    """The ``n`` of the first start's context (the warm-up uses negative numbers)."""
    client: str = "wire"
    timeout: float = 30.0

    def request(self, number: int) -> httpx.Request:
        url = self.urls[number % len(self.urls)] + START_PATH
        body = orjson.dumps({"saga_name": self.saga, "context": {"n": number}})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        request = httpx.Request("POST", url, content=body, headers=headers)
        request.extensions["timeout"] = dict.fromkeys(
            ("connect", "read", "write", "pool"), self.timeout
        )
        return request


@dataclass(slots=True, kw_only=True)
class LoadReport:
    latencies: list[float] = field(default_factory=list)
    """Seconds from send to whole answer, of the starts answered 201."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Answers by status code (``"0"``: no answer: a transport error)."""
    errors: list[str] = field(default_factory=list)
    """The first few answers other than 201, and transport errors."""
    first_sent: float = float("nan")
    last_answer: float = float("nan")
    cpu_seconds: float = float("nan")
    """The process's CPU from the start instant to its last answer (every thread)."""

    @property
    def error_count(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "201")

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> LoadReport:
        raw: dict[str, Any] = orjson.loads(line)
        return cls(**raw)


@asynccontextmanager
async def sender(client: str, concurrency: int) -> AsyncIterator[Send]:
    if client == "wire":
        wire = WireTransport(keepalive_expiry=KEEPALIVE)

        async def send_wire(request: httpx.Request) -> int:
            response = await wire.handle_async_request(request)
            await response.aread()
            await response.aclose()
            return response.status_code

        try:
            yield send_wire
        finally:
            await wire.aclose()
        return
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as http:

        async def send_httpx(request: httpx.Request) -> int:
            response = await http.send(request)
            await response.aclose()
            return response.status_code

        yield send_httpx


async def drive(order: Order) -> LoadReport:
    """Send ``order.sagas`` starts from ``order.concurrency`` loops sharing one sequence."""
    report = LoadReport(first_sent=time.monotonic())
    statuses: Counter[str] = Counter()
    numbers = iter(range(order.first, order.first + order.sagas))
    cpu = time.process_time()

    async def loop(send: Send) -> None:
        for number in numbers:
            began = time.monotonic()
            try:
                status = await send(order.request(number))
            except httpx.HTTPError as error:
                status = 0
                if len(report.errors) < KEPT_ERRORS:
                    report.errors.append(f"start {number}: {type(error).__name__}: {error}")
            statuses[str(status)] += 1
            if status == 201:
                report.latencies.append(time.monotonic() - began)
            elif status and len(report.errors) < KEPT_ERRORS:
                report.errors.append(f"start {number}: HTTP {status}")

    async with sender(order.client, order.concurrency) as send:
        await asyncio.gather(*(loop(send) for _ in range(order.concurrency)))
    report.last_answer = time.monotonic()
    report.cpu_seconds = time.process_time() - cpu
    report.statuses = dict(statuses)
    return report


# -- the load generator's own process --
class LoadProcess:
    """The timed load's process, started ahead of the run so its imports are done by then."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, order: Order) -> LoadProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        load = cls(process)
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(orjson.dumps(asdict(order)) + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if line.strip() != b"READY":
            await load.kill()
            raise RuntimeError(f"the load generator did not start (said {line!r})")
        return load

    async def go(self, start_at: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{start_at!r}\n".encode())
        await self.process.stdin.drain()

    async def report(self, timeout: float) -> LoadReport:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=timeout)
        if not line:
            raise RuntimeError(f"the load generator exited {await self.process.wait()}")
        return LoadReport.from_json(line)

    async def finish(self) -> None:
        """Let it exit (it waits for its stdin to close)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        await asyncio.wait_for(self.process.wait(), timeout=30)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _serve_one_order() -> None:
    loop = asyncio.get_running_loop()
    raw = orjson.loads(await loop.run_in_executor(None, sys.stdin.buffer.readline))
    order = Order(**raw)
    print("READY", flush=True)
    start_at = float(await loop.run_in_executor(None, sys.stdin.readline))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    report = await drive(order)
    sys.stdout.buffer.write(report.to_json())
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes it


if __name__ == "__main__":
    asyncio.run(_serve_one_order())
