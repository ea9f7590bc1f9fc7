"""The outbox relay: publishes the messages that appends wrote to the outbox, with confirms.

Each round claims a batch (a lease judged by the database's clock, so relays on other nodes
skip these rows), publishes it and marks the confirmed messages published. Messages the
broker refused (unroutable: no worker has declared its queue yet) stay claimed for
``refused_retry`` seconds, so they never stall the rows behind them; step commands whose
attempt deadline passed unsent are dropped. While the broker is down the rows stay in the
outbox and the relay backs off; nothing is lost, and nothing is published before its
transaction committed.

Bodies sealed at rest come back opened from the claim; a message whose body does not open
(its key is no longer configured) is not published, and waits for its lease to end. Marking a
message published erases its body.

Delivery is at least once: a confirm whose ``mark_outbox_published`` did not commit, or a
publish slower than the lease, sends the message again; consumers dedupe on its message id.
The relay never tracks a "last published id": ids are allocated before commit, so a smaller
id can become visible after a larger one. Only the claim decides what is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from saga_orchestrator.store.protocol import LeaderFence, OutboxRow, Store
from saga_orchestrator.transports.amqp import BrokerUnavailable
from saga_orchestrator.transports.amqp_messages import PROPERTY_EXPIRATION, AmqpMessage

__all__ = ["MessagePublisher", "OutboxRelay", "RelayCounters"]

log = logging.getLogger("saga_orchestrator.relay")


class MessagePublisher(Protocol):
    """What the relay needs of :class:`~saga_orchestrator.transports.amqp.AmqpPublisher`."""

    async def publish(self, messages: Sequence[AmqpMessage]) -> list[bool]:
        """Per message, whether the broker confirmed it; :class:`BrokerUnavailable` when
        it cannot be reached."""
        ...


@dataclass(slots=True)
class RelayCounters:
    """Running totals, for metrics and health checks."""

    published: int = 0
    """Messages confirmed by the broker and marked published."""
    unconfirmed: int = 0
    """Messages published but not confirmed (unroutable, nacked, connection lost)."""
    failures: int = 0
    """Rounds that failed as a whole (broker unreachable, store error)."""
    claims: int = 0
    """Claims made, empty ones included."""
    rounds: int = 0
    """Claims that got at least one message."""
    expired: int = 0
    """Step commands dropped unsent because their attempt's deadline had passed."""
    unreadable: int = 0
    """Claims of messages whose sealed body did not open (its key is not configured, or the
    row was altered): not published, tried again when their lease ends."""
    last_error: str | None = None


def to_message(row: OutboxRow) -> AmqpMessage:
    return AmqpMessage(
        key=row.message_id,
        exchange=row.exchange,
        routing_key=row.routing_key,
        body=row.body,
        headers=row.headers,
    )


def _expired(row: OutboxRow, now: datetime) -> bool:
    expiration = row.headers.get(PROPERTY_EXPIRATION)
    if expiration is None or not expiration.isdigit():
        return False
    return row.created_at + timedelta(milliseconds=int(expiration)) < now


class OutboxRelay:
    def __init__(
        self,
        store: Store,
        publisher: MessagePublisher,
        *,
        batch: int = 200,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        refused_retry: float = 1.0,
        fence: Callable[[], LeaderFence | None] | None = None,
    ) -> None:
        self.store = store
        self.fence = fence
        """The leader lease this relay works under (a cluster chore): a claim is refused in
        the database unless that lease is still current, so a deposed leader publishes
        nothing new even before it notices. None: not a chore (one node)."""
        self.publisher = publisher
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.refused_retry = refused_retry
        """Seconds before a message the broker refused (unroutable: no worker has declared
        its queue yet) is tried again. Such rows stay claimed meanwhile, so a backlog of them
        never stalls the messages behind it (claims take the oldest rows first)."""
        """Seconds between rounds when nobody calls :meth:`wake` (a wake-up can be lost)."""
        self.counters = RelayCounters()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Run a round now (call it after a commit that wrote outbox rows)."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="saga-outbox-relay")

    async def stop(self) -> None:
        """Stop after the current round, whose claimed rows are marked or released first."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None
        for pending in list(self._releases):
            pending.cancel()
        await asyncio.gather(*self._releases, return_exceptions=True)

    async def run_once(self) -> tuple[int, int]:
        """One round: claim, publish, settle. Returns (claimed, confirmed); raises what
        failed the round as a whole (:class:`BrokerUnavailable`, a store error)."""
        leader = None
        if self.fence is not None:
            leader = self.fence()
            if leader is None:
                return 0, 0  # not (or no longer surely) the leader
        rows = await self.store.claim_outbox(self.batch, self.lease_seconds, leader)
        self.counters.claims += 1
        if not rows:
            return 0, 0
        self.counters.rounds += 1
        claimed = len(rows)
        now = datetime.now(UTC)
        expired = [row.id for row in rows if _expired(row, now)]
        if expired:
            # A step command nobody took before its attempt's deadline is void: the engine
            # has moved on (retried or compensated), so sending it would only waste work.
            await self.store.mark_outbox_published(expired)
            self.counters.expired += len(expired)
            rows = [row for row in rows if row.id not in set(expired)]
        unreadable = [row for row in rows if row.unreadable is not None]
        if unreadable:
            # Never published (an empty body would lose the command) nor released: they stay
            # claimed until their lease ends, so they are retried, say once the key is back,
            # without holding up the messages behind them.
            self.counters.unreadable += len(unreadable)
            self.counters.last_error = unreadable[0].unreadable
            log.error(
                "outbox relay: %d message(s) not published: %s",
                len(unreadable),
                unreadable[0].unreadable,
            )
            rows = [row for row in rows if row.unreadable is None]
        if not rows:
            return claimed, len(expired)
        try:
            confirmed = await self.publisher.publish([to_message(row) for row in rows])
        except Exception:
            await self.store.release_outbox([row.id for row in rows])
            raise
        done = [row.id for row, ok in zip(rows, confirmed, strict=True) if ok]
        failed = [row.id for row, ok in zip(rows, confirmed, strict=True) if not ok]
        if done:
            await self.store.mark_outbox_published(done)
            self.counters.published += len(done)
        if failed:
            self.counters.unconfirmed += len(failed)
            self.counters.last_error = f"{len(failed)} message(s) not confirmed by the broker"
            log.warning("outbox relay: %s (unroutable or refused)", self.counters.last_error)
            if self.refused_retry < self.lease_seconds:
                self._release_later(failed)
        return claimed, len(done) + len(expired)

    def _release_later(self, ids: list[int]) -> None:
        async def release() -> None:
            await asyncio.sleep(self.refused_retry)
            try:
                await self.store.release_outbox(ids)
            except Exception:  # the lease ends anyway; this only made it sooner
                log.debug("could not release refused outbox rows early", exc_info=True)

        task = asyncio.create_task(release(), name="saga-outbox-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                claimed, confirmed = await self.run_once()
            except BrokerUnavailable as error:
                self._failed(error)
                log.warning("outbox relay: %s", error)
                # Publishing cannot succeed before the publisher's next connection attempt,
                # so wake-ups are ignored until then.
                await self._pause(max(error.retry_after, 0.05), wakeable=False)
                continue
            except Exception as error:
                self._failed(error)
                log.exception("outbox relay round failed")
                await self._pause(self.poll_interval)
                continue
            if claimed < self.batch or confirmed < claimed:
                await self._pause(self.poll_interval)
            # else: a full batch went out, more are probably waiting

    def _failed(self, error: Exception) -> None:
        self.counters.failures += 1
        self.counters.last_error = f"{type(error).__name__}: {error}"

    async def _pause(self, seconds: float, *, wakeable: bool = True) -> None:
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wakeup.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
