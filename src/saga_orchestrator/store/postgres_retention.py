"""PostgreSQL: the retention purge of old terminal instances (a cluster chore)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from saga_orchestrator.store.codec import utc

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

# One statement removes whole histories: the instance row, its events (the append-only
# trigger lets this transaction through), timer, start key and published outbox messages.
# SKIP LOCKED: an instance an operator is acting on right now is left for the next round.
PURGE = """
WITH doomed AS (
    SELECT instance_id FROM instances
    WHERE status IN ('completed', 'compensated', 'cancelled', 'timed_out') AND updated_at < $1
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), events_gone AS (
    DELETE FROM events e USING doomed d WHERE e.instance_id = d.instance_id
), timers_gone AS (
    DELETE FROM timers t USING doomed d WHERE t.instance_id = d.instance_id
), keys_gone AS (
    DELETE FROM start_keys k USING doomed d WHERE k.instance_id = d.instance_id
), outbox_gone AS (
    DELETE FROM outbox o USING doomed d
    WHERE o.instance_id = d.instance_id AND o.published_at IS NOT NULL
)
DELETE FROM instances i USING doomed d WHERE i.instance_id = d.instance_id
RETURNING i.instance_id
"""


async def purge_terminal(conn: Connection, before: datetime, limit: int) -> int:
    async with conn.transaction():
        await conn.execute("SET LOCAL saga.retention = 'on'")
        rows = await conn.fetch(PURGE, utc(before), limit)
    return len(rows)
