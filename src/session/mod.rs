//! One actor per chat: the user's conversation state, profile and limits.
//!
//! The registry in `actorbot-actors` starts a session on the first update
//! for its chat and retires it after `USER_STATE_TIMEOUT` of silence (or to
//! stay under `MAX_USER_STATES`). A session restores its record from the
//! database before it handles anything, and saves it when it retires and
//! periodically while it has unsaved changes.
//!
//! A session handles its chat's updates strictly in order and posts their
//! replies to the outbox in that order; a reply the outbox cannot take at
//! once is posted again a moment later, so it may then leave after a later
//! one. Delivery is awaited off the actor, and only then is the update
//! marked done in the journal, as [`delivery`] decides for every reply.
//!
//! Sessions run supervised: a session that panics is restarted in place,
//! with its mailbox and the questions waiting in it, and restores its record
//! from the database again.

mod delivery;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::registry::{Persist, Retire, RetireReason};
use frankenstein::types::{ChatType, Message as TgMessage};
use frankenstein::updates::UpdateContent;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::ai::reply::{Pace, final_requests, show_progress};
use crate::ai::{AiError, Assistant, failure_text};
use crate::bot::commands;
use crate::bot::ratelimit::{RateLimits, UserLimiter, Verdict, refusal_text};
use crate::cache::Cache;
use crate::health::{self, GetHistory, GetStatus, HealthChecker};
use crate::images::{ImagePool, PhotoRef, Prepare};
use crate::journal::DoneMarks;
use crate::metrics;
use crate::pdf::jobs::{Accepted, JobSpec, PdfJobs, Refused, SubmitJob};
use crate::storage::{DeadLetter, Storage, UserRecord, now_millis};
use crate::telegram::update::RawUpdate;
use crate::telegram::{Request, Telegram, text_requests};

/// How often a session with unsaved changes writes them.
const SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// What every session shares.
pub struct SessionDeps {
    pub storage: Storage,
    pub telegram: Telegram,
    pub done: DoneMarks,
    pub limits: RateLimits,
    pub bot_username: String,
    pub stats_ttl: Duration,
    pub assistant: Assistant,
    pub pace: Pace,
    /// Questions a user may have waiting behind the one being answered.
    pub user_queue: usize,
    pub documents: Documents,
    /// Users whose jobs go first and who may run admin commands.
    pub admins: Vec<i64>,
    /// Set once the health checker runs.
    pub admin: Arc<OnceLock<AdminDeps>>,
}

/// What the admin commands read from.
pub struct AdminDeps {
    pub health: Addr<HealthChecker>,
    pub ai_cache: Arc<Cache>,
    pub started: Instant,
}

/// The PDF side of a session: where photos and jobs go, and its limits.
pub struct Documents {
    pub pdf: Addr<PdfJobs>,
    pub images: Addr<ImagePool>,
    pub max_photos: usize,
    /// Jobs ahead of a new one from which its user is told the position.
    pub notice_ahead: usize,
}

/// Exchanges a report may hold at most (the page cap usually ends it first).
const REPORT_TURNS: i64 = 5000;

/// The answer to a question has been delivered (or given up on).
#[derive(Message)]
#[rtype(result = "()")]
struct AnswerFinished {
    epoch: u32,
    question: String,
    answer: Option<String>,
}

/// A question waiting for the one before it to be answered.
struct Question {
    update: RawUpdate,
    text: String,
    private: bool,
}

/// The question being answered now.
struct Current {
    draft_id: i32,
    cancel: Option<oneshot::Sender<()>>,
}

/// An update for the chat's session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandleUpdate(pub RawUpdate);

/// The conversation state kept in the user record, as JSON.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    /// Bumped by /reset; lets later parts tell an old exchange from a new one.
    pub epoch: u32,
    /// Photos collected for the next /pdf, already checked to decode.
    pub photos: Vec<PhotoRef>,
}

pub struct Session {
    chat_id: i64,
    deps: Arc<SessionDeps>,
    record: UserRecord,
    conversation: Conversation,
    /// False when the record could not be loaded: saving then would
    /// overwrite the stored figures with fresh ones.
    restored: bool,
    /// The record is in the database (it was loaded, or saved with an
    /// exchange). A chat's exchanges are only written once it is, so a
    /// chat without a record has none to load.
    stored: bool,
    dirty: bool,
    /// A save is due within [`SAVE_INTERVAL`]. Only a session with changes
    /// has a timer: an idle one costs no more than its state.
    save_due: bool,
    limiter: UserLimiter,
    stats_cache: Option<(Instant, String)>,
    /// Recent exchanges, loaded on the first question.
    history: Option<VecDeque<(String, String)>>,
    current: Option<Current>,
    waiting: VecDeque<Question>,
    /// The stored conversation state could not be read: it is not saved
    /// over.
    unreadable_state: bool,
    /// The update being handled, until its handler returns.
    handling: Option<RawUpdate>,
    /// The update a crash interrupted, and how many times it has.
    interrupted: Option<(RawUpdate, u32)>,
}

impl Session {
    pub fn new(chat_id: i64, deps: Arc<SessionDeps>) -> Session {
        let limiter = UserLimiter::new(&deps.limits, Instant::now());
        Session {
            chat_id,
            deps,
            record: UserRecord::new(chat_id, now_millis()),
            conversation: Conversation::default(),
            restored: false,
            stored: false,
            dirty: false,
            save_due: false,
            limiter,
            stats_cache: None,
            history: None,
            current: None,
            waiting: VecDeque::new(),
            unreadable_state: false,
            handling: None,
            interrupted: None,
        }
    }

    fn done(&self, update_id: i64) {
        self.deps.done.mark(update_id);
    }

    /// Posts a reply and marks the update done as [`delivery`] decides.
    fn reply(&self, update: &RawUpdate, kind: &'static str, text: &str) {
        let (update_id, received, chat_id) = (update.update_id, update.received, self.chat_id);
        let deps = self.deps.clone();
        let requests = text_requests(chat_id, text);
        deps.done.reply_posted();
        // Spawned on the arbiter, not in the actor's context: a session that
        // retires or restarts still has its replies delivered and marked.
        actix_rt::spawn(async move {
            let delivered =
                delivery::deliver(&deps.telegram, &deps.done, update_id, chat_id, requests).await;
            if delivered.is_ok() {
                metrics::REPLIES.with_label_values(&[kind]).inc();
                metrics::REPLY_LATENCY
                    .with_label_values(&[kind])
                    .observe(received.elapsed().as_secs_f64());
            }
        });
    }

    fn on_message(&mut self, update: &RawUpdate, message: &TgMessage, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(from) = &message.from {
            let record = &mut self.record;
            record.username = from.username.clone();
            record.first_name = Some(from.first_name.clone());
            record.language = from.language_code.clone();
        }
        self.record.messages += 1;
        self.record.last_seen = now_millis();
        self.changed(ctx);

        match self.limiter.check(now) {
            Verdict::Allowed => {}
            Verdict::Refused {
                retry_after,
                hourly,
            } => {
                metrics::UPDATES_SKIPPED
                    .with_label_values(&["rate_limited"])
                    .inc();
                return self.reply(update, "rate_limit", &refusal_text(retry_after, hourly));
            }
            Verdict::RefusedQuietly => {
                metrics::UPDATES_SKIPPED
                    .with_label_values(&["rate_limited"])
                    .inc();
                return self.done(update.update_id);
            }
        }

        if let Some(photo) = photo_of(message, self.conversation.photos.len() + 1) {
            return self.add_photo(update, photo, ctx);
        }
        let Some(text) = message.text.as_deref() else {
            if message.document.is_some() {
                return self.reply(update, "command", commands::NOT_AN_IMAGE);
            }
            return self.done(update.update_id);
        };
        let Some(command) = commands::parse(text, &self.deps.bot_username) else {
            let question = Question {
                update: update.clone(),
                text: text.to_string(),
                private: message.chat.type_field == ChatType::Private,
            };
            return self.question(question, ctx);
        };
        let reply = match command.name.as_str() {
            "start" => {
                let name = self.record.first_name.as_deref().unwrap_or("there");
                commands::start_text(name)
            }
            "help" => commands::help_text(),
            "stats" => self.stats_text(now),
            "reset" => self.reset(),
            "health" | "performance" | "admin_stats" => {
                let name = command.name.clone();
                return self.admin_command(update, &name, ctx);
            }
            "report" => return self.request_report(update, ctx),
            "pdf" => return self.request_album(update, ctx),
            other => commands::unknown_text(other),
        };
        self.reply(update, "command", &reply);
    }

    /// Answers a question now, or after the one being answered.
    fn question(&mut self, question: Question, ctx: &mut Context<Self>) {
        if self.current.is_none() {
            return self.start_question(question, ctx);
        }
        if self.waiting.len() < self.deps.user_queue {
            self.waiting.push_back(question);
        } else {
            self.reply(&question.update, "ai_refused", commands::ONE_AT_A_TIME);
        }
    }

    fn start_question(&mut self, question: Question, ctx: &mut Context<Self>) {
        self.record.ai_questions += 1;
        self.changed(ctx);
        self.current = Some(Current {
            draft_id: 0,
            cancel: None,
        });
        if self.history.is_some() {
            return self.ask(question, ctx);
        }
        let storage = self.deps.storage.clone();
        let (user_id, turns) = (self.chat_id, self.deps.assistant.history_turns() as i64);
        // Held mailbox: the history is there before anything else happens.
        ctx.wait(
            async move { storage.turns_recent(user_id, turns).await }
                .into_actor(self)
                .map(move |loaded, this, ctx| {
                    let history = match loaded {
                        Ok(turns) => turns.into_iter().map(|t| (t.question, t.answer)).collect(),
                        Err(err) => {
                            log::warn!("chat_id={user_id}: could not load the conversation: {err}");
                            VecDeque::new()
                        }
                    };
                    this.history = Some(history);
                    this.ask(question, ctx);
                }),
        );
    }

    fn ask(&mut self, question: Question, ctx: &mut Context<Self>) {
        let Question {
            update,
            text,
            private,
        } = question;
        let deps = self.deps.clone();
        let messages = deps
            .assistant
            .conversation(self.history.iter().flatten(), &text);
        let draft_id = rand::rng().random_range(1..=i32::MAX);
        let (cancel, cancelled) = oneshot::channel();
        self.current = Some(Current {
            draft_id,
            cancel: Some(cancel),
        });
        let (chat_id, epoch, me) = (self.chat_id, self.conversation.epoch, ctx.address());
        deps.done.reply_posted();
        actix_rt::spawn(async move {
            let (progress, shown_progress) = tokio::sync::mpsc::unbounded_channel();
            let asked = deps
                .assistant
                .ask(chat_id, messages, Some(progress), cancelled);
            let shown = show_progress(
                &deps.telegram,
                chat_id,
                private,
                draft_id,
                deps.pace,
                shown_progress,
            );
            let (result, shown) = tokio::join!(asked, shown);
            let (final_text, kind) = match &result {
                Ok(answer) if answer.cached => (answer.text.clone(), "ai_cached"),
                Ok(answer) => (answer.text.clone(), "ai"),
                Err(AiError::Cancelled) if !shown.text.is_empty() => (
                    format!("{}\n\n{}", shown.text, commands::STOPPED),
                    "ai_stopped",
                ),
                Err(AiError::Truncated { partial }) => (
                    format!("{partial}\n\n{}", commands::CUT_OFF),
                    "ai_truncated",
                ),
                Err(err) => {
                    log::warn!("chat_id={chat_id}: no answer from the assistant: {err}");
                    (failure_text(err).to_string(), "ai_failed")
                }
            };
            let requests: Vec<Request> = final_requests(chat_id, &final_text, &shown);
            let delivered = delivery::deliver(
                &deps.telegram,
                &deps.done,
                update.update_id,
                chat_id,
                requests,
            )
            .await;
            if delivered.is_ok() {
                metrics::REPLIES.with_label_values(&[kind]).inc();
                metrics::REPLY_LATENCY
                    .with_label_values(&["ai"])
                    .observe(update.received.elapsed().as_secs_f64());
            }
            me.do_send(AnswerFinished {
                epoch,
                question: text,
                answer: result.ok().map(|a| a.text),
            });
        });
    }

    fn stop_generation(&mut self, draft_id: i64) -> bool {
        match &mut self.current {
            Some(current) if i64::from(current.draft_id) == draft_id => {
                if let Some(cancel) = current.cancel.take() {
                    let _ = cancel.send(());
                }
                true
            }
            _ => false,
        }
    }

    /// Records that the state changed: it is saved within [`SAVE_INTERVAL`]
    /// (and when the session retires).
    fn changed(&mut self, ctx: &mut Context<Self>) {
        self.dirty = true;
        if !self.save_due {
            self.save_due = true;
            ctx.run_later(SAVE_INTERVAL, |this, ctx| {
                this.save_due = false;
                if let Some(save) = this.save() {
                    ctx.spawn(save.into_actor(this));
                }
            });
        }
    }

    fn is_admin(&self) -> bool {
        self.deps.admins.contains(&self.chat_id)
    }

    /// /health, /performance, /admin_stats: for admins; anyone else gets
    /// the unknown-command reply, and the attempt is logged.
    fn admin_command(&mut self, update: &RawUpdate, name: &str, ctx: &mut Context<Self>) {
        if !self.is_admin() {
            log::warn!(
                "chat_id={} (@{}) tried the admin command /{name}",
                self.chat_id,
                self.record.username.as_deref().unwrap_or("-")
            );
            return self.reply(update, "command", &commands::unknown_text(name));
        }
        let Some(admin) = self.deps.admin.get() else {
            return self.reply(update, "admin", commands::TRY_AGAIN);
        };
        let (checker, cache, started) =
            (admin.health.clone(), admin.ai_cache.clone(), admin.started);
        let storage = self.deps.storage.clone();
        let name = name.to_string();
        let update = update.clone();
        let text = async move {
            match name.as_str() {
                "health" => match checker.send(GetStatus).await {
                    Ok(status) => health::health_text(&status),
                    Err(_) => commands::TRY_AGAIN.to_string(),
                },
                "performance" => {
                    match tokio::join!(checker.send(GetStatus), checker.send(GetHistory)) {
                        (Ok(status), Ok(history)) => health::performance_text(&status, &history),
                        _ => commands::TRY_AGAIN.to_string(),
                    }
                }
                _ => health::admin_stats_text(&storage, &cache, started.elapsed().as_secs()).await,
            }
        };
        ctx.wait(text.into_actor(self).map(move |text, this, _| {
            this.reply(&update, "admin", &text);
        }));
    }

    /// Checks a photo now (download, decode, process; cached for /pdf) so
    /// that a broken one is named at once, and adds it to the collection.
    fn add_photo(&mut self, update: &RawUpdate, photo: PhotoRef, ctx: &mut Context<Self>) {
        let documents = &self.deps.documents;
        if self.conversation.photos.len() >= documents.max_photos {
            let text = commands::too_many_photos(documents.max_photos);
            return self.reply(update, "photo", &text);
        }
        let prepare = documents.images.send(Prepare {
            photo: photo.clone(),
            priority: if self.is_admin() { 200 } else { 100 },
        });
        let update = update.clone();
        // Held mailbox: a /pdf right after the photo must find it collected.
        ctx.wait(prepare.into_actor(self).map(move |prepared, this, ctx| {
            let text = match prepared {
                Ok(Ok(_)) => {
                    this.conversation.photos.push(photo);
                    this.changed(ctx);
                    commands::photo_added(this.conversation.photos.len())
                }
                Ok(Err(err)) => err.user_text(&photo.name),
                Err(_) => commands::photo_failed(&photo.name),
            };
            this.reply(&update, "photo", &text);
        }));
    }

    /// /report: the conversation so far as a PDF.
    fn request_report(&mut self, update: &RawUpdate, ctx: &mut Context<Self>) {
        let storage = self.deps.storage.clone();
        let user_id = self.chat_id;
        let user_name = self
            .record
            .first_name
            .clone()
            .or_else(|| self.record.username.clone())
            .unwrap_or_else(|| format!("user {user_id}"));
        let update = update.clone();
        ctx.wait(
            async move { storage.turns_recent(user_id, REPORT_TURNS).await }
                .into_actor(self)
                .map(move |turns, this, ctx| match turns {
                    Ok(turns) if turns.is_empty() => {
                        this.reply(&update, "command", commands::NOTHING_TO_REPORT);
                    }
                    Ok(turns) => {
                        let spec = JobSpec::Report {
                            user_name,
                            generated_at: commands::format_millis(now_millis()),
                            exchanges: turns.into_iter().map(|t| (t.question, t.answer)).collect(),
                        };
                        this.record.reports += 1;
                        this.changed(ctx);
                        this.submit_job(&update, spec, ctx);
                    }
                    Err(err) => {
                        log::warn!("chat_id={user_id}: could not load the conversation: {err}");
                        this.reply(&update, "command", commands::TRY_AGAIN);
                    }
                }),
        );
    }

    /// /pdf: the collected photos as one PDF; the collection starts afresh.
    fn request_album(&mut self, update: &RawUpdate, ctx: &mut Context<Self>) {
        if self.conversation.photos.is_empty() {
            return self.reply(update, "command", commands::NO_PHOTOS);
        }
        let photos = std::mem::take(&mut self.conversation.photos);
        self.changed(ctx);
        self.submit_job(update, JobSpec::Album { photos }, ctx);
    }

    fn submit_job(&mut self, update: &RawUpdate, spec: JobSpec, ctx: &mut Context<Self>) {
        let documents = &self.deps.documents;
        let notice_ahead = documents.notice_ahead;
        let submit = documents.pdf.send(SubmitJob {
            user_id: self.chat_id,
            chat_id: self.chat_id,
            admin: self.is_admin(),
            spec: spec.clone(),
        });
        let update = update.clone();
        ctx.wait(submit.into_actor(self).map(move |answer, this, _| {
            let refused = match answer {
                Ok(Ok(Accepted { position, .. })) => {
                    match position.filter(|p| p.ahead >= notice_ahead) {
                        Some(p) => {
                            let text = commands::queue_position(p.ahead, p.estimated_wait);
                            this.reply(&update, "job", &text);
                        }
                        // The chat shows "sending a file…" until it arrives.
                        None => this.done(update.update_id),
                    }
                    return;
                }
                Ok(Err(Refused::Busy)) => commands::PDF_BUSY,
                Ok(Err(Refused::Storage(_))) | Err(_) => commands::TRY_AGAIN,
            };
            // Not accepted: the photos stay collected for another /pdf.
            if let JobSpec::Album { photos } = spec {
                this.conversation.photos = photos;
            }
            this.reply(&update, "job", refused);
        }));
    }

    fn stats_text(&mut self, now: Instant) -> String {
        if let Some((at, text)) = &self.stats_cache
            && now.duration_since(*at) < self.deps.stats_ttl
        {
            return text.clone();
        }
        let text = commands::stats_text(&self.record);
        self.stats_cache = Some((now, text.clone()));
        text
    }

    fn reset(&mut self) -> String {
        self.conversation.epoch += 1;
        self.history = Some(VecDeque::new());
        self.dirty = true;
        let storage = self.deps.storage.clone();
        let user_id = self.chat_id;
        actix_rt::spawn(async move {
            if let Err(err) = storage.turns_clear(user_id).await {
                log::warn!("/reset: could not clear the history of chat_id={user_id}: {err}");
            }
        });
        commands::RESET_TEXT.to_string()
    }

    /// The record as it should be stored now.
    fn snapshot(&self) -> UserRecord {
        let mut record = self.record.clone();
        if !self.unreadable_state {
            // Otherwise the stored text stays as it was, for an operator to
            // look at, rather than be saved over with an empty one.
            record.state = serde_json::to_string(&self.conversation).unwrap_or_default();
        }
        record
    }

    fn save(&mut self) -> Option<impl Future<Output = ()> + use<>> {
        if !self.dirty || !self.restored {
            return None;
        }
        self.dirty = false;
        let storage = self.deps.storage.clone();
        let record = self.snapshot();
        Some(async move {
            let chat_id = record.chat_id;
            if let Err(err) = storage.users_save(vec![record]).await {
                log::warn!("could not save the state of chat_id={chat_id}: {err}");
            }
        })
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::USER_ACTORS.inc();
        let storage = self.deps.storage.clone();
        let chat_id = self.chat_id;
        // Restore before anything else is handled: `wait` holds the mailbox.
        ctx.wait(
            async move { storage.user_load(chat_id).await }
                .into_actor(self)
                .map(|loaded, this, ctx| {
                    match loaded {
                        Ok(Some(record)) => {
                            match serde_json::from_str(&record.state) {
                                Ok(conversation) => this.conversation = conversation,
                                Err(err) => {
                                    log::error!(
                                        "chat_id={}: the stored conversation state cannot be read ({err}); \
                                         it is kept as it is in the users table and this session starts without it",
                                        this.chat_id
                                    );
                                    this.unreadable_state = true;
                                }
                            }
                            this.record = record;
                            this.restored = true;
                            this.stored = true;
                        }
                        Ok(None) => {
                            // New: no exchanges either, no need to ask.
                            this.restored = true;
                            this.history = Some(VecDeque::new());
                        }
                        Err(err) => log::warn!(
                            "could not restore chat_id={}: {err}; its figures start afresh and are not saved",
                            this.chat_id
                        ),
                    }
                    if let Some((update, attempts)) = this.interrupted.take() {
                        this.retry(update, attempts, ctx);
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::USER_ACTORS.dec();
    }
}

/// Restarted in place by the sessions' supervisor; `started` restores the
/// record from the database again. An answer under way goes on: its task
/// runs off the actor and reports to the same address.
impl actix::Supervised for Session {
    fn restarting(&mut self, _: &mut Self::Context) {
        // `started` counts the session again.
        metrics::USER_ACTORS.dec();
        // The update it crashed on is tried again first, a few times.
        if let Some(update) = self.handling.take() {
            let attempts = match &self.interrupted {
                Some((before, n)) if before.update_id == update.update_id => n + 1,
                _ => 1,
            };
            self.interrupted = Some((update, attempts));
        }
    }
}

/// Attempts at an update that crashed its session, after which it is
/// answered with an apology and set aside in `dead_letters` instead of
/// tried again.
const MAX_UPDATE_ATTEMPTS: u32 = 3;

impl Session {
    /// Handles an update again after it crashed the session `attempts`
    /// times, or gives up on it.
    fn retry(&mut self, update: RawUpdate, attempts: u32, ctx: &mut Context<Self>) {
        if attempts < MAX_UPDATE_ATTEMPTS {
            log::warn!(
                "chat_id={}: handling update_id={} again after a crash (attempt {})",
                self.chat_id,
                update.update_id,
                attempts + 1
            );
            self.interrupted = Some((update.clone(), attempts));
            return self.take_update(update, ctx);
        }
        log::error!(
            "chat_id={}: update_id={} crashed the session {attempts} times; answering it with an apology",
            self.chat_id,
            update.update_id
        );
        metrics::UPDATES_SKIPPED
            .with_label_values(&["poison"])
            .inc();
        let letter = DeadLetter::new(
            update.update_id,
            Some(self.chat_id),
            update.body.to_string(),
            format!("crashed its session {attempts} times; the panics are in the log"),
            attempts,
        );
        let storage = self.deps.storage.clone();
        actix_rt::spawn(async move {
            let update_id = letter.update_id;
            if let Err(err) = storage.dead_letter_put(letter).await {
                log::error!("update_id={update_id}: could not be set aside in dead_letters: {err}");
            }
        });
        self.reply(&update, "poison", commands::POISON);
    }

    /// Handles one update, remembering it while it is handled: a panic
    /// meanwhile leaves it for [`Supervised::restarting`].
    fn take_update(&mut self, update: RawUpdate, ctx: &mut Context<Self>) {
        self.handling = Some(update.clone());
        self.on_update(update, ctx);
        self.handling = None;
        self.interrupted = None;
    }
}

impl Handler<HandleUpdate> for Session {
    type Result = ();

    fn handle(&mut self, msg: HandleUpdate, ctx: &mut Self::Context) {
        self.take_update(msg.0, ctx);
    }
}

impl Session {
    fn on_update(&mut self, update: RawUpdate, ctx: &mut Context<Self>) {
        actorbot_actors::fault::hit_keyed("session", "chat_id", self.chat_id);
        let parsed = match update.parse() {
            Ok(parsed) => parsed,
            Err(err) => {
                metrics::UPDATES_SKIPPED
                    .with_label_values(&["malformed"])
                    .inc();
                log::warn!(
                    "skipping update_id={} kind={}: {err}",
                    update.update_id,
                    update.kind()
                );
                return self.done(update.update_id);
            }
        };
        match &parsed {
            UpdateContent::Message(message) => self.on_message(&update, message, ctx),
            UpdateContent::StoppedMessageGeneration(stop) => {
                if !self.stop_generation(stop.draft_id) {
                    log::debug!(
                        "chat_id={}: nothing to stop for draft {}",
                        self.chat_id,
                        stop.draft_id
                    );
                }
                self.done(update.update_id);
            }
            _ => {
                log::debug!(
                    "ignoring update_id={} kind={}",
                    update.update_id,
                    update.kind()
                );
                self.done(update.update_id);
            }
        }
    }
}

impl Handler<AnswerFinished> for Session {
    type Result = ();

    fn handle(&mut self, msg: AnswerFinished, ctx: &mut Self::Context) {
        self.current = None;
        if let Some(answer) = msg.answer
            && msg.epoch == self.conversation.epoch
        {
            let limit = self.deps.assistant.history_turns();
            let history = self.history.get_or_insert_with(VecDeque::new);
            history.push_back((msg.question.clone(), answer.clone()));
            while history.len() > limit {
                history.pop_front();
            }
            let storage = self.deps.storage.clone();
            let user_id = self.chat_id;
            // The record goes first, the first time: exchanges never exist
            // without it (a new session looks for them only when it does).
            let record = (self.restored && !self.stored).then(|| self.snapshot());
            // Held mailbox: a /report sent right after the answer arrives
            // must find this exchange saved.
            ctx.wait(
                async move {
                    let first = record.is_some();
                    match storage
                        .exchange_save(record, user_id, msg.question, answer)
                        .await
                    {
                        Ok(()) => true,
                        Err(err) => {
                            log::warn!("chat_id={user_id}: could not save the exchange: {err}");
                            // Without its record nothing was saved; with it
                            // stored before, the record still stands.
                            !first
                        }
                    }
                }
                .into_actor(self)
                .map(|stored, this, _| this.stored |= stored),
            );
        }
        if let Some(next) = self.waiting.pop_front() {
            self.start_question(next, ctx);
        }
    }
}

impl Handler<Retire> for Session {
    type Result = Persist;

    fn handle(&mut self, msg: Retire, _: &mut Self::Context) -> Persist {
        if msg.reason != RetireReason::Shutdown {
            log::debug!("retiring chat_id={} ({:?})", self.chat_id, msg.reason);
        }
        match self.save() {
            Some(save) => Persist::after(save),
            None => Persist::nothing(),
        }
    }
}

/// The photo in a message: the largest size of a photo, or an image sent
/// as a file. `number` names a photo that has no file name.
fn photo_of(message: &TgMessage, number: usize) -> Option<PhotoRef> {
    if let Some(sizes) = &message.photo {
        let largest = sizes
            .iter()
            .max_by_key(|s| u64::from(s.width) * u64::from(s.height))?;
        return Some(PhotoRef {
            file_id: largest.file_id.clone(),
            file_unique_id: largest.file_unique_id.clone(),
            name: format!("photo {number}"),
            size: largest.file_size,
        });
    }
    let document = message.document.as_ref()?;
    let is_image = document
        .mime_type
        .as_deref()
        .is_some_and(|m| m.starts_with("image/"));
    is_image.then(|| PhotoRef {
        file_id: document.file_id.clone(),
        file_unique_id: document.file_unique_id.clone(),
        name: document
            .file_name
            .clone()
            .unwrap_or_else(|| format!("image {number}")),
        size: document.file_size,
    })
}
