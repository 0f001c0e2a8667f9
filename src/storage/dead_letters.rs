//! The `dead_letters` table: updates set aside because handling them
//! crashed their session every time it was tried.
//!
//! Setting one aside marks its inbox row done in the same write, so that no
//! start replays it into the same crash. Taking one back (a retry) deletes
//! it and marks the inbox row not done again, in one write: the update is
//! then replayed at the next start, or handed over at once by the running
//! daemon that asked.

use diesel::prelude::*;

use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;

use super::schema::{dead_letters, inbox};
use super::{Conn, Pools, Storage, StorageError, now_millis};

/// An update set aside, and why.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = dead_letters)]
pub struct DeadLetter {
    pub update_id: i64,
    pub chat_id: Option<i64>,
    /// The update's JSON, as Telegram sent it.
    pub body: String,
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl DeadLetter {
    /// A dead letter made now.
    pub fn new(
        update_id: i64,
        chat_id: Option<i64>,
        body: String,
        error: String,
        attempts: u32,
    ) -> Self {
        DeadLetter {
            update_id,
            chat_id,
            body,
            error,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            created_at: now_millis(),
        }
    }
}

impl Storage {
    /// Sets an update aside and marks it done in the inbox, in one write.
    pub async fn dead_letter_put(&self, letter: DeadLetter) -> Result<(), StorageError> {
        self.write(move |conn| {
            let now = now_millis();
            on_conn!(conn, |conn| {
                diesel::insert_into(dead_letters::table)
                    .values(&letter)
                    .on_conflict(dead_letters::update_id)
                    .do_update()
                    .set((
                        dead_letters::error.eq(&letter.error),
                        dead_letters::attempts.eq(letter.attempts),
                        dead_letters::created_at.eq(letter.created_at),
                    ))
                    .execute(conn)?;
                diesel::update(inbox::table.find(letter.update_id))
                    .set(inbox::done_at.eq(now))
                    .execute(conn)?;
            });
            Ok(())
        })
        .await
    }

    /// The dead letters, newest first, at most `limit`.
    pub async fn dead_letters_list(&self, limit: i64) -> Result<Vec<DeadLetter>, StorageError> {
        self.blocking(move |pools| {
            Ok(with_conn!(pools, |conn| dead_letters::table
                .order(dead_letters::created_at.desc())
                .limit(limit)
                .select(DeadLetter::as_select())
                .load(conn)?))
        })
        .await
    }

    /// How many updates are set aside.
    pub async fn dead_letters_count(&self) -> Result<i64, StorageError> {
        self.blocking(|pools| {
            Ok(with_conn!(pools, |conn| dead_letters::table
                .count()
                .get_result(conn)?))
        })
        .await
    }

    /// Takes a dead letter back for a retry: deletes it and marks its inbox
    /// row not done, in one write. `None`: there is no such dead letter.
    pub async fn dead_letter_take(
        &self,
        update_id: i64,
    ) -> Result<Option<DeadLetter>, StorageError> {
        self.write(move |conn| {
            Ok(on_conn!(conn, |conn| {
                let letter: Option<DeadLetter> = dead_letters::table
                    .find(update_id)
                    .select(DeadLetter::as_select())
                    .get_result(conn)
                    .optional()?;
                if letter.is_some() {
                    diesel::delete(dead_letters::table.find(update_id)).execute(conn)?;
                    diesel::update(inbox::table.find(update_id))
                        .set(inbox::done_at.eq(None::<i64>))
                        .execute(conn)?;
                }
                letter
            }))
        })
        .await
    }

    /// Drops a dead letter for good; false if there was none.
    pub async fn dead_letter_drop(&self, update_id: i64) -> Result<bool, StorageError> {
        self.write(move |conn| {
            Ok(on_conn!(conn, |conn| diesel::delete(
                dead_letters::table.find(update_id)
            )
            .execute(conn)?)
                > 0)
        })
        .await
    }
}
