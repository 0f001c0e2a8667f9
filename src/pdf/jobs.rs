//! The PDF jobs actor: accepts reports and photo albums, keeps them durable,
//! renders them on the PDF worker pool and delivers them.
//!
//! A job is written to the `jobs` table before the user hears it was
//! accepted, and marked done only after Telegram has the document, so a
//! restart (even after kill -9) resumes every job that was not delivered.
//! Rendering is CPU work: it runs on the pool's threads, never on this
//! actor's event loop; the actor and its per-job tasks only wait.
//!
//! Priorities: an admin's job first, then shorter jobs before longer ones,
//! so a one-page report does not wait behind a forty-page one.
//!
//! In a cluster the table is shared: a job recorded by the leader is run
//! by whichever worker claims it ([`super::claims`]), the leader's own
//! pools among them, and every record of its end is made under that claim.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::fault;
use actorbot_actors::pool::{
    Failure, JobError, JobHandle, PoolConfig, Position, SubmitError, WorkerPool,
};
use actorbot_actors::probe::{Probe, ProbeReport};
use bytes::Bytes;
use frankenstein::input_file::FileUpload;
use frankenstein::types::ChatAction;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::PdfError;
use super::album::{AlbumPage, render_album};
use super::claims::Claimer;
use super::report::{
    Exchange, RenderedPdf, ReportLimits, ReportRequest, estimate_pages, render_report,
};
use crate::bot::commands;
use crate::config::Config;
use crate::health::memory::MemoryGauge;
use crate::images::{ImagePool, PhotoRef, Prepare};
use crate::metrics;
use crate::retune::Resize;
use crate::storage::{JobRow, NewJob, Storage, StorageError, job_status};
use crate::telegram::params::SendDocumentParams;
use crate::telegram::{Request, Telegram, Upload, text_requests};

/// What a job makes, as stored in the `payload` column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    /// The user's conversation, captured when they asked for it.
    Report {
        user_name: String,
        generated_at: String,
        exchanges: Vec<(String, String)>,
    },
    /// Photos, one page each.
    Album { photos: Vec<PhotoRef> },
}

impl JobSpec {
    fn kind(&self) -> &'static str {
        match self {
            JobSpec::Report { .. } => "report",
            JobSpec::Album { .. } => "album",
        }
    }

    /// Pages it will roughly have: the priority's measure of length.
    fn pages(&self) -> usize {
        match self {
            JobSpec::Report {
                user_name,
                generated_at,
                exchanges,
            } => estimate_pages(&report_request(user_name, generated_at, exchanges)),
            JobSpec::Album { photos } => photos.len(),
        }
    }
}

/// The layout's input for a report job.
fn report_request(
    user_name: &str,
    generated_at: &str,
    exchanges: &[(String, String)],
) -> ReportRequest {
    ReportRequest {
        user_name: user_name.to_string(),
        generated_at: generated_at.to_string(),
        exchanges: exchanges
            .iter()
            .map(|(question, answer)| Exchange {
                question: question.clone(),
                answer: answer.clone(),
            })
            .collect(),
    }
}

/// A job accepted: where it stands in the queue.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub job_id: i64,
    pub position: Option<Position>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the PDF queue is full")]
    Busy,
    #[error("the job could not be recorded: {0}")]
    Storage(#[source] StorageError),
    #[error("the job ended before it was queued")]
    Ended,
}

/// Accepts a job: records it, queues it, answers its place in the queue.
#[derive(Message)]
#[rtype(result = "Result<Accepted, Refused>")]
pub struct SubmitJob {
    pub user_id: i64,
    pub chat_id: i64,
    pub admin: bool,
    pub spec: JobSpec,
}

/// Resumes the jobs a previous run accepted and did not deliver; answers
/// how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ResumeJobs;

/// Stops new deliveries for a shutdown, and answers once the deliveries
/// under way have their done marks written (or `deadline` passes). Jobs not
/// delivered stay recorded and are resumed at the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJobs {
    pub deadline: Instant,
}

/// How long a resumed job waits before trying a full queue again.
const RESUME_RETRY: Duration = Duration::from_secs(1);

/// What the per-job tasks share.
struct Shared {
    max_attempts: u32,
    /// Set by [`StopJobs`]: no new document is sent.
    stopping: AtomicBool,
    /// Documents posted whose done mark is not written yet.
    delivering: AtomicUsize,
    /// Woken each time `delivering` falls to zero.
    delivered_all: tokio::sync::Notify,
    storage: Storage,
    telegram: Telegram,
    images: Addr<ImagePool>,
    pool: WorkerPool,
    /// Past the memory limit's soft mark new jobs are refused "busy".
    memory: MemoryGauge,
    limits: ReportLimits,
    action_every: Duration,
    /// In a cluster: the claims this process makes on the shared table.
    claimer: Option<Claimer>,
}

pub struct PdfJobs {
    shared: Arc<Shared>,
    running: usize,
    delivered: u64,
    /// In a cluster, once resumed: claiming jobs and renewing the leases.
    claiming: bool,
    /// A claim is on its way to the database.
    looking: bool,
    /// The claimed jobs under way here, whose leases are renewed.
    held: HashSet<i64>,
    /// Jobs being recorded to run here at once, not launched yet: they
    /// count as running, so that a burst of submissions claims no more
    /// than there are workers free.
    reserved: usize,
}

impl PdfJobs {
    pub fn new(
        config: &Config,
        storage: Storage,
        telegram: Telegram,
        images: Addr<ImagePool>,
        memory: MemoryGauge,
        claimer: Option<Claimer>,
    ) -> std::io::Result<PdfJobs> {
        let pool = WorkerPool::new(PoolConfig {
            name: "pdf".into(),
            workers: config.pdf_semaphore_limit,
            queue_capacity: config.pdf_queue_size,
            max_attempts: config.job_max_attempts,
        })?;
        Ok(PdfJobs {
            shared: Arc::new(Shared {
                max_attempts: config.job_max_attempts,
                stopping: AtomicBool::new(false),
                delivering: AtomicUsize::new(0),
                delivered_all: tokio::sync::Notify::new(),
                storage,
                telegram,
                images,
                pool,
                memory,
                limits: ReportLimits {
                    max_pages: config.max_report_pages,
                },
                action_every: Config::secs(config.typing_interval),
                claimer,
            }),
            running: 0,
            delivered: 0,
            claiming: false,
            looking: false,
            held: HashSet::new(),
            reserved: 0,
        })
    }

    /// Runs a recorded job to its end on this actor's arbiter.
    fn launch(
        &mut self,
        row: JobRow,
        spec: JobSpec,
        accepted: Option<oneshot::Sender<Result<Accepted, Refused>>>,
        ctx: &mut Context<Self>,
    ) {
        self.running += 1;
        if self.shared.claimer.is_some() {
            self.held.insert(row.id);
        }
        let shared = self.shared.clone();
        let me = ctx.address();
        let id = row.id;
        actix_rt::spawn(async move {
            let delivered = run(shared, row, spec, accepted).await;
            me.do_send(Finished { id, delivered });
        });
    }

    /// Starts a recorded job that `used` attempts had already been made
    /// at before this one, or gives it up past `JOB_MAX_ATTEMPTS`: each
    /// start that found it unfinished counted one, and a job that takes
    /// the process down must not do so at every start.
    fn start_recorded(&mut self, row: JobRow, used: i32, ctx: &mut Context<Self>) -> bool {
        if used >= self.shared.max_attempts as i32 {
            log::warn!("job {} gave up after {used} attempts", row.id);
            give_up(self.shared.clone(), row);
            return false;
        }
        match serde_json::from_str::<JobSpec>(&row.payload) {
            Ok(spec) => {
                log::info!("starting job {} ({})", row.id, row.kind);
                self.launch(row, spec, None, ctx);
                true
            }
            Err(err) => {
                log::warn!("job {} has an unreadable payload: {err}", row.id);
                let shared = self.shared.clone();
                actix_rt::spawn(async move {
                    let text = format!("unreadable payload: {err}");
                    if let Err(err) =
                        record(&shared, &row, job_status::FAILED, row.attempts, Some(text)).await
                    {
                        log::warn!("job {}: could not record its end: {err}", row.id);
                    }
                });
                false
            }
        }
    }

    /// In a cluster: claims a job for each worker without one, every
    /// `JOB_CLAIM_INTERVAL`, and renews the leases of those under way.
    fn start_claiming(&mut self, ctx: &mut Context<Self>) {
        let Some(claimer) = self.shared.claimer.clone() else {
            return;
        };
        self.claiming = true;
        ctx.run_interval(claimer.every, |this, ctx| this.claim(ctx));
        ctx.run_interval(claimer.renew_every(), move |this, _| {
            if this.held.is_empty() {
                return;
            }
            let ids: Vec<i64> = this.held.iter().copied().collect();
            let (storage, worker, lease) = (
                this.shared.storage.clone(),
                claimer.worker.clone(),
                claimer.lease_ms(),
            );
            actix_rt::spawn(async move {
                if let Err(err) = storage.jobs_renew(&worker, &ids, lease).await {
                    log::warn!("could not renew the leases of {} jobs: {err}", ids.len());
                }
            });
        });
        self.claim(ctx);
    }

    fn claim(&mut self, ctx: &mut Context<Self>) {
        let Some(claimer) = self.shared.claimer.clone() else {
            return;
        };
        if self.looking || self.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let wanted = claimer.to_claim(
            self.shared.pool.stats().workers,
            self.running + self.reserved,
            self.shared.memory.refuses_jobs(),
        );
        if wanted == 0 {
            return;
        }
        self.looking = true;
        let storage = self.shared.storage.clone();
        let worker = claimer.worker.clone();
        ctx.spawn(
            async move {
                storage
                    .jobs_claim(&worker, wanted, claimer.lease_ms())
                    .await
            }
            .into_actor(self)
            .map(|claimed, this, ctx| {
                this.looking = false;
                match claimed {
                    Ok(rows) => {
                        for row in rows {
                            this.start_claimed(row, ctx);
                        }
                    }
                    Err(err) => log::debug!("could not claim jobs: {err}"),
                }
            }),
        );
    }

    /// A job this process has just claimed: the claim counted its attempt.
    fn start_claimed(&mut self, row: JobRow, ctx: &mut Context<Self>) {
        if let Some(claimer) = &self.shared.claimer {
            metrics::JOBS_CLAIMED
                .with_label_values(&[claimer.worker.as_str()])
                .inc();
            log::info!(
                "job {} claimed by {} (attempt {})",
                row.id,
                claimer.worker,
                row.attempts
            );
        }
        let used = row.attempts - 1;
        self.start_recorded(row, used, ctx);
    }
}

impl Actor for PdfJobs {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        // A restart keeps the actor: its timers are set again.
        if self.claiming {
            self.start_claiming(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.pool.close();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    id: i64,
    delivered: bool,
}

impl Handler<Finished> for PdfJobs {
    type Result = ();

    fn handle(&mut self, msg: Finished, ctx: &mut Self::Context) {
        self.running = self.running.saturating_sub(1);
        // A job left unfinished here keeps its claim until the lease ends.
        self.held.remove(&msg.id);
        if msg.delivered {
            self.delivered += 1;
        }
        if self.claiming {
            self.claim(ctx);
        }
    }
}

impl Handler<SubmitJob> for PdfJobs {
    type Result = ResponseFuture<Result<Accepted, Refused>>;

    fn handle(&mut self, msg: SubmitJob, ctx: &mut Self::Context) -> Self::Result {
        fault::hit("pdf");
        // Refuse before writing anything when the queue is already full
        // (in a cluster leaving jobs to the workers, the table is the queue).
        let stats = self.shared.pool.stats();
        let local = self.shared.claimer.as_ref().is_none_or(|c| c.local);
        if (local && stats.queued >= stats.capacity) || self.shared.memory.refuses_jobs() {
            metrics::DOCUMENT_JOBS
                .with_label_values(&[msg.spec.kind(), "busy"])
                .inc();
            return Box::pin(std::future::ready(Err(Refused::Busy)));
        }
        let storage = self.shared.storage.clone();
        let priority = priority(msg.admin, msg.spec.pages());
        let payload = serde_json::to_string(&msg.spec).unwrap_or_default();
        let new = NewJob {
            kind: msg.spec.kind().to_string(),
            user_id: msg.user_id,
            chat_id: msg.chat_id,
            priority: i32::from(priority),
            payload,
        };
        let spec = msg.spec;
        let me = ctx.address();
        // In a cluster the job runs here at once if a worker is free, and
        // is otherwise left to whichever claims it first.
        let claim_here = self.shared.claimer.clone().filter(|claimer| {
            claimer.to_claim(stats.workers, self.running + self.reserved, false) > 0
        });
        if claim_here.is_some() {
            self.reserved += 1;
        }
        let claims = self.shared.claimer.is_some();
        // Off the actor: the insert and the wait for the job's first answer
        // do not hold its mailbox, and a restart of the actor loses neither
        // (the launch is a message in its mailbox).
        Box::pin(async move {
            let row = match storage.job_insert(new).await {
                Ok(row) => row,
                Err(err) => {
                    log::warn!("could not record a job: {err}");
                    if claim_here.is_some() {
                        me.do_send(Unreserve);
                    }
                    return Err(Refused::Storage(err));
                }
            };
            log::info!(
                "job {} accepted: kind={} chat_id={} priority={}",
                row.id,
                row.kind,
                row.chat_id,
                row.priority
            );
            let row = match claim_here {
                Some(claimer) => {
                    match storage
                        .job_claim(row.id, &claimer.worker, claimer.lease_ms())
                        .await
                    {
                        Ok(Some(claimed)) => {
                            metrics::JOBS_CLAIMED
                                .with_label_values(&[claimer.worker.as_str()])
                                .inc();
                            claimed
                        }
                        // Another worker took it first, or the claim could
                        // not be made: the job is recorded, a worker runs it.
                        Ok(None) | Err(_) => {
                            me.do_send(Unreserve);
                            return Ok(Accepted {
                                job_id: row.id,
                                position: None,
                            });
                        }
                    }
                }
                None if claims => {
                    return Ok(Accepted {
                        job_id: row.id,
                        position: None,
                    });
                }
                None => row,
            };
            let (reply, answer) = oneshot::channel();
            me.do_send(Launch {
                row,
                spec,
                reply,
                reserved: claims,
            });
            answer.await.unwrap_or(Err(Refused::Ended))
        })
    }
}

/// A recorded job to run, and the submitter waiting for its place.
#[derive(Message)]
#[rtype(result = "()")]
struct Launch {
    row: JobRow,
    spec: JobSpec,
    reply: oneshot::Sender<Result<Accepted, Refused>>,
    /// It held a reservation, which the launch takes over.
    reserved: bool,
}

impl Handler<Launch> for PdfJobs {
    type Result = ();

    fn handle(&mut self, msg: Launch, ctx: &mut Self::Context) {
        if msg.reserved {
            self.reserved = self.reserved.saturating_sub(1);
        }
        self.launch(msg.row, msg.spec, Some(msg.reply), ctx);
    }
}

/// A reservation made for a job that will not run here after all.
#[derive(Message)]
#[rtype(result = "()")]
struct Unreserve;

impl Handler<Unreserve> for PdfJobs {
    type Result = ();

    fn handle(&mut self, _: Unreserve, _: &mut Self::Context) {
        self.reserved = self.reserved.saturating_sub(1);
    }
}

/// A restart keeps everything: the jobs run in tasks of their own and in
/// the pool's threads, and report back by message.
impl Supervised for PdfJobs {}

/// In a cluster, resuming is claiming: the jobs a dead worker held come
/// back once their leases end, and any worker with room takes them.
impl Handler<ResumeJobs> for PdfJobs {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, _: ResumeJobs, ctx: &mut Self::Context) -> Self::Result {
        if self.shared.claimer.is_some() {
            if !self.claiming {
                self.start_claiming(ctx);
            }
            return Box::pin(fut::ready(0));
        }
        let storage = self.shared.storage.clone();
        Box::pin(
            async move { storage.jobs_unfinished().await }
                .into_actor(self)
                .map(|rows, this, ctx| {
                    let rows = match rows {
                        Ok(rows) => rows,
                        Err(err) => {
                            log::warn!("could not read unfinished jobs: {err}");
                            return 0;
                        }
                    };
                    let mut resumed = 0;
                    for row in rows {
                        let used = row.attempts;
                        if this.start_recorded(row, used, ctx) {
                            resumed += 1;
                        }
                    }
                    resumed
                }),
        )
    }
}

impl Handler<StopJobs> for PdfJobs {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: StopJobs, _: &mut Self::Context) -> Self::Result {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.pool.close();
        let shared = self.shared.clone();
        Box::pin(async move {
            let all_delivered = async {
                loop {
                    let woken = shared.delivered_all.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    if shared.delivering.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    woken.await;
                }
            };
            let _ = tokio::time::timeout_at(msg.deadline.into(), all_delivered).await;
            // What was claimed here and not delivered is given back, for
            // another worker to take at once.
            if let Some(claimer) = &shared.claimer {
                match shared.storage.jobs_release(&claimer.worker).await {
                    Ok(0) => {}
                    Ok(n) => log::info!("gave {n} unfinished jobs back for another worker"),
                    Err(err) => log::warn!(
                        "could not give the unfinished jobs back ({err}): they are taken again once their leases end"
                    ),
                }
            }
        })
    }
}

/// Marks a job failed for good and tells its user.
fn give_up(shared: Arc<Shared>, row: JobRow) {
    actix_rt::spawn(async move {
        let text =
            "Sorry, I could not make your PDF: it failed several times. Please try again later.";
        let _ = shared
            .telegram
            .post(row.chat_id, text_requests(row.chat_id, text))
            .await;
        if let Err(err) = record(
            &shared,
            &row,
            job_status::FAILED,
            row.attempts,
            Some("gave up".into()),
        )
        .await
        {
            log::warn!("job {}: could not record its end: {err}", row.id);
        }
        metrics::DOCUMENT_JOBS
            .with_label_values(&[row.kind.as_str(), "failed"])
            .inc();
    });
}

impl Handler<Resize> for PdfJobs {
    type Result = ();

    fn handle(&mut self, msg: Resize, _: &mut Self::Context) {
        self.shared.pool.resize(msg.workers, msg.queue_capacity);
        log::info!(
            "PDF pool: {} workers, {} jobs may wait",
            msg.workers,
            msg.queue_capacity
        );
    }
}

impl Handler<Probe> for PdfJobs {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let mut report: ProbeReport = self.shared.pool.report();
        report.name = "pdf".into();
        report = report
            .detail("jobs_running", self.running)
            .detail("delivered", self.delivered);
        if let Some(claimer) = &self.shared.claimer {
            report = report
                .detail("claims_as", claimer.worker.as_str())
                .detail("claims_held", self.held.len())
                .detail("takes_jobs", claimer.local);
        }
        MessageResult(report)
    }
}

/// Higher runs first: admins above everyone, then fewer pages first.
fn priority(admin: bool, pages: usize) -> u8 {
    let base: u8 = if admin { 200 } else { 100 };
    base + 50u8.saturating_sub(pages.min(50) as u8)
}

/// How a job ended, for the user and the record.
enum Outcome {
    Delivered,
    Failed(String),
    /// Another worker holds the job now, or its claim could not be
    /// confirmed: left to whoever holds it.
    Abandoned,
}

/// Records how a job ended: in a cluster only while this process still
/// holds its claim, else with `attempts` counted.
async fn record(
    shared: &Shared,
    row: &JobRow,
    status: &'static str,
    attempts: i32,
    error: Option<String>,
) -> Result<(), StorageError> {
    let Some(claimer) = &shared.claimer else {
        return shared
            .storage
            .job_update(row.id, status, attempts, error)
            .await;
    };
    if !shared
        .storage
        .job_finish(row.id, &claimer.worker, status, error)
        .await?
    {
        log::warn!(
            "job {}: another worker holds it now; its end here is not recorded",
            row.id
        );
    }
    Ok(())
}

/// The longest wait between two tries of recording an attempt.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// Records that the job runs, and its attempt, before it runs. That count
/// is what holds a job to `JOB_MAX_ATTEMPTS` across restarts: a job that
/// crashes the daemon must not run for ever because the write was lost. So
/// while the database cannot take it, the job waits; it gives up only when
/// the daemon stops (the job stays recorded as it was, and the next start
/// resumes it).
async fn record_attempt(shared: &Shared, row: &JobRow) -> bool {
    if shared.claimer.is_some() {
        // The claim counted it, in the same statement.
        return true;
    }
    let mut wait = Duration::from_millis(100);
    loop {
        match shared
            .storage
            .job_update(row.id, job_status::RUNNING, row.attempts + 1, None)
            .await
        {
            Ok(()) => return true,
            Err(err) if shared.stopping.load(Ordering::SeqCst) => {
                log::warn!(
                    "PDF job {}: its attempt could not be recorded ({err}); left for the next start",
                    row.id
                );
                return false;
            }
            Err(err) => {
                log::warn!(
                    "PDF job {}: its attempt could not be recorded ({err}); trying again in {}ms",
                    row.id,
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_RETRY_MAX);
            }
        }
    }
}

/// Runs one job: prepares its input, renders it on the pool, delivers the
/// document and records the end. Answers whether it was delivered.
async fn run(
    shared: Arc<Shared>,
    row: JobRow,
    spec: JobSpec,
    mut accepted: Option<oneshot::Sender<Result<Accepted, Refused>>>,
) -> bool {
    let started = Instant::now();
    let (id, chat_id, kind) = (row.id, row.chat_id, spec.kind());
    if !record_attempt(&shared, &row).await {
        return false;
    }
    let submitted = loop {
        match submit(&shared, &row, &spec).await {
            // A resumed job was accepted before: it waits for room rather
            // than failing because the restart queued everything at once.
            Err(Prepared::Busy)
                if accepted.is_none() && !shared.stopping.load(Ordering::SeqCst) =>
            {
                tokio::time::sleep(RESUME_RETRY).await;
            }
            other => break other,
        }
    };
    let outcome = match submitted {
        Ok(handle) => {
            if let Some(reply) = accepted.take() {
                let position = shared.pool.position(handle.id());
                log::debug!("job {id}: queued as {}, position {position:?}", handle.id());
                let _ = reply.send(Ok(Accepted {
                    job_id: id,
                    position,
                }));
            }
            let rendered = with_chat_action(&shared, chat_id, handle).await;
            match rendered {
                Ok(_) if shared.stopping.load(Ordering::SeqCst) => {
                    // Shutting down: left recorded, delivered after the restart.
                    log::info!("job {id} ({kind}) left for the next start");
                    return false;
                }
                Ok(pdf) => deliver(&shared, &row, &spec, pdf).await,
                Err(err) => {
                    log::warn!("job {id} ({kind}) failed: {err}");
                    Outcome::Failed(failure_text(&spec, &err))
                }
            }
        }
        Err(Prepared::Busy) if accepted.is_some() => {
            if let Some(reply) = accepted.take() {
                let _ = reply.send(Err(Refused::Busy));
            }
            if let Err(err) = record(
                &shared,
                &row,
                job_status::FAILED,
                row.attempts + 1,
                Some("busy".into()),
            )
            .await
            {
                log::warn!("job {id}: could not record its end: {err}");
            }
            metrics::DOCUMENT_JOBS
                .with_label_values(&[kind, "busy"])
                .inc();
            return false;
        }
        Err(Prepared::Busy) => Outcome::Failed(
            "I could not make your PDF because I am very busy. Please ask again in a few minutes."
                .into(),
        ),
        Err(Prepared::Photo(text)) => Outcome::Failed(text),
    };
    if let Some(reply) = accepted.take() {
        let _ = reply.send(Ok(Accepted {
            job_id: id,
            position: None,
        }));
    }
    match outcome {
        Outcome::Delivered => {
            metrics::DOCUMENT_JOBS
                .with_label_values(&[kind, "delivered"])
                .inc();
            metrics::DOCUMENT_SECONDS
                .with_label_values(&[kind])
                .observe(started.elapsed().as_secs_f64());
            log::info!(
                "job {id} ({kind}) delivered to chat_id={chat_id} in {} ms",
                started.elapsed().as_millis()
            );
            true
        }
        Outcome::Failed(text) => {
            metrics::DOCUMENT_JOBS
                .with_label_values(&[kind, "failed"])
                .inc();
            let told = shared
                .telegram
                .post(chat_id, text_requests(chat_id, &text))
                .await;
            if let Err(err) = &told {
                log::warn!("job {id}: could not tell chat_id={chat_id} it failed: {err}");
            }
            if let Err(err) = record(
                &shared,
                &row,
                job_status::FAILED,
                row.attempts + 1,
                Some(text),
            )
            .await
            {
                log::warn!("job {id}: could not record its end: {err}");
            }
            false
        }
        Outcome::Abandoned => false,
    }
}

enum Prepared {
    Busy,
    /// A photo could not be made ready; the text says which.
    Photo(String),
}

/// Prepares the job's input and queues its rendering.
async fn submit(
    shared: &Arc<Shared>,
    row: &JobRow,
    spec: &JobSpec,
) -> Result<JobHandle<RenderedPdf, PdfError>, Prepared> {
    let priority = u8::try_from(row.priority).unwrap_or(100);
    let submitted = match spec {
        JobSpec::Report {
            user_name,
            generated_at,
            exchanges,
        } => {
            let request = report_request(user_name, generated_at, exchanges);
            let limits = shared.limits;
            shared.pool.submit(priority, move || {
                render_faults();
                render_report(&request, &limits).map_err(Failure::Fatal)
            })
        }
        JobSpec::Album { photos } => {
            let mut pages = Vec::with_capacity(photos.len());
            for photo in photos {
                let prepared = shared
                    .images
                    .send(Prepare {
                        photo: photo.clone(),
                        priority,
                    })
                    .await
                    .map_err(|_| Prepared::Busy)?
                    .map_err(|err| Prepared::Photo(err.user_text(&photo.name)))?;
                pages.push(AlbumPage {
                    name: photo.name.clone(),
                    jpeg: prepared.jpeg.clone(),
                    width: prepared.width,
                    height: prepared.height,
                });
            }
            shared.pool.submit(priority, move || {
                render_faults();
                render_album(&pages).map_err(Failure::Fatal)
            })
        }
    };
    submitted.map_err(|err| match err {
        SubmitError::Busy { .. } | SubmitError::Closed => Prepared::Busy,
    })
}

/// The fault points of a render (see [`actorbot_actors::fault`]): it may
/// be held back, keeping jobs queued, or panic on its worker thread.
fn render_faults() {
    fault::hold("render");
    fault::hit("render");
}

/// Waits for the rendering while showing "sending a file…" in the chat.
async fn with_chat_action(
    shared: &Arc<Shared>,
    chat_id: i64,
    handle: JobHandle<RenderedPdf, PdfError>,
) -> Result<RenderedPdf, JobError<PdfError>> {
    let job = handle.id();
    let mut handle = std::pin::pin!(handle);
    loop {
        // Only while it renders: a queue of waiting jobs would otherwise
        // spend the bot's sending rate on "sending a file…".
        if shared.pool.position(job).is_none() {
            let telegram = shared.telegram.clone();
            actix_rt::spawn(async move {
                let _ = telegram
                    .chat_action(chat_id, ChatAction::UploadDocument)
                    .await;
            });
        }
        tokio::select! {
            result = &mut handle => return result,
            () = tokio::time::sleep(shared.action_every) => {}
        }
    }
}

async fn deliver(shared: &Arc<Shared>, row: &JobRow, spec: &JobSpec, pdf: RenderedPdf) -> Outcome {
    let (file_name, caption) = match spec {
        JobSpec::Report { .. } => (format!("report-{}.pdf", row.id), {
            let pages = commands::count(pdf.pages, "page", "pages");
            if pdf.truncated {
                format!("Your conversation report ({pages}, shortened to fit).")
            } else {
                format!("Your conversation report ({pages}).")
            }
        }),
        JobSpec::Album { photos } => (
            format!("photos-{}.pdf", row.id),
            format!(
                "Your {} as a PDF.",
                commands::count(photos.len(), "photo", "photos")
            ),
        ),
    };
    let params = SendDocumentParams::builder()
        .chat_id(row.chat_id)
        .document(FileUpload::String(String::new()))
        .caption(caption)
        .build();
    let upload = Upload {
        file_name,
        mime: mime::APPLICATION_PDF,
        bytes: Bytes::from(pdf.bytes),
    };
    if let Some(claimer) = &shared.claimer {
        // Sent only while still held: a worker that was slow past its
        // lease must not send what another has taken over.
        match shared
            .storage
            .job_hold(row.id, &claimer.worker, claimer.lease_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                log::warn!(
                    "job {}: another worker took it over; not sent from {}",
                    row.id,
                    claimer.worker
                );
                return Outcome::Abandoned;
            }
            Err(err) => {
                log::warn!(
                    "job {}: its claim could not be confirmed ({err}); not sent, it is taken again once its lease ends",
                    row.id
                );
                return Outcome::Abandoned;
            }
        }
    }
    shared.delivering.fetch_add(1, Ordering::SeqCst);
    let sent = shared
        .telegram
        .post(
            row.chat_id,
            vec![Request::Document(Box::new(params), upload)],
        )
        .await;
    let outcome = match sent {
        Ok(_) => {
            if let Err(err) = record(shared, row, job_status::DONE, row.attempts + 1, None).await {
                // It would be sent again after a restart.
                log::warn!("job {}: delivered, but its done mark failed: {err}", row.id);
            }
            Outcome::Delivered
        }
        Err(err) => {
            log::warn!("job {}: the document was not delivered: {err}", row.id);
            Outcome::Failed(
                "I made your PDF but could not send it. Please ask for it again.".into(),
            )
        }
    };
    if shared.delivering.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.delivered_all.notify_waiters();
    }
    outcome
}

fn failure_text(spec: &JobSpec, err: &JobError<PdfError>) -> String {
    let what = match spec {
        JobSpec::Report { .. } => "your report",
        JobSpec::Album { .. } => "the PDF of your photos",
    };
    match err {
        JobError::Cancelled | JobError::Closed => {
            format!("I had to stop while making {what}. Please ask for it again.")
        }
        _ => format!("Sorry, I could not make {what}. Please try again later."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_and_short_jobs_come_first() {
        assert!(priority(true, 40) > priority(false, 1));
        assert!(priority(false, 1) > priority(false, 40));
        assert_eq!(priority(false, 500), priority(false, 50));
    }

    #[test]
    fn specs_round_trip_through_the_payload_column() {
        let spec = JobSpec::Album {
            photos: vec![PhotoRef {
                file_id: "f".into(),
                file_unique_id: "u".into(),
                name: "photo 1".into(),
                size: Some(10),
            }],
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains("\"kind\":\"album\""), "{text}");
        let back: JobSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back.kind(), "album");
        assert_eq!(back.pages(), 1);
    }
}
