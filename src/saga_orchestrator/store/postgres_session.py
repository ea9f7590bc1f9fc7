"""Transactions that name their tenants as they begin.

Row-level security shows a ``saga_app`` session the rows of the tenants in ``saga.tenants``
(migration 0008). The store sets it for one transaction at a time (``set_config(..., true)``),
never for the session: it is gone at commit or rollback, so a pooled connection cannot carry
one user's tenants to the next, and a connection needs no reset between uses (the pool's
default reset cost every use a round trip of its own).

When every id is plain (letters, digits, ``_``, ``.``, ``-``: what a token's tenant claim must
be), the setting travels in the ``BEGIN``'s own round trip, as a literal that needs no quoting
at all; an id that would need quoting is passed as a parameter instead, in a round trip of its
own. Hand-written quoting is exactly what this avoids.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import asyncpg

from saga_orchestrator.store import postgres_sql as sql

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

_PLAIN_TENANT: Final = re.compile(r"[A-Za-z0-9_.-]+")
"""Ids a ``text[]`` literal inside a SQL string holds verbatim: no quote, backslash, comma,
brace, space or control character can occur, so no escaping is involved."""


@dataclass(frozen=True, slots=True)
class TenantScope:
    """How a transaction for some tenants begins."""

    begin: str
    """The simple query that opens the transaction (with the tenants, when they are plain)."""
    parameter: list[str] | None
    """Tenants still to set by a parameter after ``begin`` (None: ``begin`` set them)."""
    tenants: list[str]
    """Every tenant of the scope, for statements that set them themselves
    (``saga_update_batch`` and ``saga_write_batch``, migration 0009)."""


def tenant_scope(tenant_ids: Iterable[str]) -> TenantScope:
    tenants = sorted(set(tenant_ids))
    if all(_PLAIN_TENANT.fullmatch(tenant) for tenant in tenants):
        # Each element double-quoted, so that an id such as NULL stays a string.
        literal = "{" + ",".join(f'"{tenant}"' for tenant in tenants) + "}"
        begin = f"BEGIN; SELECT set_config('saga.tenants', '{literal}', true)"
        return TenantScope(begin, None, tenants)
    return TenantScope("BEGIN", tenants, tenants)


@asynccontextmanager
async def transaction(
    conn: PoolConnectionProxy[asyncpg.Record], scope: TenantScope
) -> AsyncIterator[None]:
    """One transaction that sees and writes the rows of the scope's tenants: committed if the
    body returns, rolled back if it raises."""
    await conn.execute(scope.begin)
    try:
        if scope.parameter is not None:
            await conn.execute(sql.SET_LOCAL_TENANTS, scope.parameter)
        yield
    except BaseException:
        # As asyncpg's own transactions do; a rollback that fails leaves the connection to
        # the pool, which rolls back again or discards it.
        if not conn.is_closed():
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


async def keep_session(_conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The tenants' pool's reset: nothing (asyncpg still rolls back a transaction left open);
    no session state of these connections outlives a transaction."""
