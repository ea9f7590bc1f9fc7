"""The batch writer: group commit for every instance of this node.

Callers submit one :class:`AppendRequest` each and await its result. While a transaction is
being committed, new requests queue up; the next transaction takes all of them at once, so the
number of commits per second stays bounded while throughput grows with load. Nothing is
acknowledged (and so no side effect happens) before its transaction committed.
"""

from __future__ import annotations

import asyncio
import contextlib

from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.store import AppendRequest, AppendResult, Store

_Item = tuple[AppendRequest, "asyncio.Future[AppendResult]"]


class BatchWriter:
    def __init__(self, store: Store, *, max_batch: int = 500) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saga-batch-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._fail_queued(StoreUnavailable("the writer stopped"))

    async def submit(self, request: AppendRequest) -> AppendResult:
        if self._task is None:
            raise StoreUnavailable("the writer is not running")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Let producers woken in this loop turn add their requests to this batch.
            await asyncio.sleep(0)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)
            for _ in batch:
                self._queue.task_done()

    async def _commit(self, batch: list[_Item]) -> None:
        try:
            results = await self._store.append([request for request, _ in batch])
        except Exception as error:  # every waiter learns of the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        self.requests += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _fail_queued(self, error: Exception) -> None:
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(error)
