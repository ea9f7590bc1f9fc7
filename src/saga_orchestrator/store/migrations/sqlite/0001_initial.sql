-- Saga Orchestrator, SQLite schema v1.
-- Keep the logical schema identical to migrations/postgres/0001_initial.sql.
-- Timestamps are INTEGER microseconds since the Unix epoch, UTC: exact and ordered.
-- JSON columns are TEXT holding a JSON document.

CREATE TABLE definitions (
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    major       INTEGER NOT NULL,
    minor       INTEGER NOT NULL,
    patch       INTEGER NOT NULL,
    prerelease  TEXT,
    body        BLOB    NOT NULL,
    digest      TEXT    NOT NULL,
    deprecated  INTEGER NOT NULL DEFAULT 0 CHECK (deprecated IN (0, 1)),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);

CREATE TABLE instances (
    instance_id        TEXT    PRIMARY KEY NOT NULL,
    tenant_id          TEXT    NOT NULL,
    definition_name    TEXT    NOT NULL,
    definition_version TEXT    NOT NULL,
    -- Mirrors saga_orchestrator.store.protocol.InstanceStatus (a test keeps them in step).
    status             TEXT    NOT NULL CONSTRAINT instances_status_check CHECK (
        status IN ('running', 'compensating', 'completed', 'compensated', 'failed',
                   'cancelled', 'timed_out')
    ),
    current_nodes      TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(current_nodes)),
    last_seq           INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    parent_instance_id TEXT,
    parent_node        TEXT,
    idempotency_key    TEXT,
    -- Ownership lease, used by clustering.
    owner_id           TEXT,
    lease_epoch        INTEGER NOT NULL DEFAULT 0,
    lease_expires_at   INTEGER
);

CREATE INDEX instances_tenant_created_idx
    ON instances (tenant_id, created_at DESC, instance_id DESC);
CREATE INDEX instances_tenant_status_idx
    ON instances (tenant_id, status, created_at DESC, instance_id DESC);
CREATE INDEX instances_tenant_definition_idx
    ON instances (tenant_id, definition_name, definition_version, created_at DESC,
                  instance_id DESC);
CREATE INDEX instances_unfinished_idx
    ON instances (instance_id) WHERE status IN ('running', 'compensating');

-- No foreign key to instances: append() writes events only for an instance row it holds
-- locked or creates in the same transaction, and a per-row check would double the cost of
-- the hottest insert.
CREATE TABLE events (
    tenant_id   TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    seq         INTEGER NOT NULL CHECK (seq > 0),
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL CHECK (json_valid(data)),
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;

-- One durable timer per instance: its next wake-up.
CREATE TABLE timers (
    instance_id TEXT    PRIMARY KEY NOT NULL
                        REFERENCES instances (instance_id) ON DELETE CASCADE,
    tenant_id   TEXT    NOT NULL,
    fire_at     INTEGER NOT NULL
);

CREATE INDEX timers_fire_at_idx ON timers (fire_at, instance_id);

CREATE TABLE start_keys (
    tenant_id       TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    instance_id     TEXT    NOT NULL,
    request_digest  TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    message_id   TEXT    NOT NULL UNIQUE,
    exchange     TEXT    NOT NULL,
    routing_key  TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    headers      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(headers)),
    created_at   INTEGER NOT NULL,
    published_at INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
