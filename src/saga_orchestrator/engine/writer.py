"""The batch writer: group commit for every instance of this node.

Callers submit one :class:`AppendRequest` each and await its result. While a transaction is
being committed, new requests queue up; the next transaction takes all of them at once, so the
number of commits per second stays bounded while throughput grows with load. Nothing is
acknowledged (and so no side effect happens) before its transaction committed.

When a full batch is waiting while a transaction is still being committed, a second one starts
beside it instead of waiting: under load the loop then never sits idle waiting for a commit
(PostgreSQL runs the two on two connections; SQLite's store thread starts the next as soon as
the first is done). The two never hold the same instance: an instance's next append is only
submitted once its previous one was acknowledged, and the stores already take concurrent
transactions from other nodes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.store import AppendRequest, AppendResult, Store

_Item = tuple[AppendRequest, "asyncio.Future[AppendResult]"]


class BatchWriter:
    def __init__(self, store: Store, *, max_batch: int = 500, max_in_flight: int = 2) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        """Set while the writer waits for work: a full batch or, when idle, any request."""
        self._commits: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="saga-batch-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wake()
        await self._task
        self._task = None
        self._fail_queued(StoreUnavailable("the writer stopped"))

    async def submit(self, request: AppendRequest) -> AppendResult:
        if self._task is None:
            raise StoreUnavailable("the writer is not running")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if not self._commits or len(self._pending) >= self._max_batch:
            self._wake()
        return await future

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending or not self._stopping or self._commits:
            if not self._ready():
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
                continue
            # Let producers woken in this loop turn add their requests to this batch.
            await asyncio.sleep(0)
            count = min(len(self._pending), self._max_batch)
            batch = [self._pending.popleft() for _ in range(count)]
            commit = asyncio.create_task(self._commit(batch), name="saga-batch-commit")
            self._commits.add(commit)
            commit.add_done_callback(self._committed)

    def _ready(self) -> bool:
        """Whether to start a transaction now: one when none is running, another beside it
        only once a full batch waits."""
        if not self._pending or len(self._commits) >= self._max_in_flight:
            return False
        return not self._commits or len(self._pending) >= self._max_batch

    def _committed(self, commit: asyncio.Task[None]) -> None:
        self._commits.discard(commit)
        self._wake()

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
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
