"""The embedded store: SQLite through the stdlib ``sqlite3`` module.

One dedicated thread owns the connection, and each public call runs its whole transaction (a
whole group-commit batch included) as a single hop to that thread. aiosqlite is deliberately not
used: it hops threads once per statement, which would multiply a batch's overhead by its number
of statements. WAL mode with ``synchronous=FULL`` makes an acknowledged write survive power loss;
group commit amortizes that fsync over every request of a batch.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson

from saga_orchestrator.errors import ConfigurationError, SagaError, StoreError, StoreUnavailable
from saga_orchestrator.store import sqlite_audit as audit
from saga_orchestrator.store import sqlite_cluster as cluster
from saga_orchestrator.store import sqlite_extras as extras
from saga_orchestrator.store import sqlite_retention as retention
from saga_orchestrator.store import sqlite_sql as sql
from saga_orchestrator.store.batch import validate
from saga_orchestrator.store.codec import (
    check_page_size,
    decode_cursor,
    from_micros,
    semver_columns,
    semver_key,
    to_micros,
)
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.listing import listing_where, make_page
from saga_orchestrator.store.migrator import load_migrations, split_sqlite_script
from saga_orchestrator.store.protocol import (
    AppendRequest,
    AppendResult,
    AuditEntry,
    AuditFilter,
    AuditRecord,
    ClaimedInstance,
    Claims,
    DefinitionRecord,
    DueTimer,
    InstanceFilter,
    InstancePage,
    InstanceRecord,
    InstanceRef,
    InstanceStatus,
    LeaderFence,
    Leadership,
    NodeRecord,
    OutboxRow,
    ParticipantEntry,
    PutDefinitionOutcome,
    QuarantinedInstance,
    StoredEvent,
    TenantLimitsEntry,
)
from saga_orchestrator.store.sqlite_append import append_batch, write_transaction
from saga_orchestrator.store.sqlite_audit import write_audit
from saga_orchestrator.store.sqlite_thread import StoreThread

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
Row = tuple[Any, ...]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteOptions:
    synchronous: Synchronous = "FULL"
    """``FULL`` (default): a write is durable once acknowledged, even across power loss.
    ``NORMAL`` in WAL mode stays consistent but may lose the last commits on power loss."""
    busy_timeout_ms: int = 5000
    """How long a writer waits for another process holding the write lock before failing."""
    cache_size_kib: int = 65536
    """Page cache of the connection: indexes that fit in it keep batch writes off the disk."""


class SqliteStore:
    """The :class:`~saga_orchestrator.store.protocol.Store` on one SQLite database file."""

    def __init__(
        self, path: str, options: SqliteOptions | None = None, cipher: EventCipher | None = None
    ) -> None:
        self._path = path
        self._cipher = cipher
        self._options = options or SqliteOptions()
        if self._options.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(
                f"unknown SQLite synchronous mode {self._options.synchronous!r}"
            )
        self._thread = StoreThread("saga-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise StoreError("the store is closed")
        return await self._thread.run(self._call, fn, *args)

    def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Runs on the store's thread: open lazily, then translate driver errors once."""
        try:
            if self._conn is None:
                self._conn = _connect(self._path, self._options)
            return fn(self._conn, *args)
        except SagaError:
            raise
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._thread.stop(self._close_connection)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- cluster (one node per file) --
    async def heartbeat_node(self, node: NodeRecord) -> None:
        await self._run(cluster.heartbeat_node, node)

    async def list_nodes(self) -> list[NodeRecord]:
        return await self._run(cluster.list_nodes)

    async def remove_node(self, node_id: str) -> None:
        await self._run(cluster.remove_node, node_id)

    async def reap_nodes(self, silent_for: float) -> list[str]:
        return await self._run(cluster.reap_nodes, silent_for)

    async def acquire_leadership(self, name: str, holder: str, ttl: float) -> Leadership:
        return await self._run(cluster.acquire_leadership, name, holder, ttl)

    async def release_leadership(self, name: str, holder: str) -> None:
        await self._run(cluster.release_leadership, name, holder)

    def watch(
        self,
        on_instances: Callable[[list[tuple[str, int]]], None],
        on_claimable: Callable[[], None] | None = None,
    ) -> None:
        """One node per SQLite file: the engine's own bus sees every append."""
        return

    async def purge_terminal(self, before: datetime, limit: int) -> int:
        return await self._run(retention.purge_terminal, before, limit)

    # -- instance leases: one node per file owns everything, so there is nothing to lease --
    async def claim_instances(
        self, owner: str, ttl: float, limit: int, max_takeovers: int
    ) -> Claims:
        raise _NO_LEASES

    async def claim_instance(
        self, owner: str, ttl: float, tenant_id: str, instance_id: str
    ) -> int | None:
        raise _NO_LEASES

    async def reclaim_own(self, owner: str, ttl: float) -> list[ClaimedInstance]:
        raise _NO_LEASES

    async def renew_leases(
        self, owner: str, ttl: float, leases: Sequence[tuple[str, int]]
    ) -> dict[str, int]:
        raise _NO_LEASES

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        raise _NO_LEASES

    async def list_quarantined(self, tenant_id: str) -> list[QuarantinedInstance]:
        return []  # nothing is claimed, so nothing is ever quarantined

    async def release_quarantine(
        self, tenant_id: str, instance_id: str, audit: AuditEntry | None = None
    ) -> bool:
        return False

    # -- schema --
    async def migrate(self) -> int:
        return await self._run(_migrate)

    async def schema_version(self) -> int:
        return await self._run(_schema_version)

    # -- definitions --
    async def put_definition(
        self,
        *,
        tenant_id: str,
        name: str,
        version: str,
        body: bytes,
        digest: str,
        audit: AuditEntry | None = None,
    ) -> PutDefinitionOutcome:
        major, minor, patch, prerelease = semver_columns(version)
        row = (tenant_id, name, version, major, minor, patch, prerelease, body, digest)
        return await self._run(_put_definition, row, to_micros(datetime.now(UTC)), audit)

    async def get_definition(
        self, tenant_id: str, name: str, version: str
    ) -> DefinitionRecord | None:
        rows = await self._run(_fetch, sql.GET_DEFINITION, (tenant_id, name, version))
        return _definition(rows[0]) if rows else None

    async def list_definition_versions(self, tenant_id: str, name: str) -> list[DefinitionRecord]:
        rows = await self._run(_fetch, sql.LIST_DEFINITION_VERSIONS, (tenant_id, name))
        return sorted(map(_definition, rows), key=lambda d: semver_key(d.version))

    async def list_definition_names(self, tenant_id: str, prefix: str = "") -> list[str]:
        rows = await self._run(_fetch, sql.LIST_DEFINITION_NAMES, (tenant_id, len(prefix), prefix))
        return [row[0] for row in rows]

    async def set_definition_deprecated(
        self,
        tenant_id: str,
        name: str,
        version: str,
        deprecated: bool,
        audit: AuditEntry | None = None,
    ) -> bool:
        params = (int(deprecated), tenant_id, name, version)
        return await self._run(_write_audited, sql.SET_DEFINITION_DEPRECATED, params, audit) > 0

    # -- instances and events --
    async def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if any(request.lease is not None for request in requests):
            raise _NO_LEASES
        if not requests:
            return []
        validate(requests)
        return await self._run(append_batch, list(requests), self._cipher)

    async def load_events(
        self, tenant_id: str, instance_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        params = (tenant_id, instance_id, after_seq, -1 if limit is None else limit)
        rows = await self._run(_fetch, sql.LOAD_EVENTS, params)
        cipher = self._cipher
        return [
            StoredEvent(
                instance_id=iid,
                seq=seq,
                type=typ,
                data=data.encode()
                if cipher is None
                else cipher.open(tenant_id, instance_id, seq, data.encode()),
                recorded_at=from_micros(at),
            )
            for iid, seq, typ, data, at in rows
        ]

    async def get_instance(self, tenant_id: str, instance_id: str) -> InstanceRecord | None:
        rows = await self._run(_fetch, sql.GET_INSTANCE, (tenant_id, instance_id))
        return _instance(rows[0]) if rows else None

    async def find_start(
        self, tenant_id: str, idempotency_key: str
    ) -> tuple[str, str | None] | None:
        rows = await self._run(_fetch, sql.FIND_START, (tenant_id, idempotency_key))
        return (rows[0][0], rows[0][1]) if rows else None

    async def list_instances(
        self,
        tenant_id: str,
        filters: InstanceFilter,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> InstancePage:
        check_page_size(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        where, params = listing_where(tenant_id, filters, after, to_micros)
        query = sql.LIST_INSTANCES.format(where=where)
        rows = await self._run(_fetch, query, (*params, limit + 1))
        return make_page([_instance(row) for row in rows], limit)

    async def list_unfinished(self) -> list[InstanceRef]:
        rows = await self._run(_fetch, sql.LIST_UNFINISHED, ())
        return [InstanceRef(tenant_id=tenant, instance_id=iid) for tenant, iid in rows]

    async def due_timers(self, now: datetime, limit: int) -> list[DueTimer]:
        rows = await self._run(_fetch, sql.DUE_TIMERS, (to_micros(now), limit))
        return [
            DueTimer(tenant_id=tenant, instance_id=iid, fire_at=from_micros(at))
            for tenant, iid, at in rows
        ]

    async def next_timer_at(self) -> datetime | None:
        rows = await self._run(_fetch, sql.NEXT_TIMER_AT, ())
        value = rows[0][0]
        return None if value is None else from_micros(value)

    # -- outbox --
    async def claim_outbox(
        self, limit: int, lease_seconds: float, leader: LeaderFence | None = None
    ) -> list[OutboxRow]:
        # One node per file: it is always the leader, so there is no one to fence off.
        return await self._run(extras.claim_outbox, limit, lease_seconds, self._cipher)

    async def mark_outbox_published(self, ids: Sequence[int]) -> None:
        if ids:
            await self._run(extras.mark_outbox_published, list(ids))

    async def release_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            await self._run(extras.release_outbox, list(ids))

    async def outbox_backlog(self) -> int:
        return await self._run(extras.outbox_backlog)

    # -- participant services --
    async def put_participant(
        self,
        tenant_id: str,
        name: str,
        config: dict[str, Any],
        audit: AuditEntry | None = None,
    ) -> int:
        return await self._run(extras.put_participant, tenant_id, name, config, audit)

    async def get_participant(self, tenant_id: str, name: str) -> ParticipantEntry | None:
        return await self._run(extras.get_participant, tenant_id, name)

    async def list_participants(self, tenant_id: str) -> list[ParticipantEntry]:
        return await self._run(extras.list_participants, tenant_id)

    async def delete_participant(
        self, tenant_id: str, name: str, audit: AuditEntry | None = None
    ) -> bool:
        return await self._run(extras.delete_participant, tenant_id, name, audit)

    # -- tenant limit overrides --
    async def get_tenant_limits(self, tenant_id: str) -> TenantLimitsEntry | None:
        return await self._run(extras.get_tenant_limits, tenant_id)

    async def put_tenant_limits(
        self, tenant_id: str, config: dict[str, Any], audit: AuditEntry | None = None
    ) -> int:
        return await self._run(extras.put_tenant_limits, tenant_id, config, audit)

    async def delete_tenant_limits(self, tenant_id: str, audit: AuditEntry | None = None) -> bool:
        return await self._run(extras.delete_tenant_limits, tenant_id, audit)

    async def shared_secret(self, name: str, candidate: bytes) -> bytes:
        return await self._run(extras.shared_secret, name, candidate)

    # -- the audit log --
    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        return await self._run(extras.append_audit, list(entries)) if entries else []

    async def list_audit(
        self, tenant_id: str, filters: AuditFilter, *, limit: int = 50, after_seq: int = 0
    ) -> list[AuditRecord]:
        check_page_size(limit)
        return await self._run(audit.list_audit, tenant_id, filters, limit, after_seq)

    async def audit_tenants(self) -> list[str]:
        return await self._run(audit.audit_tenants)

    async def audit_chain(self, tenant_id: str) -> tuple[list[AuditRecord], tuple[int, str] | None]:
        return await self._run(audit.audit_chain, tenant_id)


# -- everything below runs on the store's thread --


_NO_LEASES = ConfigurationError(
    "instance leases need PostgreSQL: an embedded SQLite store serves a single node"
)

MIN_SQLITE = (3, 38, 0)
"""JSON ``->>`` (bulk writes) needs SQLite 3.38; UPDATE ... FROM needs 3.33."""


def _connect(path: str, options: SqliteOptions) -> sqlite3.Connection:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigurationError(
            f"SQLite {sqlite3.sqlite_version} is too old: the embedded store needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (Python 3.11+ builds bundle it)"
        )
    # isolation_level=None: the module never opens transactions behind our back.
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(options.busy_timeout_ms)}")
        _enable_wal(conn, options.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA synchronous = {options.synchronous}")
        conn.execute(f"PRAGMA cache_size = {-int(options.cache_size_kib)}")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL, retrying for up to ``timeout`` seconds.

    Two connections opening a new file at once both change its journal mode; SQLite answers
    the loser "database is locked" at once, without its busy handler (which would wait), so
    the wait is done here.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # on the store's own thread, never the event loop's
        pause = min(pause * 2, 0.1)


def _translate(exc: sqlite3.Error) -> StoreError:
    message = str(exc)
    unavailable = ("unable to open", "database is locked", "disk i/o", "readonly", "is full")
    if isinstance(exc, sqlite3.OperationalError) and any(
        part in message.lower() for part in unavailable
    ):
        return StoreUnavailable(f"SQLite unavailable: {message}")
    return StoreError(f"SQLite error: {message}")


def _fetch(conn: sqlite3.Connection, query: str, params: Sequence[object]) -> list[Row]:
    return conn.execute(query, params).fetchall()


def _write(conn: sqlite3.Connection, query: str, params: Sequence[object]) -> int:
    return conn.execute(query, params).rowcount


def _migrate(conn: sqlite3.Connection) -> int:
    migrations = load_migrations("sqlite")
    with write_transaction(conn):
        conn.execute(sql.CREATE_SCHEMA_MIGRATIONS)
        applied = {row[0] for row in conn.execute(sql.APPLIED_VERSIONS)}
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in split_sqlite_script(migration.sql):
                conn.execute(statement)
            now = to_micros(datetime.now(UTC))
            conn.execute(sql.RECORD_MIGRATION, (migration.version, migration.name, now))
    return _schema_version(conn)


def _schema_version(conn: sqlite3.Connection) -> int:
    if conn.execute(sql.HAS_SCHEMA_MIGRATIONS).fetchone() is None:
        return 0
    row = conn.execute(sql.SCHEMA_VERSION).fetchone()
    return int(row[0]) if row is not None else 0


def _write_audited(
    conn: sqlite3.Connection, query: str, params: Sequence[object], audit: AuditEntry | None
) -> int:
    with write_transaction(conn):
        changed = conn.execute(query, params).rowcount
        if changed and audit is not None:
            write_audit(conn, [audit])
    return changed


def _put_definition(
    conn: sqlite3.Connection, row: tuple[object, ...], created_at: int, audit: AuditEntry | None
) -> PutDefinitionOutcome:
    tenant_id, name, version, digest = row[0], row[1], row[2], row[8]
    with write_transaction(conn):
        if conn.execute(sql.INSERT_DEFINITION, (*row, created_at)).rowcount == 1:
            if audit is not None:
                write_audit(conn, [audit])
            return PutDefinitionOutcome.CREATED
        existing = conn.execute(sql.DEFINITION_DIGEST, (tenant_id, name, version)).fetchone()
    if existing is not None and existing[0] == digest:
        return PutDefinitionOutcome.IDENTICAL
    return PutDefinitionOutcome.CONFLICT


def _definition(row: Row) -> DefinitionRecord:
    tenant_id, name, version, body, digest, deprecated, created_at = row
    return DefinitionRecord(
        tenant_id=tenant_id,
        name=name,
        version=version,
        body=bytes(body),
        digest=digest,
        deprecated=bool(deprecated),
        created_at=from_micros(created_at),
    )


def _instance(row: Row) -> InstanceRecord:
    (
        tenant_id,
        instance_id,
        name,
        version,
        status,
        nodes,
        last_seq,
        created_at,
        updated_at,
        wake_at,
        parent_id,
        parent_node,
        key,
    ) = row
    return InstanceRecord(
        tenant_id=tenant_id,
        instance_id=instance_id,
        definition_name=name,
        definition_version=version,
        status=InstanceStatus(status),
        current_nodes=tuple(orjson.loads(nodes)),
        last_seq=last_seq,
        created_at=from_micros(created_at),
        updated_at=from_micros(updated_at),
        wake_at=None if wake_at is None else from_micros(wake_at),
        parent_instance_id=parent_id,
        parent_node=parent_node,
        idempotency_key=key,
    )
