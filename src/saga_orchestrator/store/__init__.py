"""Event store and read model: one :class:`Store` port, SQLite and PostgreSQL adapters.

Build a store from a database URL with :func:`open_store`; call ``await store.migrate()`` before
use and ``await store.close()`` at the end.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl, unquote, urlsplit

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.store.encryption import EventCipher
from saga_orchestrator.store.postgres import PostgresOptions, PostgresStore
from saga_orchestrator.store.protocol import (
    AppendRequest,
    AppendResult,
    AppendStatus,
    AuditEntry,
    AuditFilter,
    AuditOutcome,
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
    InstanceUpdate,
    LeaderFence,
    Leadership,
    Lease,
    NewInstance,
    NodeRecord,
    OutboxMessage,
    OutboxRow,
    ParticipantEntry,
    PutDefinitionOutcome,
    QuarantinedInstance,
    Store,
    StoredEvent,
    TenantLimitsEntry,
)
from saga_orchestrator.store.sqlite import SqliteOptions, SqliteStore

__all__ = [
    "AppendRequest",
    "AppendResult",
    "AppendStatus",
    "AuditEntry",
    "AuditFilter",
    "AuditOutcome",
    "AuditRecord",
    "ClaimedInstance",
    "Claims",
    "DefinitionRecord",
    "DueTimer",
    "InstanceFilter",
    "InstancePage",
    "InstanceRecord",
    "InstanceRef",
    "InstanceStatus",
    "InstanceUpdate",
    "LeaderFence",
    "Leadership",
    "Lease",
    "NewInstance",
    "NodeRecord",
    "OutboxMessage",
    "OutboxRow",
    "ParticipantEntry",
    "PostgresOptions",
    "PostgresStore",
    "PutDefinitionOutcome",
    "QuarantinedInstance",
    "SqliteOptions",
    "SqliteStore",
    "Store",
    "StoredEvent",
    "TenantLimitsEntry",
    "open_store",
]

_SQLITE_MEMORY = ":memory:"


def open_store(
    database_url: str,
    *,
    sqlite: SqliteOptions | None = None,
    postgres: PostgresOptions | None = None,
    cipher: EventCipher | None = None,
) -> Store:
    """A store for ``database_url``; nothing is opened until the first call.

    - ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``;
      ``?synchronous=NORMAL`` (or ``OFF``/``FULL``/``EXTRA``) overrides ``sqlite.synchronous``.
    - ``postgresql://user@host:port/dbname`` (or ``postgres://``), passed to asyncpg as is;
      ``postgres.app_url`` and ``postgres.cluster_url`` give its two pools logins of their own
      (see :mod:`.postgres`), the URL's login still migrates.

    With a ``cipher``, events are sealed at rest (see :mod:`.encryption`).
    """
    scheme = database_url.partition("://")[0].lower() if "://" in database_url else ""
    if scheme == "sqlite":
        if postgres is not None and (postgres.app_url or postgres.cluster_url):
            raise ConfigurationError(
                "DATABASE_APP_URL and DATABASE_CLUSTER_URL are PostgreSQL logins: they need a "
                "postgresql:// DATABASE_URL (SQLite has no roles)"
            )
        path, options = _sqlite_target(database_url, sqlite or SqliteOptions())
        return SqliteStore(path, options, cipher)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(database_url, postgres, cipher)
    # Name only the scheme: the rest of a URL may hold a password.
    raise ConfigurationError(
        f"unsupported database URL scheme {scheme or '(none)'!r}: expected "
        "sqlite:///path/to/file.db, sqlite:///:memory: or postgresql://user@host:port/dbname"
    )


def _sqlite_target(url: str, options: SqliteOptions) -> tuple[str, SqliteOptions]:
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(f"a SQLite URL has no host: use sqlite:///path, not {url!r}")
    # sqlite:///a.db -> "a.db" (relative); sqlite:////srv/a.db -> "/srv/a.db" (absolute).
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "synchronous":
            raise ConfigurationError(f"unknown SQLite URL option {key!r} (known: synchronous)")
        options = replace(options, synchronous=value.upper())  # type: ignore[arg-type]
    return path or _SQLITE_MEMORY, options
