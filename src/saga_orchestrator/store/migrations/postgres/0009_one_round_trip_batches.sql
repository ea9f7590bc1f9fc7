-- Batches that add no audit record, outbox message or start key (the appends of steps, and
-- starts without an idempotency key outside the API) in one round trip instead of three
-- (BEGIN with the tenants, the write, COMMIT). Each function sets the tenants for the
-- statement's own implicit transaction and runs the same write as its statement in
-- postgres_sql (a test keeps them alike). When the plan the batch was written from did not
-- hold (an instance moved on, or a creation lost its race), nothing of the batch may stay:
-- the function raises SG001, the whole transaction rolls back, and the store plans the batch
-- again from the locked rows. SECURITY INVOKER (the default): they run as saga_app, under
-- row-level security.

-- postgres_sql.UPDATE_INSTANCES_AND_EVENTS: a batch that only moves instances on.
CREATE FUNCTION saga_update_batch(
    instances[], bigint[], events[], timers[], text, text[], tenants text[]
) RETURNS TABLE (written_instance_id text, written_created boolean)
LANGUAGE plpgsql AS $function$
DECLARE
    answered bigint;
BEGIN
    PERFORM set_config('saga.tenants', tenants::text, true);
    RETURN QUERY
    WITH updated AS (
    UPDATE instances AS i
    SET status = u.status, current_nodes = u.current_nodes, updated_at = u.updated_at,
        last_seq = u.last_seq,
        -- Settling gives the lease up (whoever acts next claims it). Appends leave the expiry
        -- alone (renewals extend it in batches), so an update that changes no indexed column
        -- stays a HOT update.
        owner_id = CASE WHEN u.status IN ('running', 'compensating') THEN i.owner_id END,
        lease_expires_at = CASE WHEN u.status IN ('running', 'compensating')
                                THEN i.lease_expires_at END
    FROM unnest($1::instances[], $2::bigint[])
         AS u (instance_id, tenant_id, definition_name, definition_version,
               status, current_nodes, last_seq, created_at, updated_at, parent_instance_id,
               parent_node, idempotency_key, owner_id, lease_epoch, lease_expires_at, takeovers,
               quarantined_at, expected_seq)
    WHERE i.instance_id = u.instance_id AND i.tenant_id = u.tenant_id
      AND i.last_seq = u.expected_seq
      AND (u.owner_id IS NULL OR (i.owner_id = u.owner_id AND i.lease_epoch = u.lease_epoch))
    RETURNING i.instance_id,
              (SELECT t.fire_at FROM timers AS t WHERE t.instance_id = i.instance_id) AS fire_at),
    touched AS (SELECT instance_id, fire_at, false AS created FROM updated)
    ,
    written AS (
        INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)
        SELECT u.tenant_id, u.instance_id, u.seq, u.type, u.data, u.recorded_at
        FROM unnest($3::events[]) AS u
        WHERE u.instance_id IN (SELECT instance_id FROM touched)),
    wakes AS (
        SELECT w.instance_id, w.tenant_id, w.fire_at, t.fire_at AS was
        FROM unnest($4::timers[]) AS w JOIN touched AS t USING (instance_id)),
    timers_set AS (
        INSERT INTO timers (instance_id, tenant_id, fire_at)
        SELECT instance_id, tenant_id, fire_at FROM wakes
        WHERE fire_at IS NOT NULL AND fire_at IS DISTINCT FROM was
        ON CONFLICT (instance_id) DO UPDATE SET fire_at = excluded.fire_at),
    timers_cleared AS (
        DELETE FROM timers AS t USING wakes AS w
        WHERE t.instance_id = w.instance_id AND w.fire_at IS NULL AND w.was IS NOT NULL)
    SELECT instance_id, created FROM touched
    UNION ALL
    SELECT NULL, NULL FROM (SELECT pg_notify($5, chunk) FROM unnest($6::text[])
                            AS chunk) AS notified;
    GET DIAGNOSTICS answered = ROW_COUNT;
    -- One row per instance written, and one per notification payload.
    IF answered - cardinality($6) <> cardinality($1) THEN
        RAISE EXCEPTION 'an instance of the batch moved on' USING ERRCODE = 'SG001';
    END IF;
END
$function$;

-- postgres_sql.WRITE_INSTANCES_AND_EVENTS: a batch that creates instances too.
CREATE FUNCTION saga_write_batch(
    instances[], float8[], instances[], bigint[], events[], timers[], text, text[],
    tenants text[]
) RETURNS TABLE (written_instance_id text, written_created boolean)
LANGUAGE plpgsql AS $function$
DECLARE
    answered bigint;
BEGIN
    PERFORM set_config('saga.tenants', tenants::text, true);
    RETURN QUERY
    WITH created AS (
    INSERT INTO instances
        (instance_id, tenant_id, definition_name, definition_version, status, current_nodes,
         last_seq, created_at, updated_at, parent_instance_id, parent_node, idempotency_key,
         owner_id, lease_epoch, lease_expires_at)
    SELECT u.instance_id, u.tenant_id, u.definition_name, u.definition_version, u.status,
           u.current_nodes, u.last_seq, u.created_at, u.updated_at,
           u.parent_instance_id, u.parent_node, u.idempotency_key,
           -- An owner only while unfinished: a settled instance waits for whoever acts next.
           CASE WHEN u.status IN ('running', 'compensating') THEN u.owner_id END,
           CASE WHEN u.owner_id IS NULL THEN 0 ELSE 1 END,
           CASE WHEN u.owner_id IS NOT NULL AND u.status IN ('running', 'compensating')
                THEN now() + make_interval(secs => u.lease_ttl) END
    FROM unnest($1::instances[], $2::float8[])
         AS u (instance_id, tenant_id, definition_name, definition_version,
               status, current_nodes, last_seq, created_at, updated_at, parent_instance_id,
               parent_node, idempotency_key, owner_id, lease_epoch, lease_expires_at, takeovers,
               quarantined_at, lease_ttl)
    ON CONFLICT (instance_id) DO NOTHING
    RETURNING instance_id),
    updated AS (
    UPDATE instances AS i
    SET status = u.status, current_nodes = u.current_nodes, updated_at = u.updated_at,
        last_seq = u.last_seq,
        -- Settling gives the lease up (whoever acts next claims it). Appends leave the expiry
        -- alone (renewals extend it in batches), so an update that changes no indexed column
        -- stays a HOT update.
        owner_id = CASE WHEN u.status IN ('running', 'compensating') THEN i.owner_id END,
        lease_expires_at = CASE WHEN u.status IN ('running', 'compensating')
                                THEN i.lease_expires_at END
    FROM unnest($3::instances[], $4::bigint[])
         AS u (instance_id, tenant_id, definition_name, definition_version,
               status, current_nodes, last_seq, created_at, updated_at, parent_instance_id,
               parent_node, idempotency_key, owner_id, lease_epoch, lease_expires_at, takeovers,
               quarantined_at, expected_seq)
    WHERE i.instance_id = u.instance_id AND i.tenant_id = u.tenant_id
      AND i.last_seq = u.expected_seq
      AND (u.owner_id IS NULL OR (i.owner_id = u.owner_id AND i.lease_epoch = u.lease_epoch))
    RETURNING i.instance_id,
              (SELECT t.fire_at FROM timers AS t WHERE t.instance_id = i.instance_id) AS fire_at),
    touched AS (SELECT instance_id, NULL::timestamptz AS fire_at, true AS created FROM created
                UNION ALL
                SELECT instance_id, fire_at, false FROM updated)
    ,
    written AS (
        INSERT INTO events (tenant_id, instance_id, seq, type, data, recorded_at)
        SELECT u.tenant_id, u.instance_id, u.seq, u.type, u.data, u.recorded_at
        FROM unnest($5::events[]) AS u
        WHERE u.instance_id IN (SELECT instance_id FROM touched)),
    wakes AS (
        SELECT w.instance_id, w.tenant_id, w.fire_at, t.fire_at AS was
        FROM unnest($6::timers[]) AS w JOIN touched AS t USING (instance_id)),
    timers_set AS (
        INSERT INTO timers (instance_id, tenant_id, fire_at)
        SELECT instance_id, tenant_id, fire_at FROM wakes
        WHERE fire_at IS NOT NULL AND fire_at IS DISTINCT FROM was
        ON CONFLICT (instance_id) DO UPDATE SET fire_at = excluded.fire_at),
    timers_cleared AS (
        DELETE FROM timers AS t USING wakes AS w
        WHERE t.instance_id = w.instance_id AND w.fire_at IS NULL AND w.was IS NOT NULL)
    SELECT instance_id, created FROM touched
    UNION ALL
    SELECT NULL, NULL FROM (SELECT pg_notify($7, chunk) FROM unnest($8::text[])
                            AS chunk) AS notified;
    GET DIAGNOSTICS answered = ROW_COUNT;
    -- One row per instance created or updated, and one per notification payload.
    IF answered - cardinality($8) <> cardinality($1) + cardinality($3) THEN
        RAISE EXCEPTION 'an instance of the batch moved on or was created meanwhile'
            USING ERRCODE = 'SG001';
    END IF;
END
$function$;

GRANT EXECUTE ON FUNCTION saga_update_batch(instances[], bigint[], events[], timers[], text,
                                            text[], text[]) TO saga_app;
GRANT EXECUTE ON FUNCTION saga_write_batch(instances[], float8[], instances[], bigint[],
                                           events[], timers[], text, text[], text[])
    TO saga_app;
