"""Builders and raw database access for the store contract suite."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import asyncpg

from saga_orchestrator.store import (
    AppendRequest,
    AuditEntry,
    InstanceStatus,
    InstanceUpdate,
    NewInstance,
    OutboxMessage,
)
from saga_orchestrator.store import postgres_sql as sql

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Session = PoolConnectionProxy[asyncpg.Record]
    """A pooled ``saga_app`` session, as the store's own."""

T0 = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
"""A fixed instant with microseconds, so round trips are checked to the microsecond."""

TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"

Event = tuple[str, bytes]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(n: int, kind: str = "StepSucceeded") -> Event:
    return (kind, b'{"n": %d, "text": "caf\xc3\xa9"}' % n)


def audit_entry(
    target_id: str,
    *,
    tenant: str = TENANT,
    action: str = "instance.signal",
    target_type: str = "instance",
) -> AuditEntry:
    return AuditEntry(
        tenant_id=tenant,
        at=T0,
        actor="ada",
        action=action,
        target_type=target_type,
        target_id=target_id,
    )


def update(
    *,
    status: InstanceStatus = InstanceStatus.RUNNING,
    nodes: tuple[str, ...] = (),
    updated_at: datetime = T0,
    wake_at: datetime | None = None,
) -> InstanceUpdate:
    return InstanceUpdate(
        status=status, current_nodes=nodes, updated_at=updated_at, wake_at=wake_at
    )


def create(
    instance_id: str,
    *,
    tenant: str = TENANT,
    events: Sequence[Event] = (("SagaStarted", b'{"input": {"order": 1}}'),),
    key: str | None = None,
    digest: str | None = None,
    created_at: datetime = T0,
    definition: tuple[str, str] = ("order", "1.0.0"),
    state: InstanceUpdate | None = None,
    outbox: Sequence[OutboxMessage] = (),
    parent: tuple[str, str] | None = None,
) -> AppendRequest:
    """A request creating ``instance_id`` with its first events."""
    return AppendRequest(
        tenant_id=tenant,
        instance_id=instance_id,
        expected_seq=0,
        events=events,
        update=state or update(updated_at=created_at),
        create=NewInstance(
            tenant_id=tenant,
            instance_id=instance_id,
            definition_name=definition[0],
            definition_version=definition[1],
            created_at=created_at,
            idempotency_key=key,
            request_digest=digest,
            parent_instance_id=parent[0] if parent else None,
            parent_node=parent[1] if parent else None,
        ),
        outbox=outbox,
    )


def append(
    instance_id: str,
    expected_seq: int,
    events: Sequence[Event],
    *,
    tenant: str = TENANT,
    state: InstanceUpdate | None = None,
    outbox: Sequence[OutboxMessage] = (),
) -> AppendRequest:
    return AppendRequest(
        tenant_id=tenant,
        instance_id=instance_id,
        expected_seq=expected_seq,
        events=events,
        update=state or update(),
        outbox=outbox,
    )


def message(instance_id: str, message_id: str, *, tenant: str = TENANT) -> OutboxMessage:
    return OutboxMessage(
        tenant_id=tenant,
        instance_id=instance_id,
        message_id=message_id,
        exchange="saga.steps",
        routing_key=f"payments.{message_id}",
        body=b'{"amount": 10}',
        headers={"idempotency-key": message_id},
    )


class RawDatabase:
    """Direct SQL on a store's database, bypassing the store (``?`` placeholders)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite:") else "postgres"
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection[asyncpg.Record] | None = None

    async def __aenter__(self) -> Self:
        if self.dialect == "sqlite":
            self._sqlite = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        else:
            self._pg = await asyncpg.connect(self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return self._sqlite.execute(sql, args).fetchall()
        assert self._pg is not None
        return [tuple(row) for row in await self._pg.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        if self._sqlite is not None:
            with self._sqlite:
                self._sqlite.execute(sql, args)
            return
        assert self._pg is not None
        await self._pg.execute(_numbered(sql), *args)

    async def without_audit_triggers(self, statements: Sequence[str]) -> None:
        """Run ``statements`` as an attacker with the owner's rights would: past the
        append-only triggers (dropped on SQLite, disabled on PostgreSQL, in one transaction)."""
        if self._sqlite is not None:
            with self._sqlite:
                self._sqlite.execute("DROP TRIGGER audit_log_no_update")
                self._sqlite.execute("DROP TRIGGER audit_log_no_delete")
                for statement in statements:
                    self._sqlite.execute(statement)
            return
        assert self._pg is not None
        async with self._pg.transaction():
            await self._pg.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            for statement in statements:
                await self._pg.execute(statement)

    async def replace_event_data(self, instance_id: str, seq: int, data: str) -> None:
        """Past the append-only trigger, as an attacker with the owner's rights would."""
        statement = "UPDATE events SET data = ? WHERE instance_id = ? AND seq = ?"
        if self._sqlite is not None:
            with self._sqlite:
                self._sqlite.execute("DROP TRIGGER events_no_update")
                self._sqlite.execute(statement, (data, instance_id, seq))
            return
        assert self._pg is not None
        async with self._pg.transaction():
            await self._pg.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
            await self._pg.execute(_numbered(statement), data, instance_id, seq)

    async def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            rows = await self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = await self.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        return {row[0] for row in rows}

    async def not_null_columns(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            rows = await self.fetch(
                f"SELECT name, \"notnull\", pk FROM pragma_table_info('{table}')"
            )
            return {name for name, notnull, pk in rows if notnull or pk}
        rows = await self.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? AND is_nullable = 'NO'",
            table,
        )
        return {row[0] for row in rows}

    async def status_check_values(self) -> set[str]:
        """The literals the ``instances.status`` CHECK constraint allows."""
        if self.dialect == "sqlite":
            rows = await self.fetch("SELECT sql FROM sqlite_master WHERE name = 'instances'")
            match = re.search(r"CHECK \(\s*status IN \(([^)]*)\)", rows[0][0])
            assert match is not None
            text = match.group(1)
        else:
            rows = await self.fetch(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'instances_status_check'"
            )
            text = rows[0][0]
        return set(re.findall(r"'([^']*)'", text))


def _numbered(sql: str) -> str:
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


async def logged(queries: list[str]) -> list[str]:
    """The statements logged so far (asyncpg calls its loggers from the event loop)."""
    await asyncio.sleep(0)
    return queries


async def events_of(conn: Session, instance_id: str) -> list[int]:
    async with conn.transaction():
        await conn.execute(sql.SET_LOCAL_TENANTS, [TENANT, OTHER_TENANT])
        rows = await conn.fetch(
            "SELECT seq FROM events WHERE instance_id = $1 ORDER BY seq", instance_id
        )
    return [row[0] for row in rows]
