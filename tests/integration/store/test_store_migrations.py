"""Contract: schema migrations, constraints and the append-only event log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from saga_orchestrator.store import InstanceStatus, Store, open_store
from saga_orchestrator.store.migrator import latest_version, parse_migrations

from .support import TENANT, RawDatabase, create, update

TABLES = {
    "definitions", "instances", "events", "timers", "start_keys", "outbox", "participants",
    "audit_log", "audit_heads", "tenant_limits",
}  # fmt: skip
"""Tenant-owned tables (``shared_secrets`` is node-wide: keys every node of a cluster shares)."""
LATEST = 10
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
