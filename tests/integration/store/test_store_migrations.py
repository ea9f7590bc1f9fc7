"""Contract: schema migrations, constraints and the append-only event log."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from saga_orchestrator.store import InstanceStatus, Store, open_store
from saga_orchestrator.store import postgres as postgres_store
from saga_orchestrator.store import sqlite as sqlite_store
from saga_orchestrator.store.codec import to_micros
from saga_orchestrator.store.migrator import (
    Dialect,
    Migration,
    latest_version,
    load_migrations,
    parse_migrations,
)

from .support import T0, TENANT, RawDatabase, create, update

TABLES = {
    "definitions", "instances", "events", "timers", "start_keys", "outbox", "participants",
    "audit_log", "audit_heads", "tenant_limits",
}  # fmt: skip
"""Tenant-owned tables (``shared_secrets`` is node-wide: keys every node of a cluster shares)."""
LATEST = 11
MIGRATIONS = [
    (1, "initial"),
    (2, "participants_outbox_claims"),
    (3, "audit_log"),
    (4, "cluster"),
    (5, "instance_leases"),
    (6, "tenant_limits"),
    (7, "retention"),
    (8, "row_level_security"),
    (9, "one_round_trip_batches"),
    (10, "one_round_trip_audited_batches"),
    (11, "outbox_bodies_at_rest"),
]


async def test_migrate_from_empty_database(empty_store_url: str) -> None:
    store = open_store(empty_store_url)
    try:
        assert await store.schema_version() == 0
        assert await store.migrate() == LATEST
        assert await store.schema_version() == LATEST
        async with RawDatabase(empty_store_url) as db:
            cluster = {"schema_migrations", "shared_secrets", "nodes", "leader_leases"}
            assert TABLES | cluster <= await db.tables()
            recorded = await db.fetch("SELECT version, name FROM schema_migrations")
        assert recorded == MIGRATIONS
    finally:
        await store.close()


async def test_second_migrate_is_a_no_op(empty_store_url: str) -> None:
    store = open_store(empty_store_url)
    try:
        await store.migrate()
        await store.append([create("i-1")])
        assert await store.migrate() == LATEST
        assert await store.schema_version() == latest_version("sqlite") == LATEST
        assert latest_version("postgres") == LATEST
        assert (await store.get_instance(TENANT, "i-1")) is not None
        async with RawDatabase(empty_store_url) as db:
            assert await db.fetch("SELECT version FROM schema_migrations") == [
                (version,) for version, _ in MIGRATIONS
            ]
    finally:
        await store.close()


async def test_concurrent_migrate_applies_each_version_once(empty_store_url: str) -> None:
    first, second = open_store(empty_store_url), open_store(empty_store_url)
    try:
        versions = await asyncio.gather(first.migrate(), second.migrate())
        assert list(versions) == [LATEST, LATEST]
        async with RawDatabase(empty_store_url) as db:
            assert await db.fetch("SELECT version FROM schema_migrations") == [
                (version,) for version, _ in MIGRATIONS
            ]
    finally:
        await first.close()
        await second.close()


async def test_status_check_mirrors_instance_status(store: Store, store_url: str) -> None:
    async with RawDatabase(store_url) as db:
        assert await db.status_check_values() == {status.value for status in InstanceStatus}
    # Every enum value is accepted through the store...
    for n, status in enumerate(InstanceStatus):
        [result] = await store.append([create(f"i-{n}", state=update(status=status))])
        assert result.last_seq == 1
        record = await store.get_instance(TENANT, f"i-{n}")
        assert record is not None
        assert record.status is status
    # ...and anything else is refused by the database itself.
    async with RawDatabase(store_url) as db:
        with pytest.raises((sqlite3.IntegrityError, asyncpg.CheckViolationError)):
            await db.execute("UPDATE instances SET status = 'bogus' WHERE instance_id = 'i-0'")


async def test_every_table_carries_a_tenant(store: Store, store_url: str) -> None:
    async with RawDatabase(store_url) as db:
        for table in TABLES:
            assert "tenant_id" in await db.not_null_columns(table), table


async def test_events_are_append_only(store: Store, store_url: str) -> None:
    await store.append([create("i-1")])
    async with RawDatabase(store_url) as db:
        for statement in (
            "UPDATE events SET type = 'Forged' WHERE instance_id = 'i-1'",
            "DELETE FROM events WHERE instance_id = 'i-1'",
        ):
            with pytest.raises(
                (sqlite3.IntegrityError, asyncpg.RestrictViolationError), match="append-only"
            ):
                await db.execute(statement)
    [stored] = await store.load_events(TENANT, "i-1")
    assert (stored.seq, stored.type) == (1, "SagaStarted")


def test_versions_may_skip_numbers_but_never_repeat() -> None:
    found = parse_migrations(
        [("0002_b.sql", "B"), ("0007_c.sql", "C"), ("0001_a.sql", "A"), ("README.md", "")]
    )
    assert [(m.version, m.name) for m in found] == [(1, "a"), (2, "b"), (7, "c")]
    with pytest.raises(RuntimeError, match="distinct versions"):
        parse_migrations([("0001_a.sql", ""), ("0001_b.sql", "")])
    with pytest.raises(RuntimeError, match="from 1 up"):
        parse_migrations([("0000_zero.sql", ""), ("0001_a.sql", "")])


async def test_many_processes_opening_a_new_sqlite_file_at_once_all_get_in(
    tmp_path: Path,
) -> None:
    """Each new connection switches the file to WAL; SQLite answers the losers of that race
    "database is locked" at once, without waiting: the store must wait and retry instead."""
    for round_ in range(10):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
        stores = [open_store(url) for _ in range(6)]
        try:
            versions = await asyncio.gather(*(store.migrate() for store in stores))
        finally:
            for store in stores:
                await store.close()
        assert versions == [LATEST] * 6


def _up_to(version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the stores ship the migrations up to ``version`` only (until ``monkeypatch.undo``)."""

    def shipped(dialect: Dialect) -> tuple[Migration, ...]:
        return tuple(m for m in load_migrations(dialect) if m.version <= version)

    monkeypatch.setattr(postgres_store, "load_migrations", shipped)
    monkeypatch.setattr(sqlite_store, "load_migrations", shipped)


@contextlib.asynccontextmanager
async def _owned_by_a_login_that_is_not_a_superuser(url: str) -> AsyncIterator[str]:
    """``url`` as a new login that owns the outbox table (as a production owner would,
    without bypassing row-level security); yields that login's URL."""
    role = f"saga_owner_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(
            f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}";'
            f'GRANT ALL ON schema_migrations TO "{role}";'
            f'ALTER TABLE outbox OWNER TO "{role}"'
        )
        parts = urlsplit(url)
        yield urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    finally:
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER; DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_version_11_erases_the_bodies_of_messages_published_before_it(
    empty_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _up_to(10, monkeypatch)
    store = open_store(empty_store_url)
    try:
        assert await store.migrate() == 10
    finally:
        await store.close()
    monkeypatch.undo()
    async with RawDatabase(empty_store_url) as db:
        when = T0 if db.dialect == "postgres" else to_micros(T0)
        for message_id, published_at in (("sent", when), ("waiting", None)):
            await db.execute(
                "INSERT INTO outbox (tenant_id, instance_id, message_id, exchange, routing_key,"
                " body, headers, created_at, published_at)"
                " VALUES (?, 'i-1', ?, '', 'q', ?, ?, ?, ?)",
                TENANT,
                message_id,
                b'{"card": "4242"}',
                '{"saga-step": "charge"}',
                when,
                published_at,
            )
    async with contextlib.AsyncExitStack() as stack:
        url = empty_store_url
        if not url.startswith("sqlite:"):
            url = await stack.enter_async_context(_owned_by_a_login_that_is_not_a_superuser(url))
        store = open_store(url)
        try:
            assert await store.migrate() == LATEST
        finally:
            await store.close()
    async with RawDatabase(empty_store_url) as db:
        rows = await db.fetch("SELECT message_id, body, sealed_with, headers FROM outbox")
    assert sorted((r[0], bytes(r[1]), r[2]) for r in rows) == [
        ("sent", b"", None),
        ("waiting", b'{"card": "4242"}', None),  # still to publish: the relay needs it
    ]
    assert all("charge" in str(r[3]) for r in rows)
