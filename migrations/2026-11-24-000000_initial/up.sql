-- actorbot's schema. Written for both SQLite and PostgreSQL: integers are
-- BIGINT, times are Unix milliseconds, JSON is TEXT.

-- Durable intake: every update taken from Telegram, until answered and aged out.
CREATE TABLE inbox (
    update_id BIGINT PRIMARY KEY NOT NULL,
    chat_id BIGINT,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    done_at BIGINT
);
CREATE INDEX inbox_pending ON inbox (done_at, update_id);

-- One row per chat: profile, figures and conversation state.
CREATE TABLE users (
    user_id BIGINT PRIMARY KEY NOT NULL,
    chat_id BIGINT NOT NULL,
    username TEXT,
    first_name TEXT,
    language TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    messages BIGINT NOT NULL DEFAULT 0,
    ai_questions BIGINT NOT NULL DEFAULT 0,
    reports BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX users_last_seen ON users (last_seen);

-- The AI conversation: question and answer pairs, numbered per user.
CREATE TABLE ai_turns (
    user_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- Durable jobs of the worker pools (PDF reports, photo PDFs).
CREATE TABLE jobs (
    id BIGINT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    chat_id BIGINT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX jobs_status ON jobs (status, priority, id);
