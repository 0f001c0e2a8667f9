//! The `inbox_relay` table: webhook mode in a cluster, where Telegram (or
//! the load balancer in front of the instances) posts an update to any
//! instance, and only the leader routes.
//!
//! The instance that received an update writes it to the inbox and to the
//! relay, and notifies [`RELAY_CHANNEL`], in one transaction: the webhook
//! answers 200 only after it commits, and the notification is delivered
//! only then. The leader takes relay rows in update_id order, deleting them
//! as it takes them, and routes their updates. A row taken by a leader that
//! died before answering it is still in the inbox and not done: the next
//! leader's replay routes it, and clears the relay rows of what it replays
//! so that nothing is routed twice.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::models::NewInbox;
use super::schema::inbox;
use super::{Conn, InboxRow, Storage, StorageError, now_millis};

/// The channel a relayed update is announced on.
pub const RELAY_CHANNEL: &str = "actorbot_inbox";

#[derive(QueryableByName)]
struct RelayedRow {
    #[diesel(sql_type = BigInt)]
    update_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    chat_id: Option<i64>,
    #[diesel(sql_type = Text)]
    body: String,
}

impl Storage {
    /// Writes an update an instance received to the inbox and the relay,
    /// and announces it; answers whether it was new (one already in the
    /// inbox is being or has been handled: a delivery Telegram retried).
    /// Any instance makes this write, standbys included, so it is not
    /// fenced: it confirms nothing, it only hands the update to the leader.
    pub async fn inbox_relay(&self, row: InboxRow) -> Result<bool, StorageError> {
        self.write_unfenced(move |conn| {
            let Conn::Postgres(conn) = conn else {
                return Err(StorageError::ClusterNeedsPostgres);
            };
            let inserted: Vec<i64> = diesel::insert_into(inbox::table)
                .values(NewInbox {
                    update_id: row.update_id,
                    chat_id: row.chat_id,
                    body: &row.body,
                    received_at: now_millis(),
                })
                .on_conflict_do_nothing()
                .returning(inbox::update_id)
                .get_results(conn)?;
            if inserted.is_empty() {
                return Ok(false);
            }
            diesel::sql_query(
                "INSERT INTO inbox_relay (update_id) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .bind::<BigInt, _>(row.update_id)
            .execute(conn)?;
            conn.batch_execute(&format!("NOTIFY {RELAY_CHANNEL}"))?;
            Ok(true)
        })
        .await
    }

    /// Takes up to `limit` relayed updates, oldest first, for the leader to
    /// route: their relay rows are deleted in the same, fenced, write.
    pub async fn inbox_take_relayed(&self, limit: i64) -> Result<Vec<InboxRow>, StorageError> {
        self.write(move |conn| {
            let Conn::Postgres(conn) = conn else {
                return Err(StorageError::ClusterNeedsPostgres);
            };
            let rows: Vec<RelayedRow> = diesel::sql_query(
                "WITH taken AS (DELETE FROM inbox_relay WHERE update_id IN \
                   (SELECT update_id FROM inbox_relay ORDER BY update_id LIMIT $1 \
                    FOR UPDATE SKIP LOCKED) RETURNING update_id) \
                 SELECT i.update_id, i.chat_id, i.body FROM inbox i \
                 JOIN taken t ON t.update_id = i.update_id \
                 WHERE i.done_at IS NULL ORDER BY i.update_id",
            )
            .bind::<BigInt, _>(limit)
            .load(conn)?;
            Ok(rows
                .into_iter()
                .map(|r| InboxRow {
                    update_id: r.update_id,
                    chat_id: r.chat_id,
                    body: r.body,
                })
                .collect())
        })
        .await
    }

    /// Deletes the relay rows of updates the replay routes. Nothing to do
    /// on SQLite, which has no cluster.
    pub async fn inbox_unrelay(&self, update_ids: Vec<i64>) -> Result<usize, StorageError> {
        if update_ids.is_empty() || self.backend() != "postgres" {
            return Ok(0);
        }
        self.write(move |conn| {
            let Conn::Postgres(conn) = conn else {
                return Ok(0);
            };
            Ok(
                diesel::sql_query("DELETE FROM inbox_relay WHERE update_id = ANY($1)")
                    .bind::<Array<BigInt>, _>(update_ids)
                    .execute(conn)?,
            )
        })
        .await
    }

    /// Relayed updates no leader has taken yet.
    pub async fn inbox_relayed_count(&self) -> Result<i64, StorageError> {
        self.on_postgres(|conn| {
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = BigInt)]
                n: i64,
            }
            let count: Count =
                diesel::sql_query("SELECT count(*) AS n FROM inbox_relay").get_result(conn)?;
            Ok(count.n)
        })
        .await
    }
}
