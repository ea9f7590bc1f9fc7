"""The SQLite store's own thread: calls run there, in order, and their answers come back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from saga_orchestrator.errors import StoreError
from saga_orchestrator.store.sqlite_thread import StoreThread


async def test_calls_run_on_the_thread_in_the_order_they_came() -> None:
    thread = StoreThread("test-store")
    ran: list[tuple[int, str]] = []

    def record(n: int) -> int:
        ran.append((n, threading.current_thread().name))
        return n * 10

    answers = await asyncio.gather(*(thread.run(record, n) for n in range(50)))
    await thread.stop(lambda: None)

    assert answers == [n * 10 for n in range(50)]
    assert ran == [(n, "test-store") for n in range(50)]


async def test_an_exception_reaches_its_caller_and_the_thread_serves_on() -> None:
    thread = StoreThread("test-store")

    def fail() -> None:
        raise ValueError("no such row")

    with pytest.raises(ValueError, match="no such row"):
        await thread.run(fail)
    assert await thread.run(lambda: "still serving") == "still serving"
    await thread.stop(lambda: None)


async def test_a_cancelled_caller_does_not_stop_the_call_or_the_thread() -> None:
    thread = StoreThread("test-store")
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    loop_errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))

    def slow() -> str:
        started.set()
        release.wait(5)
        finished.append("slow")
        return "late"

    waiting = asyncio.create_task(thread.run(slow))
    await asyncio.to_thread(started.wait, 5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()

    assert await thread.run(lambda: "next") == "next"
    assert finished == ["slow"]  # the call ran to its end; its answer had no one to go to
    assert loop_errors == []  # and handing it to a cancelled future raised nothing
    await thread.stop(lambda: None)


async def test_stop_runs_its_last_call_after_the_queued_ones_then_refuses_more() -> None:
    thread = StoreThread("test-store")
    order: list[str] = []
    queued = [asyncio.create_task(thread.run(order.append, f"call-{n}")) for n in range(3)]
    await asyncio.sleep(0)  # the calls are queued before the stop

    await thread.stop(lambda: order.append("last"))
    await asyncio.gather(*queued)

    assert order == ["call-0", "call-1", "call-2", "last"]
    with pytest.raises(StoreError, match="closed"):
        await thread.run(order.append, "too late")
    await thread.stop(lambda: order.append("again"))  # a second stop does nothing
    assert order[-1] == "last"
