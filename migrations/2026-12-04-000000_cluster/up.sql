-- The leader lease of a cluster (CLUSTER=on): who may poll, route and send,
-- until when (the database's clock, Unix milliseconds), and the fencing
-- token, raised at every change of holder and checked by every journal
-- write, so that a leader that lost the lease can no longer write.
CREATE TABLE cluster_lease (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The instances of a cluster and their last heartbeat, for /health.
CREATE TABLE cluster_instances (
    id TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    since BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL
);
