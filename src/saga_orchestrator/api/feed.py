"""An instance's history as a live feed: the stored events after a position, then each event as
it commits, until a terminal event.

The subscription to the node's event bus is taken *before* the store is read, so an event
committed in between is seen twice at worst (once from each), never missed; duplicates are
dropped by sequence number. The store stays the source of truth: after a gap in the sequence,
an overflowed subscription, a nudge (another node wrote events of this instance: PostgreSQL's
LISTEN/NOTIFY), or a quiet ``poll_interval`` (a nudge can be lost), the feed catches up from
the store again.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final

from saga_orchestrator.engine.bus import CommittedEvent, EventBus, Subscription
from saga_orchestrator.store import Store, StoredEvent

TERMINAL_EVENTS: Final = frozenset(
    {"SagaCompleted", "SagaCompensated", "SagaCancelled", "SagaTimedOut", "OperatorResolved"}
)
"""After one of these nothing happens to the instance (a parked saga may still resume; an
operator's resolve ends it)."""

_PAGE: Final = 500


class _Nudged(enum.Enum):
    NUDGED = "nudged"


_NUDGED: Final = _Nudged.NUDGED


class EventFeed:
    def __init__(
        self,
        *,
        store: Store,
        bus: EventBus,
        tenant_id: str,
        instance_id: str,
        after: int,
        poll_interval: float,
    ) -> None:
        self._store = store
        self._bus = bus
        self._tenant_id = tenant_id
        self._instance_id = instance_id
        self._poll_interval = poll_interval
        self.last = after
        """The sequence number of the last event delivered."""
        self.finished = False
        """True once a terminal event was delivered."""

    async def events(self) -> AsyncGenerator[StoredEvent | None, None]:
        """Events in sequence order, without gaps or duplicates; ``None`` after each quiet
        ``poll_interval`` (a chance to send a heartbeat)."""
        while not self.finished:
            with self._bus.subscribe(self._instance_id) as subscription:
                async for item in self._follow(subscription):
                    yield item

    async def _follow(self, subscription: Subscription) -> AsyncIterator[StoredEvent | None]:
        """Catch up, then follow the subscription until it ends (terminal) or overflows."""
        async for event in self._catch_up():
            yield event
        while not self.finished:
            live = await self._next(subscription)
            if live is _NUDGED:
                pass  # another node wrote: catch up below, no heartbeat needed
            elif live is None:
                if subscription.overflowed:
                    return  # subscribe afresh, then catch up from the store
                yield None
            elif live.seq == self.last + 1:
                yield self._accept(_stored(live))
                continue
            elif live.seq <= self.last:
                continue
            async for event in self._catch_up():
                yield event

    async def _catch_up(self) -> AsyncIterator[StoredEvent]:
        # The status is read first: if it was terminal then, the history read next is whole,
        # so the feed ends even if the last event's type is not one of TERMINAL_EVENTS.
        record = await self._store.get_instance(self._tenant_id, self._instance_id)
        was_terminal = record is not None and record.status.is_terminal
        while not self.finished:
            page = await self._store.load_events(
                self._tenant_id, self._instance_id, after_seq=self.last, limit=_PAGE
            )
            for event in page:
                yield self._accept(event)
                if self.finished:
                    return
            if len(page) < _PAGE:
                break
        self.finished = self.finished or was_terminal

    async def _next(self, subscription: Subscription) -> CommittedEvent | _Nudged | None:
        """The next event, :data:`_NUDGED` (another node wrote), or None (quiet)."""
        if subscription.overflowed and subscription.queue.empty():
            return None
        try:
            async with asyncio.timeout(self._poll_interval):
                item = await subscription.get()
        except TimeoutError:
            return None
        return _NUDGED if item is None else item

    def _accept(self, event: StoredEvent) -> StoredEvent:
        self.last = event.seq
        self.finished = event.type in TERMINAL_EVENTS
        return event


def _stored(event: CommittedEvent) -> StoredEvent:
    return StoredEvent(
        instance_id=event.instance_id,
        seq=event.seq,
        type=event.type,
        data=event.data,
        recorded_at=event.recorded_at,
    )
