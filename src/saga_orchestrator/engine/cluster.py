"""This node's membership of the cluster: its heartbeat in the node registry, and the leader
lease of the cluster chores (outbox relay, retention, reaping of dead nodes).

The lease is a row with a rising epoch, renewed by short transactions and judged by the
database's clock (semantics §5) — never a session advisory lock, which a killed backend frees
while its old holder still believes it leads. A leader stops its chores as soon as it cannot
be sure it still holds the lease: when a renewal fails, or when ``ttl - margin`` has passed on
its own monotonic clock since the start of the last renewal that succeeded (that renewal's
expiry, stamped by the database, is later than that), so it never works past its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from saga_orchestrator.errors import SagaError
from saga_orchestrator.store import LeaderFence, Leadership, NodeRecord, Store

log = logging.getLogger("saga_orchestrator.cluster")

CHORES = "chores"
REAP_AFTER_TTLS = 6
"""A node silent for this many leader-lease lengths is taken for dead and leaves the registry
(its instance leases expired long before and were taken over)."""


@dataclass(slots=True, kw_only=True)
class Chore:
    """Something only the leader does: started when leadership is won, stopped when lost."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], Awaitable[None]]
    running: bool = False


@dataclass(slots=True, kw_only=True)
class ClusterMember:
    store: Store
    node_id: str
    address: str
    version: str
    ttl: float = 10.0
    """Seconds a leader lease lasts unless renewed (renewed every ``ttl / 3``)."""
    margin: float = 2.0
    """Seconds before the lease's end at which a leader that could not renew stops its chores."""
    chores: list[Chore] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    leadership: Leadership | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _sure_until: float = 0.0

    @property
    def is_leader(self) -> bool:
        return (
            self.leadership is not None
            and self.leadership.holder == self.node_id
            and time.monotonic() < self._sure_until
        )

    def fence(self) -> LeaderFence | None:
        """The leader lease the chores' writes are fenced by; None unless surely leading."""
        if not self.is_leader or self.leadership is None:
            return None
        return LeaderFence(name=CHORES, holder=self.node_id, epoch=self.leadership.epoch)

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="saga-cluster-member")

    async def stop(self) -> None:
        """Stop the chores, give the lease up and leave the registry, so another node takes
        over at once instead of after the lease expires."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._stop_chores()
        with contextlib.suppress(SagaError):
            await self.store.release_leadership(CHORES, self.node_id)
            await self.store.remove_node(self.node_id)

    async def beat(self) -> None:
        """One round: heartbeat, take or renew the lease, start or stop the chores."""
        began = time.monotonic()
        await self.store.heartbeat_node(
            NodeRecord(
                node_id=self.node_id,
                address=self.address,
                version=self.version,
                started_at=self.started_at,
                heartbeat_at=self.started_at,  # stamped by the database
            )
        )
        self.leadership = await self.store.acquire_leadership(CHORES, self.node_id, self.ttl)
        if self.leadership.holder == self.node_id:
            self._sure_until = began + self.ttl - self.margin
            await self._start_chores()
            # Reaping: nodes silent for several lease lengths died without leaving.
            for node_id in await self.store.reap_nodes(self.ttl * REAP_AFTER_TTLS):
                log.warning("node %s stopped heartbeating: removed from the registry", node_id)
        else:
            self._sure_until = 0.0
            await self._stop_chores()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(max(self.ttl / 3, 0.05)):
                    await self.beat()
            except (SagaError, TimeoutError) as error:
                log.warning("cluster heartbeat failed: %s", error)
            await self._wait(self.ttl / 3)

    async def _wait(self, seconds: float) -> None:
        """Until the next round, stopping the chores the moment leadership is in doubt."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._chores_running() and now >= self._sure_until:
                log.warning("cannot confirm leadership in time: stopping the cluster chores")
                await self._stop_chores()
            if now >= deadline:
                return
            wake = min(deadline, self._sure_until) if self._chores_running() else deadline
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake - now, 0.01)):
                    await self._stopping.wait()

    def _chores_running(self) -> bool:
        return any(chore.running for chore in self.chores)

    async def _start_chores(self) -> None:
        for chore in self.chores:
            if not chore.running:
                log.info("leader: starting %s", chore.name)
                chore.start()
                chore.running = True

    async def _stop_chores(self) -> None:
        for chore in self.chores:
            if chore.running:
                chore.running = False
                await chore.stop()
