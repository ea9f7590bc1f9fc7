"""PostgreSQL statements for the outbox claims, participant services, tenant limit overrides
and shared secrets.

A claim is a short transaction: ``FOR UPDATE SKIP LOCKED`` inside a CTE with ``LIMIT`` (as a
plain subquery the planner may run it more than once and claim more than the limit) stamps
``claimed_until`` by the database's clock, so concurrent relays never take the same row and no
row lock is held while the relay talks to the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from saga_orchestrator.store.encryption import EventCipher, open_outbox_row
from saga_orchestrator.store.protocol import (
    LeaderFence,
    OutboxRow,
    ParticipantEntry,
    TenantLimitsEntry,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

# $3..$5 fence the claim by a leader lease (all NULL: no fence).
CLAIM_OUTBOX = """
WITH claimable AS (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until <= now())
      AND ($3::text IS NULL OR EXISTS (
          SELECT 1 FROM leader_leases
          WHERE name = $3 AND holder = $4 AND epoch = $5 AND expires_at > now()))
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox AS o
SET claimed_until = now() + make_interval(secs => $2), attempts = o.attempts + 1
FROM claimable
WHERE o.id = claimable.id
RETURNING o.id, o.tenant_id, o.instance_id, o.message_id, o.exchange, o.routing_key, o.body,
          o.headers::text, o.attempts, o.created_at, o.sealed_with
"""
# The body goes in the statement that marks the message published: from then on a dump of
# the table holds no payload of it, sealed or not (the ids and headers stay, for inspection).
MARK_PUBLISHED = """
UPDATE outbox
SET published_at = now(), claimed_until = NULL, body = ''::bytea, sealed_with = NULL
WHERE id = ANY($1::bigint[])
"""
RELEASE = """
UPDATE outbox SET claimed_until = NULL
WHERE published_at IS NULL AND id = ANY($1::bigint[])
"""
BACKLOG = "SELECT count(*) FROM outbox WHERE published_at IS NULL"

UPSERT_PARTICIPANT = """
INSERT INTO participants (tenant_id, name, config, version, updated_at)
VALUES ($1, $2, $3::jsonb, 1, now())
ON CONFLICT (tenant_id, name) DO UPDATE
SET config = excluded.config, version = participants.version + 1, updated_at = now()
RETURNING version
"""
PARTICIPANT_COLUMNS = "tenant_id, name, config::text, version, updated_at"
GET_PARTICIPANT = (
    f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = $1 AND name = $2"
)
LIST_PARTICIPANTS = (
    f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = $1 ORDER BY name"
)
DELETE_PARTICIPANT = "DELETE FROM participants WHERE tenant_id = $1 AND name = $2"

UPSERT_TENANT_LIMITS = """
INSERT INTO tenant_limits (tenant_id, config, version, updated_at)
VALUES ($1, $2::jsonb, 1, now())
ON CONFLICT (tenant_id) DO UPDATE
SET config = excluded.config, version = tenant_limits.version + 1, updated_at = now()
RETURNING version
"""
GET_TENANT_LIMITS = (
    "SELECT tenant_id, config::text, version, updated_at FROM tenant_limits WHERE tenant_id = $1"
)
DELETE_TENANT_LIMITS = "DELETE FROM tenant_limits WHERE tenant_id = $1"

INSERT_SECRET = """
INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, now())
ON CONFLICT (name) DO NOTHING
"""
GET_SECRET = "SELECT value FROM shared_secrets WHERE name = $1"


async def claim_outbox(
    conn: Connection,
    limit: int,
    lease_seconds: float,
    leader: LeaderFence | None = None,
    cipher: EventCipher | None = None,
) -> list[OutboxRow]:
    fence = (None, None, None) if leader is None else (leader.name, leader.holder, leader.epoch)
    rows = await conn.fetch(CLAIM_OUTBOX, limit, float(lease_seconds), *fence)
    claimed = [
        open_outbox_row(
            OutboxRow(
                id=row[0],
                tenant_id=row[1],
                instance_id=row[2],
                message_id=row[3],
                exchange=row[4],
                routing_key=row[5],
                body=bytes(row[6]),
                headers=orjson.loads(row[7]),
                attempts=row[8],
                created_at=row[9],
            ),
            row[10],
            cipher,
        )
        for row in rows
    ]
    claimed.sort(key=lambda row: row.id)  # RETURNING does not promise an order
    return claimed


async def mark_outbox_published(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(MARK_PUBLISHED, list(ids))


async def release_outbox(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(RELEASE, list(ids))


async def outbox_backlog(conn: Connection) -> int:
    return int(await conn.fetchval(BACKLOG))


async def put_participant(
    conn: Connection, tenant_id: str, name: str, config: dict[str, Any]
) -> int:
    return int(
        await conn.fetchval(UPSERT_PARTICIPANT, tenant_id, name, orjson.dumps(config).decode())
    )


async def get_participant(conn: Connection, tenant_id: str, name: str) -> ParticipantEntry | None:
    row = await conn.fetchrow(GET_PARTICIPANT, tenant_id, name)
    return None if row is None else _participant(row)


async def list_participants(conn: Connection, tenant_id: str) -> list[ParticipantEntry]:
    return [_participant(row) for row in await conn.fetch(LIST_PARTICIPANTS, tenant_id)]


async def delete_participant(conn: Connection, tenant_id: str, name: str) -> bool:
    return str(await conn.execute(DELETE_PARTICIPANT, tenant_id, name)) != "DELETE 0"


async def put_tenant_limits(conn: Connection, tenant_id: str, config: dict[str, Any]) -> int:
    return int(await conn.fetchval(UPSERT_TENANT_LIMITS, tenant_id, orjson.dumps(config).decode()))


async def get_tenant_limits(conn: Connection, tenant_id: str) -> TenantLimitsEntry | None:
    row = await conn.fetchrow(GET_TENANT_LIMITS, tenant_id)
    if row is None:
        return None
    return TenantLimitsEntry(
        tenant_id=row[0], config=orjson.loads(row[1]), version=row[2], updated_at=row[3]
    )


async def delete_tenant_limits(conn: Connection, tenant_id: str) -> bool:
    return str(await conn.execute(DELETE_TENANT_LIMITS, tenant_id)) != "DELETE 0"


async def shared_secret(conn: Connection, name: str, candidate: bytes) -> bytes:
    async with conn.transaction():
        await conn.execute(INSERT_SECRET, name, candidate)
        return bytes(await conn.fetchval(GET_SECRET, name))


def _participant(row: asyncpg.Record) -> ParticipantEntry:
    return ParticipantEntry(
        tenant_id=row[0],
        name=row[1],
        config=orjson.loads(row[2]),
        version=row[3],
        updated_at=row[4],
    )
