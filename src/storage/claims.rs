//! Claims on the `jobs` table: in a cluster, PDF and photo jobs are taken
//! by whichever worker has room (`actorbot worker` processes, and the
//! leader's own pools), each for a lease it renews while it works.
//!
//! A claim is `FOR UPDATE SKIP LOCKED`, so two workers never take the same
//! job and neither waits for the other. A worker that dies stops renewing:
//! once its lease has ended the job is claimable again, and counts one
//! more attempt, which is what holds `JOB_MAX_ATTEMPTS` across workers.
//! Every later write about a job names the worker that claimed it and
//! changes nothing once another has taken it over, so a worker that was
//! merely slow cannot deliver a job twice or mark another's job done.
//! Leases use the database's clock, as the leader lease does. PostgreSQL
//! only: on SQLite these calls answer [`StorageError::ClusterNeedsPostgres`].

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use super::cluster::NOW_MS;
use super::{JobRow, Storage, StorageError, job_status};

/// What a worker holds now, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct ClaimCount {
    #[diesel(sql_type = Text)]
    pub worker: String,
    /// Jobs it runs under a lease that has not ended.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
}

impl Storage {
    /// Takes up to `limit` jobs nobody holds (queued, or claimed under a
    /// lease that has ended), highest priority first, then oldest, for
    /// `worker` and `lease_ms`; each counts one more attempt. Answers the
    /// rows as claimed.
    pub async fn jobs_claim(
        &self,
        worker: &str,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<JobRow>, StorageError> {
        let worker = worker.to_string();
        self.on_postgres(move |conn| {
            Ok(diesel::sql_query(format!(
                "WITH picked AS ( \
                   SELECT id FROM jobs \
                   WHERE status IN ('{queued}', '{running}') \
                     AND (lease_until IS NULL OR lease_until < {NOW_MS}) \
                   ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs SET claimed_by = $1, lease_until = {NOW_MS} + $3, \
                   status = '{running}', attempts = jobs.attempts + 1, updated_at = {NOW_MS} \
                 FROM picked WHERE jobs.id = picked.id \
                 RETURNING jobs.*",
                queued = job_status::QUEUED,
                running = job_status::RUNNING,
            ))
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind::<BigInt, _>(lease_ms)
            .load(conn)?)
        })
        .await
    }

    /// Takes job `id` for `worker` if nobody holds it: the instance that
    /// recorded a job starts it at once when it has a worker free.
    pub async fn job_claim(
        &self,
        id: i64,
        worker: &str,
        lease_ms: i64,
    ) -> Result<Option<JobRow>, StorageError> {
        let worker = worker.to_string();
        self.on_postgres(move |conn| {
            Ok(diesel::sql_query(format!(
                "UPDATE jobs SET claimed_by = $2, lease_until = {NOW_MS} + $3, \
                   status = '{running}', attempts = attempts + 1, updated_at = {NOW_MS} \
                 WHERE id = $1 AND status IN ('{queued}', '{running}') \
                   AND (lease_until IS NULL OR lease_until < {NOW_MS}) \
                 RETURNING *",
                queued = job_status::QUEUED,
                running = job_status::RUNNING,
            ))
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(lease_ms)
            .get_result(conn)
            .optional()?)
        })
        .await
    }

    /// Extends by `lease_ms` from now the leases `worker` holds on the
    /// jobs `ids` (those under way there); answers how many.
    pub async fn jobs_renew(
        &self,
        worker: &str,
        ids: &[i64],
        lease_ms: i64,
    ) -> Result<usize, StorageError> {
        let (worker, ids) = (worker.to_string(), ids.to_vec());
        self.on_postgres(move |conn| {
            Ok(diesel::sql_query(format!(
                "UPDATE jobs SET lease_until = {NOW_MS} + $3 \
                 WHERE claimed_by = $1 AND id = ANY($2) AND status = '{running}'",
                running = job_status::RUNNING,
            ))
            .bind::<Text, _>(worker)
            .bind::<Array<BigInt>, _>(ids)
            .bind::<BigInt, _>(lease_ms)
            .execute(conn)?)
        })
        .await
    }

    /// Before a delivery: whether `worker` still holds job `id`, extending
    /// its lease if so. False once another worker has taken it over.
    pub async fn job_hold(
        &self,
        id: i64,
        worker: &str,
        lease_ms: i64,
    ) -> Result<bool, StorageError> {
        let worker = worker.to_string();
        self.on_postgres(move |conn| {
            let held = diesel::sql_query(format!(
                "UPDATE jobs SET lease_until = {NOW_MS} + $3 \
                 WHERE id = $1 AND claimed_by = $2 AND status = '{running}'",
                running = job_status::RUNNING,
            ))
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(lease_ms)
            .execute(conn)?;
            Ok(held == 1)
        })
        .await
    }

    /// Records how job `id` ended, if `worker` still holds it; false (and
    /// nothing changed) if another worker does.
    pub async fn job_finish(
        &self,
        id: i64,
        worker: &str,
        status: &'static str,
        error: Option<String>,
    ) -> Result<bool, StorageError> {
        let worker = worker.to_string();
        self.on_postgres(move |conn| {
            let finished = diesel::sql_query(format!(
                "UPDATE jobs SET status = $3, error = $4, lease_until = NULL, \
                   updated_at = {NOW_MS} \
                 WHERE id = $1 AND claimed_by = $2"
            ))
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(worker)
            .bind::<Text, _>(status)
            .bind::<Nullable<Text>, _>(error)
            .execute(conn)?;
            Ok(finished == 1)
        })
        .await
    }

    /// A clean stop: gives back every job `worker` holds and has not
    /// finished, with the attempt it had counted, for another to take at
    /// once rather than when the lease ends. Answers how many.
    pub async fn jobs_release(&self, worker: &str) -> Result<usize, StorageError> {
        let worker = worker.to_string();
        self.on_postgres(move |conn| {
            Ok(diesel::sql_query(format!(
                "UPDATE jobs SET claimed_by = NULL, lease_until = NULL, status = '{queued}', \
                   attempts = GREATEST(attempts - 1, 0), updated_at = {NOW_MS} \
                 WHERE claimed_by = $1 AND status = '{running}'",
                queued = job_status::QUEUED,
                running = job_status::RUNNING,
            ))
            .bind::<Text, _>(worker)
            .execute(conn)?)
        })
        .await
    }

    /// The workers holding jobs under leases that have not ended, by name.
    pub async fn job_claims(&self) -> Result<Vec<ClaimCount>, StorageError> {
        self.on_postgres(|conn| {
            Ok(diesel::sql_query(format!(
                "SELECT claimed_by AS worker, count(*) AS running FROM jobs \
                 WHERE status = '{running}' AND claimed_by IS NOT NULL \
                   AND lease_until >= {NOW_MS} \
                 GROUP BY claimed_by ORDER BY claimed_by",
                running = job_status::RUNNING,
            ))
            .load(conn)?)
        })
        .await
    }
}
