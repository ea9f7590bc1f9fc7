-- Instance leases for clustering (the owner_id / lease_epoch / lease_expires_at columns exist
-- since v1): how often an instance's lease was taken over from an owner that stopped renewing
-- it, and when it was quarantined as poison (it crashed its owners too often).

ALTER TABLE instances
    ADD COLUMN takeovers      integer     NOT NULL DEFAULT 0,
    ADD COLUMN quarantined_at timestamptz;

-- Claims look for unfinished instances whose lease is missing or expired, oldest expiry
-- first; this keeps that scan off the instances that are live and renewed.
CREATE INDEX instances_claimable_idx
    ON instances (lease_expires_at NULLS FIRST, instance_id)
    WHERE status IN ('running', 'compensating') AND quarantined_at IS NULL;
