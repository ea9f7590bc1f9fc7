"""The audit log's hash chain, shared by both backends and free of IO.

Each tenant's records form one chain: record ``n`` stores ``SHA-256(canonical JSON of its
content, its sequence and the previous record's hash)``. Rewriting a record breaks its own hash;
deleting or reordering records breaks the sequence or the links; deleting the newest records is
caught against ``audit_heads``, which the same transaction advances. :func:`verify` names the
first record where the chain breaks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.protocol import AuditEntry, AuditRecord

GENESIS = "0" * 64
"""The "previous hash" of a tenant's first record."""


def digest(entry: AuditEntry, seq: int, prev_hash: str) -> str:
    content = {
        "tenant_id": entry.tenant_id,
        "seq": seq,
        "at": utc(entry.at).isoformat(timespec="microseconds"),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "reason": entry.reason,
        "outcome": entry.outcome,
        "request_id": entry.request_id,
        "details": entry.details,
        "prev_hash": prev_hash,
    }
    canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def chain(
    entries: Sequence[AuditEntry], heads: Mapping[str, tuple[int, str]]
) -> tuple[list[AuditRecord], dict[str, tuple[int, str]]]:
    """Records for ``entries`` (in order) after each tenant's head ``(seq, hash)``; returns
    them and the new heads."""
    current = dict(heads)
    records: list[AuditRecord] = []
    for entry in entries:
        seq, prev_hash = current.get(entry.tenant_id, (0, GENESIS))
        record = AuditRecord(
            entry=entry, seq=seq + 1, prev_hash=prev_hash, hash=digest(entry, seq + 1, prev_hash)
        )
        records.append(record)
        current[entry.tenant_id] = (record.seq, record.hash)
    return records, {t: current[t] for t in {e.tenant_id for e in entries}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Break:
    tenant_id: str
    seq: int
    """The first record that does not verify (the head's sequence for a truncated tail)."""
    reason: str


def verify(
    tenant_id: str, records: Iterable[AuditRecord], head: tuple[int, str] | None
) -> Break | None:
    """Check one tenant's chain, ordered as stored (by sequence); None if it is whole."""
    expected_seq, prev_hash = 1, GENESIS
    for record in records:
        if record.seq != expected_seq:
            return Break(
                tenant_id=tenant_id,
                seq=expected_seq,
                reason=f"record {expected_seq} is missing (found {record.seq} next)",
            )
        if record.prev_hash != prev_hash:
            return Break(
                tenant_id=tenant_id,
                seq=record.seq,
                reason="it does not link to the record before it (reordered or replaced)",
            )
        if digest(record.entry, record.seq, record.prev_hash) != record.hash:
            return Break(tenant_id=tenant_id, seq=record.seq, reason="its content was altered")
        expected_seq, prev_hash = record.seq + 1, record.hash
    last = expected_seq - 1
    if head is not None and (head[0] != last or head[1] != prev_hash):
        return Break(
            tenant_id=tenant_id,
            seq=min(head[0], last + 1),
            reason=f"the chain ends at {last} but its head says {head[0]} (records removed)",
        )
    return None
