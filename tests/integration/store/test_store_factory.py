"""open_store, the public surface, connection settings and error translation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import saga_orchestrator.store as store_package
from saga_orchestrator.errors import ConfigurationError, StoreError, StoreUnavailable
from saga_orchestrator.store import (
    PostgresOptions,
    PostgresStore,
    SqliteOptions,
    SqliteStore,
    open_store,
)
from saga_orchestrator.store.migrator import latest_version

from .support import TENANT, create


def test_exported_members() -> None:
    assert sorted(store_package.__all__) == [
        "AppendRequest",
        "AppendResult",
        "AppendStatus",
        "AuditEntry",
        "AuditFilter",
        "AuditOutcome",
        "AuditRecord",
        "ClaimedInstance",
        "Claims",
        "DefinitionRecord",
        "DueTimer",
        "InstanceFilter",
        "InstancePage",
        "InstanceRecord",
        "InstanceRef",
        "InstanceStatus",
        "InstanceUpdate",
        "LeaderFence",
        "Leadership",
        "Lease",
        "NewInstance",
        "NodeRecord",
        "OutboxMessage",
        "OutboxRow",
        "ParticipantEntry",
        "PostgresOptions",
        "PostgresStore",
        "PutDefinitionOutcome",
        "QuarantinedInstance",
        "SqliteOptions",
        "SqliteStore",
        "Store",
        "StoredEvent",
        "TenantLimitsEntry",
        "open_store",
    ]
    for name in store_package.__all__:
        assert getattr(store_package, name) is not None


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///saga.db", SqliteStore),
        ("sqlite:////var/lib/saga/saga.db", SqliteStore),
        ("sqlite:///:memory:", SqliteStore),
        ("postgresql://saga@db:5432/saga", PostgresStore),
        ("postgres://saga@db/saga", PostgresStore),
    ],
)
async def test_open_store_picks_the_backend(url: str, kind: type) -> None:
    store = open_store(url)
    try:
        assert isinstance(store, kind)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:secret@db/saga", "unsupported database URL scheme 'mysql'"),
        ("saga.db", r"unsupported database URL scheme '\(none\)'"),
        ("sqlite://host/saga.db", "no host"),
        ("sqlite:///saga.db?journal=off", "unknown SQLite URL option 'journal'"),
        ("sqlite:///saga.db?synchronous=sometimes", "unknown SQLite synchronous mode"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(url)


@pytest.mark.parametrize(
    ("url", "logins", "message"),
    [
        (
            "sqlite:///saga.db",
            PostgresOptions(app_url="postgresql://tenants@db/saga"),
            "need a postgresql:// DATABASE_URL",
        ),
        (
            "postgresql://owner@db/saga",
            PostgresOptions(cluster_url="mysql://chores:s3cret@db/saga"),
            "^DATABASE_CLUSTER_URL must be a postgresql:// URL$",
        ),
    ],
)
def test_the_pools_own_logins_must_be_postgresql(
    url: str, logins: PostgresOptions, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(url, postgres=logins)


async def _pragmas(store: SqliteStore) -> tuple[object, ...]:
    def read(conn: sqlite3.Connection) -> tuple[object, ...]:
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names)

    return await store._run(read)


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    durable = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    relaxed = open_store(f"sqlite:///{tmp_path / 'b.db'}?synchronous=normal")
    configured = SqliteStore(str(tmp_path / "c.db"), SqliteOptions(busy_timeout_ms=250))
    try:
        assert isinstance(durable, SqliteStore)
        assert isinstance(relaxed, SqliteStore)
        assert await _pragmas(durable) == ("wal", 2, 1, 5000)
        assert await _pragmas(relaxed) == ("wal", 1, 1, 5000)
        assert await _pragmas(configured) == ("wal", 2, 1, 250)
    finally:
        for store in (durable, relaxed, configured):
            await store.close()


async def test_in_memory_sqlite_store_works() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        assert await store.migrate() == latest_version("sqlite")
        await store.append([create("i-1")])
        assert [e.seq for e in await store.load_events(TENANT, "i-1")] == [1]
    finally:
        await store.close()


async def test_unreachable_databases_raise_store_unavailable(tmp_path: Path) -> None:
    for url in (
        f"sqlite:///{tmp_path / 'missing-dir' / 'saga.db'}",
        "postgresql://postgres@127.0.0.1:1/saga",
    ):
        store = open_store(url)
        try:
            with pytest.raises(StoreUnavailable):
                await store.migrate()
        finally:
            await store.close()


async def test_a_closed_store_refuses_calls(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    await store.migrate()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.schema_version()
