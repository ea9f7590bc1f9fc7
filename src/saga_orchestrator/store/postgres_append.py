"""PostgreSQL group commit: one transaction and a constant number of round trips per batch.

1. lock the batch's existing instance rows, in instance-id order (``FOR UPDATE``; a batch
   that only creates has none, and skips it);
2. read the start keys the batch mentions;
3. decide every request in Python (:func:`~saga_orchestrator.store.batch.plan_batch`);
4. write the plan: the instances (created and updated), their events and the notification in
   one statement, then one bulk statement per other table.

Rows that do not exist yet cannot be locked, so two transactions may both plan to create the same
instance or claim the same start key. Those inserts use ``ON CONFLICT DO NOTHING RETURNING``:
the loser waits for the winner's commit, sees its row missing from RETURNING, rolls back and
plans again, and then finds the winner's row. No unique violation ever escapes.

Row-level security hides other tenants' instances from the lock of step 1, so a create whose
id another tenant already holds also loses its insert, and still finds nothing on the next
plan: such an id is remembered as taken by someone unseen, and the create conflicts (as
"missing", sequence 0) without learning anything about that instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import orjson

from saga_orchestrator.errors import StoreError
from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.batch import (
    Facts,
    Plan,
    batch_instance_ids,
    batch_start_keys,
    plan_batch,
)
from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.postgres_audit import write_audit
from saga_orchestrator.store.protocol import AppendRequest, AppendResult

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

_ATTEMPTS = 8
_UNSEEN_TENANT = ""
"""Stands for a tenant whose row this session cannot see (no tenant id is empty)."""


class _RaceLost(Exception):
    """A concurrent transaction created a row this batch planned to create (never escapes)."""

    def __init__(self, instance_ids: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.instance_ids = instance_ids
        """Instances this batch failed to create (empty for a lost start key)."""


async def append_batch(
    conn: PoolConnectionProxy[asyncpg.Record],
    requests: Sequence[AppendRequest],
    cipher: EventCipher | None = None,
) -> list[AppendResult]:
    """Run the batch, re-planning after a lost creation race or a deadlock."""
    lost: set[str] = set()
    for _ in range(_ATTEMPTS):
        try:
            async with conn.transaction():
                return await _append_once(conn, requests, cipher, lost)
        except _RaceLost as race:
            lost |= race.instance_ids
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            continue
    raise StoreError(f"append gave up after {_ATTEMPTS} collisions with concurrent writers")


async def _append_once(
    conn: PoolConnectionProxy[asyncpg.Record],
    requests: Sequence[AppendRequest],
    cipher: EventCipher | None,
    lost: set[str],
) -> list[AppendResult]:
    rows = (
        []
        if _only_creations(requests, lost)
        else await conn.fetch(sql.LOCK_INSTANCES, batch_instance_ids(requests))
    )
    instances = {row[0]: (row[1], row[2]) for row in rows}
    for instance_id in lost.difference(instances):
        instances[instance_id] = (_UNSEEN_TENANT, 0)
    leases = {row[0]: (row[3], row[4]) for row in rows}
    keys = batch_start_keys(requests)
    taken = {}
    if keys:
        tenants, names = [k[0] for k in keys], [k[1] for k in keys]
        key_rows = await conn.fetch(sql.TAKEN_START_KEYS, tenants, names)
        taken = {(row[0], row[1]): (row[2], row[3]) for row in key_rows}
    facts = Facts(instances=instances, start_keys=taken, leases=leases)
    plan = plan_batch(requests, facts, cipher)
    await _claim_start_keys(conn, plan)
    await _write_instances_and_events(conn, plan)
    await _write_rest(conn, plan, {row[0]: row[5] for row in rows})
    return plan.results


def _only_creations(requests: Sequence[AppendRequest], lost: set[str]) -> bool:
    """Whether the batch only creates instances, none of which lost a race before: then
    the lock has nothing to lock and is skipped (one round trip fewer for a lone start).
    An id that exists after all loses its insert, and the batch is planned again with it."""
    return not lost and all(r.create is not None for r in requests)


async def _claim_start_keys(conn: PoolConnectionProxy[asyncpg.Record], plan: Plan) -> None:
    if not plan.start_keys:
        return
    claims = sorted(plan.start_keys, key=lambda c: (c.tenant_id, c.idempotency_key or ""))
    inserted = await conn.fetch(
        sql.INSERT_START_KEYS,
        [c.tenant_id for c in claims],
        [c.idempotency_key for c in claims],
        [c.instance_id for c in claims],
        [c.request_digest for c in claims],
        [utc(c.created_at) for c in claims],
    )
    if len(inserted) != len(claims):
        raise _RaceLost


async def _write_instances_and_events(
    conn: PoolConnectionProxy[asyncpg.Record], plan: Plan
) -> None:
    if not (plan.created or plan.updated or plan.events):
        return
    updates = [
        # A record of the instances row type (see postgres_sql): only the columns the update
        # sets.
        (
            instance_id,
            None,
            None,
            None,
            str(u.status),
            _json(list(u.current_nodes)),
            last_seq,
            None,
            utc(u.updated_at),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
        for instance_id, (u, last_seq) in plan.updated.items()
    ]
    events = [
        (tenant, iid, seq, typ, data.decode(), utc(at))
        for tenant, iid, seq, typ, data, at in plan.events
    ]
    if not plan.created:
        await conn.execute(
            sql.UPDATE_INSTANCES_AND_EVENTS, updates, events, EVENTS_CHANNEL, _notifications(plan)
        )
        return
    created = [plan.created[iid] for iid in sorted(plan.created)]
    rows = await conn.fetch(
        sql.WRITE_INSTANCES_AND_EVENTS,
        [
            (
                c.instance_id,
                c.tenant_id,
                c.definition_name,
                c.definition_version,
                str(r.update.status),
                _json(list(r.update.current_nodes)),
                r.last_seq,
                utc(c.created_at),
                utc(r.update.updated_at),
                c.parent_instance_id,
                c.parent_node,
                c.idempotency_key,
                None if r.lease is None else r.lease.owner,
                None,
                None,
                None,
                None,
            )
            for r in created
            for c in (r.create,)
        ],
        [None if r.lease is None else r.lease.ttl for r in created],
        updates,
        events,
        EVENTS_CHANNEL,
        _notifications(plan),
        list(plan.created),
    )
    inserted = {row[0] for row in rows if row[0] is not None}
    if len(inserted) != len(created):
        raise _RaceLost(frozenset(plan.created).difference(inserted))


async def _write_rest(
    conn: PoolConnectionProxy[asyncpg.Record], plan: Plan, wake_ups: dict[str, datetime | None]
) -> None:
    await _write_timers(conn, plan, wake_ups)
    await _write_outbox(conn, plan)
    await write_audit(conn, plan.audit)


EVENTS_CHANNEL = "saga_events"
"""Carries ``instance_id:last_seq`` of the instances whose events a commit wrote: a wake-up
for the live streams and owners on other nodes (delivered at commit, lost while a listener is
away: its users also poll)."""
_NOTIFY_BYTES = 7000
"""PostgreSQL caps a payload just under 8,000 bytes."""


def _notifications(plan: Plan) -> list[str]:
    """``instance_id:last_seq`` of every instance the plan writes events to, in payloads that
    fit PostgreSQL's cap."""
    # An instance's events follow one another in the plan (a later request of the batch
    # continues where the earlier one ended), so its last row carries its highest sequence.
    last = {event[1]: event[2] for event in plan.events}
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for instance_id in sorted(last):
        entry = f"{instance_id}:{last[instance_id]}"
        if size + len(entry) + 1 > _NOTIFY_BYTES and current:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(entry)
        size += len(entry) + 1
    if current:
        chunks.append(",".join(current))
    return chunks


async def _write_timers(
    conn: PoolConnectionProxy[asyncpg.Record], plan: Plan, wake_ups: dict[str, datetime | None]
) -> None:
    """Only the wake-ups that change: most appends neither have nor set one, and a delete of
    a missing row still costs the server an index probe per instance."""
    upserts = []
    deletes = []
    for instance_id, (tenant_id, fire_at) in plan.timers.items():
        current = wake_ups.get(instance_id)
        if fire_at is None:
            if current is not None:
                deletes.append(instance_id)
        elif current is None or fire_at != current:
            upserts.append((instance_id, tenant_id, utc(fire_at)))
    if upserts:
        await conn.execute(sql.UPSERT_TIMERS, upserts)
    if deletes:
        await conn.execute(sql.DELETE_TIMERS, deletes)


async def _write_outbox(conn: PoolConnectionProxy[asyncpg.Record], plan: Plan) -> None:
    if not plan.outbox:
        return
    messages = [m for m, _ in plan.outbox]
    await conn.execute(
        sql.INSERT_OUTBOX,
        [m.tenant_id for m in messages],
        [m.instance_id for m in messages],
        [m.message_id for m in messages],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [m.body for m in messages],
        [_json(m.headers) for m in messages],
        [utc(at) for _, at in plan.outbox],
    )


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
