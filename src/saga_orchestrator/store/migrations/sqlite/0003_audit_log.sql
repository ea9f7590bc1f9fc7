-- The audit log: one hash chain per tenant, append-only.

CREATE TABLE audit_log (
    tenant_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL CHECK (seq > 0),
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target_type TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('succeeded', 'refused', 'failed')),
    reason      TEXT,
    request_id  TEXT,
    details     TEXT    NOT NULL CHECK (json_valid(details)),
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at);

-- Each tenant's newest record: a removed tail shows against it.
CREATE TABLE audit_heads (
    tenant_id TEXT    PRIMARY KEY NOT NULL,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: DELETE is not allowed');
END;
