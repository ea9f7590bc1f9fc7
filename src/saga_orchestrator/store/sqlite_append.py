"""SQLite group commit: the whole batch is one ``BEGIN IMMEDIATE`` transaction on the store's
thread. The write lock is taken first, so the facts read inside are final: no race to re-plan."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import orjson

from saga_orchestrator.store import sqlite_sql as sql
from saga_orchestrator.store.batch import (
    CreatedRow,
    Facts,
    Plan,
    batch_instance_ids,
    batch_start_keys,
    plan_batch,
)
from saga_orchestrator.store.codec import to_micros
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.protocol import AppendRequest, AppendResult
from saga_orchestrator.store.sqlite_audit import write_audit


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` takes the write lock up front, so reads inside see the latest data."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def append_batch(
    conn: sqlite3.Connection, requests: list[AppendRequest], cipher: EventCipher | None = None
) -> list[AppendResult]:
    ids = batch_instance_ids(requests)
    keys = batch_start_keys(requests)
    with write_transaction(conn):
        instances = _locked_facts(conn, ids)
        taken = {}
        if keys:
            rows = conn.execute(sql.TAKEN_START_KEYS, (orjson.dumps(keys).decode(),))
            taken = {(tenant, key): (iid, digest) for tenant, key, iid, digest in rows}
        plan = plan_batch(requests, Facts(instances=instances, start_keys=taken), cipher)
        _write_plan(conn, plan)
    return plan.results


def _locked_facts(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(tenant, last sequence) of each instance of the batch that exists."""
    if len(ids) == 1:
        rows = conn.execute(sql.LOCKED_FACT, (ids[0],)).fetchall()
    else:
        (facts,) = conn.execute(sql.LOCKED_FACTS, (orjson.dumps(ids).decode(),)).fetchone()
        rows = orjson.loads(facts)
    return {iid: (tenant, seq) for iid, tenant, seq in rows}


def _write_plan(conn: sqlite3.Connection, plan: Plan) -> None:
    if plan.start_keys:
        conn.executemany(
            sql.INSERT_START_KEY,
            [
                (
                    c.tenant_id,
                    c.idempotency_key,
                    c.instance_id,
                    c.request_digest,
                    to_micros(c.created_at),
                )
                for c in plan.start_keys
            ],
        )
    if plan.created:
        _bulk(conn, sql.INSERT_INSTANCES, [_created_row(row) for row in plan.created.values()])
    if plan.updated:
        _bulk(
            conn,
            sql.UPDATE_INSTANCES,
            [
                (iid, str(u.status), _nodes(u.current_nodes), to_micros(u.updated_at), last_seq)
                for iid, (u, last_seq) in plan.updated.items()
            ],
        )
    if plan.events:
        _bulk(
            conn,
            sql.INSERT_EVENTS,
            [
                (tenant, iid, seq, typ, data.decode(), to_micros(at))
                for tenant, iid, seq, typ, data, at in plan.events
            ],
        )
    _write_timers(conn, plan)
    write_audit(conn, plan.audit)
    if plan.outbox:
        conn.executemany(
            sql.INSERT_OUTBOX,
            [
                (
                    m.tenant_id,
                    m.instance_id,
                    m.message_id,
                    m.exchange,
                    m.routing_key,
                    body,
                    orjson.dumps(m.headers).decode(),
                    to_micros(at),
                    sealed_with,
                )
                for m, body, sealed_with, at in plan.outbox
            ],
        )


def _write_timers(conn: sqlite3.Connection, plan: Plan) -> None:
    upserts = [
        (iid, tenant, to_micros(fire_at))
        for iid, (tenant, fire_at) in plan.timers.items()
        if fire_at is not None
    ]
    deletes = [(iid,) for iid, (_, fire_at) in plan.timers.items() if fire_at is None]
    if upserts:
        _bulk(conn, sql.UPSERT_TIMERS, upserts)
    if deletes:
        _bulk(conn, sql.DELETE_TIMERS, deletes)


ROWS_BOUND_ONE_BY_ONE = 4
"""Up to this many rows a table's share of a batch is written row by row: see sqlite_sql."""


def _bulk(
    conn: sqlite3.Connection, statement: sql.BulkStatement, rows: Sequence[Sequence[object]]
) -> None:
    if len(rows) <= ROWS_BOUND_ONE_BY_ONE:
        conn.executemany(statement.row, rows)
    else:
        conn.execute(statement.bulk, (orjson.dumps(rows).decode(),))


def _created_row(row: CreatedRow) -> tuple[object, ...]:
    c, u = row.create, row.update
    return (
        c.instance_id,
        c.tenant_id,
        c.definition_name,
        c.definition_version,
        str(u.status),
        _nodes(u.current_nodes),
        row.last_seq,
        to_micros(c.created_at),
        to_micros(u.updated_at),
        c.parent_instance_id,
        c.parent_node,
        c.idempotency_key,
    )


def _nodes(nodes: tuple[str, ...]) -> str:
    return orjson.dumps(list(nodes)).decode()
