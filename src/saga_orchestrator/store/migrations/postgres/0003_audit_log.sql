-- The audit log: one hash chain per tenant, append-only.

CREATE TABLE audit_log (
    tenant_id   text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target_type text        NOT NULL,
    target_id   text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('succeeded', 'refused', 'failed')),
    reason      text,
    request_id  text,
    details     jsonb       NOT NULL,
    prev_hash   text        NOT NULL,
    hash        text        NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at);

-- Each tenant's newest record: appends lock it (FOR UPDATE), so concurrent writers on any
-- node extend the chain one after another; a removed tail shows against it.
CREATE TABLE audit_heads (
    tenant_id text   PRIMARY KEY,
    seq       bigint NOT NULL,
    hash      text   NOT NULL
);

CREATE FUNCTION saga_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION saga_audit_append_only();
