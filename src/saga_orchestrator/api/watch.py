"""Notices when instances started (or resumed) through the API settle, for the metrics.

One task per instance in flight, told by the node's event bus which status the instance
settled in (a quiet ``poll_interval`` or an overflowed subscription makes it look at the state
again). The engine offers no settlement hook
yet; when it does, this module becomes a subscription to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.engine.bus import Subscription
from saga_orchestrator.engine.runtime import Engine
from saga_orchestrator.errors import SagaError

log = logging.getLogger("saga_orchestrator.api")

OnSettled = Callable[[str, InstanceStatus], None]
"""Called with the saga name and the status it settled in (terminal, or parked ``failed``)."""


class SettlementWatcher:
    def __init__(self, engine: Engine, on_settled: OnSettled, *, poll_interval: float) -> None:
        self._engine = engine
        self._on_settled = on_settled
        self._poll_interval = poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, tenant_id: str, instance_id: str) -> None:
        if instance_id in self._tasks:
            return
        task = asyncio.create_task(
            self._watch(tenant_id, instance_id), name=f"saga-api-watch-{instance_id}"
        )
        self._tasks[instance_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(instance_id, None))

    @property
    def watching(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, tenant_id: str, instance_id: str) -> None:
        with self._engine.bus.subscribe(instance_id) as subscription:
            while True:
                try:
                    state = await self._engine.state(tenant_id, instance_id)
                except SagaError as error:
                    log.warning("cannot watch instance %s: %s", instance_id, error)
                    return
                status = state.status if state.status.is_settled else None
                status = status or await self._settling_event(subscription)
                if status is not None:
                    self._on_settled(state.definition_name, status)
                    return

    async def _settling_event(self, subscription: Subscription) -> InstanceStatus | None:
        """The status that the next settling event announces; None after a quiet
        ``poll_interval`` (or an event that needs the state to tell), to look again."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                while True:
                    event = await subscription.get()
                    if event.type in _SETTLING:
                        return _SETTLING[event.type]
                    if event.type == "OperatorResolved":
                        return None
        return None


_SETTLING: Final = {
    "SagaCompleted": InstanceStatus.COMPLETED,
    "SagaCompensated": InstanceStatus.COMPENSATED,
    "SagaCancelled": InstanceStatus.CANCELLED,
    "SagaTimedOut": InstanceStatus.TIMED_OUT,
    "SagaParked": InstanceStatus.FAILED,
}
"""Events that settle an instance, and the status each leaves it in."""
