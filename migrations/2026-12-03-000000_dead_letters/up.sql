-- Updates set aside because handling them crashed their session every time
-- it was tried: kept for an operator to look at, retry or drop.
CREATE TABLE dead_letters (
    update_id BIGINT PRIMARY KEY NOT NULL,
    chat_id BIGINT,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at BIGINT NOT NULL
);
