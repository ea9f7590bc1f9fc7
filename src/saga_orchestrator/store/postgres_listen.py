"""Wake-ups from other nodes: a dedicated connection LISTENing to the append channel.

A notification only says which instances changed; the store stays the source of truth.
Notifications sent while the connection is down are lost, so this reconnects with backoff and
its users also poll (semantics §5: LISTEN/NOTIFY is a hint, never the only path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

from saga_orchestrator.store.postgres_append import EVENTS_CHANNEL
from saga_orchestrator.store.postgres_leases import CLAIMS_CHANNEL

log = logging.getLogger("saga_orchestrator.store")

OnInstances = Callable[[list[tuple[str, int]]], None]


class EventListener:
    def __init__(
        self, dsn: str, on_instances: OnInstances, on_claimable: Callable[[], None] | None = None
    ) -> None:
        self._dsn = dsn
        self._on_instances = on_instances
        self._on_claimable = on_claimable
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="saga-event-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("event listener cannot connect (%s); retrying", error)
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.2
            lost = asyncio.Event()
            connection.add_termination_listener(_setter(lost))
            try:
                await connection.add_listener(EVENTS_CHANNEL, self._notified)
                if self._on_claimable is not None:
                    await connection.add_listener(CLAIMS_CHANNEL, self._claimable)
                self.connected.set()
                if self._on_claimable is not None:
                    self._on_claimable()  # releases while we were away were not heard
                await lost.wait()
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("event listener lost its connection: %s", error)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)

    def _notified(
        self,
        _connection: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        changed: list[tuple[str, int]] = []
        for entry in str(payload).split(","):
            instance_id, _, seq = entry.rpartition(":")
            if instance_id and seq.isdigit():
                changed.append((instance_id, int(seq)))
        if changed:
            self._on_instances(changed)

    def _claimable(
        self,
        _connection: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
        _pid: int,
        _channel: str,
        _payload: object,
    ) -> None:
        if self._on_claimable is not None:
            self._on_claimable()


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _connection: event.set()
