-- Outbox bodies at rest (store/encryption.py, store/postgres_extras.py). With encryption keys
-- configured, a body is written sealed and sealed_with names the key that sealed it (NULL: the
-- body is stored as sent). Marking a message published erases its body, so the relay's role
-- may now change both columns.

ALTER TABLE outbox ADD COLUMN sealed_with text;

GRANT UPDATE (body, sealed_with) ON outbox TO saga_cluster;

-- Messages published before this version still hold their bodies: erase them as publishing
-- now does. A login that is not a superuser sees no row of a forced table, so FORCE is lifted
-- for this transaction only (see 0008).
ALTER TABLE outbox NO FORCE ROW LEVEL SECURITY;
UPDATE outbox SET body = ''::bytea WHERE published_at IS NOT NULL AND body <> ''::bytea;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;
