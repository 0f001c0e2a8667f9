//! One actor per chat: the user's conversation state, profile and limits.
//!
//! The registry in `actorbot-actors` starts a session on the first update
//! for its chat and retires it after `USER_STATE_TIMEOUT` of silence (or to
//! stay under `MAX_USER_STATES`). A session restores its record from the
//! database before it handles anything, and saves it when it retires and
//! periodically while it has unsaved changes.
//!
//! What to do with each update is decided in [`state`], as plain code that
//! returns effects; this actor carries them out: replies ([`delivery`]),
//! questions to the assistant ([`ask`]), photos and PDF jobs
//! ([`documents`]), admin commands ([`admin`]) and saves.
//!
//! A session handles its chat's updates strictly in order and queues their
//! replies in the outbox in that order. A reply needs room in the outbox:
//! while there is none, the session waits and handles nothing else, so its
//! mailbox fills and the router, and intake behind it, wait too (see
//! [`crate::telegram`]). Delivery is awaited off the actor, and only then is
//! the update marked done in the journal, as [`delivery`] decides for every
//! reply.
//!
//! Sessions run supervised: a session that panics is restarted in place,
//! with its mailbox and the questions waiting in it, and restores its record
//! from the database again; the update it crashed on is handled again, and
//! set aside after [`MAX_UPDATE_ATTEMPTS`].

mod admin;
mod ask;
mod delivery;
mod documents;
pub mod state;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::registry::{Persist, Retire, RetireReason};
use frankenstein::updates::UpdateContent;
use tokio::sync::{oneshot, watch};

use crate::ai::Assistant;

use crate::bot::commands;
use crate::cache::Cache;
use crate::cleanup::Cleanup;
use crate::health::HealthChecker;
use crate::images::ImagePool;
use crate::journal::DoneMarks;
use crate::metrics;
use crate::pdf::jobs::PdfJobs;
use crate::storage::{DeadLetter, Storage, UserRecord};
use crate::telegram::update::RawUpdate;
use crate::telegram::{Request, Room, Telegram, text_requests};
pub use state::Policy;
use state::{Chat, Effect};

/// How often a session with unsaved changes writes them.
const SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// What every session shares.
pub struct SessionDeps {
    pub storage: Storage,
    pub telegram: Telegram,
    pub done: DoneMarks,
    pub assistant: Assistant,
    pub documents: Documents,
    /// What decides, shared by every session: the latest, as the running
    /// configuration has it; each session takes it up at its next update.
    pub policy: watch::Receiver<Arc<Policy>>,
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
    pub cleanup: Cleanup,
}

/// The PDF side of a session: where photos and jobs go.
pub struct Documents {
    pub pdf: Addr<PdfJobs>,
    pub images: Addr<ImagePool>,
}

/// An update for the chat's session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandleUpdate(pub RawUpdate);

pub use state::Conversation;

/// Attempts at an update that crashed its session, after which it is
/// answered with an apology and set aside in `dead_letters` instead of
/// tried again.
pub const MAX_UPDATE_ATTEMPTS: u32 = 3;

pub struct Session {
    chat_id: i64,
    deps: Arc<SessionDeps>,
    chat: Chat,
    /// False when the record could not be loaded: saving then would
    /// overwrite the stored figures with fresh ones.
    restored: bool,
    /// A save is due within [`SAVE_INTERVAL`]. Only a session with changes
    /// has a timer: an idle one costs no more than its state.
    save_due: bool,
    /// The stored conversation state could not be read: it is not saved
    /// over.
    unreadable_state: bool,
    /// Stops the answer under way.
    cancel: Option<oneshot::Sender<()>>,
    /// The update being handled, until its handler returns: its id and
    /// text, which cost a reference count to keep.
    handling: Option<(i64, Arc<str>)>,
    /// The update a crash interrupted, and how many times it has.
    interrupted: Option<Box<(RawUpdate, u32)>>,
}

impl Session {
    pub fn new(chat_id: i64, deps: Arc<SessionDeps>) -> Session {
        let admin = deps.admins.contains(&chat_id);
        let policy = deps.policy.borrow().clone();
        let chat = Chat::new(chat_id, policy, admin, Instant::now());
        Session {
            chat_id,
            deps,
            chat,
            restored: false,
            save_due: false,
            unreadable_state: false,
            cancel: None,
            handling: None,
            interrupted: None,
        }
    }

    fn done(&self, update_id: i64) {
        self.deps.done.mark(update_id);
    }

    /// Queues a reply, waiting for room in the outbox while there is none,
    /// and marks the update done as [`delivery`] decides.
    fn reply(&self, update: &RawUpdate, kind: &'static str, text: &str, ctx: &mut Context<Self>) {
        let requests = text_requests(self.chat_id, text);
        self.deps.done.reply_posted();
        let (update_id, received) = (update.update_id, update.received);
        match self.deps.telegram.try_room(self.chat_id, requests.len()) {
            Some(room) => self.send_reply(room, update_id, received, kind, requests),
            None => {
                metrics::REPLIES_HELD.inc();
                let telegram = self.deps.telegram.clone();
                let (chat_id, count) = (self.chat_id, requests.len());
                // `wait` holds the mailbox: nothing else is handled until the
                // reply is queued, in its turn.
                ctx.wait(
                    async move { telegram.room(chat_id, count).await }
                        .into_actor(self)
                        .map(move |room, this, _| {
                            this.send_reply(room, update_id, received, kind, requests);
                        }),
                );
            }
        }
    }

    fn send_reply(
        &self,
        room: Room,
        update_id: i64,
        received: Instant,
        kind: &'static str,
        requests: Vec<Request>,
    ) {
        let (deps, chat_id) = (self.deps.clone(), self.chat_id);
        // Spawned on the arbiter, not in the actor's context: a session that
        // retires or restarts still has its replies delivered and marked.
        actix_rt::spawn(async move {
            let delivered = delivery::deliver(
                &deps.telegram,
                &deps.done,
                update_id,
                chat_id,
                room,
                requests,
            )
            .await;
            if delivered.is_ok() {
                metrics::REPLIES.with_label_values(&[kind]).inc();
                metrics::REPLY_LATENCY
                    .with_label_values(&[kind])
                    .observe(received.elapsed().as_secs_f64());
            }
        });
    }

    /// Carries out what [`state`] decided for `update`.
    fn apply(&mut self, update: &RawUpdate, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Reply { kind, text } => self.reply(update, kind, &text, ctx),
                Effect::Warn(message) => log::warn!("{message}"),
                Effect::Skipped(reason) => {
                    metrics::UPDATES_SKIPPED.with_label_values(&[reason]).inc();
                }
                Effect::Done => self.done(update.update_id),
                Effect::Changed => self.changed(ctx),
                Effect::Ask(question) => self.ask(question, ctx),
                Effect::Cancel => {
                    if let Some(cancel) = self.cancel.take() {
                        let _ = cancel.send(());
                    }
                }
                Effect::CheckPhoto { photo, priority } => {
                    self.check_photo(update, photo, priority, ctx);
                }
                Effect::LoadReport { user_name } => self.load_report(update, user_name, ctx),
                Effect::Submit(spec) => self.submit_job(update, spec, ctx),
                Effect::Admin(name) => self.admin_command(update, &name, ctx),
                Effect::ClearHistory => {
                    let storage = self.deps.storage.clone();
                    let user_id = self.chat_id;
                    actix_rt::spawn(async move {
                        if let Err(err) = storage.turns_clear(user_id).await {
                            log::warn!(
                                "/reset: could not clear the history of chat_id={user_id}: {err}"
                            );
                        }
                    });
                }
                Effect::SaveExchange {
                    question,
                    answer,
                    with_record,
                } => self.save_exchange(question, answer, with_record, ctx),
            }
        }
    }

    /// Records that the state changed: it is saved within [`SAVE_INTERVAL`]
    /// (and when the session retires).
    fn changed(&mut self, ctx: &mut Context<Self>) {
        self.chat.dirty = true;
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

    /// The record as it should be stored now.
    fn snapshot(&self) -> UserRecord {
        let mut record = self.chat.record.clone();
        if !self.unreadable_state {
            // Otherwise the stored text stays as it was, for an operator to
            // look at, rather than be saved over with an empty one.
            let conversation = self
                .chat
                .conversation_to_save(Instant::now(), crate::storage::now_millis());
            record.state = serde_json::to_string(&conversation).unwrap_or_default();
        }
        record
    }

    fn save(&mut self) -> Option<impl Future<Output = ()> + use<>> {
        if !self.chat.dirty || !self.restored {
            return None;
        }
        self.chat.dirty = false;
        let storage = self.deps.storage.clone();
        let record = self.snapshot();
        Some(async move {
            let chat_id = record.chat_id;
            if let Err(err) = storage.users_save(vec![record]).await {
                log::warn!("could not save the state of chat_id={chat_id}: {err}");
            }
        })
    }

    /// Stores an exchange, holding the mailbox: a /report sent right after
    /// the answer must find it saved.
    fn save_exchange(
        &mut self,
        question: String,
        answer: String,
        with_record: bool,
        ctx: &mut Context<Self>,
    ) {
        let storage = self.deps.storage.clone();
        let user_id = self.chat_id;
        // Without a restored record there is nothing to store it with.
        let record = (with_record && self.restored).then(|| self.snapshot());
        ctx.wait(
            async move {
                let first = record.is_some();
                match storage
                    .exchange_save(record, user_id, question, answer)
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
            .map(|stored, this, _| this.chat.stored |= stored),
        );
    }

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
            self.interrupted = Some(Box::new((update.clone(), attempts)));
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
        self.reply(&update, "poison", commands::POISON, ctx);
    }

    /// Handles one update, remembering it while it is handled: a panic
    /// meanwhile leaves it for [`Supervised::restarting`].
    fn take_update(&mut self, update: RawUpdate, ctx: &mut Context<Self>) {
        self.handling = Some((update.update_id, update.body.clone()));
        self.on_update(update, ctx);
        self.handling = None;
        self.interrupted = None;
    }

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
        let now = Instant::now();
        let policy = self.deps.policy.borrow().clone();
        self.chat.retune(policy, now);
        let effects = match &parsed {
            UpdateContent::Message(message) => self.chat.on_message(&update, message, now),
            UpdateContent::StoppedMessageGeneration(stop) => self.chat.stop(stop.draft_id),
            _ => {
                log::debug!(
                    "ignoring update_id={} kind={}",
                    update.update_id,
                    update.kind()
                );
                vec![Effect::Done]
            }
        };
        self.apply(&update, effects, ctx);
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
                                Ok(conversation) => this.chat.restore(
                                    conversation,
                                    Instant::now(),
                                    crate::storage::now_millis(),
                                ),
                                Err(err) => {
                                    log::error!(
                                        "chat_id={}: the stored conversation state cannot be read ({err}); \
                                         it is kept as it is in the users table and this session starts without it",
                                        this.chat_id
                                    );
                                    this.unreadable_state = true;
                                }
                            }
                            this.chat.record = record;
                            this.restored = true;
                            this.chat.stored = true;
                        }
                        Ok(None) => {
                            // New: no exchanges either, no need to ask.
                            this.restored = true;
                            this.chat.history = Some(Default::default());
                        }
                        Err(err) => log::warn!(
                            "could not restore chat_id={}: {err}; its figures start afresh and are not saved",
                            this.chat_id
                        ),
                    }
                    if let Some(interrupted) = this.interrupted.take() {
                        let (update, attempts) = *interrupted;
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
        if let Some((update_id, body)) = self.handling.take() {
            let attempts = match self.interrupted.as_deref() {
                Some((before, n)) if before.update_id == update_id => n + 1,
                _ => 1,
            };
            match RawUpdate::from_json(&body) {
                Some(update) => self.interrupted = Some(Box::new((update, attempts))),
                None => log::error!(
                    "update_id={update_id} crashed its session and cannot be read again"
                ),
            }
        }
    }
}

impl Handler<HandleUpdate> for Session {
    type Result = ();

    fn handle(&mut self, msg: HandleUpdate, ctx: &mut Self::Context) {
        self.take_update(msg.0, ctx);
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
