-- Cluster membership and the leader lease. An embedded store serves one node; the tables
-- exist so both backends share one schema version.

CREATE TABLE nodes (
    node_id       TEXT    PRIMARY KEY NOT NULL,
    address       TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL
);

CREATE TABLE leader_leases (
    name        TEXT    PRIMARY KEY NOT NULL,
    holder      TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
