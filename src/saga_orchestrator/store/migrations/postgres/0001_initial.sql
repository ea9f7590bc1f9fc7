-- Saga Orchestrator, PostgreSQL schema v1.
-- Keep the logical schema identical to migrations/sqlite/0001_initial.sql.

CREATE TABLE definitions (
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    version     text        NOT NULL,
    major       integer     NOT NULL,
    minor       integer     NOT NULL,
    patch       integer     NOT NULL,
    prerelease  text,
    body        bytea       NOT NULL,
    digest      text        NOT NULL,
    deprecated  boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);

CREATE TABLE instances (
    instance_id        text        PRIMARY KEY,
    tenant_id          text        NOT NULL,
    definition_name    text        NOT NULL,
    definition_version text        NOT NULL,
    -- Mirrors saga_orchestrator.store.protocol.InstanceStatus (a test keeps them in step).
    status             text        NOT NULL CONSTRAINT instances_status_check CHECK (
        status IN ('running', 'compensating', 'completed', 'compensated', 'failed',
                   'cancelled', 'timed_out')
    ),
    current_nodes      jsonb       NOT NULL DEFAULT '[]',
    last_seq           bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    parent_instance_id text,
    parent_node        text,
    idempotency_key    text,
    -- Ownership lease, used by clustering.
    owner_id           text,
    lease_epoch        bigint      NOT NULL DEFAULT 0,
    lease_expires_at   timestamptz
)
-- Free space per page lets the frequent read-model updates stay HOT (no index churn).
WITH (fillfactor = 80);

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
    tenant_id   text        NOT NULL,
    instance_id text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

CREATE FUNCTION saga_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION saga_events_append_only();

-- One durable timer per instance: its next wake-up.
CREATE TABLE timers (
    instance_id text        PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    tenant_id   text        NOT NULL,
    fire_at     timestamptz NOT NULL
);

CREATE INDEX timers_fire_at_idx ON timers (fire_at, instance_id);

CREATE TABLE start_keys (
    tenant_id       text        NOT NULL,
    idempotency_key text        NOT NULL,
    instance_id     text        NOT NULL,
    request_digest  text,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    tenant_id    text        NOT NULL,
    instance_id  text        NOT NULL,
    message_id   text        NOT NULL UNIQUE,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    body         bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0
);

CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
