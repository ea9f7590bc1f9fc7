"""The service end to end: a real ``saga serve`` process, driven only over HTTP, on SQLite and
on PostgreSQL (issue 3, "Tests that must exist").

One run registers three definitions, starts 200 instances concurrently (every fourth one's
``ship`` fails definitively), follows one instance's event stream to its end, cancels a saga
while its slow step runs, gets a saga parked in ``failed`` on a blocked compensation and
retries it after unblocking it, checks every instance's final state exactly, starts one
instance with 50 parallel requests sharing an ``Idempotency-Key``, and finally stops the server
with SIGTERM. The handlers are in ``tests/e2e/service_handlers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import STORE_BACKENDS
from tests.e2e.credentials import AUTH, SERVER_ENV

ROOT = Path(__file__).parents[2]
HANDLERS = "tests.e2e.service_handlers"
GRACE = 5.0
INSTANCES = "/api/v1/sagas/instances"
TERMINAL = {"completed", "compensated", "cancelled", "timed_out"}
SETTLED = TERMINAL | {"failed"}

ORDER = {
    "name": "service-order",
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "svc.reserve", "compensation": "svc.release"},
        {"name": "charge", "action": "svc.charge", "compensation": "svc.refund"},
        {"name": "ship", "action": "svc.ship"},
    ],
}
SLOW = {
    "name": "service-slow",
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "svc.reserve", "compensation": "svc.release"},
        {"name": "slow", "action": "svc.slow", "compensation": "svc.undo_slow"},
        {"name": "ship", "action": "svc.ship"},
    ],
}
PARKING = {
    "name": "service-parking",
    "version": "1.0.0",
    "steps": [
        {"name": "reserve", "action": "svc.reserve", "compensation": "svc.release"},
        {
            "name": "charge",
            "action": "svc.charge",
            "compensation": "undo.charge",
            "compensation_retry": {"max_attempts": 1},
        },
        {"name": "ship", "action": "svc.ship"},
    ],
}
IDEMPOTENT = {**ORDER, "name": "service-idempotent"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(params=STORE_BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """``saga serve`` on a fresh database of each backend, as a real process."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    database_url: str = request.getfixturevalue(fixture)
    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "saga_orchestrator.cli", "serve"]
    args = ["--handlers", HANDLERS, "--port", str(port), "--grace", str(GRACE)]
    env = {**os.environ, **SERVER_ENV, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    served = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{served.url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, served.output()
            assert time.monotonic() < deadline, "saga serve did not come up"
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:  # the test failed before its own SIGTERM
            process.kill()
            process.wait()


async def start(client: httpx.AsyncClient, saga: str, context: dict[str, Any]) -> str:
    response = await client.post(INSTANCES, json={"saga_name": saga, "context": context})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["saga_name"] == saga
    instance_id: str = body["id"]
    return instance_id


async def show(client: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    response = await client.get(f"{INSTANCES}/{instance_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def wait_for(
    client: httpx.AsyncClient, instance_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail = await show(client, instance_id)
        if detail["status"] in statuses:
            return detail
        assert time.monotonic() < deadline, f"{instance_id} stuck: {detail}"
        await asyncio.sleep(0.05)


def step_states(detail: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in detail["steps"]}


async def follow(client: httpx.AsyncClient, instance_id: str) -> list[dict[str, Any]]:
    """Every event of the instance's SSE stream, until the server ends it."""
    records: list[dict[str, Any]] = []
    names: list[str] = []
    ids: list[int] = []
    async with client.stream("GET", f"{INSTANCES}/{instance_id}/stream", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                records.append(orjson.loads(line[len("data: ") :]))
            elif line.startswith("event: "):
                names.append(line[len("event: ") :])
            elif line.startswith("id: "):
                ids.append(int(line[len("id: ") :]))
    assert names == [r["type"] for r in records]
    assert ids == [r["seq"] for r in records]
    return records


async def test_the_service_over_http(server: Server, tmp_path: Path) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=server.url, limits=limits, timeout=30, headers=AUTH
    ) as client:
        for definition in (ORDER, SLOW, PARKING, IDEMPOTENT):
            response = await client.post("/api/v1/sagas/definitions", json=definition)
            assert response.status_code == 201, response.text

        # 200 concurrent starts, every fourth one failing at `ship`, plus the two special ones.
        block_file = tmp_path / "refund.block"
        block_file.write_text("blocked")
        hold_file = tmp_path / "slow.hold"
        hold_file.write_text("held")
        began = time.monotonic()
        contexts = [{"n": n, "fail_ship": n % 4 == 0} for n in range(200)]
        ids = await asyncio.gather(
            *(start(client, "service-order", context) for context in contexts),
            start(client, "service-slow", {"n": -1, "hold_file": str(hold_file)}),
            start(client, "service-parking", {"fail_ship": True, "block_file": str(block_file)}),
        )
        started = time.monotonic() - began
        order_ids, slow_id, parking_id = ids[:200], ids[200], ids[201]
        assert len(set(ids)) == len(ids)
        expected = dict(zip(order_ids, contexts, strict=True))

        # Follow one succeeding instance's stream to its end.
        records = await follow(client, order_ids[1])
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        assert records[-1]["type"] == "SagaCompleted"
        assert sum(r["type"] == "AttemptSucceeded" for r in records) == 3
        assert records[0]["type"] == "SagaStarted"

        # Cancel the slow saga while `slow` runs (held by a file): once it finishes, both steps
        # are undone.
        deadline = time.monotonic() + 30
        while step_states(await show(client, slow_id)).get("slow") != "running":
            assert time.monotonic() < deadline, "the slow step never ran"
            await asyncio.sleep(0.02)
        response = await client.post(f"{INSTANCES}/{slow_id}/cancel", json={"reason": "e2e"})
        assert response.status_code == 200, response.text
        hold_file.unlink()
        cancelled = await wait_for(client, slow_id, TERMINAL)
        assert cancelled["status"] == "cancelled"
        assert step_states(cancelled) == {
            "reserve": "compensated",
            "slow": "compensated",
        }  # `ship` never started: a step not entered is not listed
        assert cancelled["compensation"] == {"compensating": 0, "compensated": 2, "failed": 0}
        slow_events = await follow(client, slow_id)
        assert "CancelRequested" in [r["type"] for r in slow_events]
        assert slow_events[-1]["type"] == "SagaCancelled"

        # The parking saga: `undo.charge` fails while the file exists, its one attempt is spent.
        parked = await wait_for(client, parking_id, SETTLED)
        assert parked["status"] == "failed", parked
        assert parked["parked_node"] == "charge"
        assert step_states(parked) == {
            "reserve": "succeeded",  # undone only after `charge` is
            "charge": "compensating",
            "ship": "failed",
        }
        block_file.unlink()
        response = await client.post(f"{INSTANCES}/{parking_id}/retry", json={"reason": "e2e"})
        assert response.status_code == 200, response.text
        retried = await wait_for(client, parking_id, TERMINAL)
        assert retried["status"] == "compensated", retried
        assert step_states(retried) == {
            "reserve": "compensated",
            "charge": "compensated",
            "ship": "failed",
        }
        charge = next(step for step in retried["steps"] if step["name"] == "charge")
        assert charge["compensation_attempts"] == 2
        history = [r["type"] for r in await follow(client, parking_id)]
        assert history.count("SagaParked") == 1
        assert "OperatorRetried" in history
        assert history[-1] == "SagaCompensated"

        # Every one of the 200 settles exactly as its input says.
        details = await asyncio.gather(*(wait_for(client, i, TERMINAL) for i in order_ids))
        settled = time.monotonic() - began
        for detail in details:
            if expected[detail["id"]]["fail_ship"]:
                assert detail["status"] == "compensated", detail
                assert step_states(detail) == {
                    "reserve": "compensated",
                    "charge": "compensated",
                    "ship": "failed",
                }
                assert detail["compensation"]["compensated"] == 2
            else:
                assert detail["status"] == "completed", detail
                assert set(step_states(detail).values()) == {"succeeded"}
            assert [s["attempts"] for s in detail["steps"]] == [1, 1, 1]
            assert detail["input"] == expected[detail["id"]]
        outcomes = [d["status"] for d in details]
        assert outcomes.count("compensated") == 50
        assert outcomes.count("completed") == 150

        # 50 parallel starts sharing one Idempotency-Key create exactly one instance.
        body = {"saga_name": "service-idempotent", "context": {"n": 7}}
        headers = {"Idempotency-Key": "e2e-one-key"}
        responses = await asyncio.gather(
            *(client.post(INSTANCES, json=body, headers=headers) for _ in range(50))
        )
        codes = [r.status_code for r in responses]
        assert codes.count(201) == 1, codes
        assert set(codes) <= {200, 201, 409}, [r.text for r in responses]
        created = {r.json()["id"] for r in responses if r.status_code in (200, 201)}
        assert len(created) == 1
        again = await client.post(INSTANCES, json=body, headers=headers)
        assert again.status_code == 200
        assert again.json()["id"] in created
        listed = await client.get(INSTANCES, params={"saga_name": "service-idempotent"})
        assert [item["id"] for item in listed.json()["items"]] == list(created)
        await wait_for(client, created.pop(), TERMINAL)

    # SIGTERM is a graceful stop: exit status 0 within the grace period.
    stop = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.process.wait, GRACE + 5)
    stopped = time.monotonic() - stop
    assert code == 0, server.output()
    assert stopped < GRACE + 5
    timings = f"202 starts {started:.2f}s, all settled {settled:.2f}s, stop {stopped:.2f}s"
    logging.getLogger(__name__).warning("%s", timings)


async def test_sigterm_stops_within_one_grace_with_a_stream_open_and_a_step_running(
    server: Server, tmp_path: Path
) -> None:
    """The server's drain and the engine's wait share one grace: an open event stream holds
    the HTTP drain for the whole grace, and a step that never ends would hold the engine for
    another; the stop must still take about one grace, not two."""
    hold_file = tmp_path / "slow.hold"
    hold_file.write_text("held")
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=AUTH) as client:
        response = await client.post("/api/v1/sagas/definitions", json=SLOW)
        assert response.status_code == 201, response.text
        slow_id = await start(client, "service-slow", {"n": -1, "hold_file": str(hold_file)})
        deadline = time.monotonic() + 30
        while step_states(await show(client, slow_id)).get("slow") != "running":
            assert time.monotonic() < deadline, "the slow step never ran"
            await asyncio.sleep(0.05)
        streamed = asyncio.Event()

        async def hold_a_stream() -> None:
            async with client.stream("GET", f"{INSTANCES}/{slow_id}/stream") as stream:
                async for _ in stream.aiter_bytes():
                    streamed.set()

        stream_task = asyncio.create_task(hold_a_stream())
        await asyncio.wait_for(streamed.wait(), 30)
        stop = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, 4 * GRACE)
        stopped = time.monotonic() - stop
        stream_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await stream_task
    assert code == 0, server.output()
    # Two graces (the drain's, then the engine's) would be 10 s; one is 5 s, plus the start
    # and stop of the process.
    assert stopped < 2 * GRACE - 1.5, f"stopped after {stopped:.1f}s\n{server.output()}"
    assert stopped >= GRACE - 1.0, "the open stream should have held the drain for the grace"


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_an_idle_connection_outlives_the_idle_expiry_of_client_pools(server: Server) -> None:
    """httpx drops a pooled connection after 5 s idle; a node that closed its end at 5 s too
    would reset the request of a client reusing it at that instant. Idle for longer than
    that, the connection still answers."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        assert health_over(connection) == b'{"status":"ok"}'
        time.sleep(6)
        assert health_over(connection) == b'{"status":"ok"}'


def health_over(connection: socket.socket) -> bytes:
    """GET /health on an open connection, keeping it open; b"" if the server closed it."""
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            return b""
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = connection.recv(4096)
        if not chunk:
            return b""
        body += chunk
    return body
