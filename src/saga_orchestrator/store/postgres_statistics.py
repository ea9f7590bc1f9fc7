"""Statistics for the tables a node fills fast, kept fresh by the store itself.

PostgreSQL may plan a prepared statement once for the whole session (a generic plan, after
five executions), and only new statistics on its tables (an ``ANALYZE``) make it plan again.
A generic plan made while a table was nearly empty therefore stays however large the table
grows. On a new database, the group commit's ``UPDATE instances ... FROM unnest($1)`` under
row-level security was planned, over a handful of rows, as a walk of the tenant's index per
batch instead of a primary-key probe per row; each batch then got slower as the table grew
(10-38 ms per batch at 60,000 rows). Autovacuum analyzes a new table only at its next round
(a minute by default), and a busy node writes tens of thousands of rows before that.

So the store analyzes its hot tables as they grow: every so many events it writes (the bulk
of its rows; see :class:`StatisticsKeeper`), it asks PostgreSQL which of them now take more
than twice the pages they had when last analyzed, and analyzes those, from a task of its own
so that no append waits. Doubling keeps this to a logarithmic number of ``ANALYZE`` runs,
each reading a bounded sample; autovacuum remains what keeps statistics current in the long
run.

``ANALYZE`` needs the table's owner, and the store's pools work as roles that are not (see
:mod:`saga_orchestrator.store.postgres`): the check runs as the URL's login, the schema's
owner. That session is opened only when a table has grown: the cheap check before it runs on
the store's chores pool. A login that does not own the tables stops the checks for good, and
leaves the statistics to autovacuum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

import asyncpg

from saga_orchestrator.errors import ConfigurationError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("saga_orchestrator.store")

HOT_TABLES: Final = ("instances", "events", "timers", "start_keys", "outbox", "audit_log")
"""The tables every group commit writes to (or may)."""

MIN_PAGES: Final = 4
"""A never-analyzed table counts as this big (32 KiB at PostgreSQL's default block size), so
it is first analyzed at twice that: by then a plan made over an empty table already costs."""

# The planner reads a table's current size at planning time, but a cached generic plan does
# not; pg_class.relpages is the size the last ANALYZE (or VACUUM) saw. The tables are picked
# by oid before any size is asked for: measuring every relation of pg_class took 50 ms.
GROWN_TABLES: Final = """
SELECT format('%I.%I', n.nspname, c.relname), pg_has_role(c.relowner, 'USAGE')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = ANY (ARRAY(SELECT to_regclass(name)::oid FROM unnest($1::text[]) AS name))
  AND pg_relation_size(c.oid)
      > 2 * greatest(c.relpages, $2::int)::bigint * current_setting('block_size')::bigint
ORDER BY 1"""


@dataclass(frozen=True, slots=True)
class Analysis:
    analyzed: list[str]
    not_owned: list[str]
    """Tables that doubled but that this session's role may not analyze."""


async def grown_tables(
    conn: Connection, tables: Sequence[str] = HOT_TABLES, min_pages: int = MIN_PAGES
) -> list[tuple[str, bool]]:
    """Those of ``tables`` that doubled since their last statistics, as quoted qualified
    names, each with whether this session's role may analyze it."""
    rows = await conn.fetch(GROWN_TABLES, list(tables), min_pages)
    return [(row[0], bool(row[1])) for row in rows]


async def analyze_grown(conn: Connection, tables: Sequence[str] = HOT_TABLES) -> Analysis:
    """Analyze those of ``tables`` that doubled and that this session may analyze."""
    grown = await grown_tables(conn, tables)
    analysis = Analysis(
        analyzed=[name for name, may in grown if may],
        not_owned=[name for name, may in grown if not may],
    )
    if analysis.analyzed:
        # The names come quoted from format('%I.%I'): nothing from outside reaches this text.
        await conn.execute(f"ANALYZE {', '.join(analysis.analyzed)}")
    return analysis


class StatisticsKeeper:
    """Runs ``check`` in the background as rows are written, never two at once; a failed
    check is logged and the next one tries again.

    A bad plan costs more the larger the table, and a new table grows fastest relative to its
    size at first, so checks start early and spread out as the store writes: the first after
    ``first_check_after`` rows, then each after a quarter of all the rows written so far, at
    most ``rows_between_checks`` apart."""

    def __init__(
        self,
        check: Callable[[], Awaitable[object]],
        *,
        rows_between_checks: int = 4096,
        first_check_after: int = 256,
    ) -> None:
        if rows_between_checks < 1 or first_check_after < 1:
            raise ConfigurationError("rows_between_statistics_checks must be positive")
        self._check = check
        self._every = rows_between_checks
        self._first = min(first_check_after, rows_between_checks)
        self._due = self._first
        self._written = 0
        self._total = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.checks = 0
        """Checks started so far (for tests and diagnostics)."""

    def wrote(self, rows: int) -> None:
        """Count ``rows`` written; start a check when enough have been since the last."""
        self._written += rows
        self._total += rows
        if self._written < self._due or self._task is not None or self._closed:
            return
        self._written = 0
        self._due = min(self._every, max(self._first, self._total // 4))
        self.checks += 1
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Start no more checks (the one running, if any, ends on its own)."""
        self._closed = True

    async def settled(self) -> None:
        """Return once no check is running (the one running now, if any, has ended)."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _run(self) -> None:
        try:
            await self._check()
        except Exception as error:  # statistics must never fail a write
            log.warning("refreshing the planner's statistics failed: %s", error)
        finally:
            self._task = None

    async def aclose(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
