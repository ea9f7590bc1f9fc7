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

A transaction's task is started by whatever makes it possible (a submission, or the end of a
commit), and takes its requests when it first runs: everything submitted until then, in that
loop turn, goes with it. A request to an idle writer reaches the database one loop turn after
it was submitted, not three (a wake-up, a turn to gather, a task started), and under load
each loop turn can be long (docs/performance.md, "Session 14").
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Sequence
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
        self._commits: set[asyncio.Task[None]] = set()
        self._batching = 0
        """Transactions of the oldest requests (all but the idle tenants' lane), started or
        about to take their batch."""
        self._gathering = 0
        """Of those, the ones about to take their batch: whatever is queued until then goes
        with them, so the idle tenants' lane waits for them to show who is committing."""
        self._idle_lane: asyncio.Task[None] | None = None
        """The transaction of tenants that had nothing in flight, if any."""
        self._committing: Counter[str] = Counter()
        """Requests in the running transactions, per tenant."""
        self._open = False
        self._drained: asyncio.Event | None = None
        """Set while stopping, once nothing is queued or committing."""
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        """Commit what is queued (and what is submitted meanwhile), then stop."""
        if not self._open:
            return
        try:
            while self._commits or self._pending:
                self._drained = asyncio.Event()
                self._start_what_may()
                await self._drained.wait()
        finally:
            self._drained = None
            self._open = False
            self._fail_queued(StoreUnavailable("the writer stopped"))

    async def submit(self, request: AppendRequest) -> AppendResult:
        if not self._open:
            raise StoreUnavailable("the writer is not running")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._start_what_may(request)
        return await future

    def _start_what_may(self, newcomer: AppendRequest | None = None) -> None:
        """Start the transaction that may start now: one when none of the oldest requests'
        is under way, another beside them once a full batch waits, or the idle tenants' lane
        (for ``newcomer``'s tenant, or any tenant queued when a commit ended)."""
        if not self._pending:
            if self._drained is not None and not self._commits:
                self._drained.set()
            return
        if self._oldest_may_start():
            self._batching += 1
            self._gathering += 1
            self._launch(self._take_oldest)
        elif self._idle_lane is None and not self._gathering and self._some_tenant_idle(newcomer):
            self._idle_lane = self._launch(self._take_idle_tenants)

    def _some_tenant_idle(self, newcomer: AppendRequest | None) -> bool:
        if newcomer is not None:  # the others queued were judged when they came
            return newcomer.tenant_id not in self._committing
        return any(request.tenant_id not in self._committing for request, _ in self._pending)

    def _oldest_may_start(self) -> bool:
        return not self._batching or (
            self._batching < self._max_in_flight and len(self._pending) >= self._max_batch
        )

    def _launch(self, take: Callable[[], list[_Item]]) -> asyncio.Task[None]:
        commit = asyncio.create_task(self._commit(take), name="saga-batch-commit")
        self._commits.add(commit)
        return commit

    def _take_oldest(self) -> list[_Item]:
        self._gathering -= 1
        count = min(len(self._pending), self._max_batch)
        return [self._pending.popleft() for _ in range(count)]

    def _take_idle_tenants(self) -> list[_Item]:
        """The requests of the tenants with nothing in flight."""
        batch: list[_Item] = []
        waiting: deque[_Item] = deque()
        for item in self._pending:
            if item[0].tenant_id in self._committing or len(batch) >= self._max_batch:
                waiting.append(item)
            else:
                batch.append(item)
        self._pending = waiting
        return batch

    async def _commit(self, take: Callable[[], list[_Item]]) -> None:
        # The batch is taken here, when the task first runs, not when it was started: the
        # requests submitted meanwhile go with it.
        batch = take()
        tenants = Counter(request.tenant_id for request, _ in batch)
        self._committing.update(tenants)
        cancelled = False
        try:
            if batch:
                await self._append(batch)
        except asyncio.CancelledError:
            cancelled = True  # the loop is going away: start nothing more
            raise
        finally:
            self._committed(tenants, start_next=not cancelled)

    def _committed(self, tenants: Counter[str], *, start_next: bool) -> None:
        commit = asyncio.current_task()
        assert commit is not None
        self._commits.discard(commit)
        if commit is self._idle_lane:
            self._idle_lane = None
        else:
            self._batching -= 1
        self._committing.subtract(tenants)
        for tenant in tenants:
            if self._committing[tenant] <= 0:
                del self._committing[tenant]
        if start_next:
            self._start_what_may()

    async def _append(self, batch: list[_Item]) -> None:
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
