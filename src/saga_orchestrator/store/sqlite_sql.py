"""The SQLite store's queries, as data (timestamps are integer microseconds, UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY NOT NULL,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
)"""
HAS_SCHEMA_MIGRATIONS: Final = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
)
APPLIED_VERSIONS: Final = "SELECT version FROM schema_migrations"
SCHEMA_VERSION: Final = "SELECT max(version) FROM schema_migrations"
RECORD_MIGRATION: Final = (
    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
)

INSERT_DEFINITION: Final = """
INSERT INTO definitions
    (tenant_id, name, version, major, minor, patch, prerelease, body, digest, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, name, version) DO NOTHING"""
DEFINITION_DIGEST: Final = (
    "SELECT digest FROM definitions WHERE tenant_id = ? AND name = ? AND version = ?"
)
_DEFINITION_COLUMNS: Final = "tenant_id, name, version, body, digest, deprecated, created_at"
GET_DEFINITION: Final = f"""
SELECT {_DEFINITION_COLUMNS} FROM definitions
WHERE tenant_id = ? AND name = ? AND version = ?"""
LIST_DEFINITION_VERSIONS: Final = f"""
SELECT {_DEFINITION_COLUMNS} FROM definitions
WHERE tenant_id = ? AND name = ?
ORDER BY major, minor, patch, prerelease IS NULL, prerelease"""
LIST_DEFINITION_NAMES: Final = """
SELECT DISTINCT name FROM definitions
WHERE tenant_id = ? AND substr(name, 1, ?) = ?
ORDER BY name"""
SET_DEFINITION_DEPRECATED: Final = """
UPDATE definitions SET deprecated = ?
WHERE tenant_id = ? AND name = ? AND version = ?"""

LOAD_EVENTS: Final = """
SELECT instance_id, seq, type, data, recorded_at FROM events
WHERE tenant_id = ? AND instance_id = ? AND seq > ?
ORDER BY seq
LIMIT ?"""

_INSTANCE_SELECT: Final = """
SELECT i.tenant_id, i.instance_id, i.definition_name, i.definition_version, i.status,
       i.current_nodes, i.last_seq, i.created_at, i.updated_at, t.fire_at,
       i.parent_instance_id, i.parent_node, i.idempotency_key
FROM instances i LEFT JOIN timers t ON t.instance_id = i.instance_id"""
GET_INSTANCE: Final = f"{_INSTANCE_SELECT} WHERE i.tenant_id = ? AND i.instance_id = ?"
LIST_INSTANCES: Final = (
    _INSTANCE_SELECT
    + """
WHERE {where}
ORDER BY i.created_at DESC, i.instance_id DESC
LIMIT ?"""
)
LIST_UNFINISHED: Final = """
SELECT tenant_id, instance_id FROM instances
WHERE status IN ('running', 'compensating')
ORDER BY instance_id"""
FIND_START: Final = """
SELECT instance_id, request_digest FROM start_keys
WHERE tenant_id = ? AND idempotency_key = ?"""

DUE_TIMERS: Final = """
SELECT tenant_id, instance_id, fire_at FROM timers
WHERE fire_at <= ?
ORDER BY fire_at, instance_id
LIMIT ?"""
NEXT_TIMER_AT: Final = "SELECT min(fire_at) FROM timers"

# -- append: the facts a batch depends on (one JSON array parameter each, so the statement is
# prepared once whatever the batch size) and its bulk writes --
# Bulk statements read their rows from one JSON array parameter, so a whole table's share of a
# batch is one statement and one result row: row-by-row executemany and cursors hand the GIL
# back and forth with the busy event loop on every row. A batch of a few rows (a quiet node,
# where every append commits alone) takes each statement's one-row form instead: unpacking JSON
# costs more than the statement itself there, and an idle event loop gives the GIL straight back.


@dataclass(frozen=True, slots=True)
class BulkStatement:
    """One write in two forms with the same columns in the same order: ``bulk`` reads its rows
    from a JSON array parameter, ``row`` binds one row's values."""

    bulk: str
    row: str


LOCKED_FACTS: Final = """
SELECT json_group_array(json_array(instance_id, tenant_id, last_seq)) FROM instances
WHERE instance_id IN (SELECT value FROM json_each(?))"""
LOCKED_FACT: Final = "SELECT instance_id, tenant_id, last_seq FROM instances WHERE instance_id = ?"
TAKEN_START_KEYS: Final = """
SELECT tenant_id, idempotency_key, instance_id, request_digest FROM start_keys
WHERE (tenant_id, idempotency_key) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)
)"""
INSERT_START_KEY: Final = """
INSERT INTO start_keys (tenant_id, idempotency_key, instance_id, request_digest, created_at)
VALUES (?, ?, ?, ?, ?)"""
_INSTANCE_COLUMNS: Final = """(
    instance_id, tenant_id, definition_name, definition_version, status, current_nodes,
    last_seq, created_at, updated_at, parent_instance_id, parent_node, idempotency_key)"""
INSERT_INSTANCES: Final = BulkStatement(
    bulk=f"""
INSERT INTO instances
    {_INSTANCE_COLUMNS}
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
       value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11
FROM json_each(?)""",
    row=f"""
INSERT INTO instances
    {_INSTANCE_COLUMNS}
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
)
UPDATE_INSTANCES: Final = BulkStatement(
    bulk="""
UPDATE instances
SET status = u.value ->> 1, current_nodes = u.value ->> 2, updated_at = u.value ->> 3,
    last_seq = u.value ->> 4
FROM json_each(?) AS u
WHERE instances.instance_id = u.value ->> 0""",
    row="""
UPDATE instances SET status = ?2, current_nodes = ?3, updated_at = ?4, last_seq = ?5
WHERE instance_id = ?1""",
)
INSERT_EVENTS: Final = BulkStatement(
    bulk="""
INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
FROM json_each(?)""",
    row="""
INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)
VALUES (?, ?, ?, ?, ?, ?)""",
)
UPSERT_TIMERS: Final = BulkStatement(
    bulk="""
INSERT INTO timers (instance_id, tenant_id, fire_at)
SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true
ON CONFLICT (instance_id) DO UPDATE SET tenant_id = excluded.tenant_id,
                                        fire_at = excluded.fire_at""",
    row="""
INSERT INTO timers (instance_id, tenant_id, fire_at) VALUES (?, ?, ?)
ON CONFLICT (instance_id) DO UPDATE SET tenant_id = excluded.tenant_id,
                                        fire_at = excluded.fire_at""",
)
DELETE_TIMERS: Final = BulkStatement(
    bulk="DELETE FROM timers WHERE instance_id IN (SELECT value ->> 0 FROM json_each(?))",
    row="DELETE FROM timers WHERE instance_id = ?",
)
# A message id already in the outbox is the same message written again: keep the first.
INSERT_OUTBOX: Final = """
INSERT INTO outbox
    (tenant_id, instance_id, message_id, exchange, routing_key, body, headers, created_at,
     sealed_with)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (message_id) DO NOTHING"""
