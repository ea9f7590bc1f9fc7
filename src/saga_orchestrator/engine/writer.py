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

A tenant does not wait for another tenant's commit: while the transactions above cannot start,
requests of tenants with nothing in flight start one of their own at once, in one more lane
kept for them (one such transaction at a time, so that many tenants' load still batches as
before). Without it a tenant starting one saga waits, more often the busier its neighbours
are, for the whole of their commit first (docs/performance.md, "Session 11"). Those requests
go alone, not with the busy tenants' queue: a busy tenant's audited request would wait in
PostgreSQL for its chain head, locked by that tenant's running commit, and hold the idle
tenant's transaction with it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, deque
from collections.abc import Sequence
from typing import Protocol

from saga_orchestrator.errors import StoreUnavailable
from saga_orchestrator.store import AppendRequest, AppendResult

_Item = tuple[AppendRequest, "asyncio.Future[AppendResult]"]


class Appender(Protocol):
    """What the writer needs of a store."""

    async def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]: ...


class BatchWriter:
    def __init__(self, store: Appender, *, max_batch: int = 500, max_in_flight: int = 2) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        """Set while the writer waits for work: a full batch, a request of a tenant with
        nothing in flight or, when idle, any request."""
        self._commits: set[asyncio.Task[None]] = set()
        self._batching = 0
        """Running transactions of the oldest requests (all but the idle tenants' lane)."""
        self._idle_lane: asyncio.Task[None] | None = None
        """The running transaction of tenants that had nothing in flight, if any."""
        self._committing: Counter[str] = Counter()
        """Requests in the running transactions, per tenant."""
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
        if (
            not self._batching
            or len(self._pending) >= self._max_batch
            or (self._idle_lane is None and request.tenant_id not in self._committing)
        ):
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
            oldest = self._oldest_may_start()
            batch = self._take_oldest() if oldest else self._take_idle_tenants()
            if not batch:
                continue
            tenants = Counter(request.tenant_id for request, _ in batch)
            self._committing.update(tenants)
            commit = asyncio.create_task(self._commit(batch), name="saga-batch-commit")
            self._commits.add(commit)
            if oldest:
                self._batching += 1
            else:
                self._idle_lane = commit
            commit.add_done_callback(functools.partial(self._committed, tenants))

    def _ready(self) -> bool:
        """Whether to start a transaction now: one when none of the oldest requests' is
        running, another beside them once a full batch waits, or the idle tenants' lane."""
        if not self._pending:
            return False
        if self._oldest_may_start():
            return True
        return self._idle_lane is None and any(
            request.tenant_id not in self._committing for request, _ in self._pending
        )

    def _oldest_may_start(self) -> bool:
        return not self._batching or (
            self._batching < self._max_in_flight and len(self._pending) >= self._max_batch
        )

    def _take_oldest(self) -> list[_Item]:
        count = min(len(self._pending), self._max_batch)
        return [self._pending.popleft() for _ in range(count)]

    def _take_idle_tenants(self) -> list[_Item]:
        """The requests of the tenants with nothing in flight (only this loop takes the lane,
        so it is still free here)."""
        batch: list[_Item] = []
        waiting: deque[_Item] = deque()
        for item in self._pending:
            if item[0].tenant_id in self._committing or len(batch) >= self._max_batch:
                waiting.append(item)
            else:
                batch.append(item)
        self._pending = waiting
        return batch

    def _committed(self, tenants: Counter[str], commit: asyncio.Task[None]) -> None:
        self._commits.discard(commit)
        if commit is self._idle_lane:
            self._idle_lane = None
        else:
            self._batching -= 1
        self._committing.subtract(tenants)
        for tenant in tenants:
            if self._committing[tenant] <= 0:
                del self._committing[tenant]
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
