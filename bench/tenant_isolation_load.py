"""The load of ``tenant_isolation_bench.py``: the quiet tenant's paced starts, sent from the
bench's own process, and the noisy tenant's flood, sent from a process of its own so that its
CPU does not delay the quiet client (this file, run as a script).

Both send ``POST /api/v1/sagas/instances``: the quiet tenant through
``http_wire.WireTransport`` (httpx's request and response types, the node's own lean HTTP/1.1
client, where ``httpx.AsyncClient`` over httpcore costs about a millisecond of CPU per
request), the flood through ``tenant_isolation_wire.StartConnection`` (bytes prepared once per
connection, a few times cheaper again: at 500 requests/s its CPU is CPU the node, on the same
two cores, cannot have). Schedules use ``time.monotonic`` (``CLOCK_MONOTONIC``, the same clock
in every process), so the bench can start both loads at one instant.

- **Quiet** (:func:`paced`): open loop, request ``i`` due at ``start + i / rate``, each on a
  task of its own, so a slow answer never delays the next send.
- **Flood** (:func:`flood`): ``clients`` connections, each sending its share of the schedule
  one request at a time; a connection that falls behind sends at once (but nothing after the
  flood's end), so at most ``clients`` requests are in flight and the rate reached is
  reported, not assumed.

The flood process reads its order (a JSON line) on stdin, prints ``READY``, waits for a line
with the start instant, floods, then prints one JSON line: its outcomes and CPU seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson

from saga_orchestrator.transports.http_wire import WireTransport
from tenant_isolation_report import Outcome, header_problems
from tenant_isolation_wire import AnswerError, StartConnection

START_PATH = "/api/v1/sagas/instances"
KEEPALIVE = 1.0
"""Seconds a client keeps an idle connection: well under uvicorn's 5 s, so the client never
reuses one the server is closing (the transport would send that start again)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """A tenant starting one saga at one node."""

    base_url: str
    token: str
    saga: str
    timeout: float = 10.0

    def request(self, number: int) -> httpx.Request:
        body = orjson.dumps({"saga_name": self.saga, "context": {"n": number}})
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        request = httpx.Request("POST", self.base_url + START_PATH, content=body, headers=headers)
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write"), self.timeout)
        return request


def transport() -> WireTransport:
    return WireTransport(keepalive_expiry=KEEPALIVE)


async def start(wire: WireTransport, caller: Caller, number: int) -> tuple[int, float, str | None]:
    """(status, seconds, note): the note is a 429's header problems, a transport error, or
    the start of an unexpected answer's body; status 0 when no answer came."""
    request = caller.request(number)
    began = time.monotonic()
    try:
        response = await wire.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
    except httpx.HTTPError as error:
        return 0, time.monotonic() - began, f"{type(error).__name__}: {error}"
    seconds = time.monotonic() - began
    status = response.status_code
    if status == 429:
        return status, seconds, "; ".join(header_problems(response.headers)) or None
    if not 200 <= status < 300:
        return status, seconds, body[:200].decode("utf-8", "replace")
    return status, seconds, None


async def _until(instant: float) -> None:
    pause = instant - time.monotonic()
    if pause > 0:
        await asyncio.sleep(pause)


async def _timed(
    wire: WireTransport, caller: Caller, number: int, origin: float, due: float
) -> Outcome:
    sent = time.monotonic()
    status, seconds, note = await start(wire, caller, number)
    return Outcome(
        sent=sent - origin, latency=seconds, status=status, late=max(0.0, sent - due), note=note
    )


async def paced(caller: Caller, *, rate: float, start_at: float, seconds: float) -> list[Outcome]:
    """Open loop: ``rate`` starts per second for ``seconds`` from the instant ``start_at``."""
    wire = transport()
    pending: list[Awaitable[Outcome]] = []
    try:
        for number in range(int(rate * seconds)):
            due = start_at + number / rate
            await _until(due)
            pending.append(asyncio.create_task(_timed(wire, caller, number, start_at, due)))
        return list(await asyncio.gather(*pending))
    finally:
        await wire.aclose()


async def flood(
    caller: Caller, *, rate: float, clients: int, start_at: float, seconds: float
) -> list[Outcome]:
    """``clients`` connections sharing a schedule of ``rate`` starts per second."""
    outcomes: list[Outcome] = []
    end = start_at + seconds

    async def client(first: int) -> None:
        connection = StartConnection(caller.base_url, caller.token, caller.saga, START_PATH)
        number = first
        try:
            while (due := start_at + number / rate) < end and time.monotonic() < end:
                await _until(due)
                sent = time.monotonic()
                status, note = await flood_start(connection, caller, number)
                outcomes.append(
                    Outcome(
                        sent=sent - start_at,
                        latency=time.monotonic() - sent,
                        status=status,
                        late=max(0.0, sent - due),
                        note=note,
                    )
                )
                number += clients
        finally:
            connection.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return outcomes


async def flood_start(
    connection: StartConnection, caller: Caller, number: int
) -> tuple[int, str | None]:
    """As :func:`start` answers, through the flood's own client."""
    try:
        async with asyncio.timeout(caller.timeout):
            answer = await connection.start(number)
    except (AnswerError, OSError, TimeoutError) as error:
        return 0, f"{type(error).__name__}: {error}"
    if answer.status == 429:
        headers = answer.headers
        problems = _problems_of_429(
            headers.get("retry-after"), headers.get("ratelimit"), headers.get("ratelimit-policy")
        )
        return 429, problems
    if not 200 <= answer.status < 300:
        return answer.status, answer.body[:200].decode("utf-8", "replace")
    return answer.status, None


@functools.lru_cache(maxsize=4096)
def _problems_of_429(retry_after: str | None, limit: str | None, policy: str | None) -> str | None:
    """:func:`header_problems` of these three headers (a flood's 429s repeat a few sets)."""
    values = {"Retry-After": retry_after, "RateLimit": limit, "RateLimit-Policy": policy}
    headers = {name: value for name, value in values.items() if value is not None}
    return "; ".join(header_problems(headers)) or None


# -- the flood's own process --
@dataclass(frozen=True, slots=True, kw_only=True)
class FloodOrder:
    caller: Caller
    rate: float
    clients: int
    seconds: float

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> FloodOrder:
        raw: dict[str, Any] = orjson.loads(line)
        return cls(
            caller=Caller(**raw["caller"]),
            rate=float(raw["rate"]),
            clients=int(raw["clients"]),
            seconds=float(raw["seconds"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FloodReport:
    outcomes: list[Outcome]
    cpu_seconds: float
    """The flood process's CPU over the flood (every thread)."""

    @classmethod
    def from_json(cls, line: bytes) -> FloodReport:
        raw: dict[str, Any] = orjson.loads(line)
        return cls(
            outcomes=[Outcome(**o) for o in raw["outcomes"]],
            cpu_seconds=float(raw["cpu_seconds"]),
        )


class FloodProcess:
    """The flood's process, started ahead of the phase so its imports are done by then."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def spawn(cls, order: FloodOrder, *, niceness: int = 0) -> FloodProcess:
        """``niceness`` > 0 runs the flood at that lower CPU priority (``os.nice`` in the child,
        before it imports anything)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__,
            preexec_fn=(lambda: os.nice(niceness)) if niceness > 0 else None,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        flood_process = cls(process)
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(order.to_json())
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if line.strip() != b"READY":
            await flood_process.kill()
            raise RuntimeError(f"the flood process did not start (said {line!r})")
        return flood_process

    async def go(self, start_at: float) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{start_at!r}\n".encode())
        await self._process.stdin.drain()

    async def report(self, timeout: float) -> FloodReport:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.read(), timeout=timeout)  # to EOF
        await asyncio.wait_for(self._process.wait(), timeout=30)
        if self._process.returncode != 0 or not line:
            raise RuntimeError(f"the flood process exited {self._process.returncode}")
        return FloodReport.from_json(line)

    async def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


async def _serve_one_order() -> None:
    loop = asyncio.get_running_loop()
    order = FloodOrder.from_json(await loop.run_in_executor(None, sys.stdin.buffer.readline))
    print("READY", flush=True)
    start_at = float(await loop.run_in_executor(None, sys.stdin.readline))
    cpu = time.process_time()
    outcomes = await flood(
        order.caller,
        rate=order.rate,
        clients=order.clients,
        start_at=start_at,
        seconds=order.seconds,
    )
    report = {"outcomes": [asdict(o) for o in outcomes], "cpu_seconds": time.process_time() - cpu}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(_serve_one_order())
