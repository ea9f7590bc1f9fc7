"""Shared fixtures: real databases, a fresh one per test.

PostgreSQL tests clone a database from a template migrated once per session (``CREATE DATABASE
... TEMPLATE``), which is much faster than migrating every test's database. The server comes
from ``SAGA_TEST_POSTGRES_URL``; when it is unreachable the tests are skipped, except on CI
(``CI=true``), where a missing database is a failure, not a reason to skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from saga_orchestrator.store import Store, open_store

POSTGRES_URL_ENV = "SAGA_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_T = TypeVar("_T")

STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run session-level setup on a private loop, leaving pytest-asyncio's loops alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def database_url(server_url: str, database: str) -> str:
    """``server_url`` pointing at another database of the same server."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _probe(url: str) -> str | None:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _create_template(server_url: str, name: str) -> None:
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    store = open_store(database_url(server_url, name))
    try:
        await store.migrate()
    finally:
        await store.close()


def _drop(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL server's URL, once known to be reachable (else skip, or fail on CI)."""
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    error = _run_sync(_probe(url))
    if error is not None:
        reason = f"PostgreSQL is unreachable at {POSTGRES_URL_ENV}={url!r} ({error})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def pg_template(postgres_server_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, cloned by :func:`pg_url`."""
    name = f"saga_test_template_{uuid.uuid4().hex[:12]}"
    _run_sync(_create_template(postgres_server_url, name))
    yield name
    _run_sync(_admin(postgres_server_url, _drop(name)))


async def _create_database(server_url: str, template: str) -> str:
    name = f"saga_test_{uuid.uuid4().hex[:16]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest_asyncio.fixture
async def pg_url(postgres_server_url: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for this test (dropped afterwards)."""
    name = await _create_database(postgres_server_url, pg_template)
    try:
        yield database_url(postgres_server_url, name)
    finally:
        await _admin(postgres_server_url, _drop(name))


@pytest_asyncio.fixture
async def pg_empty_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database without any schema (for migration tests)."""
    name = await _create_database(postgres_server_url, "template0")
    try:
        yield database_url(postgres_server_url, name)
    finally:
        await _admin(postgres_server_url, _drop(name))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test (created empty on first use)."""
    return f"sqlite:///{tmp_path / 'saga.db'}"


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each backend; PostgreSQL's is already migrated."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(params=STORE_BACKENDS)
def empty_store_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each backend, with no schema at all."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_empty_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store on a fresh database of each backend."""
    opened = open_store(store_url)
    try:
        await opened.migrate()
        yield opened
    finally:
        await opened.close()
