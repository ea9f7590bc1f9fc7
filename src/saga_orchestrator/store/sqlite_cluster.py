"""SQLite statements of cluster membership and leader leases: one node per file, so these
keep the same contract as PostgreSQL's on this process's clock."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from saga_orchestrator.store.codec import from_micros, to_micros
from saga_orchestrator.store.protocol import Leadership, NodeRecord
from saga_orchestrator.store.sqlite_append import write_transaction

HEARTBEAT = """
INSERT INTO nodes (node_id, address, version, started_at, heartbeat_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (node_id) DO UPDATE
SET address = excluded.address, version = excluded.version,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
"""
ACQUIRE = """
INSERT INTO leader_leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?3)
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder,
    epoch = CASE WHEN leader_leases.holder = excluded.holder
                 THEN leader_leases.epoch ELSE leader_leases.epoch + 1 END,
    expires_at = excluded.expires_at
WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= ?4
"""


def _now() -> int:
    return to_micros(datetime.now(UTC))


def heartbeat_node(conn: sqlite3.Connection, node: NodeRecord) -> None:
    with write_transaction(conn):
        conn.execute(
            HEARTBEAT,
            (node.node_id, node.address, node.version, to_micros(node.started_at), _now()),
        )


def list_nodes(conn: sqlite3.Connection) -> list[NodeRecord]:
    # One node per file drives every unfinished instance.
    rows = conn.execute(
        "SELECT node_id, address, version, started_at, heartbeat_at, "
        "(SELECT count(*) FROM instances WHERE status IN ('running', 'compensating')) "
        "FROM nodes ORDER BY node_id"
    )
    return [
        NodeRecord(
            node_id=node_id,
            address=address,
            version=version,
            started_at=from_micros(started),
            heartbeat_at=from_micros(beat),
            instances=owned,
        )
        for node_id, address, version, started, beat, owned in rows
    ]


def remove_node(conn: sqlite3.Connection, node_id: str) -> None:
    with write_transaction(conn):
        conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))


def reap_nodes(conn: sqlite3.Connection, silent_for: float) -> list[str]:
    with write_transaction(conn):
        cutoff = _now() - int(silent_for * 1_000_000)
        rows = conn.execute(
            "DELETE FROM nodes WHERE heartbeat_at < ? RETURNING node_id", (cutoff,)
        ).fetchall()
    return sorted(row[0] for row in rows)


def acquire_leadership(conn: sqlite3.Connection, name: str, holder: str, ttl: float) -> Leadership:
    now = _now()
    with write_transaction(conn):
        conn.execute(ACQUIRE, (name, holder, now + int(ttl * 1_000_000), now))
        row = conn.execute(
            "SELECT holder, epoch, expires_at FROM leader_leases WHERE name = ?", (name,)
        ).fetchone()
    return Leadership(holder=row[0], epoch=int(row[1]), expires_at=from_micros(row[2]))


def release_leadership(conn: sqlite3.Connection, name: str, holder: str) -> None:
    with write_transaction(conn):
        conn.execute(
            "UPDATE leader_leases SET expires_at = ? WHERE name = ? AND holder = ?",
            (_now() - 1, name, holder),
        )
