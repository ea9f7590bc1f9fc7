-- Instance leases for clustering. An embedded store serves one node, which owns every
-- instance; the columns exist so both backends share one schema version.

ALTER TABLE instances ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN quarantined_at INTEGER;
