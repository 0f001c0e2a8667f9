//! The outbox: one scheduler for every send to a chat.
//!
//! Telegram limits a bot to about 30 messages a second overall, about one a
//! second to a private chat (with a small burst) and 20 a minute to a group;
//! past them it answers 429 with `retry_after`. Instead of sending and
//! reacting, the outbox keeps to the limits itself, so under load messages
//! wait in their chat's lane and none is refused.
//!
//! Each chat has a lane: a FIFO queue, a token bucket and a pause deadline.
//! At most one request per chat is in flight, which keeps a chat's messages
//! in order even across retries. Lanes that may send take turns round-robin,
//! so one busy chat cannot starve the others; lanes that must wait sit in a
//! timer heap. A global bucket caps the total rate. Which lane goes next is
//! decided in [`lanes`], over the time it is given; this actor sends.
//!
//! A 429 pauses only its chat for `retry_after`; when several chats are told
//! to wait at about the same time the flood is global and the whole outbox
//! pauses. Network errors and 5xx answers are retried with jittered backoff
//! up to `telegram_send_attempts`; past them Telegram counts as unreachable
//! for that chat and the request stays at the head of its lane, tried at
//! most every [`OUTAGE_RETRY`], for `telegram_send_patience`: an outage of
//! minutes ends with every reply delivered, in each chat's order, without a
//! restart. Other errors go back to the caller. Nothing is dropped silently:
//! every request ends in exactly one answer.
//!
//! The outbox may run as several shards, one on each arbiter that runs
//! sessions: a chat's lane lives in the shard on its session's arbiter (see
//! [`crate::telegram::Telegram`]), so a reply goes from session to outbox
//! and back without crossing threads, and the HTTP work is spread over the
//! cores. What is bot-wide (the global rate and the global pause) is a
//! [`GlobalLimit`] the shards share.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::probe::{Health, MailboxFigures, Probe, ProbeReport};
use frankenstein::methods::{
    EditMessageTextParams, SendChatActionParams, SendDocumentParams, SendMessageDraftParams,
    SendMessageParams,
};

use frankenstein::types::ChatId;
use rand::Rng;
use serde::Serialize;
use tokio::sync::oneshot;

use super::Room;
use super::client::{BotApi, Endpoint, Sent, SentOrBool, Upload};
use super::error::TelegramError;
use crate::bucket::Bucket;
use crate::config::Config;
use lanes::{Counted, LaneRates, Lanes};

mod lanes;

/// One request to a chat.
#[derive(Debug, Clone)]
pub enum Request {
    Message(SendMessageParams),
    Edit(EditMessageTextParams),
    ChatAction(SendChatActionParams),
    Draft(SendMessageDraftParams),
    Document(Box<SendDocumentParams>, Upload),
}

impl Request {
    fn method(&self) -> &'static str {
        match self {
            Request::Message(_) => "sendMessage",
            Request::Edit(_) => "editMessageText",
            Request::ChatAction(_) => "sendChatAction",
            Request::Draft(_) => "sendMessageDraft",
            Request::Document(..) => "sendDocument",
        }
    }

    /// Whether the request counts against the flood limits. Chat actions and
    /// draft previews are not messages; their pace is the caller's concern.
    fn is_counted(&self) -> bool {
        !matches!(self, Request::ChatAction(_) | Request::Draft(_))
    }

    /// Whether the request is only worth sending now: "typing…" or a
    /// draft preview sent late shows something stale, and the next one
    /// supersedes it. One that fails on the way is not tried again.
    fn is_ephemeral(&self) -> bool {
        matches!(self, Request::ChatAction(_) | Request::Draft(_))
    }

    fn set_chat_id(&mut self, chat_id: i64) {
        let id = ChatId::Integer(chat_id);
        match self {
            Request::Message(p) => p.chat_id = id,
            Request::Edit(p) => p.chat_id = Some(id),
            Request::ChatAction(p) => p.chat_id = id,
            Request::Draft(p) => p.chat_id = id,
            Request::Document(p, _) => p.chat_id = id,
        }
    }

    async fn perform(self, api: BotApi) -> Result<Delivered, TelegramError> {
        match self {
            Request::Message(p) => api.send_message(&p).await.map(Delivered::Message),
            Request::Edit(p) => match api.edit_message_text(&p).await? {
                Some(SentOrBool::Sent(m)) => Ok(Delivered::Message(m)),
                Some(SentOrBool::Bool(_)) | None => Ok(Delivered::Done),
            },
            Request::ChatAction(p) => api.send_chat_action(&p).await.map(|_| Delivered::Done),
            Request::Draft(p) => api.send_message_draft(&p).await.map(|_| Delivered::Done),
            Request::Document(p, upload) => api
                .call_multipart("sendDocument", &*p, "document", upload)
                .await
                .map(Delivered::Message),
        }
    }
}

/// What Telegram gave back for a delivered request.
#[derive(Debug, Clone)]
pub enum Delivered {
    Message(Sent),
    Done,
}

impl Delivered {
    pub fn message(&self) -> Option<Sent> {
        match self {
            Delivered::Message(m) => Some(*m),
            Delivered::Done => None,
        }
    }
}

/// Figures for the health and metrics endpoints.
#[derive(Message)]
#[rtype(result = "OutboxStats")]
pub struct GetStats;

/// Answers once the shard has nothing queued and nothing in flight.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drained;

#[derive(Debug, Clone, Default, Serialize, MessageResponse)]
pub struct OutboxStats {
    pub queued: usize,
    pub in_flight: usize,
    pub lanes: usize,
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    pub flood_waits: u64,
    pub global_pauses: u64,
}

impl OutboxStats {
    /// Adds another shard's figures.
    pub fn add(&mut self, other: &OutboxStats) {
        self.queued += other.queued;
        self.in_flight += other.in_flight;
        self.lanes += other.lanes;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.retried += other.retried;
        self.flood_waits += other.flood_waits;
        self.global_pauses += other.global_pauses;
    }
}

/// The throttle's limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub global_rate: f64,
    pub global_burst: u32,
    pub private_rate: f64,
    pub private_burst: u32,
    pub group_rate: f64,
    pub group_burst: u32,
    pub attempts: u32,
    /// How long a request is tried while Telegram is unreachable.
    pub patience: Duration,
    pub max_in_flight: usize,
    pub capacity: usize,
}

impl Limits {
    /// A shard's part of limits that are split among `shards`: connections
    /// in flight and queued sends. The rates are per chat or shared through
    /// [`GlobalLimit`], so they stay.
    pub fn per_shard(&self, shards: usize) -> Limits {
        let shards = shards.max(1);
        Limits {
            max_in_flight: self.max_in_flight.div_ceil(shards).max(1),
            capacity: self.capacity.div_ceil(shards).max(1),
            ..self.clone()
        }
    }

    fn lane_rates(&self) -> LaneRates {
        LaneRates {
            private_rate: self.private_rate,
            private_burst: self.private_burst,
            group_rate: self.group_rate,
            group_burst: self.group_burst,
        }
    }

    pub fn from_config(config: &Config) -> Limits {
        Limits {
            global_rate: config.telegram_global_rate,
            global_burst: config.telegram_global_burst,
            private_rate: config.telegram_private_rate,
            private_burst: config.telegram_private_burst,
            group_rate: config.telegram_group_per_minute / 60.0,
            group_burst: config.telegram_group_burst,
            attempts: config.telegram_send_attempts,
            patience: Config::secs(config.telegram_send_patience),
            max_in_flight: config.telegram_max_connections,
            capacity: config.outbox_capacity,
        }
    }
}

/// Chats told to wait within this window make a flood global.
const FLOOD_WINDOW: Duration = Duration::from_secs(1);
const GLOBAL_FLOOD_CHATS: usize = 3;
/// A request that keeps being told to wait is given up after this many 429s.
const MAX_FLOOD_WAITS: u32 = 20;
const LANE_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Chats shown in the probe's `waiting_by_chat`.
const WAITING_SHOWN: usize = 20;

/// The longest wait between two tries of a send while Telegram is
/// unreachable.
pub const OUTAGE_RETRY: Duration = Duration::from_secs(30);

struct Job {
    request: Request,
    attempts: u32,
    flood_waits: u32,
    /// When its first try failed on the way, while it keeps failing so.
    failing_since: Option<Instant>,
    batch: Batch,
}

/// What follows a send that failed on the way (a network error or a 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTransient {
    /// Try again after this wait, counted as a quick retry.
    Retry(Duration),
    /// Telegram is unreachable: try again after this wait.
    Outage(Duration),
    /// Patience is spent: answer the error.
    GiveUp,
}

/// Decides, for a send whose `attempts`-th try failed on the way and that
/// has been failing since `since`.
fn on_transient(limits: &Limits, attempts: u32, since: Instant, now: Instant) -> OnTransient {
    if attempts < limits.attempts {
        OnTransient::Retry(backoff(attempts))
    } else if now.saturating_duration_since(since) < limits.patience {
        OnTransient::Outage(backoff(attempts).min(OUTAGE_RETRY))
    } else {
        OnTransient::GiveUp
    }
}

impl Counted for Job {
    fn is_counted(&self) -> bool {
        self.request.is_counted()
    }
}

/// The answer channel shared by the requests of one `Deliver`.
#[derive(Clone)]
struct Batch(std::rc::Rc<std::cell::RefCell<BatchState>>);

struct BatchState {
    results: Vec<Delivered>,
    expected: usize,
    reply: Option<oneshot::Sender<Result<Vec<Delivered>, TelegramError>>>,
    /// The batch's places in the shard, given back when the last of its
    /// requests is done with.
    _room: Room,
}

impl Batch {
    fn succeed(&self, delivered: Delivered) {
        let mut state = self.0.borrow_mut();
        state.results.push(delivered);
        if state.results.len() == state.expected {
            let results = std::mem::take(&mut state.results);
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Ok(results));
            }
        }
    }

    /// Fails the batch; returns false if it had already failed.
    fn fail(&self, error: TelegramError) -> bool {
        match self.0.borrow_mut().reply.take() {
            Some(reply) => {
                let _ = reply.send(Err(error));
                true
            }
            None => false,
        }
    }

    fn is_failed(&self) -> bool {
        self.0.borrow().reply.is_none()
    }
}

/// The limits every shard of the outbox shares: the bot-wide rate, and the
/// pause that several chats told to wait at once impose on every send.
pub struct GlobalLimit {
    state: Mutex<GlobalState>,
}

struct GlobalState {
    bucket: Bucket,
    paused_until: Option<Instant>,
    recent_floods: VecDeque<(Instant, i64)>,
}

impl GlobalLimit {
    pub fn new(limits: &Limits) -> Arc<GlobalLimit> {
        Arc::new(GlobalLimit {
            state: Mutex::new(GlobalState {
                bucket: Bucket::new(limits.global_rate, limits.global_burst, Instant::now()),
                paused_until: None,
                recent_floods: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GlobalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new global rate from now on.
    pub fn retune(&self, limits: &Limits) {
        self.lock()
            .bucket
            .retune(limits.global_rate, limits.global_burst, Instant::now());
    }

    /// Starts the bot-wide rate without its burst: a cluster's new leader
    /// does not know what the old one sent in its last second.
    pub fn start_cautiously(&self) {
        self.lock().bucket.drain(Instant::now());
    }

    /// Until when every send waits, if a global pause is on.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        match state.paused_until {
            Some(until) if until > now => Some(until),
            Some(_) => {
                state.paused_until = None;
                None
            }
            None => None,
        }
    }

    /// Spends a token of the global rate, or says when one will be there.
    fn take(&self, now: Instant) -> Result<(), Instant> {
        let mut state = self.lock();
        let at = state.bucket.ready_at(now);
        if at > now {
            return Err(at);
        }
        state.bucket.take(now);
        Ok(())
    }

    /// Records a 429 for `chat_id`; several chats at once mean the bot as a
    /// whole is over, and everything pauses for `wait`. Returns whether this
    /// one started or lengthened such a pause.
    fn note_flood(&self, chat_id: i64, now: Instant, wait: Duration) -> bool {
        let mut state = self.lock();
        while state
            .recent_floods
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > FLOOD_WINDOW)
        {
            state.recent_floods.pop_front();
        }
        state.recent_floods.push_back((now, chat_id));
        let mut chats: Vec<i64> = state.recent_floods.iter().map(|(_, c)| *c).collect();
        chats.sort_unstable();
        chats.dedup();
        if chats.len() < GLOBAL_FLOOD_CHATS {
            return false;
        }
        let until = now + wait;
        if state.paused_until.is_some_and(|t| t >= until) {
            return false;
        }
        state.paused_until = Some(until);
        log::warn!(
            "global flood wait: {} chats told to wait, pausing all sends for {}s",
            chats.len(),
            wait.as_secs()
        );
        true
    }
}

pub struct Outbox {
    endpoint: Endpoint,
    api: Option<BotApi>,
    limits: Limits,
    lanes: Lanes<Job>,
    global: Arc<GlobalLimit>,
    wake_at: Option<Instant>,
    stats: OutboxStats,
    /// Since when sends have failed past their quick retries with no send
    /// delivered since, and the last such failure.
    unreachable: Option<(Instant, String)>,
    /// The request in flight for each chat that has one: kept here, not in
    /// the send's future, so that a restart can queue it again.
    flying: HashMap<i64, Job>,
    /// Who waits for the shard to be empty.
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// The batch being queued: a crash while it is taken keeps it, and the
    /// restart queues it, in its place before the batches after it.
    taking: Option<Post>,
}

impl Outbox {
    /// One shard of several, sharing `global`. `limits` are the shard's own
    /// (see [`Limits::per_shard`]).
    pub fn shard(endpoint: Endpoint, limits: Limits, global: Arc<GlobalLimit>) -> Outbox {
        Outbox {
            endpoint,
            api: None,
            global,
            lanes: Lanes::new(limits.lane_rates()),
            limits,
            wake_at: None,
            stats: OutboxStats::default(),
            unreachable: None,
            flying: HashMap::new(),
            drain_waiters: Vec::new(),
            taking: None,
        }
    }

    /// Sends what the lanes let go now, and arms a wake-up for the rest.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let room = self
            .limits
            .max_in_flight
            .saturating_sub(self.stats.in_flight);
        let (jobs, next_wake) = self.lanes.take(now, room, &self.global);
        for (chat_id, job) in jobs {
            self.dispatch(chat_id, job, ctx);
        }
        self.arm(ctx, next_wake, now);
    }

    /// Makes sure a pump runs at `at`.
    fn arm(&mut self, ctx: &mut Context<Self>, at: Option<Instant>, now: Instant) {
        let Some(at) = at else { return };
        if self.wake_at.is_some_and(|t| t <= at && t > now) {
            return;
        }
        self.wake_at = Some(at);
        ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
            act.wake_at = None;
            act.pump(ctx);
        });
    }

    fn dispatch(&mut self, chat_id: i64, job: Job, ctx: &mut Context<Self>) {
        if job.batch.is_failed() {
            // An earlier part of this batch failed for good: sending the rest
            // would deliver a message with a hole in it.
            self.finish(chat_id, ctx);
            return;
        }
        let Some(api) = self.api.clone() else {
            return;
        };
        self.stats.in_flight += 1;
        let request = job.request.clone();
        self.flying.insert(chat_id, job);
        ctx.spawn(
            request
                .perform(api)
                .into_actor(self)
                .map(move |result, act, ctx| act.complete(chat_id, result, ctx)),
        );
    }

    fn complete(
        &mut self,
        chat_id: i64,
        result: Result<Delivered, TelegramError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(mut job) = self.flying.remove(&chat_id) else {
            return;
        };
        self.stats.in_flight -= 1;
        let now = Instant::now();
        match result {
            Ok(delivered) => {
                self.stats.delivered += 1;
                if let Some((since, _)) = self.unreachable.take() {
                    log::info!(
                        "Telegram takes sends again after {}s",
                        now.saturating_duration_since(since).as_secs()
                    );
                }
                crate::metrics::SENT
                    .with_label_values(&[job.request.method()])
                    .inc();
                job.batch.succeed(delivered);
            }
            Err(err) if err.retry_after().is_some() && job.flood_waits < MAX_FLOOD_WAITS => {
                let wait = err.retry_after().unwrap_or(Duration::from_secs(1));
                job.flood_waits += 1;
                self.stats.flood_waits += 1;
                crate::metrics::FLOOD_WAITS.inc();
                self.note_flood(chat_id, now, wait);
                log::warn!(
                    "flood wait: chat_id={chat_id} method={} retry_after={}s",
                    job.request.method(),
                    wait.as_secs()
                );
                self.requeue(chat_id, job, now + wait);
            }
            Err(err) if err.migrate_to_chat_id().is_some() => {
                let new_id = err.migrate_to_chat_id().unwrap_or(chat_id);
                log::info!("chat migrated: chat_id={chat_id} new_chat_id={new_id}");
                job.request.set_chat_id(new_id);
                job.attempts += 1;
                if job.attempts >= self.limits.attempts || new_id == chat_id {
                    self.fail(job, err);
                } else {
                    self.requeue(chat_id, job, now);
                }
            }
            Err(err) if err.is_transient() && job.request.is_ephemeral() => self.fail(job, err),
            Err(err) if err.is_transient() => {
                job.attempts += 1;
                let since = *job.failing_since.get_or_insert(now);
                match on_transient(&self.limits, job.attempts, since, now) {
                    OnTransient::Retry(delay) => {
                        self.stats.retried += 1;
                        log::warn!(
                            "send failed, retrying: chat_id={chat_id} method={} attempt={} in={}ms: {err}",
                            job.request.method(),
                            job.attempts,
                            delay.as_millis()
                        );
                        self.requeue(chat_id, job, now + delay);
                    }
                    OnTransient::Outage(delay) => {
                        self.stats.retried += 1;
                        if self.unreachable.is_none() {
                            log::warn!(
                                "Telegram unreachable: sends are kept and tried again at most every {}s: {err}",
                                OUTAGE_RETRY.as_secs()
                            );
                        }
                        self.unreachable = Some((
                            self.unreachable.take().map_or(since, |(t, _)| t),
                            err.to_string(),
                        ));
                        self.requeue(chat_id, job, now + delay);
                    }
                    OnTransient::GiveUp => self.fail(job, err),
                }
            }
            Err(err) => self.fail(job, err),
        }
        self.finish(chat_id, ctx);
    }

    fn fail(&mut self, job: Job, err: TelegramError) {
        self.stats.failed += 1;
        crate::metrics::SEND_FAILURES
            .with_label_values(&[err.kind()])
            .inc();
        log::warn!("send failed: method={}: {err}", job.request.method());
        job.batch.fail(err);
    }

    fn requeue(&mut self, chat_id: i64, job: Job, not_before: Instant) {
        self.lanes.requeue(chat_id, job, not_before);
    }

    fn finish(&mut self, chat_id: i64, ctx: &mut Context<Self>) {
        self.lanes.finish(chat_id, Instant::now());
        self.pump(ctx);
        self.answer_drained();
    }

    fn answer_drained(&mut self) {
        if self.lanes.queued() == 0 && self.stats.in_flight == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Records a 429 with the shared limits; a global pause it starts is
    /// counted by this shard.
    fn note_flood(&mut self, chat_id: i64, now: Instant, wait: Duration) {
        if self.global.note_flood(chat_id, now, wait) {
            self.stats.global_pauses += 1;
        }
    }

    fn sweep_lanes(&mut self) {
        self.lanes.sweep(Instant::now());
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(6));
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

impl Actor for Outbox {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.api = Some(self.endpoint.client());
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(LANE_SWEEP_INTERVAL, |act, _| act.sweep_lanes());
        // After a restart: what the lanes hold goes on.
        self.pump(ctx);
        log::info!(
            "outbox started: {} msg/s global, {} msg/s per private chat, {} msg/min per group",
            self.limits.global_rate,
            self.limits.private_rate,
            self.limits.group_rate * 60.0
        );
    }
}

/// A restart keeps every lane, its queue and its bucket; the requests in
/// flight when it crashed go back to the front of their lanes and are sent
/// again (one of them may then reach its chat twice), and the batch being
/// queued is queued, before any posted after it. The timers are rebuilt in
/// `started`.
impl Supervised for Outbox {
    fn restarting(&mut self, _: &mut Self::Context) {
        let in_flight = std::mem::take(&mut self.flying);
        self.lanes.restart(in_flight, Instant::now());
        if let Some(post) = self.taking.take() {
            self.queue(post);
        }
        self.wake_at = None;
        self.stats.in_flight = 0;
    }
}

/// The reply channel of one batch of requests.
pub type DeliveryReply = oneshot::Sender<Result<Vec<Delivered>, TelegramError>>;

/// Queues requests for one chat, in order, in the room the sender took for
/// them (see [`Room`]): sent with `do_send`, so a sender's batches reach the
/// outbox in the order they were posted. The answer comes on `reply` when
/// all are delivered or one has failed for good (the rest of the batch is
/// then not sent).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Post {
    pub chat_id: i64,
    pub requests: Vec<Request>,
    pub reply: DeliveryReply,
    pub room: Room,
}

impl Outbox {
    fn enqueue(&mut self, post: Post, ctx: &mut Context<Self>) {
        let chat_id = post.chat_id;
        self.taking = Some(post);
        actorbot_actors::fault::hit_keyed("outbox", "chat_id", chat_id);
        if let Some(post) = self.taking.take() {
            self.queue(post);
        }
        self.pump(ctx);
    }

    /// Puts a batch in its chat's lane.
    fn queue(&mut self, post: Post) {
        let Post {
            chat_id,
            requests,
            reply,
            room,
        } = post;
        let count = requests.len();
        if count == 0 {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        let batch = Batch(std::rc::Rc::new(std::cell::RefCell::new(BatchState {
            results: Vec::with_capacity(count),
            expected: count,
            reply: Some(reply),
            _room: room,
        })));
        let jobs = requests.into_iter().map(|request| Job {
            request,
            attempts: 0,
            flood_waits: 0,
            failing_since: None,
            batch: batch.clone(),
        });
        self.lanes.push(chat_id, jobs, Instant::now());
    }
}

/// What a caller gets when the outbox went away before answering.
pub fn outbox_stopped() -> TelegramError {
    TelegramError::Unavailable {
        method: "deliver".into(),
        message: "the outbox stopped".into(),
    }
}

impl Handler<Post> for Outbox {
    type Result = ();

    fn handle(&mut self, msg: Post, ctx: &mut Self::Context) {
        self.enqueue(msg, ctx);
    }
}

impl Handler<Drained> for Outbox {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drained, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.answer_drained();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetStats> for Outbox {
    type Result = OutboxStats;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> OutboxStats {
        OutboxStats {
            lanes: self.lanes.len(),
            queued: self.lanes.queued(),
            ..self.stats.clone()
        }
    }
}

/// New flood limits for a shard (its share, as [`Limits::per_shard`]
/// gives), from the running configuration: they apply from the next send
/// on. Capacity and connections keep the sizes the shard started with.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits(pub Limits);

impl Handler<SetLimits> for Outbox {
    type Result = ();

    fn handle(&mut self, SetLimits(limits): SetLimits, ctx: &mut Self::Context) {
        self.lanes.set_rates(limits.lane_rates(), Instant::now());
        self.limits = Limits {
            capacity: self.limits.capacity,
            max_in_flight: self.limits.max_in_flight,
            ..limits
        };
        self.pump(ctx);
    }
}

impl Handler<Probe> for Outbox {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        let health = if let Some((since, error)) = &self.unreachable {
            Health::Degraded(format!(
                "Telegram unreachable for {}s, {} sends kept: {error}",
                now.saturating_duration_since(*since).as_secs(),
                self.lanes.queued() + self.stats.in_flight
            ))
        } else if let Some(until) = self.global.paused_until(now) {
            Health::Degraded(format!(
                "Telegram asked for a pause of {}s more",
                until.duration_since(now).as_secs() + 1
            ))
        } else if self.lanes.queued() * 10 >= self.limits.capacity * 8 {
            Health::Degraded(format!(
                "{} of {} sends queued",
                self.lanes.queued(),
                self.limits.capacity
            ))
        } else {
            Health::Healthy
        };
        let mut report = ProbeReport::new("outbox", health).detail(
            "sends",
            OutboxStats {
                lanes: self.lanes.len(),
                queued: self.lanes.queued(),
                ..self.stats.clone()
            },
        );
        report.mailbox = Some(MailboxFigures {
            depth: self.lanes.queued(),
            capacity: self.limits.capacity,
        });
        report.handled = self.stats.delivered;
        // The chats with the most sends waiting: the flood limits at work,
        // as the sandbox's panel shows them.
        let waiting: std::collections::BTreeMap<String, usize> = self
            .lanes
            .most_waiting(WAITING_SHOWN)
            .into_iter()
            .map(|(chat_id, n)| (chat_id.to_string(), n))
            .collect();
        MessageResult(report.detail("waiting_by_chat", waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(global_rate: f64, global_burst: u32) -> Limits {
        Limits {
            global_rate,
            global_burst,
            private_rate: 1.0,
            private_burst: 1,
            group_rate: 1.0,
            group_burst: 1,
            attempts: 3,
            patience: Duration::from_secs(60),
            max_in_flight: 10,
            capacity: 100,
        }
    }

    #[test]
    fn a_failing_send_is_retried_quickly_then_kept_through_an_outage() {
        let limits = limits(30.0, 30);
        let since = Instant::now();
        for attempts in 1..limits.attempts {
            assert!(matches!(
                on_transient(&limits, attempts, since, since),
                OnTransient::Retry(_)
            ));
        }
        let later = since + limits.patience / 2;
        for attempts in limits.attempts..limits.attempts + 40 {
            match on_transient(&limits, attempts, since, later) {
                OnTransient::Outage(wait) => assert!(wait <= OUTAGE_RETRY, "{wait:?}"),
                other => panic!("attempt {attempts}: {other:?}"),
            }
        }
        assert_eq!(
            on_transient(&limits, limits.attempts, since, since + limits.patience),
            OnTransient::GiveUp
        );
    }

    #[test]
    fn shards_share_one_global_rate_and_pause() {
        let global = GlobalLimit::new(&limits(1.0, 2));
        let (a, b) = (global.clone(), global.clone());
        let now = Instant::now();
        assert!(a.take(now).is_ok());
        assert!(b.take(now).is_ok());
        // The burst of two is spent, whichever shard spent it.
        let next = a.take(now).unwrap_err();
        assert!(next > now && next <= now + Duration::from_secs(1));
        assert_eq!(b.take(now), Err(next));

        // Two chats told to wait are their own business; a third makes it
        // a pause for every shard.
        let wait = Duration::from_secs(5);
        assert!(!a.note_flood(1, now, wait));
        assert!(!b.note_flood(2, now, wait));
        assert_eq!(b.paused_until(now), None);
        assert!(a.note_flood(3, now, wait));
        assert_eq!(b.paused_until(now), Some(now + wait));
        assert_eq!(b.paused_until(now + wait), None);
    }

    #[test]
    fn a_shard_gets_its_part_of_connections_and_queue() {
        let whole = limits(30.0, 30);
        let part = whole.per_shard(3);
        assert_eq!((part.max_in_flight, part.capacity), (4, 34));
        assert_eq!(part.global_rate, whole.global_rate);
        assert_eq!(whole.per_shard(0).capacity, 100);
    }

    #[test]
    fn backoff_grows_with_jitter() {
        let first = backoff(1);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(750));
        let later = backoff(4);
        assert!(later >= Duration::from_millis(4000));
        assert!(backoff(30) <= Duration::from_millis(16000 + 8000));
    }
}
