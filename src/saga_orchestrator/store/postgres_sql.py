"""The PostgreSQL store's queries, as data. Bulk writes take one array per column (unnest),
so each statement is prepared once and costs one round trip whatever the batch size."""

from __future__ import annotations

from typing import Final

from saga_orchestrator.store.postgres_audit import extend_chains

# A constant key for pg_advisory_xact_lock: serializes concurrent migrate() calls.
MIGRATION_LOCK_KEY: Final = 0x5A6A_0C4E_5354_0001

CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
HAS_SCHEMA_MIGRATIONS: Final = "SELECT to_regclass('schema_migrations') IS NOT NULL"
APPLIED_VERSIONS: Final = "SELECT version FROM schema_migrations"
SCHEMA_VERSION: Final = "SELECT coalesce(max(version), 0) FROM schema_migrations"
RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"
TAKE_MIGRATION_LOCK: Final = "SELECT pg_advisory_xact_lock($1)"

# The tenants a saga_app transaction may touch (migration 0008's saga_tenants()), as a text[]
# literal the server renders itself (see postgres_session for when the store renders one).
SET_LOCAL_TENANTS: Final = "SELECT set_config('saga.tenants', $1::text[]::text, true)"

INSERT_DEFINITION: Final = """
INSERT INTO definitions
    (tenant_id, name, version, major, minor, patch, prerelease, body, digest, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (tenant_id, name, version) DO NOTHING
RETURNING true"""
DEFINITION_DIGEST: Final = (
    "SELECT digest FROM definitions WHERE tenant_id = $1 AND name = $2 AND version = $3"
)
_DEFINITION_COLUMNS: Final = "tenant_id, name, version, body, digest, deprecated, created_at"
GET_DEFINITION: Final = f"""
SELECT {_DEFINITION_COLUMNS} FROM definitions
WHERE tenant_id = $1 AND name = $2 AND version = $3"""
LIST_DEFINITION_VERSIONS: Final = f"""
SELECT {_DEFINITION_COLUMNS} FROM definitions
WHERE tenant_id = $1 AND name = $2
ORDER BY major, minor, patch, prerelease IS NULL, prerelease"""
LIST_DEFINITION_NAMES: Final = """
SELECT DISTINCT name FROM definitions
WHERE tenant_id = $1 AND starts_with(name, $2)
ORDER BY name"""
SET_DEFINITION_DEPRECATED: Final = """
UPDATE definitions SET deprecated = $4
WHERE tenant_id = $1 AND name = $2 AND version = $3
RETURNING true"""

LOAD_EVENTS: Final = """
SELECT instance_id, seq, type, data, recorded_at FROM events
WHERE tenant_id = $1 AND instance_id = $2 AND seq > $3
ORDER BY seq
LIMIT $4"""

_INSTANCE_SELECT: Final = """
SELECT i.tenant_id, i.instance_id, i.definition_name, i.definition_version, i.status,
       i.current_nodes, i.last_seq, i.created_at, i.updated_at, t.fire_at,
       i.parent_instance_id, i.parent_node, i.idempotency_key
FROM instances i LEFT JOIN timers t ON t.instance_id = i.instance_id"""
GET_INSTANCE: Final = f"{_INSTANCE_SELECT} WHERE i.tenant_id = $1 AND i.instance_id = $2"
# {where} uses ``?`` placeholders (shared with SQLite), numbered before execution.
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
WHERE tenant_id = $1 AND idempotency_key = $2"""

DUE_TIMERS: Final = """
SELECT tenant_id, instance_id, fire_at FROM timers
WHERE fire_at <= $1
ORDER BY fire_at, instance_id
LIMIT $2"""
NEXT_TIMER_AT: Final = "SELECT min(fire_at) FROM timers"

# -- append --
# Locks are taken in instance-id order, so two batches can never deadlock on instance rows.
LOCK_INSTANCES: Final = """
SELECT instance_id, tenant_id, last_seq, owner_id, lease_epoch
FROM instances
WHERE instance_id = ANY($1::text[])
ORDER BY instance_id
FOR UPDATE"""
TAKEN_START_KEYS: Final = """
SELECT s.tenant_id, s.idempotency_key, s.instance_id, s.request_digest
FROM start_keys s
JOIN unnest($1::text[], $2::text[]) AS k (tenant_id, idempotency_key)
  ON s.tenant_id = k.tenant_id AND s.idempotency_key = k.idempotency_key"""
# ON CONFLICT ... RETURNING reports what this transaction really inserted: a row that a
# concurrent transaction committed after our read is missing, and the batch is re-planned.
INSERT_START_KEYS: Final = """
INSERT INTO start_keys (tenant_id, idempotency_key, instance_id, request_digest, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING tenant_id, idempotency_key"""
# Bulk writes pass one array of the table's own row type where they can, not one array per
# column: asyncpg checks every array element against three abstract base classes in Python,
# so a row of n columns would cost it n times the checks of one record; the server decodes
# the same fields either way. A record's fields follow the table's column order
# (postgres_append builds them); columns a statement does not write are NULL.
_INSTANCE_FIELDS: Final = """instance_id, tenant_id, definition_name, definition_version,
           status, current_nodes, last_seq, created_at, updated_at, parent_instance_id,
           parent_node, idempotency_key, owner_id, lease_epoch, lease_expires_at, takeovers,
           quarantined_at"""


def _insert_instances(rows: str, ttls: str) -> str:
    return f"""
INSERT INTO instances
    (instance_id, tenant_id, definition_name, definition_version, status, current_nodes,
     last_seq, created_at, updated_at, parent_instance_id, parent_node, idempotency_key,
     owner_id, lease_epoch, lease_expires_at)
SELECT u.instance_id, u.tenant_id, u.definition_name, u.definition_version, u.status,
       u.current_nodes, u.last_seq, u.created_at, u.updated_at,
       u.parent_instance_id, u.parent_node, u.idempotency_key,
       -- An owner only while unfinished: a settled instance waits for whoever acts next.
       CASE WHEN u.status IN ('running', 'compensating') THEN u.owner_id END,
       CASE WHEN u.owner_id IS NULL THEN 0 ELSE 1 END,
       CASE WHEN u.owner_id IS NOT NULL AND u.status IN ('running', 'compensating')
            THEN now() + make_interval(secs => u.lease_ttl) END
FROM unnest({rows}::instances[], {ttls}::float8[])
     AS u ({_INSTANCE_FIELDS}, lease_ttl)
ON CONFLICT (instance_id) DO NOTHING
RETURNING instance_id"""


def _update_instances(rows: str, expected_seqs: str) -> str:
    """A compare-and-set: a row is updated only while it is where the batch was planned
    from (its tenant, its sequence, and its owner and epoch when the plan relied on them: a
    record's ``owner_id`` and ``lease_epoch`` carry that lease, not new values); a row that
    moved on is left alone and missing from RETURNING, which also gives each updated row's
    wake-up as it was (the statement's snapshot), so that only changed timers are written."""
    return f"""
UPDATE instances AS i
SET status = u.status, current_nodes = u.current_nodes, updated_at = u.updated_at,
    last_seq = u.last_seq,
    -- Settling gives the lease up (whoever acts next claims it). Appends leave the expiry
    -- alone (renewals extend it in batches), so an update that changes no indexed column
    -- stays a HOT update.
    owner_id = CASE WHEN u.status IN ('running', 'compensating') THEN i.owner_id END,
    lease_expires_at = CASE WHEN u.status IN ('running', 'compensating')
                            THEN i.lease_expires_at END
FROM unnest({rows}::instances[], {expected_seqs}::bigint[])
     AS u ({_INSTANCE_FIELDS}, expected_seq)
WHERE i.instance_id = u.instance_id AND i.tenant_id = u.tenant_id
  AND i.last_seq = u.expected_seq
  AND (u.owner_id IS NULL OR (i.owner_id = u.owner_id AND i.lease_epoch = u.lease_epoch))
RETURNING i.instance_id,
          (SELECT t.fire_at FROM timers AS t WHERE t.instance_id = i.instance_id) AS fire_at"""


def _write_rest(events: str, timers: str, channel: str, chunks: str, audit: int | None) -> str:
    """The statement's tail, after a CTE ``touched`` (instance_id, fire_at as it was) of the
    instances it wrote: their events (only theirs: an instance that was not written gets
    none, so no unique violation ever escapes), their wake-ups that change (a delete of a
    missing row would still cost an index probe per instance), the notification, and the
    ids written (created ones flagged), so that the caller compares them with its plan; with
    ``audit``, the audit records too (:func:`.postgres_audit.extend_chains`, parameters from
    that number)."""
    chains = "" if audit is None else f",\n{extend_chains(audit)}"
    return f""",
written AS (
    INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)
    SELECT u.tenant_id, u.instance_id, u.seq, u.type, u.data, u.recorded_at
    FROM unnest({events}::events[]) AS u
    WHERE u.instance_id IN (SELECT instance_id FROM touched)),
wakes AS (
    SELECT w.instance_id, w.tenant_id, w.fire_at, t.fire_at AS was
    FROM unnest({timers}::timers[]) AS w JOIN touched AS t USING (instance_id)),
timers_set AS (
    INSERT INTO timers (instance_id, tenant_id, fire_at)
    SELECT instance_id, tenant_id, fire_at FROM wakes
    WHERE fire_at IS NOT NULL AND fire_at IS DISTINCT FROM was
    ON CONFLICT (instance_id) DO UPDATE SET fire_at = excluded.fire_at),
timers_cleared AS (
    DELETE FROM timers AS t USING wakes AS w
    WHERE t.instance_id = w.instance_id AND w.fire_at IS NULL AND w.was IS NOT NULL){chains}
SELECT instance_id, created FROM touched
UNION ALL
SELECT NULL, NULL FROM (SELECT pg_notify({channel}, chunk) FROM unnest({chunks}::text[])
                        AS chunk) AS notified"""


def _update_and_write(audit: bool) -> str:
    return f"""
WITH updated AS ({_update_instances("$1", "$2")}),
touched AS (SELECT instance_id, fire_at, false AS created FROM updated)
{_write_rest("$3", "$4", "$5", "$6", 7 if audit else None)}"""


def _create_update_and_write(audit: bool) -> str:
    # A creation that did not insert (the id exists: a race lost, or another tenant's) is
    # missing from ``touched``, so its events are left out too.
    return f"""
WITH created AS ({_insert_instances("$1", "$2")}),
updated AS ({_update_instances("$3", "$4")}),
touched AS (SELECT instance_id, NULL::timestamptz AS fire_at, true AS created FROM created
            UNION ALL
            SELECT instance_id, fire_at, false FROM updated)
{_write_rest("$5", "$6", "$7", "$8", 9 if audit else None)}"""


# A batch's writes to instances, events and timers, its notification and its audit records,
# in one round trip: a data-modifying WITH runs to completion whether or not the query reads
# it, and NOTIFY is delivered at commit either way. The batch's created and updated instances
# are distinct rows (a batch that creates an instance and moves it on writes it once, created
# in its final state). One statement for batches that only update (the appends that move
# sagas on), one for those that create too; each with the audit records or without (most
# batches record none).
UPDATE_INSTANCES_AND_EVENTS: Final = _update_and_write(audit=False)
UPDATE_INSTANCES_AND_EVENTS_AUDITED: Final = _update_and_write(audit=True)
WRITE_INSTANCES_AND_EVENTS: Final = _create_update_and_write(audit=False)
WRITE_INSTANCES_AND_EVENTS_AUDITED: Final = _create_update_and_write(audit=True)
# A batch without audit records, outbox messages or start keys, in one round trip: the same
# write as UPDATE_INSTANCES_AND_EVENTS (WRITE_INSTANCES_AND_EVENTS when it creates) inside a
# function that sets the tenants for its own implicit transaction and rolls it back, raising
# BATCH_PLAN_FAILED, when an instance was not where the batch expected it or a creation lost
# its race (migration 0009). The tenants are the last parameter.
UPDATE_BATCH: Final = """
SELECT written_instance_id, written_created
FROM saga_update_batch($1::instances[], $2::bigint[], $3::events[], $4::timers[], $5::text,
                       $6::text[], $7::text[])"""
WRITE_BATCH: Final = """
SELECT written_instance_id, written_created
FROM saga_write_batch($1::instances[], $2::float8[], $3::instances[], $4::bigint[],
                      $5::events[], $6::timers[], $7::text, $8::text[], $9::text[])"""
BATCH_PLAN_FAILED: Final = "SG001"
# The same two with an audited batch's records, when the store knows its tenants' chain heads
# (store.chain_heads): the records' rows, the heads they were chained to and those they move
# to; a head moved meanwhile rolls the batch back with AUDIT_HEAD_MOVED (migration 0010).
UPDATE_AUDITED_BATCH: Final = """
SELECT written_instance_id, written_created
FROM saga_update_audited_batch($1::instances[], $2::bigint[], $3::events[], $4::timers[],
                               $5::text, $6::text[], $7::text[], $8::audit_log[],
                               $9::audit_heads[], $10::audit_heads[])"""
WRITE_AUDITED_BATCH: Final = """
SELECT written_instance_id, written_created
FROM saga_write_audited_batch($1::instances[], $2::float8[], $3::instances[], $4::bigint[],
                              $5::events[], $6::timers[], $7::text, $8::text[], $9::text[],
                              $10::audit_log[], $11::audit_heads[], $12::audit_heads[])"""
AUDIT_HEAD_MOVED: Final = "SG002"
# A message id already in the outbox is the same message written again: keep the first.
INSERT_OUTBOX: Final = """
INSERT INTO outbox
    (tenant_id, instance_id, message_id, exchange, routing_key, body, headers, created_at,
     sealed_with)
SELECT u.tenant_id, u.instance_id, u.message_id, u.exchange, u.routing_key, u.body,
       u.headers::jsonb, u.created_at, u.sealed_with
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
            $7::text[], $8::timestamptz[], $9::text[])
     AS u (tenant_id, instance_id, message_id, exchange, routing_key, body, headers, created_at,
           sealed_with)
ON CONFLICT (message_id) DO NOTHING"""
