//! The threads database calls run on.
//!
//! Tokio's blocking pool is per runtime, and every actix arbiter is a
//! runtime of its own: under a burst each would grow towards 512 threads,
//! nearly all of them waiting for one of the pool's few connections. These
//! threads are shared by the whole process and never outnumber the
//! connections; work beyond them waits in a queue, as it would have waited
//! for a connection.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct DbThreads {
    jobs: Mutex<Sender<Job>>,
    shared: Arc<Shared>,
    max: usize,
}

struct Shared {
    queue: Mutex<Receiver<Job>>,
    /// Threads waiting for a job.
    idle: AtomicUsize,
    /// Jobs sent and not yet taken.
    queued: AtomicUsize,
    spawned: AtomicUsize,
}

impl DbThreads {
    /// Up to `max` threads, started as work arrives.
    pub(super) fn new(max: usize) -> DbThreads {
        let (jobs, queue) = channel();
        DbThreads {
            jobs: Mutex::new(jobs),
            shared: Arc::new(Shared {
                queue: Mutex::new(queue),
                idle: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                spawned: AtomicUsize::new(0),
            }),
            max: max.max(1),
        }
    }

    /// Queues `job`; a new thread starts when more jobs wait than threads
    /// are idle, up to the cap.
    pub(super) fn run(&self, job: Job) -> std::io::Result<()> {
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if queued > self.shared.idle.load(Ordering::Acquire) {
            self.grow()?;
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| std::io::Error::other("the database threads stopped"))
    }

    fn grow(&self) -> std::io::Result<()> {
        let spawned = &self.shared.spawned;
        let mut current = spawned.load(Ordering::Acquire);
        loop {
            if current >= self.max {
                return Ok(());
            }
            match spawned.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        let shared = Arc::clone(&self.shared);
        let started = std::thread::Builder::new()
            .name(format!("db-{current}"))
            .spawn(move || shared.work());
        if let Err(err) = started {
            self.shared.spawned.fetch_sub(1, Ordering::AcqRel);
            // With another thread running the job still gets done.
            if current == 0 {
                return Err(err);
            }
            log::warn!("could not start another database thread: {err}");
        }
        Ok(())
    }

    #[cfg(test)]
    fn threads(&self) -> usize {
        self.shared.spawned.load(Ordering::Acquire)
    }
}

impl Shared {
    fn work(&self) {
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let job = self.queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
            self.idle.fetch_sub(1, Ordering::AcqRel);
            let Ok(job) = job else {
                // Every handle to the storage is gone.
                return;
            };
            self.queued.fetch_sub(1, Ordering::AcqRel);
            // A panicking query drops its answer channel, which its caller
            // sees as a failed task; the thread goes on with the next job.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn never_more_threads_than_the_cap_and_survives_panics() {
        let threads = DbThreads::new(3);
        let (done_tx, done_rx) = channel();
        // Ten jobs that all wait for each other in groups of three: with at
        // most three threads every group can still meet.
        let barrier = Arc::new(Barrier::new(3));
        for n in 0..9 {
            let (barrier, done) = (barrier.clone(), done_tx.clone());
            threads
                .run(Box::new(move || {
                    barrier.wait();
                    done.send(n).unwrap();
                }))
                .unwrap();
        }
        threads.run(Box::new(|| panic!("a failing query"))).unwrap();
        let done = done_tx.clone();
        threads
            .run(Box::new(move || done.send(99).unwrap()))
            .unwrap();
        let mut seen: Vec<i32> = (0..10).map(|_| done_rx.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 99]);
        assert!(threads.threads() <= 3, "{} threads", threads.threads());
    }
}
