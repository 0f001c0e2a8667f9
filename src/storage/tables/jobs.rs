//! The `jobs` table: the PDF jobs, recorded when accepted and resumed at
//! the next start until done.

use super::super::*;

impl Storage {
    /// Records a job as queued; answers its row (ids grow with time).
    pub async fn job_insert(&self, job: NewJob) -> Result<JobRow, StorageError> {
        self.write(move |conn| {
            let now = now_millis();
            let id = next_job_id(now);
            let row = JobRow {
                id,
                kind: job.kind,
                user_id: job.user_id,
                chat_id: job.chat_id,
                priority: job.priority,
                payload: job.payload,
                status: job_status::QUEUED.into(),
                attempts: 0,
                created_at: now,
                updated_at: now,
                error: None,
                claimed_by: None,
                lease_until: None,
            };
            on_conn!(conn, |conn| diesel::insert_into(jobs::table)
                .values(&row)
                .execute(conn)?);
            Ok(row)
        })
        .await
    }

    /// Jobs queued or running (a restart resumes them), highest priority
    /// first, then oldest.
    pub async fn jobs_unfinished(&self) -> Result<Vec<JobRow>, StorageError> {
        self.blocking(|pools| {
            Ok(with_conn!(pools, |conn| jobs::table
                .filter(jobs::status.eq_any([job_status::QUEUED, job_status::RUNNING]))
                .order((jobs::priority.desc(), jobs::id.asc()))
                .select(JobRow::as_select())
                .load(conn)?))
        })
        .await
    }

    pub async fn job_update(
        &self,
        id: i64,
        status: &'static str,
        attempts: i32,
        error: Option<String>,
    ) -> Result<(), StorageError> {
        self.write(move |conn| {
            on_conn!(conn, |conn| diesel::update(jobs::table.find(id))
                .set((
                    jobs::status.eq(status),
                    jobs::attempts.eq(attempts),
                    jobs::error.eq(error),
                    jobs::updated_at.eq(now_millis()),
                ))
                .execute(conn)?);
            Ok(())
        })
        .await
    }

    /// Deletes finished jobs last updated before `older_than` (Unix ms).
    pub async fn jobs_purge_finished(&self, older_than: i64) -> Result<usize, StorageError> {
        self.write_unfenced(move |conn| {
            Ok(on_conn!(conn, |conn| diesel::delete(
                jobs::table
                    .filter(jobs::status.eq_any([job_status::DONE, job_status::FAILED]))
                    .filter(jobs::updated_at.lt(older_than))
            )
            .execute(conn)?))
        })
        .await
    }
}

/// Job ids: milliseconds shifted left, plus a counter for ids made in the
/// same millisecond by this process.
fn next_job_id(now: i64) -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let candidate = now << 12;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = candidate.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}
