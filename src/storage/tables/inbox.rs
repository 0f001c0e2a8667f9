//! The `inbox` table: every update taken, journaled before its offset is
//! confirmed, and marked done once it is answered.

use super::super::*;

/// How long an answered update's id stays its own: Telegram numbers
/// updates in sequence, and picks a random id for the next one only after
/// a week without updates. A row answered longer ago than that, whose id
/// comes again, was not sent again: the id is a new update's.
pub const SAME_UPDATE_WITHIN: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Adds to `new` the ids of `rows` that were there already and are not
/// done, and those whose row was answered before [`SAME_UPDATE_WITHIN`]
/// (the row is taken over by the new update, not done); a batch sent again
/// is rare, so this costs queries only then.
macro_rules! pending_of_known {
    ($conn:expr, $rows:expr, $new:expr, $now:expr) => {
        // Known rows are those of a batch sent again, all answered within
        // the week as a rule: one query per chunk finds the rare stale
        // ones, and only those are taken over, a row at a time.
        let stale_before = $now - SAME_UPDATE_WITHIN.as_millis() as i64;
        let known: Vec<i64> = $rows
            .iter()
            .map(|row| row.update_id)
            .filter(|id| !$new.contains(id))
            .collect();
        let mut stale: HashSet<i64> = HashSet::new();
        for chunk in known.chunks(500) {
            let ids: Vec<i64> = inbox::table
                .filter(inbox::update_id.eq_any(chunk))
                .filter(inbox::done_at.lt(stale_before))
                .select(inbox::update_id)
                .load($conn)?;
            stale.extend(ids);
        }
        for row in $rows.iter().filter(|row| stale.contains(&row.update_id)) {
            diesel::update(inbox::table.find(row.update_id))
                .set((
                    inbox::chat_id.eq(row.chat_id),
                    inbox::body.eq(&row.body),
                    inbox::received_at.eq($now),
                    inbox::done_at.eq(None::<i64>),
                ))
                .execute($conn)?;
        }
        $new.extend(stale);
        for chunk in known.chunks(500) {
            let pending: Vec<i64> = inbox::table
                .filter(inbox::update_id.eq_any(chunk))
                .filter(inbox::done_at.is_null())
                .select(inbox::update_id)
                .load($conn)?;
            $new.extend(pending);
        }
    };
}

impl Storage {
    /// Journals updates and marks others answered in one write, which
    /// commits or fails as a whole; answers the ids of `rows` that are
    /// still to be answered: those not there before, and those there but
    /// not marked done (journaled by a run, or another instance, that
    /// stopped before answering them). A row already done is never
    /// answered again, whoever sends it again, unless it was answered
    /// before [`SAME_UPDATE_WITHIN`]: then the id is a new update's, which
    /// takes the row over. One write rather than two:
    /// on SQLite each write answered is a wake-up of the thread waiting
    /// for it.
    pub async fn inbox_journal(
        &self,
        rows: Vec<InboxRow>,
        done: Vec<i64>,
    ) -> Result<HashSet<i64>, StorageError> {
        self.write(move |conn| {
            let now = now_millis();
            fn new_row(row: &InboxRow, received_at: i64) -> NewInbox<'_> {
                NewInbox {
                    update_id: row.update_id,
                    chat_id: row.chat_id,
                    body: &row.body,
                    received_at,
                }
            }
            let mut new = HashSet::with_capacity(rows.len());
            match conn {
                // In process, a cached one-row statement per update is the
                // cheapest; a row already there is skipped.
                Conn::Sqlite(conn) => {
                    for row in &rows {
                        let inserted = diesel::insert_into(inbox::table)
                            .values(new_row(row, now))
                            .on_conflict_do_nothing()
                            .execute(conn)?;
                        if inserted > 0 {
                            new.insert(row.update_id);
                        }
                    }
                    pending_of_known!(conn, rows, new, now);
                    mark_done!(conn, done, now);
                }
                // Over the network, one statement and one round trip per
                // chunk, which answers the ids of the rows it wrote.
                Conn::Postgres(conn) => {
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        let inserted: Vec<i64> = diesel::insert_into(inbox::table)
                            .values(
                                chunk
                                    .iter()
                                    .map(|row| new_row(row, now))
                                    .collect::<Vec<_>>(),
                            )
                            .on_conflict_do_nothing()
                            .returning(inbox::update_id)
                            .get_results(conn)?;
                        new.extend(inserted);
                    }
                    pending_of_known!(conn, rows, new, now);
                    mark_done!(conn, done, now);
                }
            }
            Ok(new)
        })
        .await
    }

    /// Updates journaled and not answered, oldest first.
    pub async fn inbox_pending(&self) -> Result<Vec<InboxRow>, StorageError> {
        self.blocking(|pools| {
            let rows: Vec<(i64, Option<i64>, String)> = with_conn!(pools, |conn| inbox::table
                .filter(inbox::done_at.is_null())
                .order(inbox::update_id)
                .select((inbox::update_id, inbox::chat_id, inbox::body))
                .load(conn)?);
            Ok(rows
                .into_iter()
                .map(|(update_id, chat_id, body)| InboxRow {
                    update_id,
                    chat_id,
                    body,
                })
                .collect())
        })
        .await
    }

    pub async fn inbox_is_done(&self, update_id: i64) -> Result<bool, StorageError> {
        self.blocking(move |pools| {
            let done: Option<Option<i64>> = with_conn!(pools, |conn| inbox::table
                .find(update_id)
                .select(inbox::done_at)
                .get_result(conn)
                .optional()?);
            Ok(matches!(done, Some(Some(_))))
        })
        .await
    }

    /// Deletes answered rows older than `older_than` (Unix ms).
    pub async fn inbox_purge_done(&self, older_than: i64) -> Result<usize, StorageError> {
        self.write_unfenced(move |conn| {
            Ok(on_conn!(conn, |conn| diesel::delete(
                inbox::table.filter(inbox::done_at.lt(older_than))
            )
            .execute(conn)?))
        })
        .await
    }

    /// Updates received since `since` (Unix ms).
    pub async fn inbox_count_since(&self, since: i64) -> Result<i64, StorageError> {
        self.blocking(move |pools| {
            Ok(with_conn!(pools, |conn| inbox::table
                .filter(inbox::received_at.ge(since))
                .count()
                .get_result(conn)?))
        })
        .await
    }

    /// `(pending, done)` row counts.
    pub async fn inbox_stats(&self) -> Result<(i64, i64), StorageError> {
        self.blocking(|pools| {
            with_conn!(pools, |conn| {
                let pending = inbox::table
                    .filter(inbox::done_at.is_null())
                    .count()
                    .get_result(conn)?;
                let done = inbox::table
                    .filter(inbox::done_at.is_not_null())
                    .count()
                    .get_result(conn)?;
                Ok((pending, done))
            })
        })
        .await
    }
}
