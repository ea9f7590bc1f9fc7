"""PostgreSQL logins made for a test: roles belong to the whole server, so each gets a unique
name and is dropped after the test (with whatever it came to own in the test's database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

MakeLogin = Callable[[str], Awaitable[str]]
"""Creates a login with the given ``CREATE ROLE`` options; returns its URL to the database."""


def login_url(url: str, login: str) -> str:
    """``url`` with ``login`` (no password: the test server trusts every role)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port}"))


def login_of(url: str) -> str:
    name = urlsplit(url).username
    assert name is not None
    return name


async def as_admin(url: str, *statements: str) -> None:
    """Run ``statements`` as ``url``'s login, on a session of its own (closed after, so that it
    never shows among a store's sessions)."""
    admin = await asyncpg.connect(url)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def make_login(pg_url: str) -> AsyncIterator[MakeLogin]:
    made: list[str] = []

    async def make(options: str) -> str:
        name = f"saga_test_login_{uuid.uuid4().hex[:12]}"
        await as_admin(pg_url, f'CREATE ROLE "{name}" LOGIN {options}')
        made.append(name)
        return login_url(pg_url, name)

    try:
        yield make
    finally:
        for name in made:
            await as_admin(
                pg_url,
                # A test may have made it own a table of this database (dropped after this).
                f'REASSIGN OWNED BY "{name}" TO CURRENT_USER',
                f'DROP OWNED BY "{name}"',
                f'DROP ROLE "{name}"',
            )


@pytest_asyncio.fixture
async def own_logins(make_login: MakeLogin) -> tuple[str, str]:
    """The recipe of docs/security.md: a login for each of the store's roles, granted nothing
    else (``DATABASE_APP_URL``, ``DATABASE_CLUSTER_URL``)."""
    return await make_login("IN ROLE saga_app"), await make_login("IN ROLE saga_cluster")
