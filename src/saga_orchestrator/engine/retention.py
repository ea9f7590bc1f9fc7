"""Retention: the leader deletes terminal instances older than the configured age.

Terminal instances never change again, so their histories only cost space and make the
instance listings slower; the audit log (who did what) is kept. Runs as a cluster chore, so
one node at a time purges, in batches, each its own short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from saga_orchestrator.errors import SagaError
from saga_orchestrator.store import Store

log = logging.getLogger("saga_orchestrator.retention")


class RetentionChore:
    def __init__(
        self,
        store: Store,
        keep: timedelta,
        *,
        interval: float = 3600.0,
        batch: int = 500,
    ) -> None:
        self.store = store
        self.keep = keep
        self.interval = interval
        self.batch = batch
        self.purged = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saga-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """Purge every instance past the retention age, batch after batch."""
        before = datetime.now(UTC) - self.keep
        total = 0
        while True:
            purged = await self.store.purge_terminal(before, self.batch)
            total += purged
            if purged < self.batch:
                break
        self.purged += total
        if total:
            log.info("retention: deleted %d terminal instances older than %s", total, before)
        return total

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except SagaError as error:
                log.warning("retention round failed: %s", error)
            await asyncio.sleep(self.interval)
