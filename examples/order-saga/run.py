"""The order saga with its participants in other services, started by one command:

    python examples/order-saga/run.py [--keep-running] [--port 8100] [--amqp-url URL]

It starts four processes: the inventory and payment services (reached over HTTP), a
``saga worker`` running the shipping handlers (reached over RabbitMQ) and ``saga serve``. Then
it registers the participants and the definition over the REST API, places three orders,
shows how each one ended, and stops everything. The exit code is 0 when the three orders
ended as expected: completed, completed (by callback), compensated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from rich.console import Console
from rich.rule import Rule

from saga_orchestrator.settings import mask_password

HERE = Path(__file__).resolve().parent
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]
"""The ``saga`` command of this interpreter (it need not be on PATH)."""
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
INSTANCES = "/api/v1/sagas/instances"
TERMINAL = {"completed", "compensated", "failed", "cancelled", "timed_out"}
WAIT = 30.0
"""Seconds a process may take to come up, and an order to end."""

out = Console(highlight=False, width=None if sys.stdout.isatty() else 100)


@dataclass(frozen=True, slots=True)
class Order:
    title: str
    expected: str
    context: dict[str, Any]


def order(order_id: str, amount: float, card: str = "4242-4242-4242-4242") -> dict[str, Any]:
    """An order's start context, as the ``input_schema`` of order.json describes it."""
    return {
        "order_id": order_id,
        "items": [{"sku": "MUG", "quantity": 2}, {"sku": "TEA", "quantity": 1}],
        "amount": amount,
        "card": card,
        "address": "1 Harbour Road",
    }


ORDERS = (
    Order("a small order, charged at once", "completed", order("A-1", 42.0)),
    Order("a large order, charged by callback", "completed", order("A-2", 1500.0)),
    Order(
        "a declined card, so the stock is released",
        "compensated",
        order("A-3", 42.0, card="4000-DECLINED"),
    ),
)


class DemoFailed(Exception):
    """Something did not come up or went wrong; the message says what."""


# -- the four processes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path


async def spawn(name: str, args: list[str], logs: Path, env: dict[str, str]) -> Child:
    log = logs / f"{name}.log"
    with log.open("wb") as file:
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=HERE,  # where `saga worker --handlers shipping` finds shipping.py
            env={**os.environ, **env},
            stdout=file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops them in order
        )
    return Child(name, process, log)


async def wait_ready(child: Child, ready: Callable[[], Awaitable[bool]]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await ready():
        if child.process.returncode is not None:
            raise DemoFailed(f"{child.name} exited with {child.process.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise DemoFailed(f"{child.name} was not ready within {WAIT:.0f} s")
        await asyncio.sleep(0.1)


def answers(url: str) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(url)).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def consumes(amqp_url: str, queue: str) -> Callable[[], Awaitable[bool]]:
    """The worker is ready once it has declared the queue of its handler."""

    async def ready() -> bool:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            try:
                await (await connection.channel()).declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            return True

    return ready


def free_port(preferred: int) -> int:
    """``preferred`` if it is free, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            chosen: int = probe.getsockname()[1]
            return chosen
    raise DemoFailed("no free port")


@dataclass(frozen=True, slots=True)
class Urls:
    api: str
    inventory: str
    payment: str


async def check_broker(amqp_url: str) -> None:
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # it would repeat our message
    try:
        connection = await asyncio.wait_for(aio_pika.connect(amqp_url), 10)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
        raise DemoFailed(
            f"RabbitMQ is not reachable at {mask_password(amqp_url)}: {error}"
        ) from None
    await connection.close()


async def start_services(args: argparse.Namespace, logs: Path, children: list[Child]) -> Urls:
    """Start the four processes, each one once it is ready."""
    api, inventory, payment = (free_port(args.port + offset) for offset in (0, 1, 2))
    urls = Urls(*(f"http://127.0.0.1:{port}" for port in (api, inventory, payment)))
    for name, port in (("inventory", inventory), ("payment", payment)):
        child = await spawn(name, [sys.executable, f"{name}.py", str(port)], logs, {})
        children.append(child)
        await wait_ready(child, answers(f"http://127.0.0.1:{port}/openapi.json"))

    amqp = {"AMQP_URL": args.amqp_url}
    worker = await spawn("worker", [*SAGA, "worker", "--handlers", "shipping"], logs, amqp)
    children.append(worker)
    await wait_ready(worker, consumes(args.amqp_url, "saga.handler.shipping.ship"))

    # No --handlers: with AMQP_URL set, the steps of handlers this process lacks (shipping.*)
    # go through its transactional outbox to RabbitMQ, where the worker takes them.
    # With no JWT key configured, `saga serve` makes one for the run and writes an admin
    # token to TOKEN_FILE, where the `saga` client commands find it too.
    database = os.environ.get("DATABASE_URL", f"sqlite:///{logs / 'saga.db'}")
    serve = [*SAGA, "serve", "--port", str(api), "--grace", "2"]
    env = {**amqp, "DATABASE_URL": database, "TOKEN_FILE": str(logs / "saga-token")}
    children.append(await spawn("serve", serve, logs, env))
    await wait_ready(children[-1], answers(f"{urls.api}/ready"))
    os.environ["TOKEN_FILE"] = env["TOKEN_FILE"]  # for the `saga instances show` commands
    return urls


def admin_token() -> str:
    return Path(os.environ["TOKEN_FILE"]).read_text(encoding="ascii").strip()


async def stop(children: list[Child]) -> None:
    """SIGTERM, newest first: ``saga serve`` stops dispatching before its participants go."""
    for child in reversed(children):
        if child.process.returncode is None:
            child.process.terminate()
            try:
                await asyncio.wait_for(child.process.wait(), 15)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()


# -- the orders --------------------------------------------------------------------------------


async def register(api: httpx.AsyncClient, urls: Urls) -> None:
    """Participants first: a definition naming an unregistered service is refused."""
    participants = json.loads((HERE / "participants.json").read_text(encoding="utf-8"))
    for name, entry in participants.items():
        entry["base_url"] = getattr(urls, name)  # the port it really got
        check(await api.put(f"/api/v1/participants/{name}", json=entry))
    definition = (HERE / "order.json").read_bytes()
    headers = {"Content-Type": "application/json"}
    check(await api.post("/api/v1/sagas/definitions", content=definition, headers=headers))


async def place(api: httpx.AsyncClient, item: Order) -> dict[str, Any]:
    """Start one order and poll it until it has ended."""
    body = {"saga_name": "checkout", "context": item.context}
    instance = f"{INSTANCES}/{check(await api.post(INSTANCES, json=body))['id']}"
    deadline = asyncio.get_running_loop().time() + WAIT
    while (detail := check(await api.get(instance)))["status"] not in TERMINAL:
        if asyncio.get_running_loop().time() > deadline:
            raise DemoFailed(f"order {item.context['order_id']} did not end: {detail['status']}")
        await asyncio.sleep(0.2)
    return detail


def check(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a successful answer."""
    if response.is_error:
        raise DemoFailed(f"{response.request.method} {response.request.url}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


async def show(number: int, item: Order, detail: dict[str, Any], url: str) -> bool:
    """One order's outcome, then its steps and timeline as ``saga instances show`` prints
    them."""
    status: str = detail["status"]
    ok = status == item.expected
    out.print(Rule(f"{number}. {item.title}", align="left"))
    mark = "[green]as expected[/]" if ok else f"[red]expected {item.expected}[/]"
    out.print(f"order {item.context['order_id']}: [bold]{status}[/] ({mark})")
    out.print(f"[dim]$ saga instances show {detail['id']} --url {url}[/]")
    env = {**os.environ, "COLUMNS": str(out.width)}  # its tables as wide as this output
    shown = await asyncio.create_subprocess_exec(
        *SAGA, "instances", "show", detail["id"], "--url", url, env=env
    )
    await shown.wait()
    return ok


async def participants_say(urls: Urls) -> None:
    """What the participants hold now: the compensated order's stock is released."""
    async with httpx.AsyncClient() as client:
        held = check(await client.get(f"{urls.inventory}/reservations"))
        paid = check(await client.get(f"{urls.payment}/charges"))
    out.print(Rule("what the participants hold", align="left"))
    out.print("inventory:", ", ".join(f"{o} {r['status']}" for o, r in held.items()))
    out.print("payment:  ", ", ".join(f"{o} {c['status']}" for o, c in paid.items()))


# -- the command -------------------------------------------------------------------------------


async def demo(args: argparse.Namespace, logs: Path, children: list[Child]) -> bool:
    await check_broker(args.amqp_url)
    urls = await start_services(args, logs, children)
    auth = {"Authorization": f"Bearer {admin_token()}"}
    async with httpx.AsyncClient(base_url=urls.api, timeout=10, headers=auth) as api:
        await register(api, urls)
        details = await asyncio.gather(*(place(api, item) for item in ORDERS))
    results = [
        await show(number, item, detail, urls.api)
        for number, (item, detail) in enumerate(zip(ORDERS, details, strict=True), start=1)
    ]
    await participants_say(urls)
    if args.keep_running:
        await keep_running(urls, logs)
    return all(results)


async def keep_running(urls: Urls, logs: Path) -> None:
    out.print(Rule("still running: Ctrl-C stops everything", align="left"))
    out.print(f"API and its docs  {urls.api}/docs")
    out.print(f"inventory         {urls.inventory}/reservations")
    out.print(f"payment           {urls.payment}/charges")
    out.print(f"logs              {logs}")
    token_file = os.environ["TOKEN_FILE"]
    out.print(f"admin token       {token_file}")
    out.print(f"try               TOKEN_FILE={token_file} saga instances list --url {urls.api}")
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # stop the children on SIGTERM too
    logs = Path(tempfile.mkdtemp(prefix="order-saga-"))
    children: list[Child] = []
    try:
        ok = await demo(args, logs, children)
    except DemoFailed as error:
        out.print(f"[red]{error}[/]")
        ok = False
    finally:
        await stop(children)
    if not ok:
        out.print(f"[red]Something went wrong: the processes' logs are in {logs}[/]")
        return 1
    out.print("[green]All three orders ended as expected: completed, completed, compensated.[/]")
    shutil.rmtree(logs, ignore_errors=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    parser.add_argument(
        "--port", type=int, default=8100, help="the API's port; the participants take the next two"
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL), help="RabbitMQ"
    )
    return parser.parse_args()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
