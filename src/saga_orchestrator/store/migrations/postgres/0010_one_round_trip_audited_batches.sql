-- Audited batches (every API call that changes something, a start above all) in one round
-- trip instead of four (BEGIN with the tenants, lock the chain heads, the write, COMMIT),
-- when the store already knows each audited tenant's chain head. The store computes the
-- records' hashes from the heads it knows; the write moves each head only from the very
-- (seq, hash) the records were chained to. A head another transaction moved meanwhile (another
-- node, an audit-only write) leaves its row alone, the function raises SG002, the whole
-- transaction rolls back, and the store takes its locked path, which reads the head under its
-- lock and learns it again. The head is moved before any record is inserted, so a concurrent
-- writer of the same chain waits on the head's row lock as it does on the locked path, and two
-- writers can never insert the same sequence.

-- Extend the tenants' chains from the heads the records were chained to: ``was`` holds those
-- heads, ``moved_to`` the heads the records move them to (both in tenant order).
CREATE FUNCTION saga_extend_chains(
    tenants text[], records audit_log[], was audit_heads[], moved_to audit_heads[]
) RETURNS void
LANGUAGE plpgsql AS $function$
DECLARE
    moved bigint;
BEGIN
    PERFORM set_config('saga.tenants', tenants::text, true);
    UPDATE audit_heads AS h SET seq = n.seq, hash = n.hash
    FROM unnest(was, moved_to) AS n (was_tenant_id, was_seq, was_hash, tenant_id, seq, hash)
    WHERE h.tenant_id = n.was_tenant_id AND h.tenant_id = n.tenant_id
      AND h.seq = n.was_seq AND h.hash = n.was_hash;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> cardinality(moved_to) THEN
        RAISE EXCEPTION 'an audit chain head moved' USING ERRCODE = 'SG002';
    END IF;
    INSERT INTO audit_log SELECT * FROM unnest(records);
END
$function$;

-- saga_update_batch with its audit records.
CREATE FUNCTION saga_update_audited_batch(
    instances[], bigint[], events[], timers[], text, text[], tenants text[],
    audit_log[], audit_heads[], audit_heads[]
) RETURNS TABLE (written_instance_id text, written_created boolean)
LANGUAGE plpgsql AS $function$
BEGIN
    PERFORM saga_extend_chains(tenants, $8, $9, $10);
    RETURN QUERY SELECT * FROM saga_update_batch($1, $2, $3, $4, $5, $6, tenants);
END
$function$;

-- saga_write_batch with its audit records.
CREATE FUNCTION saga_write_audited_batch(
    instances[], float8[], instances[], bigint[], events[], timers[], text, text[],
    tenants text[], audit_log[], audit_heads[], audit_heads[]
) RETURNS TABLE (written_instance_id text, written_created boolean)
LANGUAGE plpgsql AS $function$
BEGIN
    PERFORM saga_extend_chains(tenants, $10, $11, $12);
    RETURN QUERY SELECT * FROM saga_write_batch($1, $2, $3, $4, $5, $6, $7, $8, tenants);
END
$function$;

GRANT EXECUTE ON FUNCTION saga_extend_chains(text[], audit_log[], audit_heads[],
                                             audit_heads[]) TO saga_app;
GRANT EXECUTE ON FUNCTION saga_update_audited_batch(instances[], bigint[], events[], timers[],
                                                    text, text[], text[], audit_log[],
                                                    audit_heads[], audit_heads[]) TO saga_app;
GRANT EXECUTE ON FUNCTION saga_write_audited_batch(instances[], float8[], instances[],
                                                   bigint[], events[], timers[], text, text[],
                                                   text[], audit_log[], audit_heads[],
                                                   audit_heads[]) TO saga_app;
