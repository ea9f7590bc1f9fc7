"""SQLite statements for the outbox claims, participant services, tenant limit overrides and
shared secrets.

Each function runs on the store's thread (see :mod:`.sqlite`). SQLite has a single writer, so
a claim is one ``UPDATE ... RETURNING`` under ``BEGIN IMMEDIATE``: no two claimers can take
the same row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from saga_orchestrator.store.codec import from_micros, to_micros
from saga_orchestrator.store.encryption import EventCipher, open_outbox_row
from saga_orchestrator.store.protocol import (
    AuditEntry,
    AuditRecord,
    OutboxRow,
    ParticipantEntry,
    TenantLimitsEntry,
)
from saga_orchestrator.store.sqlite_append import write_transaction
from saga_orchestrator.store.sqlite_audit import write_audit

CLAIM_OUTBOX = """
UPDATE outbox SET claimed_until = ?1, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until <= ?2)
    ORDER BY id LIMIT ?3
)
RETURNING id, tenant_id, instance_id, message_id, exchange, routing_key, body, headers,
          attempts, created_at, sealed_with
"""
# The body goes in the statement that marks the message published: from then on a dump of
# the table holds no payload of it, sealed or not (the ids and headers stay, for inspection).
MARK_PUBLISHED = """
UPDATE outbox SET published_at = ?1, claimed_until = NULL, body = X'', sealed_with = NULL
WHERE id IN (SELECT value FROM json_each(?2))
"""
RELEASE = """
UPDATE outbox SET claimed_until = NULL
WHERE published_at IS NULL AND id IN (SELECT value FROM json_each(?1))
"""
BACKLOG = "SELECT count(*) FROM outbox WHERE published_at IS NULL"

UPSERT_PARTICIPANT = """
INSERT INTO participants (tenant_id, name, config, version, updated_at)
VALUES (?1, ?2, ?3, 1, ?4)
ON CONFLICT (tenant_id, name) DO UPDATE
SET config = excluded.config, version = participants.version + 1, updated_at = excluded.updated_at
RETURNING version
"""
PARTICIPANT_COLUMNS = "tenant_id, name, config, version, updated_at"
GET_PARTICIPANT = f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = ? AND name = ?"
LIST_PARTICIPANTS = (
    f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = ? ORDER BY name"
)
DELETE_PARTICIPANT = "DELETE FROM participants WHERE tenant_id = ? AND name = ?"

UPSERT_TENANT_LIMITS = """
INSERT INTO tenant_limits (tenant_id, config, version, updated_at)
VALUES (?1, ?2, 1, ?3)
ON CONFLICT (tenant_id) DO UPDATE
SET config = excluded.config, version = tenant_limits.version + 1, updated_at = excluded.updated_at
RETURNING version
"""
GET_TENANT_LIMITS = (
    "SELECT tenant_id, config, version, updated_at FROM tenant_limits WHERE tenant_id = ?"
)
DELETE_TENANT_LIMITS = "DELETE FROM tenant_limits WHERE tenant_id = ?"

INSERT_SECRET = """
INSERT INTO shared_secrets (name, value, created_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO NOTHING
"""
GET_SECRET = "SELECT value FROM shared_secrets WHERE name = ?"


def _now() -> int:
    return to_micros(datetime.now(UTC))


def claim_outbox(
    conn: sqlite3.Connection, limit: int, lease_seconds: float, cipher: EventCipher | None = None
) -> list[OutboxRow]:
    now = _now()
    with write_transaction(conn):
        rows = conn.execute(
            CLAIM_OUTBOX, (now + int(lease_seconds * 1_000_000), now, limit)
        ).fetchall()
    rows.sort(key=lambda row: row[0])  # RETURNING does not promise an order
    return [
        open_outbox_row(
            OutboxRow(
                id=row_id,
                tenant_id=tenant_id,
                instance_id=instance_id,
                message_id=message_id,
                exchange=exchange,
                routing_key=routing_key,
                body=bytes(body),
                headers=orjson.loads(headers),
                attempts=attempts,
                created_at=from_micros(created_at),
            ),
            sealed_with,
            cipher,
        )
        for (
            row_id,
            tenant_id,
            instance_id,
            message_id,
            exchange,
            routing_key,
            body,
            headers,
            attempts,
            created_at,
            sealed_with,
        ) in rows
    ]


def mark_outbox_published(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    with write_transaction(conn):
        conn.execute(MARK_PUBLISHED, (_now(), orjson.dumps(list(ids)).decode()))


def release_outbox(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    with write_transaction(conn):
        conn.execute(RELEASE, (orjson.dumps(list(ids)).decode(),))


def outbox_backlog(conn: sqlite3.Connection) -> int:
    return int(conn.execute(BACKLOG).fetchone()[0])


def put_participant(
    conn: sqlite3.Connection,
    tenant_id: str,
    name: str,
    config: dict[str, Any],
    audit: AuditEntry | None,
) -> int:
    with write_transaction(conn):
        row = conn.execute(
            UPSERT_PARTICIPANT, (tenant_id, name, orjson.dumps(config).decode(), _now())
        ).fetchone()
        if audit is not None:
            write_audit(conn, [audit])
    return int(row[0])


def get_participant(conn: sqlite3.Connection, tenant_id: str, name: str) -> ParticipantEntry | None:
    row = conn.execute(GET_PARTICIPANT, (tenant_id, name)).fetchone()
    return None if row is None else _participant(row)


def list_participants(conn: sqlite3.Connection, tenant_id: str) -> list[ParticipantEntry]:
    return [_participant(row) for row in conn.execute(LIST_PARTICIPANTS, (tenant_id,))]


def delete_participant(
    conn: sqlite3.Connection, tenant_id: str, name: str, audit: AuditEntry | None
) -> bool:
    with write_transaction(conn):
        deleted = conn.execute(DELETE_PARTICIPANT, (tenant_id, name)).rowcount > 0
        if deleted and audit is not None:
            write_audit(conn, [audit])
    return deleted


def put_tenant_limits(
    conn: sqlite3.Connection, tenant_id: str, config: dict[str, Any], audit: AuditEntry | None
) -> int:
    with write_transaction(conn):
        row = conn.execute(
            UPSERT_TENANT_LIMITS, (tenant_id, orjson.dumps(config).decode(), _now())
        ).fetchone()
        if audit is not None:
            write_audit(conn, [audit])
    return int(row[0])


def get_tenant_limits(conn: sqlite3.Connection, tenant_id: str) -> TenantLimitsEntry | None:
    row = conn.execute(GET_TENANT_LIMITS, (tenant_id,)).fetchone()
    if row is None:
        return None
    return TenantLimitsEntry(
        tenant_id=row[0],
        config=orjson.loads(row[1]),
        version=row[2],
        updated_at=from_micros(row[3]),
    )


def delete_tenant_limits(
    conn: sqlite3.Connection, tenant_id: str, audit: AuditEntry | None
) -> bool:
    with write_transaction(conn):
        deleted = conn.execute(DELETE_TENANT_LIMITS, (tenant_id,)).rowcount > 0
        if deleted and audit is not None:
            write_audit(conn, [audit])
    return deleted


def shared_secret(conn: sqlite3.Connection, name: str, candidate: bytes) -> bytes:
    with write_transaction(conn):
        conn.execute(INSERT_SECRET, (name, candidate, _now()))
        return bytes(conn.execute(GET_SECRET, (name,)).fetchone()[0])


def _participant(row: tuple[Any, ...]) -> ParticipantEntry:
    tenant_id, name, config, version, updated_at = row
    return ParticipantEntry(
        tenant_id=tenant_id,
        name=name,
        config=orjson.loads(config),
        version=version,
        updated_at=from_micros(updated_at),
    )


# -- the audit log (the chain itself: sqlite_audit) -----------------------------------------


def append_audit(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[AuditRecord]:
    with write_transaction(conn):
        return write_audit(conn, entries)
