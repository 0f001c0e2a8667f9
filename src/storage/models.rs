//! Rows as the rest of the bot sees them.

use diesel::prelude::*;

use super::schema::{ai_turns, inbox, jobs, users};

/// An update as journaled: its id, its chat and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    pub update_id: i64,
    pub chat_id: Option<i64>,
    pub body: String,
}

#[derive(Insertable)]
#[diesel(table_name = inbox)]
pub(crate) struct NewInbox<'a> {
    pub update_id: i64,
    pub chat_id: Option<i64>,
    pub body: &'a str,
    pub received_at: i64,
}

/// A chat's profile, figures and conversation state.
/// Saved whole: a field that is `None` is stored as NULL, which also keeps
/// the upsert's SQL the same every time, so it is prepared once.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true)]
pub struct UserRecord {
    pub user_id: i64,
    pub chat_id: i64,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub language: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub messages: i64,
    pub ai_questions: i64,
    pub reports: i64,
    /// The conversation state, JSON.
    pub state: String,
}

impl UserRecord {
    /// A record for a chat seen for the first time now.
    pub fn new(chat_id: i64, now_millis: i64) -> UserRecord {
        UserRecord {
            user_id: chat_id,
            chat_id,
            username: None,
            first_name: None,
            language: None,
            first_seen: now_millis,
            last_seen: now_millis,
            messages: 0,
            ai_questions: 0,
            reports: 0,
            state: "{}".into(),
        }
    }
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = ai_turns)]
pub struct Turn {
    pub user_id: i64,
    pub seq: i64,
    pub question: String,
    pub answer: String,
    pub created_at: i64,
}

/// A job of a worker pool as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub user_id: i64,
    pub chat_id: i64,
    pub priority: i32,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub created_at: i64,
    pub updated_at: i64,
    pub error: Option<String>,
    /// The worker running it, in a cluster ([`crate::storage::claims`]).
    pub claimed_by: Option<String>,
    /// Until when (the database's clock, Unix ms) that claim holds.
    pub lease_until: Option<i64>,
}

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub user_id: i64,
    pub chat_id: i64,
    pub priority: i32,
    pub payload: String,
}

/// Job states as stored.
pub mod job_status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
}
