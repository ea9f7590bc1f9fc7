"""PostgreSQL statements of cluster membership and leader leases (database clock)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.protocol import Leadership, NodeRecord

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

HEARTBEAT = """
INSERT INTO nodes (node_id, address, version, started_at, heartbeat_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (node_id) DO UPDATE
SET address = excluded.address, version = excluded.version,
    started_at = excluded.started_at, heartbeat_at = now()
"""
LIST_NODES = """
SELECT n.node_id, n.address, n.version, n.started_at, n.heartbeat_at,
       (SELECT count(*) FROM instances i
        WHERE i.owner_id = n.node_id AND i.lease_expires_at > now()
          AND i.status IN ('running', 'compensating'))
FROM nodes n ORDER BY n.node_id
"""
REMOVE_NODE = "DELETE FROM nodes WHERE node_id = $1"
REAP_NODES = """
DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING node_id
"""

# The conflict branch only fires for the holder (a renewal) or over an expired lease (a
# take-over, which raises the epoch); otherwise nothing is returned and the lease is read.
ACQUIRE = """
INSERT INTO leader_leases (name, holder, epoch, expires_at)
VALUES ($1, $2, 1, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder,
    epoch = CASE WHEN leader_leases.holder = excluded.holder
                 THEN leader_leases.epoch ELSE leader_leases.epoch + 1 END,
    expires_at = excluded.expires_at
WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= now()
RETURNING holder, epoch, expires_at
"""
CURRENT = "SELECT holder, epoch, expires_at FROM leader_leases WHERE name = $1"
RELEASE = """
UPDATE leader_leases SET expires_at = now() - interval '1 microsecond'
WHERE name = $1 AND holder = $2
"""


async def heartbeat_node(conn: Connection, node: NodeRecord) -> None:
    await conn.execute(HEARTBEAT, node.node_id, node.address, node.version, utc(node.started_at))


async def list_nodes(conn: Connection) -> list[NodeRecord]:
    return [
        NodeRecord(
            node_id=row[0],
            address=row[1],
            version=row[2],
            started_at=row[3],
            heartbeat_at=row[4],
            instances=int(row[5]),
        )
        for row in await conn.fetch(LIST_NODES)
    ]


async def remove_node(conn: Connection, node_id: str) -> None:
    await conn.execute(REMOVE_NODE, node_id)


async def reap_nodes(conn: Connection, silent_for: float) -> list[str]:
    return sorted(row[0] for row in await conn.fetch(REAP_NODES, float(silent_for)))


async def acquire_leadership(conn: Connection, name: str, holder: str, ttl: float) -> Leadership:
    row = await conn.fetchrow(ACQUIRE, name, holder, float(ttl))
    if row is None:
        row = await conn.fetchrow(CURRENT, name)
        assert row is not None  # the conflict proves the row exists; leases are never deleted
    return Leadership(holder=row[0], epoch=int(row[1]), expires_at=row[2])


async def release_leadership(conn: Connection, name: str, holder: str) -> None:
    await conn.execute(RELEASE, name, holder)
