//! The `cluster_lease` and `cluster_instances` tables: the leader lease of
//! a cluster of instances sharing one PostgreSQL, and their heartbeats.
//!
//! Every time is the database's clock (`clock_timestamp()`), so instances
//! whose clocks disagree still agree on when a lease ends. The lease row's
//! token is raised each time the lease changes hands; [`Fence`] carries the
//! token this instance holds into every write, which checks it in the same
//! transaction (`FOR SHARE`, so a takeover waits for a write under way to
//! commit, and every write after it fails). The cluster needs PostgreSQL:
//! on SQLite these calls answer [`StorageError::ClusterNeedsPostgres`].

use std::sync::atomic::{AtomicI64, Ordering};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{Pools, Storage, StorageError};

/// The database's clock in Unix milliseconds, in SQL.
pub(super) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The one lease: leadership of the bot.
const LEADER: &str = "leader";

/// The token this instance holds, checked by every fenced write; 0 while
/// it holds none, when fenced writes are refused without asking.
#[derive(Debug)]
pub struct Fence {
    holder: String,
    token: AtomicI64,
}

impl Fence {
    pub fn new(holder: String) -> Fence {
        Fence {
            holder,
            token: AtomicI64::new(0),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The token held now; 0 for none.
    pub fn token(&self) -> i64 {
        self.token.load(Ordering::Acquire)
    }

    pub fn set(&self, token: i64) {
        self.token.store(token, Ordering::Release);
    }

    /// Inside a write's transaction: fails unless this instance still holds
    /// the lease with its token, and keeps the lease from changing hands
    /// until the transaction ends.
    pub(super) fn check(&self, conn: &mut PgConnection) -> Result<(), StorageError> {
        let token = self.token();
        if token == 0 {
            return Err(StorageError::Fenced { token });
        }
        let held: Option<TokenRow> = diesel::sql_query(format!(
            "SELECT token FROM cluster_lease WHERE name = $1 AND holder = $2 AND token = $3 \
             AND expires_at >= {NOW_MS} FOR SHARE"
        ))
        .bind::<Text, _>(LEADER)
        .bind::<Text, _>(&self.holder)
        .bind::<BigInt, _>(token)
        .get_result(conn)
        .optional()?;
        match held {
            Some(_) => Ok(()),
            None => Err(StorageError::Fenced { token }),
        }
    }
}

#[derive(QueryableByName)]
struct TokenRow {
    #[diesel(sql_type = BigInt)]
    token: i64,
}

/// The lease as the database has it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct LeaseRow {
    #[diesel(sql_type = Text)]
    pub holder: String,
    #[diesel(sql_type = BigInt)]
    pub token: i64,
    /// Milliseconds until it ends unless renewed; negative once it has.
    #[diesel(sql_type = BigInt)]
    pub expires_in_ms: i64,
}

/// One instance's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct InstanceRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    /// Unix milliseconds: since when it has had this role.
    #[diesel(sql_type = BigInt)]
    pub since: i64,
    /// Milliseconds since its last heartbeat.
    #[diesel(sql_type = BigInt)]
    pub heartbeat_ago_ms: i64,
}

impl Storage {
    pub(super) async fn on_postgres<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConnection) -> Result<T, StorageError> + Send + 'static,
    {
        self.blocking(move |pools| match pools {
            Pools::Postgres(pool) => work(&mut *pool.get()?),
            Pools::Sqlite(_) => Err(StorageError::ClusterNeedsPostgres),
        })
        .await
    }

    /// Takes the lease for `ttl_ms` if it is free or has ended: answers the
    /// new token, or `None` while another instance holds it.
    pub async fn lease_acquire(
        &self,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StorageError> {
        let holder = holder.to_string();
        self.on_postgres(move |conn| {
            let row: Option<TokenRow> = diesel::sql_query(format!(
                "INSERT INTO cluster_lease (name, holder, token, expires_at) \
                 VALUES ($1, $2, 1, {NOW_MS} + $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                 token = cluster_lease.token + 1, expires_at = EXCLUDED.expires_at \
                 WHERE cluster_lease.expires_at < {NOW_MS} RETURNING token"
            ))
            .bind::<Text, _>(LEADER)
            .bind::<Text, _>(holder)
            .bind::<BigInt, _>(ttl_ms)
            .get_result(conn)
            .optional()?;
            Ok(row.map(|r| r.token))
        })
        .await
    }

    /// Extends the lease `holder` holds with `token` by `ttl_ms` from now;
    /// false if it has ended or changed hands.
    pub async fn lease_renew(
        &self,
        holder: &str,
        token: i64,
        ttl_ms: i64,
    ) -> Result<bool, StorageError> {
        let holder = holder.to_string();
        self.on_postgres(move |conn| {
            let renewed = diesel::sql_query(format!(
                "UPDATE cluster_lease SET expires_at = {NOW_MS} + $4 \
                 WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at >= {NOW_MS}"
            ))
            .bind::<Text, _>(LEADER)
            .bind::<Text, _>(holder)
            .bind::<BigInt, _>(token)
            .bind::<BigInt, _>(ttl_ms)
            .execute(conn)?;
            Ok(renewed == 1)
        })
        .await
    }

    /// Ends the lease now, if `holder` still holds it with `token`, so that
    /// a standby takes it at its next look rather than after the TTL.
    pub async fn lease_release(&self, holder: &str, token: i64) -> Result<bool, StorageError> {
        let holder = holder.to_string();
        self.on_postgres(move |conn| {
            let released = diesel::sql_query(
                "UPDATE cluster_lease SET expires_at = 0 \
                 WHERE name = $1 AND holder = $2 AND token = $3",
            )
            .bind::<Text, _>(LEADER)
            .bind::<Text, _>(holder)
            .bind::<BigInt, _>(token)
            .execute(conn)?;
            Ok(released == 1)
        })
        .await
    }

    /// The lease, if it was ever taken.
    pub async fn lease_read(&self) -> Result<Option<LeaseRow>, StorageError> {
        self.on_postgres(|conn| {
            Ok(diesel::sql_query(format!(
                "SELECT holder, token, expires_at - {NOW_MS} AS expires_in_ms \
                 FROM cluster_lease WHERE name = $1"
            ))
            .bind::<Text, _>(LEADER)
            .get_result(conn)
            .optional()?)
        })
        .await
    }

    /// Records this instance's role and heartbeat.
    pub async fn instance_heartbeat(
        &self,
        id: &str,
        role: &str,
        since: i64,
    ) -> Result<(), StorageError> {
        let (id, role) = (id.to_string(), role.to_string());
        self.on_postgres(move |conn| {
            diesel::sql_query(format!(
                "INSERT INTO cluster_instances (id, role, since, heartbeat) \
                 VALUES ($1, $2, $3, {NOW_MS}) ON CONFLICT (id) DO UPDATE SET \
                 role = EXCLUDED.role, since = EXCLUDED.since, heartbeat = EXCLUDED.heartbeat"
            ))
            .bind::<Text, _>(id)
            .bind::<Text, _>(role)
            .bind::<BigInt, _>(since)
            .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// The instances heard from in the last `within_ms`, by id.
    pub async fn instances_recent(&self, within_ms: i64) -> Result<Vec<InstanceRow>, StorageError> {
        self.on_postgres(move |conn| {
            Ok(diesel::sql_query(format!(
                "SELECT id, role, since, {NOW_MS} - heartbeat AS heartbeat_ago_ms \
                 FROM cluster_instances WHERE heartbeat >= {NOW_MS} - $1 ORDER BY id"
            ))
            .bind::<BigInt, _>(within_ms)
            .load(conn)?)
        })
        .await
    }
}
