"""PostgreSQL statements of the audit log: each tenant's hash chain (see :mod:`.audit`).

Appending locks the tenants' rows of ``audit_heads`` (an upsert whose no-op update takes the
row lock, in tenant order, so two writers never deadlock): writers on any node extend a
tenant's chain one after another, inside the transaction of the change they record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import orjson

from saga_orchestrator.store.audit import GENESIS, chain
from saga_orchestrator.store.chain_heads import Head
from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.protocol import AuditEntry, AuditFilter, AuditOutcome, AuditRecord

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

# Creates the heads a tenant lacks and locks every one (the no-op update takes the row lock
# and waits for a concurrent creator), returning the current head: one round trip.
LOCK_HEADS = """
INSERT INTO audit_heads (tenant_id, seq, hash)
SELECT t, 0, $2 FROM unnest($1::text[]) AS t
ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq
RETURNING tenant_id, seq, hash
"""


def extend_chains(first: int) -> str:
    """Two CTEs (``logged``, ``heads_moved``): the new records and the heads they move to,
    their 16 parameters numbered from ``first`` (see :func:`chain_parameters`), so that a
    statement of other writes can carry them too."""
    n = [f"${i}" for i in range(first, first + 16)]
    return f"""logged AS (
    INSERT INTO audit_log (tenant_id, seq, at, actor, action, target_type, target_id, outcome,
                           reason, request_id, details, prev_hash, hash)
    SELECT * FROM unnest({n[0]}::text[], {n[1]}::bigint[], {n[2]}::timestamptz[],
                         {n[3]}::text[], {n[4]}::text[], {n[5]}::text[], {n[6]}::text[],
                         {n[7]}::text[], {n[8]}::text[], {n[9]}::text[], {n[10]}::jsonb[],
                         {n[11]}::text[], {n[12]}::text[])),
heads_moved AS (
    UPDATE audit_heads AS h SET seq = n.seq, hash = n.hash
    FROM unnest({n[13]}::text[], {n[14]}::bigint[], {n[15]}::text[]) AS n (tenant_id, seq, hash)
    WHERE h.tenant_id = n.tenant_id)"""


# The new records and the heads they move to, in one round trip (different tables).
EXTEND_CHAINS = f"WITH {extend_chains(1)}\nSELECT NULL"
AUDIT_COLUMNS = (
    "tenant_id, seq, at, actor, action, target_type, target_id, outcome, reason, request_id,"
    " details::text, prev_hash, hash"
)


async def write_audit(conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Inside the caller's transaction: extend each tenant's chain."""
    if not entries:
        return []
    heads = await lock_heads(conn, {e.tenant_id for e in entries})
    records, parameters = chain_parameters(entries, heads)
    await conn.execute(EXTEND_CHAINS, *parameters)
    return records


async def lock_heads(conn: Connection, tenant_ids: Iterable[str]) -> dict[str, Head]:
    """Lock the tenants' chain heads (creating any missing), in tenant order; returns those
    past the genesis as (seq, hash)."""
    rows = await conn.fetch(LOCK_HEADS, sorted(set(tenant_ids)), GENESIS)
    return {row[0]: (int(row[1]), str(row[2])) for row in rows if row[1] > 0}


def chain_parameters(
    entries: Sequence[AuditEntry], heads: Mapping[str, Head]
) -> tuple[list[AuditRecord], list[list[object]]]:
    """The records extending the locked ``heads`` with ``entries``, and the 16 parameters of
    :func:`extend_chains` that write them."""
    records, new_heads = chain(entries, heads)
    columns: list[list[object]] = [[] for _ in range(13)]
    for record in records:
        for column, value in zip(columns, _row(record), strict=True):
            column.append(value)
    ordered = sorted(new_heads.items())
    return records, [
        *columns,
        [t for t, _ in ordered],
        [s for _, (s, _) in ordered],
        [h for _, (_, h) in ordered],
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainRows:
    """An audited batch's share of migration 0010's functions: its records as ``audit_log``
    rows, the heads they were chained to (``was``) and move to (``moved_to``) as
    ``audit_heads`` rows in tenant order, and the latter as a mapping."""

    records: list[tuple[object, ...]]
    was: list[tuple[object, ...]]
    moved_to: list[tuple[object, ...]]
    heads: dict[str, Head]


def chain_rows(entries: Sequence[AuditEntry], heads: Mapping[str, Head]) -> ChainRows:
    """The records extending the known ``heads`` (one for every tenant of ``entries``)."""
    records, new_heads = chain(entries, heads)
    tenants = sorted(new_heads)
    return ChainRows(
        records=[_row(record) for record in records],
        was=[(t, *heads[t]) for t in tenants],
        moved_to=[(t, *new_heads[t]) for t in tenants],
        heads=new_heads,
    )


def _row(record: AuditRecord) -> tuple[object, ...]:
    """A record in ``audit_log``'s column order (migration 0003)."""
    e = record.entry
    return (
        e.tenant_id, record.seq, utc(e.at), e.actor, e.action, e.target_type, e.target_id,
        e.outcome.value, e.reason, e.request_id, orjson.dumps(e.details).decode(),
        record.prev_hash, record.hash,
    )  # fmt: skip


async def list_audit(
    conn: Connection, tenant_id: str, filters: AuditFilter, limit: int, after_seq: int
) -> list[AuditRecord]:
    where = ["tenant_id = $1", "seq > $2"]
    params: list[object] = [tenant_id, after_seq]
    for column, value in (
        ("actor", filters.actor),
        ("action", filters.action),
        ("target_id", filters.target_id),
        ("at >=", filters.after),
        ("at <", filters.before),
    ):
        if value is None:
            continue
        params.append(value)
        operator = "" if " " in column else " ="
        where.append(f"{column}{operator} ${len(params)}")
    params.append(limit)
    query = (
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)}"
        f" ORDER BY seq LIMIT ${len(params)}"
    )
    return [_record(row) for row in await conn.fetch(query, *params)]


async def audit_tenants(conn: Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tenant_id FROM audit_heads UNION SELECT DISTINCT tenant_id FROM audit_log"
        " ORDER BY 1"
    )
    return [row[0] for row in rows]


async def audit_chain(
    conn: Connection, tenant_id: str
) -> tuple[list[AuditRecord], tuple[int, str] | None]:
    rows = await conn.fetch(
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1 ORDER BY seq", tenant_id
    )
    head = await conn.fetchrow("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1", tenant_id)
    return [_record(row) for row in rows], None if head is None else (int(head[0]), str(head[1]))


def _record(row: asyncpg.Record) -> AuditRecord:
    entry = AuditEntry(
        tenant_id=row[0],
        at=row[2],
        actor=row[3],
        action=row[4],
        target_type=row[5],
        target_id=row[6],
        outcome=AuditOutcome(row[7]),
        reason=row[8],
        request_id=row[9],
        details=orjson.loads(row[10]),
    )
    return AuditRecord(entry=entry, seq=int(row[1]), prev_hash=row[11], hash=row[12])
