//! The `ai_turns` table: each user's conversation with the assistant.

use super::super::*;

impl Storage {
    /// The last `limit` turns of a user, oldest first.
    pub async fn turns_recent(&self, user_id: i64, limit: i64) -> Result<Vec<Turn>, StorageError> {
        self.blocking(move |pools| {
            let mut turns: Vec<Turn> = with_conn!(pools, |conn| ai_turns::table
                .filter(ai_turns::user_id.eq(user_id))
                .order(ai_turns::seq.desc())
                .limit(limit)
                .select(Turn::as_select())
                .load(conn)?);
            turns.reverse();
            Ok(turns)
        })
        .await
    }

    /// Appends a turn, and first saves the user's record when given: in
    /// one transaction, so an exchange is never stored without its record.
    /// A user's turns are written by that user's session only, one at a
    /// time, so the next number cannot race.
    pub async fn exchange_save(
        &self,
        record: Option<UserRecord>,
        user_id: i64,
        question: String,
        answer: String,
    ) -> Result<(), StorageError> {
        self.write(move |conn| {
            on_conn!(conn, |conn| {
                if let Some(record) = &record {
                    upsert_user!(conn, record)?;
                }
                let last: Option<i64> = ai_turns::table
                    .filter(ai_turns::user_id.eq(user_id))
                    .select(diesel::dsl::max(ai_turns::seq))
                    .get_result(conn)?;
                diesel::insert_into(ai_turns::table)
                    .values(Turn {
                        user_id,
                        seq: last.unwrap_or(0) + 1,
                        question,
                        answer,
                        created_at: now_millis(),
                    })
                    .execute(conn)?;
                Ok::<_, StorageError>(())
            })
        })
        .await
    }

    /// Forgets a user's conversation; answers how many turns went.
    pub async fn turns_clear(&self, user_id: i64) -> Result<usize, StorageError> {
        self.write(move |conn| {
            Ok(on_conn!(conn, |conn| diesel::delete(
                ai_turns::table.filter(ai_turns::user_id.eq(user_id))
            )
            .execute(conn)?))
        })
        .await
    }
}
