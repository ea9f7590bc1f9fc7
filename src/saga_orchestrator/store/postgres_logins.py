"""Whether a login can leave the role the store gives its sessions.

Row-level security binds a session's *current* role. A session may change that role with
``SET ROLE`` to any role its login is a member of, or with ``SET ROLE NONE`` to the login
itself, so the wall holds only as far as the login's own powers are those of its role. A login
escapes it if it is (or can become) a superuser or a role with ``BYPASSRLS``, if it can become
the tables' owner (who may lift the policies, and whom ``FORCE`` only binds through the roles
it holds), or, for a login meant for one of the store's two roles, if it can become the other:
``saga_cluster`` sees every tenant's rows, and ``saga_app`` writes them.

:func:`escapes` asks the server, once per pool, and says how in words for an error or a
warning. ``pg_has_role(..., 'MEMBER')`` is any membership, direct or not, whatever its
``INHERIT`` or ``SET`` option: the strictest reading, since PostgreSQL 15 lets a member
``SET ROLE`` regardless of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

LOGIN_ESCAPES: Final = """
SELECT session_user::text, array_remove(ARRAY[
    CASE WHEN EXISTS (SELECT FROM pg_roles AS r
                      WHERE r.rolsuper AND pg_has_role(session_user, r.oid, 'MEMBER'))
         THEN 'is a superuser (or can become one)' END,
    CASE WHEN EXISTS (SELECT FROM pg_roles AS r
                      WHERE r.rolbypassrls AND pg_has_role(session_user, r.oid, 'MEMBER'))
         THEN 'has BYPASSRLS (or can become a role that has it)' END,
    CASE WHEN EXISTS (SELECT FROM pg_class AS c
                      WHERE c.relrowsecurity
                        AND c.relnamespace = (SELECT relnamespace FROM pg_class
                                              WHERE oid = to_regclass('instances'))
                        AND pg_has_role(session_user, c.relowner, 'MEMBER'))
         THEN 'owns the tables (or can become their owner)' END,
    CASE WHEN pg_has_role(session_user, $1::text, 'MEMBER')
         THEN 'can SET ROLE ' || $1::text END
], NULL)"""
"""The session's login, and how it can leave row-level security (``$1``: the store's other
role); an empty array when it cannot."""


async def escapes(
    conn: PoolConnectionProxy[asyncpg.Record], other_role: str
) -> tuple[str, list[str]]:
    """The login of ``conn``'s session, and the ways it can leave its role (none: it cannot)."""
    row = await conn.fetchrow(LOGIN_ESCAPES, other_role)
    assert row is not None  # a SELECT without FROM returns one row
    return row[0], list(row[1])
