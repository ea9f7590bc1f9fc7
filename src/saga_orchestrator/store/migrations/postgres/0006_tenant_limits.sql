-- Per-tenant limit overrides set through the admin API: one JSON document per tenant, read
-- by every node (each caches it for a few seconds). A missing row: the node's defaults.

CREATE TABLE tenant_limits (
    tenant_id   text        PRIMARY KEY,
    config      jsonb       NOT NULL CHECK (jsonb_typeof(config) = 'object'),
    version     integer     NOT NULL CHECK (version > 0),
    updated_at  timestamptz NOT NULL
);
