//! The AI pool: an actor that owns the backend's connections, its limits
//! and its circuit breaker.
//!
//! At most `AI_SEMAPHORE_LIMIT` requests are in flight; past that, requests
//! wait in a bounded queue (`AI_QUEUE_SIZE`), and past that they are refused
//! at once as busy. One user may have at most `AI_PER_USER_INFLIGHT`
//! requests in flight, so nobody's flood takes the whole pool. Each request
//! is tried up to `AI_MAX_ATTEMPTS` times, with jittered exponential backoff
//! after 5xx, timeouts and broken streams and the backend's `Retry-After`
//! after a 429. Every attempt tells the breaker how the backend did; while
//! it is open, requests are refused at once and queued ones are failed.
//!
//! The pool decides on its own arbiter; the requests themselves run on the
//! worker arbiters it is given (the sessions' threads), one after the other
//! in turn, each with that thread's pooled HTTP client. A burst of a
//! thousand connections and streams is then not one thread's work. The
//! breaker is shared by all of them.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::breaker::{Admission, BreakerState, CircuitBreaker};
use actorbot_actors::probe::{Health, MailboxFigures, Probe, ProbeReport};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::client::{AiError, Backend, ChatMessage, Progress, complete};
use crate::metrics;

/// The pool's limits, from the configuration.
#[derive(Debug, Clone)]
pub struct PoolLimits {
    pub in_flight: usize,
    pub queue: usize,
    pub per_user: usize,
    pub attempts: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_connections: usize,
}

/// Asks the backend; answers the full text or why there is none.
#[derive(Message)]
#[rtype(result = "Result<String, AiError>")]
pub struct Ask {
    pub user_id: i64,
    pub messages: Vec<ChatMessage>,
    pub progress: Option<UnboundedSender<Progress>>,
    /// Fires (or is dropped) when the asker no longer wants the answer.
    pub cancel: oneshot::Receiver<()>,
}

/// Figures for probes and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolStats {
    pub in_flight: usize,
    pub queued: usize,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub refused_busy: u64,
    pub refused_open: u64,
    pub retries: u64,
}

type Reply = oneshot::Sender<Result<String, AiError>>;

struct Waiting {
    ask: Ask,
    reply: Reply,
    since: Instant,
}

pub struct AiPool {
    backend: Backend,
    limits: PoolLimits,
    /// Where requests run; the pool's own arbiter when empty.
    workers: Vec<actix_rt::ArbiterHandle>,
    next_worker: usize,
    /// How each worker builds its client.
    client: ClientSettings,
    per_user: HashMap<i64, usize>,
    queue: VecDeque<Waiting>,
    breaker: Arc<Mutex<CircuitBreaker>>,
    stats: PoolStats,
    last_activity: Option<Instant>,
    /// The askers of the requests in flight, by request: here rather than
    /// in a future of the pool's, so that they are answered after a restart.
    flying: HashMap<u64, (i64, Reply)>,
    next_id: u64,
}

impl AiPool {
    /// A pool whose requests run on `workers` (on its own arbiter when
    /// there are none).
    pub fn new(
        backend: Backend,
        limits: PoolLimits,
        workers: Vec<actix_rt::ArbiterHandle>,
    ) -> AiPool {
        let breaker = CircuitBreaker::new(limits.breaker_failures, limits.breaker_cooldown);
        let client = ClientSettings::of(&backend, &limits, workers.len());
        AiPool {
            backend,
            limits,
            workers,
            next_worker: 0,
            client,
            per_user: HashMap::new(),
            queue: VecDeque::new(),
            breaker: Arc::new(Mutex::new(breaker)),
            stats: PoolStats::default(),
            last_activity: None,
            flying: HashMap::new(),
            next_id: 0,
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        lock(&self.breaker)
    }

    fn breaker_state(&self) -> BreakerState {
        self.breaker().state(Instant::now())
    }

    fn publish(&self) {
        metrics::AI_IN_FLIGHT.set(self.stats.in_flight as i64);
        metrics::QUEUE_DEPTH
            .with_label_values(&["ai"])
            .set(self.queue.len() as i64);
        metrics::AI_BREAKER.set(match self.breaker_state() {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
    }

    fn start(&mut self, waiting: Waiting, ctx: &mut Context<Self>) {
        let Waiting { ask, reply, since } = waiting;
        metrics::AI_QUEUE_WAIT.observe(since.elapsed().as_secs_f64());
        self.stats.in_flight += 1;
        *self.per_user.entry(ask.user_id).or_default() += 1;
        let user_id = ask.user_id;
        let client = self.client;
        let backend = self.backend.clone();
        let breaker = self.breaker.clone();
        let attempts = self.limits.attempts;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.flying.insert(id, (user_id, reply));
        let pool = ctx.address();
        // Built and run on the worker's thread, with that thread's client and
        // connections. The result comes back as a message, which a restart
        // of the pool does not lose.
        let attempt = move || {
            actix_rt::spawn(async move {
                let http = client.get();
                let (result, retries) = attempt_all(http, backend, breaker, attempts, ask).await;
                pool.do_send(Finished {
                    id,
                    result,
                    retries,
                });
            });
        };
        match self
            .workers
            .get(self.next_worker % self.workers.len().max(1))
        {
            Some(worker) => {
                self.next_worker = self.next_worker.wrapping_add(1);
                if !worker.spawn_fn(attempt) {
                    // A worker that stopped: the asker hears so.
                    ctx.notify(Finished {
                        id,
                        result: Err(AiError::Connect("the AI request was dropped".into())),
                        retries: 0,
                    });
                }
            }
            None => attempt(),
        }
        self.publish();
    }

    /// A request in flight has ended.
    fn finished(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        let Some((user_id, reply)) = self.flying.remove(&msg.id) else {
            return;
        };
        let Finished {
            result, retries, ..
        } = msg;
        self.stats.in_flight -= 1;
        self.stats.retries += u64::from(retries);
        if let Some(n) = self.per_user.get_mut(&user_id) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user_id);
            }
        }
        let outcome = match &result {
            Ok(_) => {
                self.stats.completed += 1;
                "ok"
            }
            Err(AiError::Cancelled) => {
                self.stats.cancelled += 1;
                "cancelled"
            }
            Err(err) => {
                self.stats.failed += 1;
                err.kind()
            }
        };
        metrics::AI_REQUESTS.with_label_values(&[outcome]).inc();
        let _ = reply.send(result);
        self.last_activity = Some(Instant::now());
        self.next(ctx);
    }

    /// Starts queued requests while there is room; fails them all while the
    /// breaker is open.
    fn next(&mut self, ctx: &mut Context<Self>) {
        if self.breaker_state() == BreakerState::Open {
            let retry_in = self.limits.breaker_cooldown;
            for waiting in self.queue.drain(..) {
                self.stats.refused_open += 1;
                let _ = waiting.reply.send(Err(AiError::Unavailable(retry_in)));
            }
        }
        while self.stats.in_flight < self.limits.in_flight {
            let Some(mut waiting) = self.queue.pop_front() else {
                break;
            };
            if !matches!(
                waiting.ask.cancel.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ) {
                self.stats.cancelled += 1;
                let _ = waiting.reply.send(Err(AiError::Cancelled));
                continue;
            }
            self.start(waiting, ctx);
        }
        self.stats.queued = self.queue.len();
        self.publish();
    }
}

/// Tries a request up to `attempts` times; answers the result and how many
/// retries it took.
async fn attempt_all(
    http: reqwest::Client,
    backend: Backend,
    breaker: Arc<Mutex<CircuitBreaker>>,
    attempts: u32,
    ask: Ask,
) -> (Result<String, AiError>, u32) {
    let Ask {
        messages,
        progress,
        mut cancel,
        ..
    } = ask;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if attempt > 1 {
            // Retries pass the breaker too: a backend that went down while
            // this request waited is not hammered further.
            if let Admission::Refused(retry_in) = lock(&breaker).admit(Instant::now()) {
                return (Err(AiError::Unavailable(retry_in)), attempt - 2);
            }
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = complete(&http, &backend, &messages, progress.as_ref()) => result,
            _ = &mut cancel => Err(AiError::Cancelled),
        };
        metrics::AI_REQUEST_SECONDS.observe(started.elapsed().as_secs_f64());
        note_refusal(&result);
        match &result {
            Ok(_) => lock(&breaker).succeeded(),
            Err(err) if err.is_backend_failure() => lock(&breaker).failed(Instant::now()),
            Err(_) => lock(&breaker).abandoned(),
        }
        let error = match result {
            Ok(text) => return (Ok(text), attempt - 1),
            Err(err) if !err.is_retriable() || attempt >= attempts => {
                return (Err(err), attempt - 1);
            }
            Err(err) => err,
        };
        let delay = match &error {
            AiError::Status {
                retry_after: Some(after),
                ..
            } => (*after).min(Duration::from_secs(60)),
            _ => backoff(attempt),
        };
        log::debug!(
            "AI attempt {attempt} failed ({error}); retrying in {}ms",
            delay.as_millis()
        );
        if let Some(progress) = &progress {
            let _ = progress.send(Progress::Restart);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut cancel => return (Err(AiError::Cancelled), attempt - 1),
        }
    }
}

/// The status of the last refusal logged, 0 after a success.
static LAST_REFUSAL: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A 400, 401, 403 or 404 is the operator's mistake (a wrong key, model
/// name or URL), not the backend's trouble: it is not retried, the user is
/// told the assistant is unavailable, and the log says so once in one line
/// until an answer succeeds again.
fn note_refusal(result: &Result<String, AiError>) {
    use std::sync::atomic::Ordering;
    match result {
        Ok(_) => LAST_REFUSAL.store(0, Ordering::Relaxed),
        Err(AiError::Status { code, message, .. }) if matches!(code, 400 | 401 | 403 | 404) => {
            if LAST_REFUSAL.swap(*code, Ordering::Relaxed) != *code {
                let hint = match code {
                    401 | 403 => "check AI_API_KEY",
                    404 => "check AI_API_URL and AI_MODEL",
                    _ => "check AI_MODEL and AI_MAX_TOKENS",
                };
                log::error!(
                    "the AI backend refuses every question ({code}: {message}); {hint}. Users are told the assistant is unavailable"
                );
            }
        }
        Err(_) => {}
    }
}

fn lock(breaker: &Mutex<CircuitBreaker>) -> std::sync::MutexGuard<'_, CircuitBreaker> {
    breaker.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a thread's client to the backend is built.
#[derive(Clone, Copy)]
struct ClientSettings {
    timeout: Duration,
    connections: usize,
}

thread_local! {
    /// Each worker thread's client, with its pool of keep-alive
    /// connections, built on its first request: the connections' tasks run
    /// on the thread that opened them.
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

impl ClientSettings {
    /// Each of `workers` threads gets its share of the connection limit.
    fn of(backend: &Backend, limits: &PoolLimits, workers: usize) -> ClientSettings {
        ClientSettings {
            timeout: backend.timeout,
            connections: limits.max_connections.div_ceil(workers.max(1)).max(1),
        }
    }

    /// This thread's client, built on first use.
    fn get(self) -> reqwest::Client {
        CLIENT.with(|client| {
            client
                .borrow_mut()
                .get_or_insert_with(|| {
                    reqwest::Client::builder()
                        .use_preconfigured_tls(crate::telegram::tls::client_config())
                        .pool_max_idle_per_host(self.connections)
                        .pool_idle_timeout(Duration::from_secs(90))
                        .connect_timeout(self.timeout.min(Duration::from_secs(10)))
                        .build()
                        .unwrap_or_else(|err| {
                            log::error!("the AI client cannot be set up as configured ({err}); using the defaults");
                            reqwest::Client::new()
                        })
                })
                .clone()
        })
    }
}

/// 100 ms, 200 ms, 400 ms ... (at most 5 s), each between half and all of it.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(5));
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

impl Actor for AiPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.limits.queue.max(16));
        // Publish the breaker's state as it changes with time alone.
        ctx.run_interval(Duration::from_millis(500), |this, _| this.publish());
    }
}

/// The end of a request in flight, from the worker that ran it.
#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    id: u64,
    result: Result<String, AiError>,
    retries: u32,
}

impl Handler<Finished> for AiPool {
    type Result = ();

    fn handle(&mut self, msg: Finished, ctx: &mut Self::Context) {
        self.finished(msg, ctx);
    }
}

/// A restart keeps the queue, the requests in flight (they run on the
/// workers and report back by message) and the breaker: every waiting user
/// is answered. Only the question being taken when it crashed is refused,
/// and its user told. `started` sets the timer up again.
impl Supervised for AiPool {}

impl Handler<Ask> for AiPool {
    type Result = ResponseFuture<Result<String, AiError>>;

    fn handle(&mut self, ask: Ask, ctx: &mut Self::Context) -> Self::Result {
        actorbot_actors::fault::hit("ai");
        log::debug!(
            "ask from user {}: {} in flight, {} queued",
            ask.user_id,
            self.stats.in_flight,
            self.queue.len()
        );
        let (reply, answer) = oneshot::channel();
        let refused = |err: AiError| -> Self::Result { Box::pin(async move { Err(err) }) };
        let user_load = self.per_user.get(&ask.user_id).copied().unwrap_or(0);
        if user_load >= self.limits.per_user {
            self.stats.refused_busy += 1;
            return refused(AiError::Busy);
        }
        let room = self.stats.in_flight < self.limits.in_flight;
        if !room && self.queue.len() >= self.limits.queue {
            self.stats.refused_busy += 1;
            return refused(AiError::Busy);
        }
        let admission = self.breaker().admit(Instant::now());
        match admission {
            Admission::Refused(retry_in) => {
                self.stats.refused_open += 1;
                return refused(AiError::Unavailable(retry_in));
            }
            Admission::Pass | Admission::Probe => {}
        }
        let waiting = Waiting {
            ask,
            reply,
            since: Instant::now(),
        };
        if room {
            self.start(waiting, ctx);
        } else {
            self.queue.push_back(waiting);
            self.stats.queued = self.queue.len();
            self.publish();
        }
        Box::pin(async move {
            answer
                .await
                .unwrap_or(Err(AiError::Connect("the AI pool stopped".into())))
        })
    }
}

/// New settings for the pool, from the running configuration: they apply
/// from the next request on; requests queued or in flight are kept (a
/// smaller limit lets fewer start, it stops none).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retune {
    pub backend: Backend,
    pub limits: PoolLimits,
}

impl Handler<Retune> for AiPool {
    type Result = ();

    fn handle(&mut self, Retune { backend, limits }: Retune, ctx: &mut Self::Context) {
        self.breaker()
            .retune(limits.breaker_failures, limits.breaker_cooldown);
        // The client's connection pool keeps the size it was built with.
        self.limits = PoolLimits {
            max_connections: self.limits.max_connections,
            ..limits
        };
        self.backend = backend;
        self.next(ctx);
    }
}

impl Handler<Probe> for AiPool {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let state = self.breaker_state();
        let health = match state {
            BreakerState::Closed => Health::Healthy,
            BreakerState::HalfOpen => Health::Degraded("the AI backend is being probed".into()),
            BreakerState::Open => Health::Degraded(
                "the AI backend keeps failing; requests are refused for now".into(),
            ),
        };
        let mut report = ProbeReport::new("ai", health)
            .detail("breaker", state)
            .detail("breaker_opened", self.breaker().times_opened())
            .detail("requests", &self.stats)
            .detail("limit", self.limits.in_flight)
            .detail("backend", &self.backend.url)
            .detail("model", &self.backend.model);
        report.mailbox = Some(MailboxFigures {
            depth: self.queue.len(),
            capacity: self.limits.queue,
        });
        report.handled = self.stats.completed + self.stats.failed;
        report.idle_ms = self.last_activity.map(|t| t.elapsed().as_millis() as u64);
        MessageResult(report)
    }
}
