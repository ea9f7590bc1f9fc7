-- Row-level security: a second wall between tenants, below the application's own filters.
--
-- The store never works as the login it connects with. Its connections switch (by a startup
-- parameter) to one of two roles without BYPASSRLS:
--   saga_app      everything done for tenants (API requests, the engine's appends): it sees
--                 and writes only the rows of the tenants named in the session setting
--                 saga.tenants, a text[] literal the store sets before each use; a session
--                 that names none sees nothing;
--   saga_cluster  the chores that span tenants (lease claims and renewals, timers, the
--                 outbox relay, retention, node registry): every row, but only the columns
--                 those chores change.
-- Tables are forced into RLS, so even their owner sees nothing through them unless it is a
-- superuser. Roles are shared by every database of the server, hence the guarded creation.
--
-- For later migrations: a new table with tenants' rows needs the same ENABLE/FORCE, both
-- policies and its grants (tests/integration/store/test_row_level_security.py fails until it
-- has them); a data migration run by a login that is not a superuser sees no rows of a forced
-- table unless it lifts FORCE inside its own transaction and restores it before committing.

DO $$
BEGIN
    CREATE ROLE saga_app NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created by another database's migration (possibly at the same moment)
END
$$;

DO $$
BEGIN
    CREATE ROLE saga_cluster NOLOGIN NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The login that migrates is the one the service runs with unless told otherwise; it must be
-- able to switch into both roles.
GRANT saga_app, saga_cluster TO CURRENT_USER;

-- The tenants a saga_app session may touch. Unset or empty: none.
CREATE FUNCTION saga_tenants() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('saga.tenants', true), ''), '{}')::text[]
$$;

GRANT USAGE ON SCHEMA public TO saga_app, saga_cluster;
GRANT EXECUTE ON FUNCTION saga_tenants() TO saga_app, saga_cluster;
GRANT SELECT ON schema_migrations TO saga_app, saga_cluster;

-- What each role may do, table by table. saga_app can never change a row's tenant, identity
-- or history: events and the audit log take inserts only.
GRANT SELECT, INSERT, UPDATE (deprecated) ON definitions TO saga_app;
GRANT SELECT, INSERT,
      UPDATE (status, current_nodes, last_seq, updated_at, owner_id, lease_epoch,
              lease_expires_at, takeovers, quarantined_at)
    ON instances TO saga_app;
GRANT SELECT, INSERT ON events TO saga_app;
GRANT SELECT, INSERT, UPDATE (fire_at), DELETE ON timers TO saga_app;
GRANT SELECT, INSERT ON start_keys TO saga_app;
GRANT SELECT, INSERT ON outbox TO saga_app;
GRANT USAGE ON SEQUENCE outbox_id_seq TO saga_app;
GRANT SELECT, INSERT, UPDATE (config, version, updated_at), DELETE ON participants TO saga_app;
GRANT SELECT, INSERT, UPDATE (config, version, updated_at), DELETE ON tenant_limits TO saga_app;
GRANT SELECT, INSERT ON audit_log TO saga_app;
GRANT SELECT, INSERT, UPDATE (seq, hash) ON audit_heads TO saga_app;

GRANT SELECT ON definitions, events, timers, start_keys, audit_log, audit_heads
    TO saga_cluster;
GRANT SELECT, UPDATE (owner_id, lease_epoch, lease_expires_at, takeovers, quarantined_at),
      DELETE
    ON instances TO saga_cluster;
GRANT DELETE ON events, timers, start_keys TO saga_cluster;
GRANT SELECT, UPDATE (claimed_until, published_at, attempts), DELETE ON outbox TO saga_cluster;
GRANT SELECT, INSERT, UPDATE, DELETE ON nodes, leader_leases TO saga_cluster;
GRANT SELECT, INSERT ON shared_secrets TO saga_cluster;

-- The walls. Every table holding a tenant's rows gets one policy per role.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['definitions', 'instances', 'events', 'timers', 'start_keys',
                                'outbox', 'participants', 'tenant_limits', 'audit_log',
                                'audit_heads']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
        EXECUTE format(
            'CREATE POLICY tenant_rows ON %I TO saga_app '
            'USING (tenant_id = ANY (saga_tenants())) '
            'WITH CHECK (tenant_id = ANY (saga_tenants()))', name);
        EXECUTE format(
            'CREATE POLICY cluster_chores ON %I TO saga_cluster USING (true)', name);
    END LOOP;
END
$$;

-- Node-wide tables hold no tenant's data; saga_app has no grant on them at all.
ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE leader_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE shared_secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY cluster_chores ON nodes TO saga_cluster USING (true);
CREATE POLICY cluster_chores ON leader_leases TO saga_cluster USING (true);
CREATE POLICY cluster_chores ON shared_secrets TO saga_cluster USING (true);
