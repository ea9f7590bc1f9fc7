"""Instance leases: which node drives which instance when several share one PostgreSQL.

The node that starts an instance owns it; ownership is a lease in the instance's row (owner,
epoch, expiry judged by the database's clock) that every append of the owner checks and
extends (semantics §5). This module keeps the leases of the instances this node drives:

- **renewal**: every ``ttl / 3`` one statement extends all of them; an instance missing from
  the answer was taken over, and the engine drops it at once. The answer also carries each
  instance's last sequence, so an outside input another node recorded is noticed even when its
  notification was lost.
- **claims**: idle capacity takes over instances whose lease expired (their owner died or
  stalled) or was released, woken by a notification and always also by polling; a batch at a
  time, so nodes share the orphans instead of one node hoarding them.
- **doubt**: before each participant call the engine asks :meth:`LeaseKeeper.sure` whether the
  lease is certainly still valid — on this node's monotonic clock, counted from the start of the
  claim, create or renewal that last extended it, with a safety margin — and if it cannot be
  sure, it renews first. A node paused past its lease (a zombie) thus calls no participant
  after waking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from saga_orchestrator.errors import SagaError
from saga_orchestrator.store import ClaimedInstance, InstanceRef, Lease, Store

if TYPE_CHECKING:
    from saga_orchestrator.engine.runtime import Live

log = logging.getLogger("saga_orchestrator.leases")


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseOptions:
    node_id: str
    ttl: float = 10.0
    """Seconds an instance lease lasts unless renewed (renewed every ``ttl / 3``)."""
    margin: float = 2.0
    """Seconds before a lease could end at which this node stops calling participants for the
    instance until a renewal confirms it (covers clock-rate differences and a slow commit)."""
    poll_interval: float = 1.0
    """Seconds between two looks for orphaned instances when no notification arrives."""
    claim_batch: int = 100
    """Instances taken per claim; after a full batch the next one waits a tenth of a poll
    interval, so other nodes get their share of a dead node's work."""
    max_takeovers: int = 3
    """Take-overs from a silent owner an instance may have: orphaned once more, it is taken
    for poison and quarantined for an operator instead of crashing yet another node."""

    def lease(self, epoch: int) -> Lease:
        return Lease(owner=self.node_id, epoch=epoch, ttl=self.ttl)

    def sure_until(self, began: float) -> float:
        """Until when (monotonic) a lease extended by a write that began at ``began`` holds."""
        return began + self.ttl - self.margin


class Driver(Protocol):
    """What the keeper needs from the engine (kept narrow so each can be read alone)."""

    def owned(self) -> Sequence[Live]: ...

    def free_capacity(self) -> int: ...

    def adopt(self, claimed: ClaimedInstance) -> None: ...

    def lost(self, live: Live) -> None: ...

    def moved_elsewhere(self, live: Live, last_seq: int) -> None: ...

    def quarantined(self, refs: Sequence[InstanceRef]) -> None: ...


class LeaseKeeper:
    def __init__(self, store: Store, options: LeaseOptions, driver: Driver) -> None:
        self.store = store
        self.options = options
        self.driver = driver
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._renewal: asyncio.Task[None] | None = None
        self._claiming = False

    # -- lifecycle --
    async def start(self) -> None:
        """Take back what a previous run under this node id still owns, then keep leases
        and claim orphans in the background."""
        try:
            for claimed in await self.store.reclaim_own(self.options.node_id, self.options.ttl):
                self.driver.adopt(claimed)
        except SagaError as error:
            log.warning("could not reclaim this node's leases (claims will): %s", error)
        self._claiming = True
        self._tasks = [
            asyncio.create_task(self._renew_forever(), name="saga-lease-renewal"),
            asyncio.create_task(self._claim_forever(), name="saga-lease-claims"),
        ]

    def stop_claiming(self) -> None:
        self._claiming = False
        self._wake.set()

    async def stop(self) -> None:
        self.stop_claiming()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def release(self, lives: Sequence[Live]) -> None:
        """Give leases up (graceful shutdown) so other nodes continue at once."""
        held = [(live.state.instance_id, live.epoch) for live in lives if live.epoch]
        if not held:
            return
        try:
            await self.store.release_leases(self.options.node_id, held)
        except SagaError as error:
            log.warning("could not release %d leases (they will expire): %s", len(held), error)

    def wake(self) -> None:
        """Leases were released somewhere: look for work now."""
        self._wake.set()

    # -- doubt --
    async def sure(self, live: Live) -> bool:
        """Whether this node certainly still owns ``live``: renews first if it cannot tell."""
        if live.lost:
            return False
        if time.monotonic() < live.sure_until:
            return True
        await self.renew_now()
        return not live.lost and time.monotonic() < live.sure_until

    async def renew_now(self) -> None:
        """One renewal round; concurrent callers share it."""
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.create_task(self._renew_once(), name="saga-lease-renew")
        try:
            await asyncio.shield(self._renewal)
        except (SagaError, TimeoutError) as error:
            log.warning("lease renewal failed: %s", error or "timed out")

    # -- renewal --
    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.ttl / 3)
            await self.renew_now()

    async def _renew_once(self) -> None:
        held = [live for live in self.driver.owned() if live.epoch and not live.lost]
        began = time.monotonic()
        async with asyncio.timeout(self.options.ttl / 3):  # a hung database is a failed round
            answer = await self.store.renew_leases(
                self.options.node_id,
                self.options.ttl,
                [(live.state.instance_id, live.epoch) for live in held],
            )
        sure_until = self.options.sure_until(began)
        for live in held:
            last_seq = answer.get(live.state.instance_id)
            if last_seq is None:
                if not live.state.status.is_settled:
                    log.warning("lease of %s was taken over", live.state.instance_id)
                self.driver.lost(live)
                continue
            live.sure_until = max(live.sure_until, sure_until)
            if last_seq > live.state.seq:
                self.driver.moved_elsewhere(live, last_seq)

    # -- claims --
    async def _claim_forever(self) -> None:
        while self._claiming:
            full = False
            try:
                full = await self._claim_once()
            except SagaError as error:
                log.warning("claiming orphaned instances failed: %s", error)
            if not self._claiming:
                return
            wait = self.options.poll_interval / 10 if full else self.options.poll_interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _claim_once(self) -> bool:
        """Claim a batch if there is room; True if the batch was full (more may be waiting)."""
        room = min(self.options.claim_batch, self.driver.free_capacity())
        if room <= 0:
            return False
        claims = await self.store.claim_instances(
            self.options.node_id, self.options.ttl, room, self.options.max_takeovers
        )
        if claims.quarantined:
            self.driver.quarantined(claims.quarantined)
        for claimed in claims.claimed:
            self.driver.adopt(claimed)
        return len(claims.claimed) + len(claims.quarantined) >= room


__all__ = ["Driver", "LeaseKeeper", "LeaseOptions"]
