-- Webhook mode in a cluster: an update any instance received and wrote to
-- the inbox, for the leader to route. The instance that received it adds
-- the row and notifies the channel actorbot_inbox in the same transaction;
-- the leader takes the rows in update_id order and deletes them as it does.
CREATE TABLE inbox_relay (
    update_id BIGINT PRIMARY KEY NOT NULL
);
