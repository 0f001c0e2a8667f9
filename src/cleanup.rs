//! The cleanup job, run by the scheduler every `CLEANUP_INTERVAL`: removes
//! answered inbox rows past their retention, finished jobs, and temporary
//! files older than `TEMP_FILE_MAX_AGE`, expired in-process cache entries
//! (Redis expires its own), and logs what it freed. `POST /cleanup` and
//! `/admin_cleanup` run it on demand ([`Cleanup::on_demand`]), and then
//! also retire the sessions idle for [`ON_DEMAND_IDLE`], saving them.
//!
//! Expiring user states past `USER_STATE_TIMEOUT` is not here: the session
//! registry retires idle sessions itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actorbot_actors::scheduler::Schedule;

use crate::cache::Cache;
use crate::config::Config;
use crate::router::Sessions;
use crate::storage::{Storage, now_millis};

/// A cleanup asked for on demand retires the sessions idle this long.
pub const ON_DEMAND_IDLE: Duration = Duration::from_secs(60);

/// What one run freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Freed {
    pub inbox_rows: usize,
    pub jobs: usize,
    pub files: usize,
    pub bytes: u64,
    pub cache_entries: usize,
    /// Sessions retired (and saved) by a cleanup asked for on demand.
    pub sessions_retired: usize,
}

impl std::fmt::Display for Freed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} answered inbox rows, {} finished jobs, {} temporary files ({} bytes), {} expired cache entries",
            self.inbox_rows, self.jobs, self.files, self.bytes, self.cache_entries
        )?;
        if self.sessions_retired > 0 {
            write!(f, ", retired {} idle sessions", self.sessions_retired)?;
        }
        Ok(())
    }
}

/// What the cleanup works on; its settings are read at each run, so that
/// a change made while running applies to the next one.
#[derive(Clone)]
pub struct Cleanup {
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    pub storage: Storage,
    pub caches: Vec<Arc<Cache>>,
    pub sessions: Sessions,
}

impl Cleanup {
    /// One run: the database, the temporary files, the caches.
    pub async fn run(&self) -> anyhow::Result<Freed> {
        let config = self.config.borrow().clone();
        let cache_entries = self.caches.iter().map(|cache| cache.sweep()).sum();
        Ok(Freed {
            cache_entries,
            ..run(
                &self.storage,
                config.inbox_retention(),
                config.temp_dir(),
                config.temp_file_max_age(),
            )
            .await?
        })
    }
}

impl Cleanup {
    /// A run asked for by an operator or an admin: the periodic one, and
    /// the sessions idle for [`ON_DEMAND_IDLE`] retired (and saved).
    pub async fn on_demand(&self) -> anyhow::Result<Freed> {
        let mut freed = self.run().await?;
        freed.sessions_retired = self.sessions.retire_idle_for(ON_DEMAND_IDLE);
        Ok(freed)
    }
}

/// The periodic job for the scheduler.
pub fn schedule(cleanup: Cleanup, interval: Duration) -> Schedule {
    Schedule::every("cleanup", interval, move || {
        let cleanup = cleanup.clone();
        async move {
            let freed = cleanup.run().await?;
            log::info!("cleanup: {freed}");
            Ok::<_, anyhow::Error>(())
        }
    })
}

/// One run of the cleanup.
pub async fn run(
    storage: &Storage,
    retention: Duration,
    temp_dir: PathBuf,
    max_age: Duration,
) -> anyhow::Result<Freed> {
    let cutoff = now_millis() - retention.as_millis() as i64;
    let inbox_rows = storage.inbox_purge_done(cutoff).await?;
    let jobs = storage.jobs_purge_finished(cutoff).await?;
    let (files, bytes) =
        tokio::task::spawn_blocking(move || sweep_files(&temp_dir, max_age)).await??;
    Ok(Freed {
        inbox_rows,
        jobs,
        files,
        bytes,
        ..Freed::default()
    })
}

/// Removes files in `dir` not modified for `max_age`; returns how many and
/// their total size.
pub fn sweep_files(dir: &Path, max_age: Duration) -> std::io::Result<(usize, u64)> {
    let now = SystemTime::now();
    let (mut files, mut bytes) = (0, 0);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(err) => return Err(err),
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= max_age);
        if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_files_are_swept() {
        let dir = std::env::temp_dir().join(format!("actorbot-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("old.tmp"), b"12345").unwrap();
        std::fs::write(dir.join("new.tmp"), b"1").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(dir.join("old.tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            sweep_files(&dir, Duration::from_secs(3600)).unwrap(),
            (1, 5)
        );
        assert!(dir.join("new.tmp").exists() && !dir.join("old.tmp").exists());
        assert_eq!(
            sweep_files(&dir.join("missing"), Duration::ZERO).unwrap(),
            (0, 0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
