"""PostgreSQL statements of instance leases (semantics §5): claims, renewals, releases.

Expiry is always judged by ``now()`` of the database, never a node's clock. Every change of
owner raises ``lease_epoch``, the fencing token that :mod:`postgres_append` checks inside the
transaction of every append.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from saga_orchestrator.store.protocol import (
    ClaimedInstance,
    Claims,
    InstanceRef,
    QuarantinedInstance,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

CLAIMS_CHANNEL = "saga_claims"
"""Notified when leases are released, so idle nodes claim at once instead of at their next
poll (a hint: a node that died releases nothing, and its leases are found by polling)."""

# One statement: the candidates are locked in a CTE with LIMIT (as a plain subquery in an
# UPDATE's WHERE the planner may evaluate it more than once and lock more rows than the limit),
# then either taken (epoch + 1) or, when orphaned once too often, quarantined.
CLAIM = """
WITH candidates AS (
    SELECT instance_id, owner_id IS NOT NULL AS orphaned,
           owner_id IS NOT NULL AND takeovers + 1 > $4 AS poison
    FROM instances
    WHERE status IN ('running', 'compensating') AND quarantined_at IS NULL
      AND (owner_id IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now())
    ORDER BY lease_expires_at NULLS FIRST, instance_id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE instances AS i
    SET owner_id = $1, lease_epoch = i.lease_epoch + 1,
        lease_expires_at = now() + make_interval(secs => $2),
        takeovers = i.takeovers + c.orphaned::int
    FROM candidates c
    WHERE i.instance_id = c.instance_id AND NOT c.poison
    RETURNING i.tenant_id, i.instance_id, i.lease_epoch
), quarantined AS (
    UPDATE instances AS i
    SET owner_id = NULL, lease_expires_at = NULL, quarantined_at = now(),
        takeovers = i.takeovers + 1
    FROM candidates c
    WHERE i.instance_id = c.instance_id AND c.poison
    RETURNING i.tenant_id, i.instance_id, 0::bigint
)
SELECT true AS claimed, * FROM taken
UNION ALL
SELECT false, * FROM quarantined
"""
CLAIM_ONE = """
UPDATE instances
SET owner_id = $1, lease_epoch = lease_epoch + 1,
    lease_expires_at = now() + make_interval(secs => $2)
WHERE tenant_id = $3 AND instance_id = $4
  AND status NOT IN ('completed', 'compensated', 'cancelled', 'timed_out')
  AND (owner_id IS NULL OR owner_id = $1 OR lease_expires_at IS NULL
       OR lease_expires_at <= now())
RETURNING lease_epoch
"""
RECLAIM_OWN = """
UPDATE instances
SET lease_epoch = lease_epoch + 1, lease_expires_at = now() + make_interval(secs => $2)
WHERE owner_id = $1 AND status IN ('running', 'compensating')
RETURNING tenant_id, instance_id, lease_epoch
"""
# An expired lease is renewed too while its epoch is unchanged: no one took it over, so no
# one else has written under it.
RENEW = """
UPDATE instances AS i
SET lease_expires_at = now() + make_interval(secs => $2)
FROM unnest($3::text[], $4::bigint[]) AS u (instance_id, epoch)
WHERE i.instance_id = u.instance_id AND i.owner_id = $1 AND i.lease_epoch = u.epoch
RETURNING i.instance_id, i.last_seq
"""
RELEASE = """
UPDATE instances AS i SET owner_id = NULL, lease_expires_at = NULL
FROM unnest($2::text[], $3::bigint[]) AS u (instance_id, epoch)
WHERE i.instance_id = u.instance_id AND i.owner_id = $1 AND i.lease_epoch = u.epoch
"""
LIST_QUARANTINED = """
SELECT tenant_id, instance_id, takeovers, quarantined_at FROM instances
WHERE tenant_id = $1 AND quarantined_at IS NOT NULL
ORDER BY quarantined_at, instance_id
"""
RELEASE_QUARANTINE = """
UPDATE instances SET quarantined_at = NULL, takeovers = 0
WHERE tenant_id = $1 AND instance_id = $2 AND quarantined_at IS NOT NULL
RETURNING instance_id
"""


async def claim_instances(
    conn: Connection, owner: str, ttl: float, limit: int, max_takeovers: int
) -> Claims:
    rows = await conn.fetch(CLAIM, owner, float(ttl), limit, max_takeovers)
    return Claims(
        claimed=[
            ClaimedInstance(tenant_id=row[1], instance_id=row[2], epoch=int(row[3]))
            for row in rows
            if row[0]
        ],
        quarantined=[
            InstanceRef(tenant_id=row[1], instance_id=row[2]) for row in rows if not row[0]
        ],
    )


async def claim_instance(
    conn: Connection, owner: str, ttl: float, tenant_id: str, instance_id: str
) -> int | None:
    epoch = await conn.fetchval(CLAIM_ONE, owner, float(ttl), tenant_id, instance_id)
    return None if epoch is None else int(epoch)


async def reclaim_own(conn: Connection, owner: str, ttl: float) -> list[ClaimedInstance]:
    rows = await conn.fetch(RECLAIM_OWN, owner, float(ttl))
    return [ClaimedInstance(tenant_id=r[0], instance_id=r[1], epoch=int(r[2])) for r in rows]


async def renew_leases(
    conn: Connection, owner: str, ttl: float, leases: Sequence[tuple[str, int]]
) -> dict[str, int]:
    if not leases:
        return {}
    rows = await conn.fetch(
        RENEW, owner, float(ttl), [lease[0] for lease in leases], [lease[1] for lease in leases]
    )
    return {row[0]: int(row[1]) for row in rows}


async def release_leases(conn: Connection, owner: str, leases: Sequence[tuple[str, int]]) -> None:
    async with conn.transaction():
        await conn.execute(
            RELEASE, owner, [lease[0] for lease in leases], [lease[1] for lease in leases]
        )
        await conn.execute("SELECT pg_notify($1, $2)", CLAIMS_CHANNEL, owner)


async def list_quarantined(conn: Connection, tenant_id: str) -> list[QuarantinedInstance]:
    return [
        QuarantinedInstance(
            tenant_id=row[0], instance_id=row[1], takeovers=int(row[2]), quarantined_at=row[3]
        )
        for row in await conn.fetch(LIST_QUARANTINED, tenant_id)
    ]


async def release_quarantine(conn: Connection, tenant_id: str, instance_id: str) -> bool:
    found = await conn.fetchval(RELEASE_QUARANTINE, tenant_id, instance_id)
    if found is not None:
        await conn.execute("SELECT pg_notify($1, $2)", CLAIMS_CHANNEL, instance_id)
    return found is not None
