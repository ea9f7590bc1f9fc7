"""The clustered store: PostgreSQL through asyncpg pools.

Row-level security (migration 0008) is a second wall between tenants. Work done for tenants
runs on a pool whose sessions are the role ``saga_app`` and name, before each use, the tenants
the work is for (``saga.tenants``; a session naming none sees no rows), for one transaction at
a time (:mod:`~saga_orchestrator.store.postgres_session`); the chores that span tenants
(claims, renewals, timers, the outbox relay, retention, the node registry) run on a small pool
of role ``saga_cluster``. The role is a startup parameter of each connection, so taking it
costs no round trip. Migrations (and ``ANALYZE``) run as the login of the store's URL itself.

Which login each pool connects as decides what the wall can stop. By default both pools log in
as the URL's login (in practice the schema owner, since it migrates), which must be a member of
both roles: a statement that runs ``SET ROLE saga_cluster`` or ``SET ROLE NONE`` on a tenants'
session leaves the wall, and the store warns once that it can. With
:attr:`PostgresOptions.app_url` and :attr:`PostgresOptions.cluster_url` (``DATABASE_APP_URL``,
``DATABASE_CLUSTER_URL``) each pool logs in as a login of its own, whose only power is its
role; the store checks each such login as its pool opens and refuses one that could leave
(:mod:`~saga_orchestrator.store.postgres_logins`).

Driver errors are translated once, here: a lost or refused connection becomes
:class:`~saga_orchestrator.errors.StoreUnavailable`, any other database error
:class:`~saga_orchestrator.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import orjson

from saga_orchestrator.errors import ConfigurationError, SagaError, StoreError, StoreUnavailable
from saga_orchestrator.store import postgres_audit as audit_log
from saga_orchestrator.store import postgres_cluster as cluster
from saga_orchestrator.store import postgres_extras as extras
from saga_orchestrator.store import postgres_leases as leases
from saga_orchestrator.store import postgres_retention as retention
from saga_orchestrator.store import postgres_sql as sql
from saga_orchestrator.store.batch import validate
from saga_orchestrator.store.chain_heads import ChainHeads
from saga_orchestrator.store.codec import (
    check_page_size,
    decode_cursor,
    semver_columns,
    semver_key,
    utc,
)
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.listing import listing_where, make_page, numbered_placeholders
from saga_orchestrator.store.migrator import load_migrations
from saga_orchestrator.store.postgres_append import append_batch
from saga_orchestrator.store.postgres_listen import EventListener
from saga_orchestrator.store.postgres_logins import escapes
from saga_orchestrator.store.postgres_session import (
    TenantScope,
    keep_session,
    tenant_scope,
    transaction,
)
from saga_orchestrator.store.postgres_statistics import (
    StatisticsKeeper,
    analyze_grown,
    grown_tables,
)
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

if TYPE_CHECKING:
    from asyncpg.pool import Pool, PoolConnectionProxy

log = logging.getLogger("saga_orchestrator.store")

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    # A session that dies mid-statement (server restarted, backend terminated) surfaces as
    # these client-side errors rather than as a connection error.
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


APP_ROLE = "saga_app"
"""The role of every session that works for tenants (no BYPASSRLS; see migration 0008)."""
CLUSTER_ROLE = "saga_cluster"
"""The role of the chores that span tenants."""

_POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresOptions:
    min_size: int = 1
    """Connections the tenants' pool opens up front and keeps."""
    max_size: int = 10
    """Upper bound on concurrent connections for tenants' work from this process."""
    cluster_max_size: int = 3
    """Upper bound on concurrent connections for the chores that span tenants."""
    command_timeout: float | None = 60.0
    """Seconds before a single statement is abandoned (None: no limit)."""
    rows_between_statistics_checks: int = 4096
    """Events (the bulk of what appends write) between two checks for tables grown enough to
    analyze (see
    :mod:`~saga_orchestrator.store.postgres_statistics`)."""
    app_url: str | None = field(default=None, repr=False)
    """The tenants' pool's own login (``DATABASE_APP_URL``), one whose only power is
    ``saga_app``; refused as the pool opens if it could leave that role. None: the store's
    URL (a login that can leave it: see the module's docstring)."""
    cluster_url: str | None = field(default=None, repr=False)
    """The chores' pool's own login (``DATABASE_CLUSTER_URL``), whose only power is
    ``saga_cluster``; it also listens for other nodes' notifications. None: the store's URL."""


class PostgresStore:
    """The :class:`~saga_orchestrator.store.protocol.Store` on a PostgreSQL database.

    The pool is created on first use, so the store can be built outside an event loop.
    """

    def __init__(
        self, dsn: str, options: PostgresOptions | None = None, cipher: EventCipher | None = None
    ) -> None:
        self._dsn = dsn
        self._cipher = cipher
        self._options = options or PostgresOptions()
        if not 0 <= self._options.min_size <= self._options.max_size:
            raise ConfigurationError("PostgreSQL pool sizes need 0 <= min_size <= max_size")
        if self._options.cluster_max_size < 1:
            raise ConfigurationError("PostgreSQL's cluster pool needs at least one connection")
        own_logins = {
            "DATABASE_APP_URL": self._options.app_url,
            "DATABASE_CLUSTER_URL": self._options.cluster_url,
        }
        for setting, url in own_logins.items():
            # The URL itself is not shown: it may hold a password.
            if url is not None and not url.lower().startswith(_POSTGRES_SCHEMES):
                raise ConfigurationError(f"{setting} must be a postgresql:// URL")
        self._warned_of_escape = False
        self._pools: dict[str, Pool[asyncpg.Record]] = {}
        self._chain_heads = ChainHeads()
        self._pool_lock = asyncio.Lock()
        self._closed = False
        self.statistics = StatisticsKeeper(
            self._analyze_grown,
            rows_between_checks=self._options.rows_between_statistics_checks,
        )

    @property
    def options(self) -> PostgresOptions:
        return self._options

    # The roles the two pools' sessions take; a test build sets them to None to show what a
    # store without row-level security would leak.
    app_role: str | None = APP_ROLE
    cluster_role: str | None = CLUSTER_ROLE

    async def _get_pool(self, *, tenants: bool) -> Pool[asyncpg.Record]:
        """The tenants' pool, or the chores' one; opened on first use."""
        key = "tenants" if tenants else "cluster"
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        async with self._pool_lock:
            if self._closed:
                raise StoreError("the store is closed")
            pool = self._pools.get(key)
            if pool is None:
                pool = await self._open_pool(tenants=tenants)
                self._pools[key] = pool
            return pool

    async def _open_pool(self, *, tenants: bool) -> Pool[asyncpg.Record]:
        if tenants:
            role, other, own_url = self.app_role, self.cluster_role, self._options.app_url
        else:
            role, other, own_url = self.cluster_role, self.app_role, self._options.cluster_url
        settings = {"application_name": "saga-orchestrator"}
        if role is not None:
            # Sent to a login of its own too: taking the role it already is or inherits costs
            # nothing, and a login granted the role NOINHERIT then works as well.
            settings["role"] = role
        max_size = self._options.max_size if tenants else self._options.cluster_max_size
        try:
            pool = await asyncpg.create_pool(
                own_url or self._dsn,
                min_size=min(self._options.min_size, max_size),
                max_size=max_size,
                command_timeout=self._options.command_timeout,
                server_settings=settings,
                # The tenants' sessions keep no state between transactions.
                reset=keep_session if tenants else None,
            )
        except asyncpg.InvalidParameterValueError as exc:
            raise ConfigurationError(
                f"PostgreSQL has no role {role!r}: migrate the database first "
                f"(saga migrate) ({exc})"
            ) from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            roles = role if own_url is not None else f"{APP_ROLE}, {CLUSTER_ROLE}"
            raise ConfigurationError(
                f"the database login may not act as {role!r}; as the schema owner or "
                f"a superuser run: GRANT {roles} TO <login> ({exc})"
            ) from exc
        if role is not None and other is not None:
            try:
                await self._check_login(pool, role, other, tenants=tenants, own=own_url is not None)
            except BaseException:
                pool.terminate()
                raise
        return pool

    async def _check_login(
        self, pool: Pool[asyncpg.Record], role: str, other: str, *, tenants: bool, own: bool
    ) -> None:
        """Refuse a pool's own login that could leave its role; warn once of a shared one."""
        async with pool.acquire() as conn:
            login, ways = await escapes(conn, other)
        if not ways:
            return
        how = "; ".join(ways)
        if own:
            setting = "DATABASE_APP_URL" if tenants else "DATABASE_CLUSTER_URL"
            raise ConfigurationError(
                f"{setting}: its login {login!r} could leave the role {role}, and row-level "
                f"security with it: it {how}. Give that pool a login whose only power is "
                f"{role}: CREATE ROLE <login> LOGIN PASSWORD '...' IN ROLE {role} "
                "(docs/security.md#the-services-logins)"
            )
        if not self._warned_of_escape:
            # Once per store: the pools that share this login need say it only once.
            self._warned_of_escape = True
            log.warning(
                "the database login %r can leave the role %s, and row-level security with it "
                "(it %s): a statement that switches roles would reach every tenant's rows. "
                "Set DATABASE_APP_URL and DATABASE_CLUSTER_URL to logins whose only powers are "
                "%s and %s (docs/security.md#the-services-logins)",
                login, role, how, APP_ROLE, CLUSTER_ROLE,
            )  # fmt: skip

    async def check_logins(self) -> None:
        """Open both pools now, so that a login the store refuses stops a node's start rather
        than its first request for a tenant."""
        with _translate_errors():
            await self._get_pool(tenants=True)
            await self._get_pool(tenants=False)

    @asynccontextmanager
    async def _tenant_session(
        self, tenant_ids: Iterable[str]
    ) -> AsyncIterator[tuple[PoolConnectionProxy[asyncpg.Record], TenantScope]]:
        """A session for transactions (:func:`.postgres_session.transaction` with the scope)
        that see and write the rows of ``tenant_ids`` and of no other tenant."""
        with _translate_errors():
            pool = await self._get_pool(tenants=True)
            async with pool.acquire() as conn:
                yield conn, tenant_scope(tenant_ids)

    @asynccontextmanager
    async def _tenants(
        self, *tenant_ids: str
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """One transaction that sees and writes the rows of ``tenant_ids`` and of no other
        tenant: committed when the block ends, rolled back if it raises."""
        async with self._tenant_session(tenant_ids) as (conn, scope), transaction(conn, scope):
            yield conn

    @asynccontextmanager
    async def _cluster(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A session for the chores that span tenants."""
        with _translate_errors():
            pool = await self._get_pool(tenants=False)
            async with pool.acquire() as conn:
                yield conn

    @asynccontextmanager
    async def _owner(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        """A session as the URL's login itself: only for changing the schema."""
        with _translate_errors():
            conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
                self._dsn,
                command_timeout=self._options.command_timeout,
                server_settings={"application_name": "saga-orchestrator"},
            )
            try:
                yield conn
            finally:
                await conn.close()

    async def close(self) -> None:
        await self.statistics.aclose()
        async with self._pool_lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with _translate_errors():
                await pool.close()

    # -- cluster --
    async def heartbeat_node(self, node: NodeRecord) -> None:
        async with self._cluster() as conn:
            await cluster.heartbeat_node(conn, node)

    async def list_nodes(self) -> list[NodeRecord]:
        async with self._cluster() as conn:
            return await cluster.list_nodes(conn)

    async def remove_node(self, node_id: str) -> None:
        async with self._cluster() as conn:
            await cluster.remove_node(conn, node_id)

    async def reap_nodes(self, silent_for: float) -> list[str]:
        async with self._cluster() as conn:
            return await cluster.reap_nodes(conn, silent_for)

    async def acquire_leadership(self, name: str, holder: str, ttl: float) -> Leadership:
        async with self._cluster() as conn:
            return await cluster.acquire_leadership(conn, name, holder, ttl)

    async def release_leadership(self, name: str, holder: str) -> None:
        async with self._cluster() as conn:
            await cluster.release_leadership(conn, name, holder)

    async def purge_terminal(self, before: datetime, limit: int) -> int:
        async with self._cluster() as conn:
            return await retention.purge_terminal(conn, before, limit)

    # -- instance leases --
    async def claim_instances(
        self, owner: str, ttl: float, limit: int, max_takeovers: int
    ) -> Claims:
        async with self._cluster() as conn:
            return await leases.claim_instances(conn, owner, ttl, limit, max_takeovers)

    async def claim_instance(
        self, owner: str, ttl: float, tenant_id: str, instance_id: str
    ) -> int | None:
        async with self._tenants(tenant_id) as conn:
            return await leases.claim_instance(conn, owner, ttl, tenant_id, instance_id)

    async def reclaim_own(self, owner: str, ttl: float) -> list[ClaimedInstance]:
        async with self._cluster() as conn:
            return await leases.reclaim_own(conn, owner, ttl)

    async def renew_leases(
        self, owner: str, ttl: float, held: Sequence[tuple[str, int]]
    ) -> dict[str, int]:
        async with self._cluster() as conn:
            return await leases.renew_leases(conn, owner, ttl, held)

    async def release_leases(self, owner: str, held: Sequence[tuple[str, int]]) -> None:
        async with self._cluster() as conn:
            await leases.release_leases(conn, owner, held)

    async def list_quarantined(self, tenant_id: str) -> list[QuarantinedInstance]:
        async with self._tenants(tenant_id) as conn:
            return await leases.list_quarantined(conn, tenant_id)

    async def release_quarantine(
        self, tenant_id: str, instance_id: str, audit: AuditEntry | None = None
    ) -> bool:
        async with self._tenants(tenant_id) as conn:
            released = await leases.release_quarantine(conn, tenant_id, instance_id)
            if released and audit is not None:
                await audit_log.write_audit(conn, [audit])
            return released

    # -- other nodes --
    def watch(
        self,
        on_instances: Callable[[list[tuple[str, int]]], None],
        on_claimable: Callable[[], None] | None = None,
    ) -> EventListener:
        # Listening needs no privilege: the chores' login (its own, when it has one) will do.
        return EventListener(self._options.cluster_url or self._dsn, on_instances, on_claimable)

    # -- schema --
    async def migrate(self) -> int:
        async with self._owner() as conn, conn.transaction():
            # Transaction-scoped: released by commit or rollback, even if this process dies.
            await conn.execute(sql.TAKE_MIGRATION_LOCK, sql.MIGRATION_LOCK_KEY)
            await conn.execute(sql.CREATE_SCHEMA_MIGRATIONS)
            applied = {row[0] for row in await conn.fetch(sql.APPLIED_VERSIONS)}
            for migration in load_migrations("postgres"):
                if migration.version not in applied:
                    await conn.execute(migration.sql)
                    await conn.execute(sql.RECORD_MIGRATION, migration.version, migration.name)
            return int(await conn.fetchval(sql.SCHEMA_VERSION))

    async def schema_version(self) -> int:
        try:
            async with self._cluster() as conn:
                return await _schema_version(conn)
        except ConfigurationError:
            if self._options.cluster_url is not None:
                raise  # a login of its own was refused: asking the owner instead would hide it
            # A database from before row-level security has no roles yet: ask as the login.
            async with self._owner() as owner:
                return await _schema_version(owner)

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
        now = datetime.now(UTC)
        row = (tenant_id, name, version, major, minor, patch, prerelease, body, digest, now)
        async with self._tenants(tenant_id) as conn:
            created = await conn.fetchval(sql.INSERT_DEFINITION, *row)
            if created:
                if audit is not None:
                    await audit_log.write_audit(conn, [audit])
                return PutDefinitionOutcome.CREATED
            # DO NOTHING waited for any concurrent insert, which is committed by now: this
            # statement's snapshot (read committed) sees it.
            existing = await conn.fetchval(sql.DEFINITION_DIGEST, tenant_id, name, version)
        if existing == digest:
            return PutDefinitionOutcome.IDENTICAL
        return PutDefinitionOutcome.CONFLICT

    async def get_definition(
        self, tenant_id: str, name: str, version: str
    ) -> DefinitionRecord | None:
        async with self._tenants(tenant_id) as conn:
            row = await conn.fetchrow(sql.GET_DEFINITION, tenant_id, name, version)
        return _definition(row) if row is not None else None

    async def list_definition_versions(self, tenant_id: str, name: str) -> list[DefinitionRecord]:
        async with self._tenants(tenant_id) as conn:
            rows = await conn.fetch(sql.LIST_DEFINITION_VERSIONS, tenant_id, name)
        return sorted(map(_definition, rows), key=lambda d: semver_key(d.version))

    async def list_definition_names(self, tenant_id: str, prefix: str = "") -> list[str]:
        async with self._tenants(tenant_id) as conn:
            rows = await conn.fetch(sql.LIST_DEFINITION_NAMES, tenant_id, prefix)
        return [row[0] for row in rows]

    async def set_definition_deprecated(
        self,
        tenant_id: str,
        name: str,
        version: str,
        deprecated: bool,
        audit: AuditEntry | None = None,
    ) -> bool:
        async with self._tenants(tenant_id) as conn:
            found = await conn.fetchval(
                sql.SET_DEFINITION_DEPRECATED, tenant_id, name, version, deprecated
            )
            if found and audit is not None:
                await audit_log.write_audit(conn, [audit])
        return bool(found)

    # -- instances and events --
    async def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if not requests:
            return []
        validate(requests)
        async with self._tenant_session({r.tenant_id for r in requests}) as (conn, scope):
            results = await append_batch(conn, scope, requests, self._cipher, self._chain_heads)
        self.statistics.wrote(sum([len(r.events) for r in requests]))
        return results

    async def _analyze_grown(self) -> None:
        async with self._cluster() as conn:
            if not await grown_tables(conn):
                return
        async with self._owner() as conn:
            analysis = await analyze_grown(conn)
        if analysis.analyzed:
            log.info(
                "analyzed %s: they doubled since their last statistics",
                ", ".join(analysis.analyzed),
            )
        if analysis.not_owned:
            # Checking again would open a session for nothing, every few thousand rows.
            self.statistics.stop()
            log.info(
                "the database login does not own %s: their planner statistics are left to "
                "autovacuum", ", ".join(analysis.not_owned),
            )  # fmt: skip

    async def load_events(
        self, tenant_id: str, instance_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        async with self._tenants(tenant_id) as conn:
            rows = await conn.fetch(sql.LOAD_EVENTS, tenant_id, instance_id, after_seq, limit)
        opened = (
            (lambda _seq, data: data)
            if self._cipher is None
            else functools.partial(self._cipher.open, tenant_id, instance_id)
        )
        return [
            StoredEvent(
                instance_id=row[0],
                seq=row[1],
                type=row[2],
                data=opened(row[1], row[3].encode()),
                recorded_at=row[4],
            )
            for row in rows
        ]

    async def get_instance(self, tenant_id: str, instance_id: str) -> InstanceRecord | None:
        async with self._tenants(tenant_id) as conn:
            row = await conn.fetchrow(sql.GET_INSTANCE, tenant_id, instance_id)
        return _instance(row) if row is not None else None

    async def find_start(
        self, tenant_id: str, idempotency_key: str
    ) -> tuple[str, str | None] | None:
        async with self._tenants(tenant_id) as conn:
            row = await conn.fetchrow(sql.FIND_START, tenant_id, idempotency_key)
        return (row[0], row[1]) if row is not None else None

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
        where, params = listing_where(tenant_id, filters, after, utc)
        query = numbered_placeholders(sql.LIST_INSTANCES.format(where=where))
        async with self._tenants(tenant_id) as conn:
            rows = await conn.fetch(query, *params, limit + 1)
        return make_page([_instance(row) for row in rows], limit)

    async def list_unfinished(self) -> list[InstanceRef]:
        async with self._cluster() as conn:
            rows = await conn.fetch(sql.LIST_UNFINISHED)
        return [InstanceRef(tenant_id=row[0], instance_id=row[1]) for row in rows]

    async def due_timers(self, now: datetime, limit: int) -> list[DueTimer]:
        async with self._cluster() as conn:
            rows = await conn.fetch(sql.DUE_TIMERS, utc(now), limit)
        return [DueTimer(tenant_id=row[0], instance_id=row[1], fire_at=row[2]) for row in rows]

    async def next_timer_at(self) -> datetime | None:
        async with self._cluster() as conn:
            value: datetime | None = await conn.fetchval(sql.NEXT_TIMER_AT)
        return value

    # -- outbox --
    async def claim_outbox(
        self, limit: int, lease_seconds: float, leader: LeaderFence | None = None
    ) -> list[OutboxRow]:
        async with self._cluster() as conn:
            return await extras.claim_outbox(conn, limit, lease_seconds, leader, self._cipher)

    async def mark_outbox_published(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._cluster() as conn:
                await extras.mark_outbox_published(conn, ids)

    async def release_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._cluster() as conn:
                await extras.release_outbox(conn, ids)

    async def outbox_backlog(self) -> int:
        async with self._cluster() as conn:
            return await extras.outbox_backlog(conn)

    # -- participant services --
    async def put_participant(
        self,
        tenant_id: str,
        name: str,
        config: dict[str, Any],
        audit: AuditEntry | None = None,
    ) -> int:
        async with self._tenants(tenant_id) as conn:
            version = await extras.put_participant(conn, tenant_id, name, config)
            if audit is not None:
                await audit_log.write_audit(conn, [audit])
            return version

    async def get_participant(self, tenant_id: str, name: str) -> ParticipantEntry | None:
        async with self._tenants(tenant_id) as conn:
            return await extras.get_participant(conn, tenant_id, name)

    async def list_participants(self, tenant_id: str) -> list[ParticipantEntry]:
        async with self._tenants(tenant_id) as conn:
            return await extras.list_participants(conn, tenant_id)

    async def delete_participant(
        self, tenant_id: str, name: str, audit: AuditEntry | None = None
    ) -> bool:
        async with self._tenants(tenant_id) as conn:
            deleted = await extras.delete_participant(conn, tenant_id, name)
            if deleted and audit is not None:
                await audit_log.write_audit(conn, [audit])
            return deleted

    # -- tenant limit overrides --
    async def get_tenant_limits(self, tenant_id: str) -> TenantLimitsEntry | None:
        async with self._tenants(tenant_id) as conn:
            return await extras.get_tenant_limits(conn, tenant_id)

    async def put_tenant_limits(
        self, tenant_id: str, config: dict[str, Any], audit: AuditEntry | None = None
    ) -> int:
        async with self._tenants(tenant_id) as conn:
            version = await extras.put_tenant_limits(conn, tenant_id, config)
            if audit is not None:
                await audit_log.write_audit(conn, [audit])
            return version

    async def delete_tenant_limits(self, tenant_id: str, audit: AuditEntry | None = None) -> bool:
        async with self._tenants(tenant_id) as conn:
            deleted = await extras.delete_tenant_limits(conn, tenant_id)
            if deleted and audit is not None:
                await audit_log.write_audit(conn, [audit])
            return deleted

    async def shared_secret(self, name: str, candidate: bytes) -> bytes:
        async with self._cluster() as conn:
            return await extras.shared_secret(conn, name, candidate)

    # -- the audit log --
    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        if not entries:
            return []
        async with self._tenants(*{e.tenant_id for e in entries}) as conn:
            return await audit_log.write_audit(conn, entries)

    async def list_audit(
        self, tenant_id: str, filters: AuditFilter, *, limit: int = 50, after_seq: int = 0
    ) -> list[AuditRecord]:
        check_page_size(limit)
        async with self._tenants(tenant_id) as conn:
            return await audit_log.list_audit(conn, tenant_id, filters, limit, after_seq)

    async def audit_tenants(self) -> list[str]:
        async with self._cluster() as conn:
            return await audit_log.audit_tenants(conn)

    async def audit_chain(self, tenant_id: str) -> tuple[list[AuditRecord], tuple[int, str] | None]:
        async with self._tenants(tenant_id) as conn:
            return await audit_log.audit_chain(conn, tenant_id)


async def _schema_version(
    conn: PoolConnectionProxy[asyncpg.Record] | asyncpg.Connection[asyncpg.Record],
) -> int:
    if not await conn.fetchval(sql.HAS_SCHEMA_MIGRATIONS):
        return 0
    return int(await conn.fetchval(sql.SCHEMA_VERSION))


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except SagaError:
        raise
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        # The roles' grants come with the schema: a database behind this version lacks them.
        raise StoreError(
            f"PostgreSQL refused: {exc} (a database not migrated to this version? saga migrate)"
        ) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreError(f"PostgreSQL error: {exc}") from exc


def _definition(row: asyncpg.Record) -> DefinitionRecord:
    return DefinitionRecord(
        tenant_id=row[0],
        name=row[1],
        version=row[2],
        body=bytes(row[3]),
        digest=row[4],
        deprecated=row[5],
        created_at=row[6],
    )


def _instance(row: asyncpg.Record) -> InstanceRecord:
    return InstanceRecord(
        tenant_id=row[0],
        instance_id=row[1],
        definition_name=row[2],
        definition_version=row[3],
        status=InstanceStatus(row[4]),
        current_nodes=tuple(orjson.loads(row[5])),
        last_seq=row[6],
        created_at=row[7],
        updated_at=row[8],
        wake_at=row[9],
        parent_instance_id=row[10],
        parent_node=row[11],
        idempotency_key=row[12],
    )
