"""Notices when instances started (or resumed) through the API settle, for the metrics.

One task per instance in flight, woken by the node's event bus (a quiet ``poll_interval`` or an
overflowed subscription makes it look at the state again). The engine offers no settlement hook
yet; when it does, this module becomes a subscription to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from saga_orchestrator.core.status import InstanceStatus
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
                if state.status.is_settled:
                    self._on_settled(state.definition_name, state.status)
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await subscription.get()
