"""In-memory wake-ups for the instances this node drives.

The durable timer is the instance's ``wake_at`` in the store (written with every append); after a
restart, recovery reloads every unfinished instance and re-arms its timer from its state. This
queue only makes the wake-up prompt: a heap, one sleeping task, at most one live entry per
instance (a newer schedule supersedes older entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from saga_orchestrator.engine.clock import Clock, SystemClock

Fire = Callable[[str, str], Coroutine[Any, Any, None]]

MAX_SLEEP = 1.0
"""Seconds: the queue re-reads the clock at least this often (clock jumps, lost wake-ups)."""


class TimerQueue:
    def __init__(self, fire: Fire, clock: Clock | None = None) -> None:
        self._fire = fire
        self._clock = clock or SystemClock()
        self._heap: list[tuple[datetime, int, str, str]] = []
        self._latest: dict[str, datetime] = {}
        self._counter = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._firing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saga-timers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._firing):
            task.cancel()
        await asyncio.gather(*self._firing, return_exceptions=True)

    def schedule(self, tenant_id: str, instance_id: str, when: datetime) -> None:
        if self._latest.get(instance_id) == when:
            return
        self._latest[instance_id] = when
        heapq.heappush(self._heap, (when, next(self._counter), tenant_id, instance_id))
        if self._heap[0][0] == when:
            self._changed.set()  # a new earliest timer: the sleeper must wake sooner

    def __len__(self) -> int:
        return len(self._latest)

    async def _run(self) -> None:
        while True:
            delay = self._next_delay()
            if delay > 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, MAX_SLEEP)):
                        await self._changed.wait()
                continue
            self._fire_due()

    def _next_delay(self) -> float:
        if not self._heap:
            return MAX_SLEEP
        return (self._heap[0][0] - self._clock.now()).total_seconds()

    def _fire_due(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            when, _, tenant_id, instance_id = heapq.heappop(self._heap)
            if self._latest.get(instance_id) != when:
                continue  # superseded by a later schedule
            del self._latest[instance_id]
            task = asyncio.create_task(self._fire(tenant_id, instance_id))
            self._firing.add(task)
            task.add_done_callback(self._firing.discard)
