"""HTTP participants through real ``saga serve`` processes, killed with SIGKILL (semantics §3-§4).

A stub participant in the test's event loop records every request the server sends it. Over
HTTP only, we check: the ``Idempotency-Key`` stays the same across retries and across a SIGKILL
with 50 attempts in flight; attempts are counted exactly per retry policy on 5xx and timeouts;
a 4xx is not retried; compensations run in reverse, including the step whose outcome is unknown;
an attempt answered ``202 Accepted`` completes by callback, and a forged, superseded, expired or
used completion token is refused. The engine-level twins are in
``tests/integration/engine/test_http_steps.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.credentials import AUTH, SERVER_ENV
from tests.support.stub_participant import RecordedCall, Reply, StubParticipant

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = "/api/v1/sagas/instances"
TERMINAL = frozenset({"completed", "compensated", "cancelled", "timed_out", "failed"})
WAIT = 30.0
"""Seconds any awaited condition gets before the test fails (never a timed assertion)."""
FAST = {"max_attempts": 3, "initial_interval": 0.05, "max_interval": 0.1}
SAGAS = 50


# -- a real `saga serve` process ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Serve:
    """One ``saga serve`` process on ``database_url``, its output in ``log``."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.database_url = database_url
        self.log = log
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        port = self.url.rpartition(":")[2]
        env = {
            **os.environ,
            **SERVER_ENV,
            "DATABASE_URL": self.database_url,
            "PYTHONPATH": str(ROOT),
        }
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "saga_orchestrator.cli", "serve", "--port", port),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            deadline = time.monotonic() + WAIT
            while not await _ready(client):
                assert self.process.returncode is None, self.output()
                assert time.monotonic() < deadline, f"saga serve did not come up\n{self.output()}"
                await asyncio.sleep(0.05)

    async def kill(self) -> int:
        """SIGKILL (no graceful anything), reap, and return the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return await self.process.wait()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-20_000:]


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/ready")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def serving(database_url: str, log: Path) -> AsyncIterator[tuple[Serve, httpx.AsyncClient]]:
    """A server on ``database_url`` and a client of its API; SIGKILLed on the way out, its
    log checked for errors when the block ends normally."""
    server = Serve(database_url, log)
    try:
        await server.start()
        limits = httpx.Limits(max_connections=SAGAS + 10)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=10, limits=limits, headers=AUTH
        ) as client:
            yield server, client
        # Whatever the test did, the server handled it without a task dying on the way.
        assert "Traceback" not in server.output() and " ERROR " not in server.output()
    finally:
        if server.process is not None:
            await server.kill()


# -- driving the API ---------------------------------------------------------------------------


def http_step(name: str, *, compensate: bool = True, **extra: Any) -> dict[str, Any]:
    """A step calling ``POST /{name}/{order}`` on the ``shop`` service, undone by ``DELETE``."""
    node: dict[str, Any] = {
        "name": name,
        "timeout": 2,
        "retry": FAST,
        "action": {"http": {"service": "shop", "path": f"/{name}/${{input.order}}"}},
        **extra,
    }
    if compensate:
        path = f"/{name}/${{input.order}}"
        node["compensation"] = {"http": {"service": "shop", "method": "DELETE", "path": path}}
    return node


def saga(name: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "steps": list(steps)}


async def register(
    client: httpx.AsyncClient, stub: StubParticipant, *definitions: dict[str, Any]
) -> None:
    # No circuit breaker: the failures these tests provoke must cost attempts, never open it.
    service = {
        "base_url": stub.base_url,
        "allow_private_network": True,
        "circuit_breaker": {"enabled": False},
    }
    response = await client.put("/api/v1/participants/shop", json=service)
    assert response.status_code == 201, response.text
    for definition in definitions:
        response = await client.post("/api/v1/sagas/definitions", json=definition)
        assert response.status_code == 201, response.text


async def start(client: httpx.AsyncClient, saga_name: str, order: object) -> str:
    body = {"saga_name": saga_name, "context": {"order": order}}
    response = await client.post(INSTANCES, json=body)
    assert response.status_code == 201, response.text
    instance_id: str = response.json()["id"]
    return instance_id


async def show(client: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    response = await client.get(f"{INSTANCES}/{instance_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def history(client: httpx.AsyncClient, instance_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"{INSTANCES}/{instance_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a cheap look at the stub) until it holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def settle(client: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    """The instance once it reached a terminal state."""
    deadline = time.monotonic() + WAIT
    while (detail := await show(client, instance_id))["status"] not in TERMINAL:
        assert time.monotonic() < deadline, f"{instance_id} never settled: {detail}"
        await asyncio.sleep(0.05)
    return detail


async def accepted(client: httpx.AsyncClient, instance_id: str, step: str, attempt: int) -> None:
    """Until the history records that ``attempt`` of ``step`` was answered 202."""
    deadline = time.monotonic() + WAIT
    while not any(
        e["type"] == "AttemptAccepted"
        and e["data"]["node"] == step
        and e["data"]["attempt"] == attempt
        for e in await history(client, instance_id)
    ):
        assert time.monotonic() < deadline, f"{step} attempt {attempt} never accepted"
        await asyncio.sleep(0.05)


async def _ready_and_running(client: httpx.AsyncClient, instance_id: str) -> None:
    """The restarted node has the instance, still running (recovery changed nothing)."""
    detail = await show(client, instance_id)
    assert detail["status"] == "running"
    assert steps(detail)["ship"]["status"] == "running"
    assert steps(detail)["ship"]["attempts"] == 1


def steps(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in detail["steps"]}


def trace(calls: list[RecordedCall]) -> list[tuple[str, str, str]]:
    """(method, path, Saga-Attempt) of each call, in arrival order."""
    return [(c.method, c.path, c.headers["saga-attempt"]) for c in calls]


def of_order(stub: StubParticipant, order: str) -> list[RecordedCall]:
    return [call for call in stub.calls if call.path.endswith(f"/{order}")]


def check_keys(calls: list[RecordedCall], instance_id: str) -> None:
    """Each call names its instance and step, and carries ``{instance}:{step}:{phase}``."""
    for call in calls:
        step = call.path.split("/")[1]
        phase = "action" if call.method == "POST" else "compensation"
        assert call.headers["idempotency-key"] == f"{instance_id}:{step}:{phase}", call
        assert call.headers["saga-instance-id"] == instance_id
        assert call.headers["saga-step"] == step
        assert call.headers["saga-phase"] == phase


# -- 1. SIGKILL with 50 attempts in flight -----------------------------------------------------


async def test_sigkill_with_fifty_attempts_in_flight_keeps_keys_and_loses_no_saga(
    store_url: str, tmp_path: Path
) -> None:
    definition = saga(
        "crash", http_step("reserve"), http_step("charge", timeout=30), http_step("ship")
    )
    async with StubParticipant(Reply(json={"ok": True})) as stub:
        gate = asyncio.Event()
        for n in range(SAGAS):  # the first call of each charge waits for the gate
            stub.script(f"/charge/{n}", Reply(gate=gate))

        async with serving(store_url, tmp_path / "first.log") as (server, client):
            await register(client, stub, definition)
            ids = await asyncio.gather(*(start(client, "crash", n) for n in range(SAGAS)))
            await until(
                lambda: len(charges(stub)) == SAGAS and stub.in_flight == SAGAS,
                "every saga's charge held by the stub",
            )
            # Not a trivial pass: all 50 are at step 2 when the server dies.
            for detail in await asyncio.gather(*(show(client, i) for i in ids)):
                states = {name: s["status"] for name, s in steps(detail).items()}
                assert states == {"reserve": "succeeded", "charge": "running"}, detail
            assert await server.kill() == -signal.SIGKILL
        killed_era = {id(call) for call in stub.calls}
        assert len(killed_era) == 2 * SAGAS  # reserve and the held charge of each saga
        gate.set()  # the held requests answer into dead connections
        await until(lambda: stub.in_flight == 0, "the held requests answered")

        async with serving(store_url, tmp_path / "second.log") as (server, client):
            details = await asyncio.gather(*(settle(client, i) for i in ids))
            listed = await client.get(INSTANCES, params={"saga_name": "crash", "limit": 500})
            histories = await asyncio.gather(*(history(client, i) for i in ids))

    assert sorted(item["id"] for item in listed.json()["items"]) == sorted(ids)
    for n, (instance_id, detail, events) in enumerate(zip(ids, details, histories, strict=True)):
        assert detail["status"] == "completed", detail
        assert [(s["name"], s["attempts"]) for s in detail["steps"]] == [
            ("reserve", 1),
            ("charge", 2),
            ("ship", 1),
        ]
        calls = of_order(stub, str(n))
        check_keys(calls, instance_id)
        # reserve had succeeded: never called again; charge retried once, ship once after.
        assert trace(calls) == [
            ("POST", f"/reserve/{n}", "1"),
            ("POST", f"/charge/{n}", "1"),
            ("POST", f"/charge/{n}", "2"),
            ("POST", f"/ship/{n}", "1"),
        ]
        crossed = [id(c) in killed_era for c in calls]
        assert crossed == [True, True, False, False], f"saga {n}: {crossed}"
        check_crash_history(events, instance_id)


def charges(stub: StubParticipant) -> list[RecordedCall]:
    return [call for call in stub.calls if call.path.startswith("/charge/")]


def check_crash_history(events: list[dict[str, Any]], instance_id: str) -> None:
    """The new process recorded the lost attempt as interrupted (unknown) and scheduled the
    next one under the same key."""
    scheduled = [
        (e["data"]["node"], e["data"]["attempt"], e["data"]["idempotency_key"])
        for e in events
        if e["type"] == "AttemptScheduled"
    ]
    assert scheduled == [
        ("reserve", 1, f"{instance_id}:reserve:action"),
        ("charge", 1, f"{instance_id}:charge:action"),
        ("charge", 2, f"{instance_id}:charge:action"),
        ("ship", 1, f"{instance_id}:ship:action"),
    ]
    [failed] = [e["data"] for e in events if e["type"] == "AttemptFailed"]
    assert (failed["node"], failed["attempt"]) == ("charge", 1)
    assert failed["error"]["type"] == "Interrupted"
    assert failed["error"]["unknown"] is True
    assert events[-1]["type"] == "SagaCompleted"


# -- 2. exact attempts per retry policy --------------------------------------------------------


async def test_attempts_and_compensations_follow_the_policy_exactly(
    store_url: str, tmp_path: Path
) -> None:
    definition = saga(
        "order",
        http_step("reserve"),
        http_step("charge"),  # FAST: 3 attempts
        http_step("ship", timeout=0.5, retry={**FAST, "max_attempts": 2}),
    )
    async with StubParticipant() as stub:
        stub.script("/charge/r1", Reply(status=500), Reply(status=500), Reply(json={"id": 1}))
        stub.set_default(Reply(status=503), path="/charge/r2")
        stub.script("/ship/t1", Reply(delay=WAIT), Reply(delay=WAIT))  # > the step timeout
        stub.script("/ship/b1", Reply(status=400, json={"title": "address unknown"}))
        async with serving(store_url, tmp_path / "serve.log") as (_, client):
            await register(client, stub, definition)
            orders = ("r1", "r2", "t1", "b1")
            started = await asyncio.gather(*(start(client, "order", o) for o in orders))
            ids = dict(zip(orders, started, strict=True))
            details = {o: await settle(client, ids[o]) for o in orders}
        for order in orders:
            check_keys(of_order(stub, order), ids[order])

    # 500, 500, 200: exactly three calls, then on to the next step.
    assert details["r1"]["status"] == "completed"
    assert steps(details["r1"])["charge"]["output"] == {"id": 1}
    assert trace(of_order(stub, "r1")) == [
        ("POST", "/reserve/r1", "1"),
        ("POST", "/charge/r1", "1"),
        ("POST", "/charge/r1", "2"),
        ("POST", "/charge/r1", "3"),
        ("POST", "/ship/r1", "1"),
    ]
    # 5xx every time: exactly max_attempts calls; a definite failure is not compensated.
    assert details["r2"]["status"] == "compensated"
    assert trace(of_order(stub, "r2")) == [
        ("POST", "/reserve/r2", "1"),
        ("POST", "/charge/r2", "1"),
        ("POST", "/charge/r2", "2"),
        ("POST", "/charge/r2", "3"),
        ("DELETE", "/reserve/r2", "1"),
    ]
    # Timeouts: exactly 2 attempts; the outcome is unknown, so ship itself is undone first.
    timed_out = steps(details["t1"])
    assert details["t1"]["status"] == "compensated"
    assert timed_out["ship"]["error"]["unknown"] is True
    assert timed_out["ship"]["status"] == "compensated"
    assert trace(of_order(stub, "t1")) == [
        ("POST", "/reserve/t1", "1"),
        ("POST", "/charge/t1", "1"),
        ("POST", "/ship/t1", "1"),
        ("POST", "/ship/t1", "2"),
        ("DELETE", "/ship/t1", "1"),
        ("DELETE", "/charge/t1", "1"),
        ("DELETE", "/reserve/t1", "1"),
    ]
    # 400: one call, not retried, not compensated; the earlier steps in reverse.
    rejected = steps(details["b1"])["ship"]
    assert details["b1"]["status"] == "compensated"
    assert (rejected["status"], rejected["attempts"]) == ("failed", 1)
    assert rejected["error"]["type"] == "HTTP400"
    assert (rejected["error"]["retryable"], rejected["error"]["unknown"]) == (False, False)
    assert trace(of_order(stub, "b1")) == [
        ("POST", "/reserve/b1", "1"),
        ("POST", "/charge/b1", "1"),
        ("POST", "/ship/b1", "1"),
        ("DELETE", "/charge/b1", "1"),
        ("DELETE", "/reserve/b1", "1"),
    ]


# -- 3. 202 Accepted and callbacks -------------------------------------------------------------


def callback(call: RecordedCall, verb: str) -> str:
    """Where the participant reports on ``call``: the ``Saga-Callback-Url`` it was given."""
    return f"{call.headers['saga-callback-url']}/{verb}"


def actions(stub: StubParticipant, path: str) -> list[RecordedCall]:
    return [call for call in stub.calls_to(path) if call.method == "POST"]


def token_of(call: RecordedCall) -> dict[str, str]:
    return {"Saga-Completion-Token": call.headers["saga-completion-token"]}


async def test_accepted_attempts_complete_by_callback_and_refuse_bad_tokens(
    store_url: str, tmp_path: Path
) -> None:
    shipping = saga("shipping", http_step("reserve"), http_step("ship", timeout=30))
    late = saga(
        "late", http_step("reserve"), http_step("ship", timeout=0.5, retry={"max_attempts": 1})
    )
    async with StubParticipant() as stub:
        stub.script("/ship/s1", Reply(status=202))
        stub.script("/ship/l1", Reply(status=202))

        async with serving(store_url, tmp_path / "first.log") as (server, client):
            await register(client, stub, shipping, late)
            s1 = await start(client, "shipping", "s1")
            l1 = await start(client, "late", "l1")
            await accepted(client, s1, "ship", 1)
            [first] = actions(stub, "/ship/s1")
            assert (
                callback(first, "complete") == f"{server.url}{INSTANCES}/{s1}/steps/ship/complete"
            )

            # An accepted attempt never called back times out: its token is then too late.
            expired = await settle(client, l1)
            assert expired["status"] == "compensated"
            assert steps(expired)["ship"]["error"]["unknown"] is True
            [late_call] = actions(stub, "/ship/l1")
            too_late = await client.post(
                callback(late_call, "complete"), json={"output": 1}, headers=token_of(late_call)
            )
            assert too_late.status_code == 410, too_late.text
            assert too_late.json()["type"].endswith("/attempt-over")

            # Forged, missing, another instance's or another step's token: 403.
            forged = {"Saga-Completion-Token": token_of(first)["Saga-Completion-Token"] + "x"}
            reserve_url = f"{INSTANCES}/{s1}/steps/reserve/complete"
            for url, headers in [
                (callback(first, "complete"), forged),
                (callback(first, "complete"), {}),
                (callback(first, "complete"), token_of(late_call)),
                (reserve_url, token_of(first)),
            ]:
                refused = await client.post(url, json={"output": 1}, headers=headers)
                assert refused.status_code == 403, (url, headers, refused.text)
            beat = await client.post(callback(first, "heartbeat"), headers=token_of(first))
            assert beat.status_code == 200, beat.text
            assert (await show(client, s1))["status"] == "running"
            assert await server.kill() == -signal.SIGKILL

        # The participant accepted the attempt: its outcome lives with the participant, not
        # on the killed process. The new process sends nothing again and the token still works.
        async with serving(store_url, tmp_path / "second.log") as (server, client):
            await _ready_and_running(client, s1)
            assert actions(stub, "/ship/s1") == [first]
            history_types = [e["type"] for e in await history(client, s1)]
            assert "AttemptFailed" not in history_types
            complete = f"{server.url}{INSTANCES}/{s1}/steps/ship/complete"
            refused = await client.post(complete, json={"output": 1}, headers=forged)
            assert refused.status_code == 403, refused.text
            done = await client.post(
                complete, json={"output": {"tracking": "T-1"}}, headers=token_of(first)
            )
            assert done.status_code == 200, done.text
            completed = await settle(client, s1)
            assert completed["status"] == "completed"
            assert steps(completed)["ship"]["output"] == {"tracking": "T-1"}
            again = await client.post(complete, json={"output": 2}, headers=token_of(first))
            assert again.status_code == 410, again.text
            failed = await client.post(
                complete.removesuffix("complete") + "fail",
                json={"error": {"type": "Late"}},
                headers=token_of(first),
            )
            assert failed.status_code == 410, failed.text

    check_keys(of_order(stub, "s1"), s1)
    assert trace(of_order(stub, "s1")) == [
        ("POST", "/reserve/s1", "1"),
        ("POST", "/ship/s1", "1"),
    ]
    check_keys(of_order(stub, "l1"), l1)
    assert trace(of_order(stub, "l1")) == [
        ("POST", "/reserve/l1", "1"),
        ("POST", "/ship/l1", "1"),
        ("DELETE", "/ship/l1", "1"),
        ("DELETE", "/reserve/l1", "1"),
    ]
