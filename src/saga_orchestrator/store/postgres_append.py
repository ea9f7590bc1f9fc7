"""PostgreSQL group commit: one transaction and a constant number of round trips per batch.

A batch without outbox messages or start keys (the appends of steps, most batches, and
starts made without an idempotency key) is planned from what its requests expect and written
in one round trip by ``saga_update_batch`` or, when it creates, ``saga_write_batch``
(migration 0009): each sets the tenants for its own implicit transaction and rolls all of it
back if an instance moved on or a creation lost its race; the batch then takes the path below
from its second step, its rows locked. A batch with audit records (every API call that changes
something) does the same through ``saga_update_audited_batch`` / ``saga_write_audited_batch``
(migration 0010) when this node knows the chain heads of its audited tenants
(:mod:`~saga_orchestrator.store.chain_heads`): the records are chained to those heads, and a
head moved meanwhile rolls the batch back into the path below from its first step. Every
other batch:

1. lock the chain heads of the tenants it audits (if any) and read the start keys it
   mentions (if it creates with any);
2. decide every request in Python (:func:`~saga_orchestrator.store.batch.plan_batch`) from
   the facts the requests themselves expect (:func:`~saga_orchestrator.store.batch.expected_facts`);
3. write the plan: the instances (created, and updated only where each still is what the plan
   expected), their events, their changed wake-ups, the notification and the audit records
   (their chains' heads locked first) in one statement, then the outbox's messages, if any.

An append that moves a saga on names the sequence it expects and, in a cluster, the lease it
holds; almost always the instance is just that, so the batch locks nothing up front. When the
statement finds an instance moved on (another writer, a take-over), the transaction is rolled
back and the batch planned again from its instance rows, locked in instance-id order
(``FOR UPDATE``), which gives every request its exact answer (a conflict, a lost lease).

Rows that do not exist yet cannot be locked, so two transactions may both plan to create the same
instance or claim the same start key. Those inserts use ``ON CONFLICT DO NOTHING RETURNING``:
the loser waits for the winner's commit, sees its row missing from RETURNING, rolls back and
plans again, and then finds the winner's row. No unique violation ever escapes.

Row-level security hides other tenants' instances from the lock, so a create whose
id another tenant already holds also loses its insert, and still finds nothing on the next
plan: such an id is remembered as taken by someone unseen, and the create conflicts (as
"missing", sequence 0) without learning anything about that instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg
import orjson

from saga_orchestrator.errors import StoreError
from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.batch import (
    CreatedRow,
    Facts,
    Plan,
    StartKey,
    batch_instance_ids,
    batch_start_keys,
    expected_facts,
    plan_batch,
)
from saga_orchestrator.store.chain_heads import ChainHeads, Head
from saga_orchestrator.store.codec import utc
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.postgres_audit import (
    EXTEND_CHAINS,
    chain_parameters,
    chain_rows,
    lock_heads,
)
from saga_orchestrator.store.postgres_session import TenantScope, transaction
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


class _MovedOn(Exception):
    """An instance was not what the plan expected (never escapes: planned again, locked)."""


class _HeadMoved(Exception):
    """An audit chain head was not the one this node knew (never escapes: written again
    after locking the heads)."""


async def append_batch(
    conn: PoolConnectionProxy[asyncpg.Record],
    scope: TenantScope,
    requests: Sequence[AppendRequest],
    cipher: EventCipher | None = None,
    known_heads: ChainHeads | None = None,
) -> list[AppendResult]:
    """Run the batch: first from the facts the requests expect (in one round trip when it
    can), then, after a lost creation race, an instance that moved on or a deadlock, from the
    locked rows. ``known_heads`` holds the audit chain heads this node last wrote or read."""
    audited = {r.audit.tenant_id for r in requests if r.audit is not None}
    lost: set[str] = set()
    locked = False
    heads = _one_round_trip_heads(requests, audited, known_heads)
    if heads is not None:
        try:
            results, moved_to = await _write_in_one_round_trip(conn, scope, requests, cipher, heads)
        except _HeadMoved:
            # Only a chain head was stale: its lock and a plan from the expectations again.
            assert known_heads is not None  # the heads came from it
            known_heads.missed(audited)
        except (_MovedOn, asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            # A creation that lost its race lands here too: the locked plan finds the winner
            # (or, for an id another tenant holds, loses the insert again and learns it).
            locked = True
        else:
            if known_heads is not None:
                known_heads.confirmed(moved_to)
            return results
    for _ in range(_ATTEMPTS):
        try:
            async with transaction(conn, scope):
                results, moved_to = await _append_once(
                    conn, requests, cipher, lost, audited, locked=locked
                )
        except _RaceLost as race:
            lost |= race.instance_ids
        except (_MovedOn, asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            pass
        else:
            if known_heads is not None:
                known_heads.learned(moved_to)
            return results
        locked = True
    raise StoreError(f"append gave up after {_ATTEMPTS} collisions with concurrent writers")


async def _append_once(
    conn: PoolConnectionProxy[asyncpg.Record],
    requests: Sequence[AppendRequest],
    cipher: EventCipher | None,
    lost: set[str],
    audited: set[str],
    *,
    locked: bool,
) -> tuple[list[AppendResult], dict[str, Head]]:
    """The results, and the audit chain heads the batch leaves."""
    # The audit chains' heads first, the instance rows after, in every attempt: one order.
    heads = await lock_heads(conn, audited) if audited else {}
    keys = batch_start_keys(requests)
    taken = {}
    if keys:
        tenants, names = [k[0] for k in keys], [k[1] for k in keys]
        key_rows = await conn.fetch(sql.TAKEN_START_KEYS, tenants, names)
        taken = {(row[0], row[1]): (row[2], row[3]) for row in key_rows}
    if locked:
        facts = await _locked_facts(conn, requests, taken, lost)
    else:
        facts = expected_facts(requests, taken)
    plan = plan_batch(requests, facts, cipher)
    if not locked and not facts.instances.keys() <= plan.updated.keys():
        # Some expected instance is not written, so nothing would confirm what the plan
        # answered for it: only the locked rows can.
        raise _MovedOn
    await _claim_start_keys(conn, plan)
    audit: list[list[object]] = []
    moved_to: dict[str, Head] = {}
    if plan.audit:
        records, audit = chain_parameters(plan.audit, heads)
        moved_to = {r.entry.tenant_id: (r.seq, r.hash) for r in records}
    await _write_instances_and_events(conn, plan, facts, audit)
    await _write_outbox(conn, plan)
    return plan.results, moved_to


def _one_round_trip_heads(
    requests: Sequence[AppendRequest], audited: set[str], known_heads: ChainHeads | None
) -> dict[str, Head] | None:
    """The chain heads to write the batch from in one round trip (none when nothing is
    audited), or None when it needs the locked path: a start key or a chain head to read
    first, or an outbox message to write beside it."""
    if any(r.outbox or (r.create is not None and r.create.idempotency_key) for r in requests):
        return None
    if not audited:
        return {}
    return None if known_heads is None else known_heads.known(audited)


async def _write_in_one_round_trip(
    conn: PoolConnectionProxy[asyncpg.Record],
    scope: TenantScope,
    requests: Sequence[AppendRequest],
    cipher: EventCipher | None,
    heads: dict[str, Head],
) -> tuple[list[AppendResult], dict[str, Head]]:
    """The results, and the audit chain heads the batch leaves."""
    facts = expected_facts(requests, {})
    plan = plan_batch(requests, facts, cipher)
    if not facts.instances.keys() <= plan.updated.keys():
        raise _MovedOn  # as in _append_once: only the locked rows can confirm the plan
    written = _written(plan, facts)
    chained = chain_rows(plan.audit, heads) if plan.audit else None
    audit = () if chained is None else (chained.records, chained.was, chained.moved_to)
    if plan.created:
        statement = sql.WRITE_AUDITED_BATCH if audit else sql.WRITE_BATCH
        parameters = (*_creations(plan), *written, scope.tenants, *audit)
    else:
        statement = sql.UPDATE_AUDITED_BATCH if audit else sql.UPDATE_BATCH
        parameters = (*written, scope.tenants, *audit)
    try:
        await conn.fetch(statement, *parameters)
    except asyncpg.PostgresError as error:
        if error.sqlstate == sql.BATCH_PLAN_FAILED:
            raise _MovedOn from None
        if error.sqlstate == sql.AUDIT_HEAD_MOVED:
            raise _HeadMoved from None
        raise
    return plan.results, {} if chained is None else chained.heads


async def _locked_facts(
    conn: PoolConnectionProxy[asyncpg.Record],
    requests: Sequence[AppendRequest],
    taken: dict[StartKey, tuple[str, str | None]],
    lost: set[str],
) -> Facts:
    rows = await conn.fetch(sql.LOCK_INSTANCES, batch_instance_ids(requests))
    instances = {row[0]: (row[1], row[2]) for row in rows}
    for instance_id in lost.difference(instances):
        instances[instance_id] = (_UNSEEN_TENANT, 0)
    leases = {row[0]: (row[3], row[4]) for row in rows}
    return Facts(instances=instances, start_keys=taken, leases=leases)


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
    conn: PoolConnectionProxy[asyncpg.Record], plan: Plan, facts: Facts, audit: list[list[object]]
) -> None:
    """The plan's instances, events, wake-ups, notification and (``audit``: the parameters of
    :func:`.postgres_audit.extend_chains`) audit records, in one statement."""
    if not (plan.created or plan.updated or plan.events):
        if audit:
            await conn.execute(EXTEND_CHAINS, *audit)
        return
    written = _written(plan, facts)
    if plan.created:
        rows = await conn.fetch(
            sql.WRITE_INSTANCES_AND_EVENTS_AUDITED if audit else sql.WRITE_INSTANCES_AND_EVENTS,
            *_creations(plan),
            *written,
            *audit,
        )
    else:
        rows = await conn.fetch(
            sql.UPDATE_INSTANCES_AND_EVENTS_AUDITED if audit else sql.UPDATE_INSTANCES_AND_EVENTS,
            *written,
            *audit,
        )
    inserted = {row[0] for row in rows if row[1]}
    if len(inserted) != len(plan.created):
        raise _RaceLost(frozenset(plan.created).difference(inserted))
    updated = sum(row[1] is False for row in rows)
    if updated != len(plan.updated):
        raise _MovedOn


def _written(plan: Plan, facts: Facts) -> tuple[object, ...]:
    """The parameters the update statements share: the updated instances' records and the
    sequences they are expected at, the events, the wake-ups, the channel and the payloads of
    the notification."""
    expected_seqs = []
    updates = []
    # In instance-id order, as the rows are locked (the join follows the array's order).
    for instance_id, (u, last_seq) in sorted(plan.updated.items()):
        tenant_id, expected_seq = facts.instances[instance_id]
        owner, epoch = facts.leases.get(instance_id, (None, None))
        expected_seqs.append(expected_seq)
        # A record of the instances row type (see postgres_sql): the columns the update sets,
        # its tenant, and in owner_id and lease_epoch the lease the plan relied on.
        updates.append(
            (
                instance_id,
                tenant_id,
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
                owner,
                epoch,
                None,
                None,
                None,
            )
        )
    events = [
        (tenant, iid, seq, typ, data.decode(), utc(at))
        for tenant, iid, seq, typ, data, at in plan.events
    ]
    timers = [
        (instance_id, tenant_id, None if fire_at is None else utc(fire_at))
        for instance_id, (tenant_id, fire_at) in plan.timers.items()
    ]
    return (updates, expected_seqs, events, timers, EVENTS_CHANNEL, _notifications(plan))


def _creations(plan: Plan) -> tuple[list[tuple[object, ...]], list[float | None]]:
    """The parameters a statement that creates instances starts with: their records (in id
    order) and their leases' time to live."""
    created = [plan.created[iid] for iid in sorted(plan.created)]
    return (
        [_created_record(r) for r in created],
        [None if r.lease is None else r.lease.ttl for r in created],
    )


def _created_record(row: CreatedRow) -> tuple[object, ...]:
    """A record of the instances row type (see postgres_sql) for a created instance."""
    create, update = row.create, row.update
    return (
        create.instance_id,
        create.tenant_id,
        create.definition_name,
        create.definition_version,
        str(update.status),
        _json(list(update.current_nodes)),
        row.last_seq,
        utc(create.created_at),
        utc(update.updated_at),
        create.parent_instance_id,
        create.parent_node,
        create.idempotency_key,
        None if row.lease is None else row.lease.owner,
        None,
        None,
        None,
        None,
    )


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


async def _write_outbox(conn: PoolConnectionProxy[asyncpg.Record], plan: Plan) -> None:
    if not plan.outbox:
        return
    messages = [m for m, _, _, _ in plan.outbox]
    await conn.execute(
        sql.INSERT_OUTBOX,
        [m.tenant_id for m in messages],
        [m.instance_id for m in messages],
        [m.message_id for m in messages],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [body for _, body, _, _ in plan.outbox],
        [_json(m.headers) for m in messages],
        [utc(at) for _, _, _, at in plan.outbox],
        [sealed_with for _, _, sealed_with, _ in plan.outbox],
    )


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
