//! A supervised pool of worker threads for CPU-bound jobs.
//!
//! Rendering a PDF or resizing an image takes a core for a while; doing it on
//! an actix event loop would stall every actor on that loop. So jobs run on
//! plain threads owned by the pool, and the async side only waits for a
//! result ([`JobHandle`]).
//!
//! The queue is bounded and ordered: higher [`Priority`] first, first come
//! first served within a priority. When it is full, [`WorkerPool::submit`]
//! answers [`SubmitError::Busy`] at once, so the caller can tell its user to
//! come back later instead of the pool buffering without limit. While a job
//! waits, [`WorkerPool::position`] says how many jobs are ahead of it and an
//! estimate of the wait, and [`WorkerPool::cancel`] takes it out.
//!
//! Supervision follows "let it crash": a job that panics takes its worker
//! thread down with it (the thread's state is not trusted after a panic). The
//! worker reports its death to the pool's supervisor thread, whose only job is
//! to start a replacement and put the job back in the queue, until the job has
//! used up `max_attempts`; then its caller gets [`JobError::Panicked`]. A job
//! can also ask for another attempt by returning [`Failure::Retry`]; that does
//! not need a new thread, so the worker requeues it itself.
//!
//! [`WorkerPool::resize`] changes the number of workers and the queue's
//! capacity while the pool runs: new workers start at once, surplus ones
//! finish the job they hold and then exit, and a smaller queue refuses new
//! jobs until it has drained below its capacity; nothing waiting is
//! dropped.
//!
//! Requires `panic = "unwind"` (the default): with `abort` a panicking job
//! ends the process.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::probe::{Health, MailboxFigures, ProbeReport};
use crate::supervisor::panic_message;

/// Higher runs first.
pub type Priority = u8;

/// Identifies a submitted job, to ask for its position or cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct JobId(u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// How a job attempt failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth another attempt (a transient cause).
    Retry(E),
    /// Pointless to try again.
    Fatal(E),
}

/// Why a submitted job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum JobError<E> {
    /// The job returned [`Failure::Fatal`].
    #[error("job failed: {0}")]
    Failed(E),
    /// The job returned [`Failure::Retry`] on its last allowed attempt.
    #[error("job still failing after {attempts} attempts: {error}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        error: E,
    },
    /// The job panicked on its last allowed attempt.
    #[error("job panicked after {attempts} attempts: {message}")]
    Panicked {
        /// Attempts made.
        attempts: u32,
        /// The last panic's message.
        message: String,
    },
    /// Taken out of the queue with [`WorkerPool::cancel`].
    #[error("job cancelled")]
    Cancelled,
    /// The pool went away before the job could finish.
    #[error("pool closed before the job finished")]
    Closed,
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `capacity` jobs already.
    #[error("queue full ({capacity} jobs waiting)")]
    Busy {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The pool is closed.
    #[error("pool closed")]
    Closed,
}

/// Where a waiting job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Jobs that will start before it.
    pub ahead: usize,
    /// Jobs waiting in total, itself included.
    pub queued: usize,
    /// A rough wait, from the mean job duration so far; `None` until a job
    /// has completed.
    pub estimated_wait: Option<Duration>,
}

/// Figures for a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Workers running a job now.
    pub busy: usize,
    /// Jobs waiting.
    pub queued: usize,
    /// How many may wait.
    pub capacity: usize,
    /// Jobs that produced a result.
    pub completed: u64,
    /// Jobs that ended with an error (cancelled ones excepted).
    pub failed: u64,
    /// Attempts put back in the queue.
    pub retried: u64,
    /// Workers restarted after a panic.
    pub restarts: u64,
    /// Mean duration of successful attempts, in milliseconds (moving average).
    pub mean_job_ms: u64,
}

/// Limits of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Names the threads (`{name}-{index}`) and the probe report.
    pub name: String,
    /// Worker threads.
    pub workers: usize,
    /// Jobs that may wait; more are refused with [`SubmitError::Busy`].
    pub queue_capacity: usize,
    /// Attempts per job, the first one included.
    pub max_attempts: u32,
}

/// The handle to a pool. Clones share the pool; when the last one is
/// dropped the pool closes: waiting jobs still run, then the threads exit.
#[derive(Clone)]
pub struct WorkerPool {
    handle: Arc<Owner>,
}

/// A job's future result, with its id.
pub struct JobHandle<T, E> {
    id: JobId,
    result: oneshot::Receiver<Result<T, JobError<E>>>,
}

impl<T, E> JobHandle<T, E> {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
}

impl<T, E> Future for JobHandle<T, E> {
    type Output = Result<T, JobError<E>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::pin::Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(JobError::Closed)))
    }
}

impl WorkerPool {
    /// Starts the workers and their supervisor.
    pub fn new(config: PoolConfig) -> std::io::Result<Self> {
        let config = PoolConfig {
            workers: config.workers.max(1),
            max_attempts: config.max_attempts.max(1),
            ..config
        };
        let (deaths, supervised) = mpsc::channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: BTreeMap::new(),
                closed: false,
                next_id: 0,
                capacity: config.queue_capacity,
                target: config.workers,
                live: config.workers,
                next_index: config.workers,
            }),
            reports: deaths.clone(),
            ready: Condvar::new(),
            busy: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            mean_job_us: AtomicU64::new(0),
            config,
        });
        // From here on, the owner closes the pool if starting fails, so the
        // threads already started exit.
        let owner = Arc::new(Owner { shared });
        let shared = &owner.shared;
        for index in 0..shared.config.workers {
            start_worker(shared, index, deaths.clone())?;
        }
        let supervisor = Arc::clone(shared);
        thread::Builder::new()
            .name(format!("{}-supervisor", shared.config.name))
            .spawn(move || supervise(supervisor, supervised, deaths))?;
        Ok(WorkerPool { handle: owner })
    }

    /// Changes the number of workers and the queue's capacity. Workers
    /// added start now; surplus ones exit once they have finished their
    /// job; jobs already waiting stay even past a smaller capacity.
    pub fn resize(&self, workers: usize, queue_capacity: usize) {
        let shared = &self.handle.shared;
        let mut queue = shared.lock();
        queue.capacity = queue_capacity;
        queue.target = workers.max(1);
        if queue.closed {
            return;
        }
        let grow = queue.target.saturating_sub(queue.live);
        let first = queue.next_index;
        queue.live += grow;
        queue.next_index += grow;
        drop(queue);
        for index in first..first + grow {
            if let Err(e) = start_worker(shared, index, shared.reports.clone()) {
                log::error!("{}-{index} could not be started: {e}", shared.config.name);
                shared.lock().live -= 1;
            }
        }
        // Idle workers past the new number wake up to exit.
        shared.ready.notify_all();
    }

    /// Queues `job` at `priority`, or refuses it at once if the queue is full.
    ///
    /// `job` runs on a worker thread, possibly several times (see the module
    /// documentation), so it is `Fn`.
    pub fn submit<T, E, F>(
        &self,
        priority: Priority,
        job: F,
    ) -> Result<JobHandle<T, E>, SubmitError>
    where
        F: Fn() -> Result<T, Failure<E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let shared = &self.handle.shared;
        let mut queue = shared.lock();
        if queue.closed {
            return Err(SubmitError::Closed);
        }
        if queue.jobs.len() >= queue.capacity {
            return Err(SubmitError::Busy {
                capacity: queue.capacity,
            });
        }
        let id = JobId(queue.next_id);
        queue.next_id += 1;
        let (tx, result) = oneshot::channel();
        let work = Box::new(Task {
            job,
            reply: Some(tx),
            result: None,
            last_error: None,
        });
        queue.jobs.insert(
            (Reverse(priority), id),
            Job {
                id,
                priority,
                attempts: 0,
                work,
            },
        );
        drop(queue);
        shared.ready.notify_one();
        Ok(JobHandle { id, result })
    }

    /// Where a waiting job stands; `None` once it has started (or is unknown).
    pub fn position(&self, id: JobId) -> Option<Position> {
        let shared = &self.handle.shared;
        let queue = shared.lock();
        let ahead = queue.jobs.values().position(|job| job.id == id)?;
        let mean = shared.mean_job_us.load(Ordering::Relaxed);
        let rounds = (ahead / queue.target.max(1)) as u64 + 1;
        Some(Position {
            ahead,
            queued: queue.jobs.len(),
            estimated_wait: (mean > 0).then(|| Duration::from_micros(mean.saturating_mul(rounds))),
        })
    }

    /// Takes a waiting job out of the queue; its caller gets
    /// [`JobError::Cancelled`]. False if it has already started or finished.
    pub fn cancel(&self, id: JobId) -> bool {
        let mut queue = self.handle.shared.lock();
        let Some(key) = queue.jobs.keys().find(|(_, job)| *job == id).copied() else {
            return false;
        };
        if let Some(mut job) = queue.jobs.remove(&key) {
            job.work.end(Ending::Cancelled);
        }
        true
    }

    /// Current figures.
    pub fn stats(&self) -> PoolStats {
        let shared = &self.handle.shared;
        let (queued, workers, capacity) = {
            let queue = shared.lock();
            (queue.jobs.len(), queue.live, queue.capacity)
        };
        PoolStats {
            workers,
            busy: shared.busy.load(Ordering::Relaxed),
            queued,
            capacity,
            completed: shared.completed.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            retried: shared.retried.load(Ordering::Relaxed),
            restarts: shared.restarts.load(Ordering::Relaxed),
            mean_job_ms: shared.mean_job_us.load(Ordering::Relaxed) / 1000,
        }
    }

    /// A probe report for the actor that owns this pool: degraded when the
    /// queue is full, with the figures of [`PoolStats`] as details.
    pub fn report(&self) -> ProbeReport {
        let stats = self.stats();
        let health = if stats.queued >= stats.capacity {
            Health::Degraded(format!("queue full ({} jobs)", stats.queued))
        } else {
            Health::Healthy
        };
        let mut report = ProbeReport::new(self.handle.shared.config.name.clone(), health)
            .detail("workers", stats.workers)
            .detail("busy", stats.busy)
            .detail("completed", stats.completed)
            .detail("failed", stats.failed)
            .detail("retried", stats.retried)
            .detail("mean_job_ms", stats.mean_job_ms);
        report.mailbox = Some(MailboxFigures {
            depth: stats.queued,
            capacity: stats.capacity,
        });
        report.restarts = stats.restarts;
        report.handled = stats.completed + stats.failed;
        report
    }

    /// Refuses new jobs from now on; waiting ones still run.
    pub fn close(&self) {
        self.handle.shared.close();
    }
}

/// Closes the pool when the last [`WorkerPool`] clone goes.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Where workers started by [`WorkerPool::resize`] report.
    reports: mpsc::Sender<Report>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
    busy: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    restarts: AtomicU64,
    mean_job_us: AtomicU64,
    config: PoolConfig,
}

struct Queue {
    /// Ordered by priority (highest first), then id (oldest first).
    jobs: BTreeMap<(Reverse<Priority>, JobId), Job>,
    closed: bool,
    next_id: u64,
    /// How many jobs may wait.
    capacity: usize,
    /// How many workers are wanted.
    target: usize,
    /// Worker threads running (or being restarted after a panic).
    live: usize,
    /// Names the next worker started.
    next_index: usize,
}

struct Job {
    id: JobId,
    priority: Priority,
    attempts: u32,
    work: Box<dyn Work>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs never run under this lock, so a poisoned lock holds
        // consistent data.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next job, waiting for one; `None` when this worker is to exit:
    /// the pool is closed and drained, or has more workers than wanted.
    fn next_job(&self) -> Option<Job> {
        let mut queue = self.lock();
        loop {
            if queue.live > queue.target {
                queue.live -= 1;
                return None;
            }
            if let Some((_, job)) = queue.jobs.pop_first() {
                return Some(job);
            }
            if queue.closed {
                queue.live -= 1;
                return None;
            }
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Puts an attempted job back, in its original place; retries were
    /// admitted once already, so they do not count against the capacity.
    fn requeue(&self, job: Job) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .jobs
            .insert((Reverse(job.priority), job.id), job);
        self.ready.notify_one();
    }

    fn record_success(&self, took: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .mean_job_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    took
                } else {
                    mean - mean / 8 + took / 8
                })
            });
    }
}

/// A job with its result channel, type-erased so one queue holds them all.
trait Work: Send {
    /// Runs one attempt; unless it asks for a retry, keeps the result for
    /// [`Work::reply`].
    fn attempt(&mut self) -> Attempt;
    /// Sends the kept result. Separate from `attempt` so the figures are
    /// updated before the caller can see the result.
    fn reply(&mut self);
    /// Sends the final error.
    fn end(&mut self, ending: Ending);
}

enum Attempt {
    Succeeded,
    Failed,
    Retry,
}

enum Ending {
    Exhausted(u32),
    Panicked(u32, String),
    Cancelled,
}

struct Task<T, E, F> {
    job: F,
    reply: Option<oneshot::Sender<Result<T, JobError<E>>>>,
    result: Option<Result<T, JobError<E>>>,
    last_error: Option<E>,
}

impl<T, E, F> Work for Task<T, E, F>
where
    F: Fn() -> Result<T, Failure<E>> + Send,
    T: Send,
    E: Send,
{
    fn attempt(&mut self) -> Attempt {
        let (outcome, result) = match (self.job)() {
            Ok(value) => (Attempt::Succeeded, Ok(value)),
            Err(Failure::Fatal(error)) => (Attempt::Failed, Err(JobError::Failed(error))),
            Err(Failure::Retry(error)) => {
                self.last_error = Some(error);
                return Attempt::Retry;
            }
        };
        self.result = Some(result);
        outcome
    }

    fn reply(&mut self) {
        if let (Some(reply), Some(result)) = (self.reply.take(), self.result.take()) {
            // The caller may have stopped waiting; the work is done anyway.
            let _ = reply.send(result);
        }
    }

    fn end(&mut self, ending: Ending) {
        let error = match ending {
            Ending::Cancelled => JobError::Cancelled,
            Ending::Panicked(attempts, message) => JobError::Panicked { attempts, message },
            Ending::Exhausted(attempts) => match self.last_error.take() {
                Some(error) => JobError::Exhausted { attempts, error },
                None => JobError::Closed,
            },
        };
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// What a worker tells its supervisor.
enum Report {
    /// A job panicked; the worker thread has ended.
    Died {
        index: usize,
        job: Job,
        message: String,
    },
    /// The pool closed and the queue is empty, or the pool has fewer
    /// workers now; the worker thread has ended.
    Exited,
}

fn start_worker(
    shared: &Arc<Shared>,
    index: usize,
    reports: mpsc::Sender<Report>,
) -> std::io::Result<()> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name(format!("{}-{index}", shared.config.name))
        .spawn(move || work(&shared, index, &reports))
        .map(drop)
}

/// A worker's life: take the best job, run it, repeat. Returns after a panic,
/// leaving the restart to the supervisor.
fn work(shared: &Shared, index: usize, reports: &mpsc::Sender<Report>) {
    while let Some(mut job) = shared.next_job() {
        job.attempts += 1;
        shared.busy.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let attempt = catch_unwind(AssertUnwindSafe(|| job.work.attempt()));
        shared.busy.fetch_sub(1, Ordering::Relaxed);
        match attempt {
            Ok(Attempt::Succeeded) => {
                shared.record_success(started.elapsed());
                job.work.reply();
            }
            Ok(Attempt::Failed) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                job.work.reply();
            }
            Ok(Attempt::Retry) if job.attempts < shared.config.max_attempts => {
                log::debug!("{} asked for a retry (attempt {})", job.id, job.attempts);
                shared.requeue(job);
            }
            Ok(Attempt::Retry) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let attempts = job.attempts;
                job.work.end(Ending::Exhausted(attempts));
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let _ = reports.send(Report::Died {
                    index,
                    job,
                    message,
                });
                return;
            }
        }
    }
    let _ = reports.send(Report::Exited);
}

/// The supervisor's life: restart dead workers and decide their jobs' fate;
/// return when every worker has exited.
fn supervise(shared: Arc<Shared>, reports: mpsc::Receiver<Report>, deaths: mpsc::Sender<Report>) {
    while shared.lock().live > 0 {
        let Ok(report) = reports.recv() else {
            return;
        };
        match report {
            Report::Exited => {}
            Report::Died {
                index,
                mut job,
                message,
            } => {
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}-{index} panicked running {} (attempt {}): {message}; restarting it",
                    shared.config.name,
                    job.id,
                    job.attempts
                );
                if job.attempts < shared.config.max_attempts {
                    shared.requeue(job);
                } else {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    let attempts = job.attempts;
                    job.work.end(Ending::Panicked(attempts, message));
                }
                if let Err(e) = start_worker(&shared, index, deaths.clone()) {
                    log::error!("{}-{index} could not be restarted: {e}", shared.config.name);
                    shared.lock().live -= 1;
                }
            }
        }
    }
    // No worker is left (all exited after a close, or none could be
    // restarted): nothing would run what still waits, so its callers are
    // answered now, with `JobError::Closed`, rather than never.
    shared.close();
    let abandoned = std::mem::take(&mut shared.lock().jobs);
    if !abandoned.is_empty() {
        log::error!(
            "{}: no worker left; {} waiting jobs abandoned",
            shared.config.name,
            abandoned.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn pool(workers: usize, queue_capacity: usize, max_attempts: u32) -> WorkerPool {
        WorkerPool::new(PoolConfig {
            name: "test-pool".to_owned(),
            workers,
            queue_capacity,
            max_attempts,
        })
        .expect("threads start")
    }

    /// Occupies the pool's only worker until released, so tests can fill the
    /// queue in a known order.
    fn occupy(pool: &WorkerPool) -> (std::sync::mpsc::Sender<()>, JobHandle<(), ()>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let handle = pool
            .submit(0, move || {
                let _ = started_tx.send(());
                let _ = gate.lock().unwrap_or_else(PoisonError::into_inner).recv();
                Ok::<_, Failure<()>>(())
            })
            .expect("accepted");
        started.recv().expect("blocker started");
        (release, handle)
    }

    #[tokio::test]
    async fn runs_higher_priorities_first_and_fifo_within_one() {
        let pool = pool(1, 10, 1);
        let (release, blocker) = occupy(&pool);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for (label, priority) in [
            ("low-1", 1),
            ("high-1", 9),
            ("low-2", 1),
            ("high-2", 9),
            ("mid", 5),
        ] {
            let order = Arc::clone(&order);
            handles.push(
                pool.submit(priority, move || {
                    order
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(label);
                    Ok::<_, Failure<()>>(())
                })
                .expect("accepted"),
            );
        }
        let _ = release.send(());
        assert!(blocker.await.is_ok());
        for handle in handles {
            assert!(handle.await.is_ok());
        }
        let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(order, ["high-1", "high-2", "mid", "low-1", "low-2"]);
        assert_eq!(pool.stats().completed, 6);
    }

    /// Waits for a condition on another thread's progress, up to 10 s.
    fn eventually(mut what: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[tokio::test]
    async fn grows_and_shrinks_while_running_and_drops_nothing() {
        let pool = pool(1, 8, 1);
        // Grown to three workers, three jobs run at the same time: each
        // waits for the other two at a barrier.
        pool.resize(3, 8);
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let together: Vec<_> = (0..3)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                pool.submit(0, move || {
                    barrier.wait();
                    Ok::<_, Failure<()>>(())
                })
                .expect("accepted")
            })
            .collect();
        for handle in together {
            assert!(handle.await.is_ok());
        }
        assert_eq!(pool.stats().workers, 3);

        // Shrunk to one worker and a queue of one while five jobs are held
        // (three running, at least two waiting): all five still run, and a
        // sixth is refused until the queue drains.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting: Vec<_> = (0..5)
            .map(|i| {
                let gate = Arc::clone(&gate);
                pool.submit(0, move || {
                    drop(gate.lock().unwrap_or_else(PoisonError::into_inner));
                    Ok::<_, Failure<()>>(i)
                })
                .expect("accepted")
            })
            .collect();
        pool.resize(1, 1);
        assert_eq!(
            pool.submit(0, || Ok::<_, Failure<()>>(9)).err(),
            Some(SubmitError::Busy { capacity: 1 })
        );
        drop(held);
        for (i, handle) in waiting.into_iter().enumerate() {
            assert_eq!(handle.await.ok(), Some(i));
        }
        assert!(
            eventually(|| pool.stats().workers == 1),
            "{:?}",
            pool.stats()
        );
        assert_eq!(pool.stats().capacity, 1);
        let after = pool
            .submit(0, || Ok::<_, Failure<()>>(7))
            .expect("accepted");
        assert_eq!(after.await.ok(), Some(7));
    }

    #[tokio::test]
    async fn refuses_with_busy_when_the_queue_is_full() {
        let pool = pool(1, 2, 1);
        let (release, blocker) = occupy(&pool);
        let first = pool
            .submit(0, || Ok::<_, Failure<()>>(1))
            .expect("accepted");
        let second = pool
            .submit(0, || Ok::<_, Failure<()>>(2))
            .expect("accepted");
        let refused = pool.submit(0, || Ok::<_, Failure<()>>(3));
        assert!(matches!(refused, Err(SubmitError::Busy { capacity: 2 })));
        let stats = pool.stats();
        assert_eq!((stats.queued, stats.capacity, stats.busy), (2, 2, 1));

        let _ = release.send(());
        assert!(blocker.await.is_ok());
        assert_eq!(first.await.ok(), Some(1));
        assert_eq!(second.await.ok(), Some(2));
    }

    #[tokio::test]
    async fn reports_position_and_cancels_waiting_jobs() {
        let pool = pool(1, 10, 1);
        let (release, blocker) = occupy(&pool);
        let a = pool
            .submit(1, || Ok::<_, Failure<()>>("a"))
            .expect("accepted");
        let b = pool
            .submit(1, || Ok::<_, Failure<()>>("b"))
            .expect("accepted");
        let urgent = pool
            .submit(7, || Ok::<_, Failure<()>>("u"))
            .expect("accepted");

        let position = pool.position(b.id()).expect("waiting");
        assert_eq!((position.ahead, position.queued), (2, 3));
        assert_eq!(pool.position(urgent.id()).map(|p| p.ahead), Some(0));
        assert_eq!(pool.position(blocker.id()), None);

        assert!(pool.cancel(a.id()));
        assert!(!pool.cancel(a.id()));
        assert_eq!(pool.position(b.id()).map(|p| p.ahead), Some(1));
        assert!(matches!(a.await, Err(JobError::Cancelled)));

        let _ = release.send(());
        assert!(blocker.await.is_ok());
        assert_eq!(urgent.await.ok(), Some("u"));
        assert_eq!(b.await.ok(), Some("b"));
    }

    #[tokio::test]
    async fn panicking_worker_is_restarted_and_the_job_retried() {
        let pool = pool(2, 10, 3);
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&attempts);
        let handle = pool
            .submit(0, move || {
                if counted.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                Ok::<_, Failure<()>>("rendered")
            })
            .expect("accepted");
        assert_eq!(handle.await.ok(), Some("rendered"));
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        let stats = pool.stats();
        assert_eq!((stats.restarts, stats.retried, stats.completed), (2, 2, 1));

        // The restarted workers still take jobs.
        let after = pool
            .submit(0, || Ok::<_, Failure<()>>(5))
            .expect("accepted");
        assert_eq!(after.await.ok(), Some(5));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempt_limit_with_a_typed_error() {
        let pool = pool(1, 10, 3);
        let retrying = pool
            .submit(0, || Err::<(), _>(Failure::Retry("timeout")))
            .expect("accepted");
        assert!(matches!(
            retrying.await,
            Err(JobError::Exhausted {
                attempts: 3,
                error: "timeout"
            })
        ));

        let panicking = pool
            .submit(0, || -> Result<(), Failure<()>> { panic!("always") })
            .expect("accepted");
        match panicking.await {
            Err(JobError::Panicked { attempts, message }) => {
                assert_eq!((attempts, message.as_str()), (3, "always"));
            }
            other => panic!("unexpected {other:?}"),
        }

        let fatal = pool
            .submit(0, || Err::<(), _>(Failure::Fatal("bad input")))
            .expect("accepted");
        assert!(matches!(fatal.await, Err(JobError::Failed("bad input"))));

        let stats = pool.stats();
        assert_eq!((stats.failed, stats.restarts), (3, 3));
        assert_eq!(pool.report().restarts, 3);
    }

    #[tokio::test]
    async fn closed_pool_refuses_but_finishes_what_it_accepted() {
        let pool = pool(1, 10, 1);
        let (release, blocker) = occupy(&pool);
        let queued = pool
            .submit(0, || Ok::<_, Failure<()>>(1))
            .expect("accepted");
        pool.close();
        assert!(matches!(
            pool.submit(0, || Ok::<_, Failure<()>>(2)),
            Err(SubmitError::Closed)
        ));
        let _ = release.send(());
        assert!(blocker.await.is_ok());
        assert_eq!(queued.await.ok(), Some(1));
    }
}
