-- Outbox bodies at rest (store/encryption.py, store/sqlite_extras.py). With encryption keys
-- configured, a body is written sealed and sealed_with names the key that sealed it (NULL: the
-- body is stored as sent). Marking a message published erases its body.

ALTER TABLE outbox ADD COLUMN sealed_with TEXT;

-- Messages published before this version still hold their bodies: erase them as publishing
-- now does.
UPDATE outbox SET body = X'' WHERE published_at IS NOT NULL AND length(body) > 0;
