-- Participant services (per tenant), claims on outbox rows, node-wide shared secrets.

CREATE TABLE participants (
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    config      jsonb       NOT NULL,
    version     integer     NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A relay claims rows for a while instead of holding row locks across the publish; the
-- claim's expiry is judged by the database clock.
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;

CREATE TABLE shared_secrets (
    name        text        PRIMARY KEY,
    value       bytea       NOT NULL,
    created_at  timestamptz NOT NULL
);
