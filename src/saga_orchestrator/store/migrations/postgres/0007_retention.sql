-- Retention of old terminal instances (a cluster chore). Events stay append-only for every
-- writer except the retention purge, which deletes whole histories of terminal instances and
-- says so for its own transaction only (SET LOCAL saga.retention = 'on').

CREATE OR REPLACE FUNCTION saga_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('saga.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
-- No index on updated_at: it changes with every append, and indexing it would make every
-- update of an instance row a non-HOT update. The purge runs hourly and scans.
