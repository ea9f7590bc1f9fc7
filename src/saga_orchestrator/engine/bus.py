"""Live events of this node: every committed append is offered to the subscribers of its
instance. A subscriber that falls behind is dropped (its queue is bounded) and must replay from
the store, which is the source of truth; the bus is only the fast path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedEvent:
    tenant_id: str
    instance_id: str
    seq: int
    type: str
    data: bytes
    recorded_at: datetime


NUDGE: None = None
"""Queued instead of an event: the instance changed elsewhere (another node); read the store."""


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[CommittedEvent | None] = asyncio.Queue(maxsize)
        self.overflowed = False
        """True once an event could not be queued: replay from the store to catch up."""

    def offer(self, event: CommittedEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def nudge(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a full queue is read soon anyway
            self.queue.put_nowait(NUDGE)

    async def get(self) -> CommittedEvent | None:
        """The next event, or :data:`NUDGE`."""
        return await self.queue.get()


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}

    @contextlib.contextmanager
    def subscribe(self, instance_id: str) -> Iterator[Subscription]:
        subscription = Subscription(self._queue_size)
        self._subscribers.setdefault(instance_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(instance_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[instance_id]

    def has_subscribers(self, instance_id: str) -> bool:
        return instance_id in self._subscribers

    def nudge(self, instance_ids: list[str]) -> None:
        """Other nodes wrote events of these instances: their followers re-read the store."""
        for instance_id in instance_ids:
            for subscription in self._subscribers.get(instance_id, ()):
                subscription.nudge()

    def publish(self, events: list[CommittedEvent]) -> None:
        for event in events:
            for subscription in self._subscribers.get(event.instance_id, ()):
                subscription.offer(event)
