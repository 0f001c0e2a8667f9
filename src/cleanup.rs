//! The cleanup job, run by the scheduler every `CLEANUP_INTERVAL`: removes
//! answered inbox rows past their retention, finished jobs, and temporary
//! files older than `TEMP_FILE_MAX_AGE`, expired in-process cache entries
//! (Redis expires its own), and logs what it freed.
//!
//! Expiring user states is not here: the session registry retires idle
//! sessions itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actorbot_actors::scheduler::Schedule;

use crate::cache::Cache;
use crate::config::Config;
use crate::storage::{Storage, now_millis};

/// What one run freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub inbox_rows: usize,
    pub jobs: usize,
    pub files: usize,
    pub bytes: u64,
    pub cache_entries: usize,
}

/// The periodic job for the scheduler.
pub fn schedule(config: &Config, storage: Storage, caches: Vec<Arc<Cache>>) -> Schedule {
    let retention = config.inbox_retention();
    let temp_dir = config.temp_dir();
    let max_age = config.temp_file_max_age();
    Schedule::every("cleanup", config.cleanup_interval(), move || {
        let (storage, temp_dir) = (storage.clone(), temp_dir.clone());
        let cache_entries = caches.iter().map(|cache| cache.sweep()).sum();
        async move {
            let freed = Freed {
                cache_entries,
                ..run(&storage, retention, temp_dir, max_age).await?
            };
            log::info!(
                "cleanup: removed {} answered inbox rows, {} finished jobs, {} temporary files ({} bytes), {} expired cache entries",
                freed.inbox_rows,
                freed.jobs,
                freed.files,
                freed.bytes,
                freed.cache_entries
            );
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
        cache_entries: 0,
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
