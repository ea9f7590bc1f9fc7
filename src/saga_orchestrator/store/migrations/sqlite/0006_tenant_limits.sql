-- Per-tenant limit overrides set through the admin API: one JSON document per tenant.
-- A missing row: the node's defaults.

CREATE TABLE tenant_limits (
    tenant_id   TEXT    PRIMARY KEY NOT NULL,
    config      TEXT    NOT NULL CHECK (json_valid(config) AND json_type(config) = 'object'),
    version     INTEGER NOT NULL CHECK (version > 0),
    updated_at  INTEGER NOT NULL
);
