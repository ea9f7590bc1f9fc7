-- Retention of old terminal instances. Events stay append-only for every writer except the
-- retention purge, which marks its own transaction in retention_purge (set and cleared before
-- it commits, so no other connection ever sees the mark).

CREATE TABLE retention_purge (active INTEGER NOT NULL);

DROP TRIGGER events_no_delete;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM retention_purge WHERE active = 1)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;
