"""SQLite statements of the audit log: each tenant's hash chain (see :mod:`.audit`)."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from saga_orchestrator.store.audit import chain
from saga_orchestrator.store.codec import from_micros, to_micros
from saga_orchestrator.store.protocol import AuditEntry, AuditFilter, AuditOutcome, AuditRecord

AUDIT_HEADS = "SELECT tenant_id, seq, hash FROM audit_heads WHERE tenant_id IN ({marks})"
INSERT_AUDIT = """
INSERT INTO audit_log (tenant_id, seq, at, actor, action, target_type, target_id, outcome,
                       reason, request_id, details, prev_hash, hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
UPSERT_AUDIT_HEAD = """
INSERT INTO audit_heads (tenant_id, seq, hash) VALUES (?, ?, ?)
ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
"""
AUDIT_COLUMNS = (
    "tenant_id, seq, at, actor, action, target_type, target_id, outcome, reason, request_id,"
    " details, prev_hash, hash"
)


def write_audit(conn: sqlite3.Connection, entries: list[AuditEntry]) -> list[AuditRecord]:
    """Inside the caller's write transaction: extend each tenant's chain."""
    if not entries:
        return []
    tenants = sorted({e.tenant_id for e in entries})
    query = AUDIT_HEADS.format(marks=", ".join("?" * len(tenants)))
    heads = {t: (seq, h) for t, seq, h in conn.execute(query, tenants)}
    records, new_heads = chain(entries, heads)
    conn.executemany(INSERT_AUDIT, [_audit_row(r) for r in records])
    conn.executemany(UPSERT_AUDIT_HEAD, [(t, seq, h) for t, (seq, h) in new_heads.items()])
    return records


def list_audit(
    conn: sqlite3.Connection, tenant_id: str, filters: AuditFilter, limit: int, after_seq: int
) -> list[AuditRecord]:
    where = ["tenant_id = ?", "seq > ?"]
    params: list[object] = [tenant_id, after_seq]
    for column, value in (
        ("actor", filters.actor),
        ("action", filters.action),
        ("target_id", filters.target_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if filters.after is not None:
        where.append("at >= ?")
        params.append(to_micros(filters.after))
    if filters.before is not None:
        where.append("at < ?")
        params.append(to_micros(filters.before))
    query = (
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    )
    return [_audit_record(row) for row in conn.execute(query, (*params, limit))]


def audit_tenants(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT tenant_id FROM audit_heads UNION SELECT DISTINCT tenant_id FROM audit_log"
        " ORDER BY 1"
    )
    return [row[0] for row in rows]


def audit_chain(
    conn: sqlite3.Connection, tenant_id: str
) -> tuple[list[AuditRecord], tuple[int, str] | None]:
    rows = conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = ? ORDER BY seq", (tenant_id,)
    )
    records = [_audit_record(row) for row in rows]
    head = conn.execute(
        "SELECT seq, hash FROM audit_heads WHERE tenant_id = ?", (tenant_id,)
    ).fetchone()
    return records, None if head is None else (int(head[0]), str(head[1]))


def _audit_row(record: AuditRecord) -> tuple[object, ...]:
    e = record.entry
    return (
        e.tenant_id,
        record.seq,
        to_micros(e.at),
        e.actor,
        e.action,
        e.target_type,
        e.target_id,
        e.outcome.value,
        e.reason,
        e.request_id,
        orjson.dumps(e.details).decode(),
        record.prev_hash,
        record.hash,
    )


def _audit_record(row: tuple[Any, ...]) -> AuditRecord:
    (tenant_id, seq, at, actor, action, target_type, target_id, outcome, reason, request_id,
     details, prev_hash, digest) = row  # fmt: skip
    entry = AuditEntry(
        tenant_id=tenant_id,
        at=from_micros(at),
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=AuditOutcome(outcome),
        reason=reason,
        request_id=request_id,
        details=orjson.loads(details),
    )
    return AuditRecord(entry=entry, seq=seq, prev_hash=prev_hash, hash=digest)
