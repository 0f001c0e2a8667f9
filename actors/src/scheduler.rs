//! A scheduler actor for named periodic jobs (cleanups, reports).
//!
//! Each job is an async closure run every `interval`, after an optional first
//! delay. A run that is still going when the next tick comes is not doubled:
//! the tick is skipped and counted, because two cleanups racing over the same
//! rows do more harm than a late one. The scheduler keeps, per job, when it
//! last ran, how long it took, how it ended and how many runs failed, and
//! shows them when probed. [`RunNow`] starts a job on demand (from an admin
//! command, or a test) under the same no-overlap rule.
//!
//! Jobs run as futures on the scheduler's arbiter. Blocking work belongs in
//! `spawn_blocking` or a worker pool inside the future.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::probe::{Health, Probe, Vitals};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "error", rename_all = "lowercase")]
pub enum Outcome {
    /// The job's future returned `Ok`.
    Succeeded,
    /// The job's future returned this error.
    Failed(String),
}

/// Why a scheduler request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// No job has this name.
    #[error("no job named {0:?}")]
    UnknownJob(String),
    /// A job with this name is already scheduled.
    #[error("a job named {0:?} already exists")]
    DuplicateJob(String),
    /// The job is running now; runs never overlap.
    #[error("job {0:?} is already running")]
    AlreadyRunning(String),
    /// The scheduler stopped before the run finished.
    #[error("the scheduler stopped")]
    Stopped,
}

type RunJob = Box<dyn Fn() -> LocalBoxFuture<'static, Result<(), String>> + Send>;

/// Adds a periodic job.
#[derive(Message)]
#[rtype(result = "Result<(), SchedulerError>")]
pub struct Schedule {
    name: String,
    interval: Duration,
    first_after: Duration,
    run: RunJob,
}

impl Schedule {
    /// A job named `name` that runs `job` every `interval`, the first time
    /// one interval from now.
    pub fn every<F, Fut, E>(name: impl Into<String>, interval: Duration, job: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + 'static,
        E: fmt::Display,
    {
        Schedule {
            name: name.into(),
            interval,
            first_after: interval,
            run: Box::new(move || {
                let run = job();
                Box::pin(async move { run.await.map_err(|e| e.to_string()) })
            }),
        }
    }

    /// Runs the first time after `delay` instead (zero: at once).
    pub fn first_after(mut self, delay: Duration) -> Self {
        self.first_after = delay;
        self
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .field("first_after", &self.first_after)
            .finish_non_exhaustive()
    }
}

/// Runs a job now and answers with its outcome when it finishes.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Outcome, SchedulerError>")]
pub struct RunNow(pub String);

/// Runs named periodic jobs; see the module documentation.
pub struct Scheduler {
    jobs: BTreeMap<String, Job>,
    vitals: Vitals,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new()
    }
}

struct Job {
    interval: Duration,
    run: RunJob,
    running: bool,
    runs: u64,
    errors: u64,
    skipped: u64,
    last_start: Option<Instant>,
    last_duration: Option<Duration>,
    last_outcome: Option<Outcome>,
    /// Callers of [`RunNow`] waiting for the current run.
    waiting: Vec<oneshot::Sender<Outcome>>,
    /// The timer that starts the next run.
    timer: Option<SpawnHandle>,
}

/// A job's figures, as shown in the probe's details.
#[derive(Debug, Clone, Serialize)]
struct JobFigures<'a> {
    interval_ms: u128,
    running: bool,
    runs: u64,
    errors: u64,
    skipped: u64,
    last_run_ago_ms: Option<u128>,
    last_duration_ms: Option<u128>,
    last_outcome: &'a Option<Outcome>,
}

impl Scheduler {
    /// An empty scheduler; add jobs with [`Schedule`].
    pub fn new() -> Self {
        Scheduler {
            jobs: BTreeMap::new(),
            // Its mailbox is not gauged: jobs come from a few admin messages.
            vitals: Vitals::new(0),
        }
    }

    /// Starts a run of `name` unless one is going; false if it was.
    fn start(&mut self, name: &str, ctx: &mut Context<Self>) -> bool {
        let Some(job) = self.jobs.get_mut(name) else {
            return false;
        };
        if job.running {
            job.skipped += 1;
            log::debug!("scheduled job {name} still running; skipping this tick");
            return false;
        }
        crate::fault::hit("scheduler");
        job.running = true;
        let started = Instant::now();
        job.last_start = Some(started);
        let run = (job.run)();
        let name = name.to_owned();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(run)
                .map(move |result, act, _| act.finish(&name, started, result)),
        );
        self.vitals.active();
        true
    }

    fn finish(&mut self, name: &str, started: Instant, result: Result<(), String>) {
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.running = false;
        job.runs += 1;
        job.last_duration = Some(started.elapsed());
        let outcome = match result {
            Ok(()) => Outcome::Succeeded,
            Err(error) => {
                job.errors += 1;
                log::warn!("scheduled job {name} failed: {error}");
                Outcome::Failed(error)
            }
        };
        for waiter in job.waiting.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        job.last_outcome = Some(outcome);
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // After a restart: every job's timer again, from now.
        let jobs: Vec<(String, Duration)> = self
            .jobs
            .iter()
            .map(|(name, job)| (name.clone(), job.interval))
            .collect();
        for (name, interval) in jobs {
            self.arm(name, interval, interval, ctx);
        }
    }
}

/// A restart keeps the jobs and their figures, and sets their timers up
/// again; a run under way when it crashed counts as ended, and whoever
/// waited for it waits for the next.
impl Supervised for Scheduler {
    fn restarting(&mut self, _: &mut Context<Self>) {
        for job in self.jobs.values_mut() {
            job.running = false;
        }
    }
}

impl Scheduler {
    /// Runs `name` after `first_after`, then every `interval`; the timer
    /// is kept with the job, so that [`Reschedule`] can cancel it.
    fn arm(
        &mut self,
        name: String,
        first_after: Duration,
        interval: Duration,
        ctx: &mut Context<Self>,
    ) {
        let first = ctx.run_later(first_after, {
            let name = name.clone();
            move |act, ctx| {
                act.start(&name, ctx);
                let every = ctx.run_interval(interval, {
                    let name = name.clone();
                    move |act, ctx| {
                        act.start(&name, ctx);
                    }
                });
                if let Some(job) = act.jobs.get_mut(&name) {
                    job.timer = Some(every);
                }
            }
        });
        if let Some(job) = self.jobs.get_mut(&name) {
            job.timer = Some(first);
        }
    }
}

/// Changes a job's interval; the next run comes one new interval from now.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), SchedulerError>")]
pub struct Reschedule {
    /// The job, as it was scheduled.
    pub name: String,
    /// Its new interval.
    pub interval: Duration,
}

impl Handler<Reschedule> for Scheduler {
    type Result = Result<(), SchedulerError>;

    fn handle(&mut self, msg: Reschedule, ctx: &mut Context<Self>) -> Self::Result {
        let Some(job) = self.jobs.get_mut(&msg.name) else {
            return Err(SchedulerError::UnknownJob(msg.name));
        };
        if job.interval == msg.interval {
            return Ok(());
        }
        if let Some(timer) = job.timer.take() {
            ctx.cancel_future(timer);
        }
        job.interval = msg.interval;
        self.arm(msg.name, msg.interval, msg.interval, ctx);
        Ok(())
    }
}

impl Handler<Schedule> for Scheduler {
    type Result = Result<(), SchedulerError>;

    fn handle(&mut self, msg: Schedule, ctx: &mut Context<Self>) -> Self::Result {
        if self.jobs.contains_key(&msg.name) {
            return Err(SchedulerError::DuplicateJob(msg.name));
        }
        let Schedule {
            name,
            interval,
            first_after,
            run,
        } = msg;
        self.jobs.insert(
            name.clone(),
            Job {
                interval,
                run,
                running: false,
                runs: 0,
                errors: 0,
                skipped: 0,
                last_start: None,
                last_duration: None,
                last_outcome: None,
                waiting: Vec::new(),
                timer: None,
            },
        );
        self.arm(name, first_after, interval, ctx);
        Ok(())
    }
}

impl Handler<RunNow> for Scheduler {
    type Result = ResponseFuture<Result<Outcome, SchedulerError>>;

    fn handle(&mut self, RunNow(name): RunNow, ctx: &mut Context<Self>) -> Self::Result {
        let Some(job) = self.jobs.get(&name) else {
            return Box::pin(async move { Err(SchedulerError::UnknownJob(name)) });
        };
        if job.running {
            return Box::pin(async move { Err(SchedulerError::AlreadyRunning(name)) });
        }
        let (tx, rx) = oneshot::channel();
        if let Some(job) = self.jobs.get_mut(&name) {
            job.waiting.push(tx);
        }
        self.start(&name, ctx);
        Box::pin(async move { rx.await.map_err(|_| SchedulerError::Stopped) })
    }
}

impl Handler<Probe> for Scheduler {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let mut health = Health::Healthy;
        for (name, job) in &self.jobs {
            if let Some(Outcome::Failed(error)) = &job.last_outcome {
                health = health.worst(Health::Degraded(format!("{name} failed: {error}")));
            }
        }
        let mut report = self.vitals.report("scheduler", health);
        report.mailbox = None;
        for (name, job) in &self.jobs {
            let figures = JobFigures {
                interval_ms: job.interval.as_millis(),
                running: job.running,
                runs: job.runs,
                errors: job.errors,
                skipped: job.skipped,
                last_run_ago_ms: job.last_start.map(|t| t.elapsed().as_millis()),
                last_duration_ms: job.last_duration.map(|d| d.as_millis()),
                last_outcome: &job.last_outcome,
            };
            report = report.detail(name.clone(), figures);
        }
        MessageResult(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::mpsc;

    #[actix_rt::test]
    async fn a_rescheduled_job_runs_at_its_new_interval() {
        tokio::time::pause();
        let scheduler = Scheduler::new().start();
        let (ran, mut runs) = mpsc::unbounded_channel();
        let job = move || {
            let ran = ran.clone();
            async move {
                let _ = ran.send(Instant::now());
                Ok::<_, String>(())
            }
        };
        let t0 = Instant::now();
        scheduler
            .send(Schedule::every("cleanup", Duration::from_secs(100), job))
            .await
            .expect("answers")
            .expect("scheduled");
        tokio::time::sleep(Duration::from_secs(5)).await;
        scheduler
            .send(Reschedule {
                name: "cleanup".into(),
                interval: Duration::from_secs(10),
            })
            .await
            .expect("answers")
            .expect("rescheduled");
        let mut at = Vec::new();
        for _ in 0..3 {
            at.push(
                runs.recv()
                    .await
                    .expect("runs")
                    .duration_since(t0)
                    .as_secs(),
            );
        }
        // The old timer (100 s) was cancelled: runs at 15, 25, 35 s.
        assert_eq!(at, [15, 25, 35]);
        let unknown = scheduler
            .send(Reschedule {
                name: "nothing".into(),
                interval: Duration::from_secs(1),
            })
            .await
            .expect("answers");
        assert!(matches!(unknown, Err(SchedulerError::UnknownJob(_))));
    }

    #[actix_rt::test]
    async fn runs_periodically_and_never_overlaps_a_slow_run() {
        tokio::time::pause();
        let scheduler = Scheduler::new().start();
        let (ran, mut runs) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicU32::new(0));
        let job = {
            let in_flight = Arc::clone(&in_flight);
            move || {
                let in_flight = Arc::clone(&in_flight);
                let ran = ran.clone();
                async move {
                    let overlapping = in_flight.fetch_add(1, Ordering::SeqCst) > 0;
                    // Two and a half intervals: two ticks come while it runs.
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let _ = ran.send((Instant::now(), overlapping));
                    Ok::<_, String>(())
                }
            }
        };
        let added = scheduler
            .send(Schedule::every("cleanup", Duration::from_secs(10), job))
            .await;
        assert!(matches!(added, Ok(Ok(()))));

        let t0 = Instant::now();
        let mut finished = Vec::new();
        for _ in 0..3 {
            let (at, overlapping) = runs.recv().await.expect("job runs");
            assert!(!overlapping, "two runs overlapped");
            finished.push(at.duration_since(t0).as_secs());
        }
        // Starts at 10 s, then on the first tick after each run ends.
        assert_eq!(finished, [35, 65, 95]);

        let report = scheduler.send(Probe).await.expect("answers");
        assert!(report.health.is_healthy());
        assert_eq!(report.details["cleanup"]["runs"], 3);
        // Ticks at 20, 30, 50, 60, 80 and 90 s found it running.
        assert_eq!(report.details["cleanup"]["skipped"], 6);
    }

    #[actix_rt::test]
    async fn runs_on_demand_and_records_failures() {
        tokio::time::pause();
        let scheduler = Scheduler::new().start();
        let calls = Arc::new(AtomicU32::new(0));
        let job = {
            let calls = Arc::clone(&calls);
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err("database unavailable")
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let added = scheduler
            .send(Schedule::every("purge", Duration::from_secs(3600), job))
            .await;
        assert!(matches!(added, Ok(Ok(()))));

        let first = scheduler.send(RunNow("purge".to_owned())).await;
        assert_eq!(
            first.ok(),
            Some(Ok(Outcome::Failed("database unavailable".to_owned())))
        );
        let report = scheduler.send(Probe).await.expect("answers");
        assert_eq!(
            report.health,
            Health::Degraded("purge failed: database unavailable".to_owned())
        );
        assert_eq!(report.details["purge"]["errors"], 1);

        let second = scheduler.send(RunNow("purge".to_owned())).await;
        assert_eq!(second.ok(), Some(Ok(Outcome::Succeeded)));
        let report = scheduler.send(Probe).await.expect("answers");
        assert!(report.health.is_healthy());

        let unknown = scheduler.send(RunNow("nope".to_owned())).await;
        assert_eq!(
            unknown.ok(),
            Some(Err(SchedulerError::UnknownJob("nope".to_owned())))
        );
        let duplicate = scheduler
            .send(Schedule::every("purge", Duration::from_secs(1), || async {
                Ok::<_, String>(())
            }))
            .await;
        assert_eq!(
            duplicate.ok(),
            Some(Err(SchedulerError::DuplicateJob("purge".to_owned())))
        );
    }

    #[actix_rt::test]
    async fn on_demand_run_does_not_overlap_a_running_one() {
        tokio::time::pause();
        let scheduler = Scheduler::new().start();
        let (release, gate) = oneshot::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(Some(gate)));
        let job = move || {
            let gate = gate.lock().ok().and_then(|mut g| g.take());
            async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok::<_, String>(())
            }
        };
        let added = scheduler
            .send(Schedule::every("report", Duration::from_secs(3600), job))
            .await;
        assert!(matches!(added, Ok(Ok(()))));

        let first = scheduler.send(RunNow("report".to_owned()));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;
        let second = scheduler.send(RunNow("report".to_owned())).await;
        assert_eq!(
            second.ok(),
            Some(Err(SchedulerError::AlreadyRunning("report".to_owned())))
        );
        let _ = release.send(());
        assert!(matches!(first.await, Ok(Ok(Ok(Outcome::Succeeded)))));
    }
}
