-- Participant services (per tenant), claims on outbox rows, node-wide shared secrets.

CREATE TABLE participants (
    tenant_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    config      TEXT    NOT NULL CHECK (json_valid(config)),
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A relay claims rows for a while instead of holding row locks across the publish.
ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;

CREATE TABLE shared_secrets (
    name        TEXT    PRIMARY KEY,
    value       BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);
