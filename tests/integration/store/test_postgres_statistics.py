"""The store analyzes the tables it fills, so that a plan made over an empty table does not
outlive it (see :mod:`saga_orchestrator.store.postgres_statistics`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.store import AppendStatus
from saga_orchestrator.store.postgres import APP_ROLE, PostgresOptions, PostgresStore
from saga_orchestrator.store.postgres_sql import (
    UPDATE_INSTANCES_AND_EVENTS,
    WRITE_INSTANCES_AND_EVENTS,
)
from saga_orchestrator.store.postgres_statistics import HOT_TABLES
from tests.integration.store.support import TENANT, create, event

pytestmark = pytest.mark.postgres

ROWS_BETWEEN_CHECKS = 500


@pytest_asyncio.fixture
async def quiet_database(pg_url: str) -> str:
    """A fresh database whose autovacuum never analyzes the hot tables: whatever analyzes
    them in a test is the store."""
    conn = await asyncpg.connect(pg_url)
    try:
        for table in HOT_TABLES:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    finally:
        await conn.close()
    return pg_url


@pytest_asyncio.fixture
async def store(quiet_database: str) -> AsyncIterator[PostgresStore]:
    options = PostgresOptions(rows_between_statistics_checks=ROWS_BETWEEN_CHECKS)
    opened = PostgresStore(quiet_database, options)
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture
async def app_session(quiet_database: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A session like the store's own: role ``saga_app``, working for :data:`TENANT`."""
    conn = await asyncpg.connect(quiet_database, server_settings={"role": APP_ROLE})
    try:
        await conn.execute("SELECT set_config('saga.tenants', $1, false)", f"{{{TENANT}}}")
        yield conn
    finally:
        await conn.close()


async def fill(store: PostgresStore, first: int, count: int) -> None:
    """Create instances ``first`` .. ``first + count - 1`` with three events each."""
    for start in range(first, first + count, 100):
        batch = [
            create(f"i{n:06d}", events=[event(1), event(2), event(3)])
            for n in range(start, min(start + 100, first + count))
        ]
        results = await store.append(batch)
        assert {r.status for r in results} == {AppendStatus.APPENDED}


async def analyses(url: str) -> dict[str, tuple[int, float]]:
    """Per hot table: how many times it was analyzed, and the rows its statistics count."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.relname, s.analyze_count, c.reltuples FROM pg_stat_user_tables AS s"
            " JOIN pg_class AS c ON c.oid = s.relid WHERE s.relname = ANY($1::text[])",
            list(HOT_TABLES),
        )
    finally:
        await conn.close()
    return {row[0]: (row[1], row[2]) for row in rows}


# The group commit's statements that update instances, with their parameters' types.
UPDATING_STATEMENTS = {
    "update-only batch": (
        UPDATE_INSTANCES_AND_EVENTS,
        "instances[], bigint[], events[], timers[], text, text[]",
    ),
    "batch with creations": (
        WRITE_INSTANCES_AND_EVENTS,
        "instances[], float8[], instances[], bigint[], events[], timers[], text, text[]",
    ),
}


async def update_plan(session: asyncpg.Connection[asyncpg.Record], parameters: int) -> str:
    """The plan this session runs the group commit's instance update with (a generic plan,
    the kind a pooled session keeps after five executions)."""
    nulls = ", ".join(["NULL"] * parameters)
    rows = await session.fetch(f"EXPLAIN EXECUTE batch_update({nulls})")
    return "\n".join(row[0] for row in rows)


async def test_the_store_analyzes_the_tables_it_filled_from_empty(
    store: PostgresStore, quiet_database: str
) -> None:
    before = await analyses(quiet_database)
    assert before["instances"] == (0, -1), "a fresh table, never analyzed"

    await fill(store, 0, 3_000)
    await store.statistics.settled()

    after = await analyses(quiet_database)
    for table in ("instances", "events"):
        count, rows = after[table]
        assert count >= 1, f"{table} was never analyzed"
        assert rows > 0
    # One check per 500 rows written at most: none starts while one runs.
    assert 1 <= store.statistics.checks <= 3_000 * 3 // ROWS_BETWEEN_CHECKS


async def test_a_table_is_analyzed_again_only_once_it_doubled(
    store: PostgresStore, quiet_database: str
) -> None:
    await fill(store, 0, 3_000)
    await store.statistics.settled()
    owner = await asyncpg.connect(quiet_database)
    try:
        await owner.execute("ANALYZE instances")  # statistics of exactly 3,000 rows
    finally:
        await owner.close()
    analyzed = (await analyses(quiet_database))["instances"][0]
    checks = store.statistics.checks

    # A tenth more rows: checks run, but the table has not doubled since its analysis.
    await fill(store, 3_000, 300)
    await store.statistics.settled()
    assert store.statistics.checks > checks
    assert (await analyses(quiet_database))["instances"][0] == analyzed

    # Twice the rows it had: analyzed again.
    await fill(store, 3_300, 3_600)
    await store.statistics.settled()
    assert (await analyses(quiet_database))["instances"][0] == analyzed + 1


@pytest.mark.parametrize("statement", UPDATING_STATEMENTS)
async def test_a_plan_made_over_a_few_rows_gives_way_to_the_primary_key(
    store: PostgresStore, app_session: asyncpg.Connection[asyncpg.Record], statement: str
) -> None:
    text, types = UPDATING_STATEMENTS[statement]
    parameters = types.count(",") + 1
    await fill(store, 0, 20)
    await app_session.execute(f"PREPARE batch_update({types}) AS {text}")
    await app_session.execute("SET plan_cache_mode = force_generic_plan")
    # Over 20 rows, the planner walks the tenant's rows and matches each batch row to them.
    planned_small = await update_plan(app_session, parameters)
    # (The statement's insert names the key as its conflict arbiter: only scans count.)
    assert "Scan using instances_pkey" not in planned_small
    assert "Scan on instances_pkey" not in planned_small

    await fill(store, 20, 3_000)
    await store.statistics.settled()

    # The analysis invalidated the session's cached plan: it now probes the primary key.
    assert "Index Scan using instances_pkey" in await update_plan(app_session, parameters)


@pytest_asyncio.fixture
async def guest_url(quiet_database: str) -> AsyncIterator[str]:
    """The database's URL with a login that may act as the store's roles but owns nothing."""
    role = f"saga_stats_guest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(quiet_database)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'GRANT saga_app, saga_cluster TO "{role}"')
        url = urlsplit(quiet_database)
        yield urlunsplit(url._replace(netloc=f"{role}@{url.hostname}:{url.port}"))
    finally:
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_a_login_that_owns_no_table_stops_checking(
    guest_url: str, quiet_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(guest_url, PostgresOptions(rows_between_statistics_checks=500))
    try:
        with caplog.at_level(logging.INFO, logger="saga_orchestrator.store"):
            await fill(store, 0, 3_000)
            await store.statistics.settled()
        checks = store.statistics.checks
        assert checks >= 1
        assert "does not own" in caplog.text

        await fill(store, 3_000, 3_000)
        await store.statistics.settled()
        assert store.statistics.checks == checks, "checks go on after the login proved powerless"
        assert (await analyses(quiet_database))["instances"][0] == 0
    finally:
        await store.close()
