-- Cluster membership and the leader lease.

-- Every node that serves this database: its heartbeat is judged by the database clock.
CREATE TABLE nodes (
    node_id       text        PRIMARY KEY,
    address       text        NOT NULL,
    version       text        NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL
);

-- One row per chore group: whoever holds it unexpired is the leader. The epoch rises with
-- every change of holder, so a deposed leader's writes can be fenced.
CREATE TABLE leader_leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    epoch       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);
