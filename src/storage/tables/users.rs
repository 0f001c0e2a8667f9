//! The `users` table: each user's record and figures, saved by their
//! session.

use super::super::*;

impl Storage {
    pub async fn user_load(&self, user_id: i64) -> Result<Option<UserRecord>, StorageError> {
        self.blocking(move |pools| {
            Ok(with_conn!(pools, |conn| users::table
                .find(user_id)
                .select(UserRecord::as_select())
                .get_result(conn)
                .optional()?))
        })
        .await
    }

    /// Inserts or replaces records, in one transaction.
    pub async fn users_save(&self, records: Vec<UserRecord>) -> Result<(), StorageError> {
        self.write(move |conn| {
            on_conn!(conn, |conn| {
                for record in &records {
                    upsert_user!(conn, record)?;
                }
                Ok::<_, StorageError>(())
            })
        })
        .await
    }

    pub async fn users_count(&self) -> Result<i64, StorageError> {
        self.blocking(|pools| {
            Ok(with_conn!(pools, |conn| users::table
                .count()
                .get_result(conn)?))
        })
        .await
    }

    /// Users seen since `since` (Unix ms).
    pub async fn users_active_since(&self, since: i64) -> Result<i64, StorageError> {
        self.blocking(move |pools| {
            Ok(with_conn!(pools, |conn| users::table
                .filter(users::last_seen.ge(since))
                .count()
                .get_result(conn)?))
        })
        .await
    }
}
