"""The fixtures of the store suite that need a database of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg
import pytest_asyncio

from saga_orchestrator.store import open_store

from .support import OTHER_TENANT, create

if TYPE_CHECKING:
    from .support import Session


@pytest_asyncio.fixture
async def app_session(pg_url: str) -> AsyncIterator[tuple[Session, list[str]]]:
    """Instances ``i-1``, ``i-2`` (and ``theirs`` of another tenant) at sequence 1, and a
    ``saga_app`` session whose statements are logged."""
    store = open_store(pg_url)
    try:
        await store.migrate()
        await store.append([create("i-1"), create("i-2"), create("theirs", tenant=OTHER_TENANT)])
    finally:
        await store.close()
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    conn = await pool.acquire()
    await conn.execute("SET ROLE saga_app")
    queries: list[str] = []

    def log(record: asyncpg.connection.LoggedQuery) -> None:
        # asyncpg learns a statement's types with queries of its own (and switches JIT off
        # around them): not the store's round trips.
        if "typeinfo_tree" not in record.query and "'jit'" not in record.query:
            queries.append(record.query)

    conn.add_query_logger(log)
    try:
        yield conn, queries
    finally:
        await pool.release(conn)
        await pool.close()
