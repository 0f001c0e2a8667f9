//! What a session decides, as plain code: given the chat's state, an input
//! (a message, a photo checked, a conversation loaded, a job's answer, an
//! answer finished) and the time, the next state and the effects to carry
//! out. The actor in [`super`] carries them out and feeds their results
//! back in; the tests below drive the decisions without it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use frankenstein::types::{ChatType, Message as TgMessage};
use serde::{Deserialize, Serialize};

use crate::ai::reply::Pace;
use crate::bot::commands;
use crate::bot::ratelimit::{RateLimits, UserLimiter, Verdict, refusal_text};
use crate::images::PhotoRef;
use crate::pdf::jobs::JobSpec;
use crate::storage::{UserRecord, now_millis};
use crate::telegram::update::RawUpdate;

/// The conversation state kept in the user record, as JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    /// Bumped by /reset; lets later parts tell an old exchange from a new one.
    pub epoch: u32,
    /// Photos collected for the next /pdf, already checked to decode.
    pub photos: Vec<PhotoRef>,
    /// The hourly allowance left when the state was saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<Allowance>,
}

/// What was left of a user's hourly allowance, and when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Messages left, in thousandths.
    pub left_milli: u64,
    pub at: i64,
}

/// A question to the assistant and the update that asked it.
#[derive(Debug, Clone)]
pub struct Question {
    pub update: RawUpdate,
    pub text: String,
    /// Asked in a private chat (where a streamed draft can be shown).
    pub private: bool,
}

/// What the sessions' policy is made of, from the configuration: one,
/// shared by every session.
#[derive(Debug, Clone)]
pub struct Policy {
    pub limits: RateLimits,
    pub bot_username: String,
    /// How long a /stats answer is reused.
    pub stats_ttl: Duration,
    /// Questions that may wait behind the one being answered.
    pub user_queue: usize,
    /// Exchanges the assistant is given as context.
    pub history_turns: usize,
    pub max_photos: usize,
    /// Jobs ahead of a new one from which its user is told the position.
    pub notice_ahead: usize,
    /// How fast a streamed answer is shown.
    pub pace: Pace,
}

/// How the PDF jobs actor answered a submission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobAnswer {
    /// Accepted, with this many jobs ahead of it and a rough wait.
    Accepted {
        ahead: Option<usize>,
        wait: Option<Duration>,
    },
    /// The queue is full.
    Busy,
    /// It could not be recorded, or the actor did not answer.
    Failed,
}

/// What the actor is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Answer the update in hand; it is done once the reply is delivered.
    Reply { kind: &'static str, text: String },
    /// The update in hand needs no reply: mark it done.
    Done,
    /// Count the update in hand as skipped, for this reason.
    Skipped(&'static str),
    /// Something an operator should know.
    Warn(String),
    /// The record changed: save it soon.
    Changed,
    /// Answer this question now; [`Chat::answer_ready`] and
    /// [`Chat::answer_finished`] follow.
    Ask(Question),
    /// Stop the answer under way.
    Cancel,
    /// Check a photo; [`Chat::photo_checked`] follows.
    CheckPhoto { photo: PhotoRef, priority: u8 },
    /// Load the conversation for a report; [`Chat::report_loaded`] follows.
    LoadReport { user_name: String },
    /// Submit a job; [`Chat::job_answered`] follows.
    Submit(JobSpec),
    /// Run an admin command and reply with its text.
    Admin(String),
    /// Forget the stored conversation.
    ClearHistory,
    /// Store an exchange (and, when `with_record`, the record first: the
    /// exchanges of a chat never exist without it).
    SaveExchange {
        question: String,
        answer: String,
        with_record: bool,
    },
}

impl PartialEq for Question {
    fn eq(&self, other: &Self) -> bool {
        self.update.update_id == other.update.update_id && self.text == other.text
    }
}

fn reply(kind: &'static str, text: impl Into<String>) -> Effect {
    Effect::Reply {
        kind,
        text: text.into(),
    }
}

/// The question being answered: its draft, once the answer has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answering {
    draft_id: Option<i32>,
}

/// One chat's state.
pub struct Chat {
    pub policy: Arc<Policy>,
    /// The chat's user may run admin commands, and their jobs go first.
    pub admin: bool,
    pub record: UserRecord,
    pub conversation: Conversation,
    /// Changes not saved yet.
    pub dirty: bool,
    /// The record is in the database (loaded, or saved with an exchange).
    pub stored: bool,
    /// Recent exchanges, loaded on the first question.
    pub history: Option<VecDeque<(String, String)>>,
    limiter: UserLimiter,
    stats_cache: Option<(Instant, String)>,
    current: Option<Answering>,
    waiting: VecDeque<Question>,
}

impl Chat {
    /// A chat with a fresh record.
    pub fn new(chat_id: i64, policy: Arc<Policy>, admin: bool, now: Instant) -> Chat {
        Chat {
            limiter: UserLimiter::new(&policy.limits, now),
            policy,
            admin,
            record: UserRecord::new(chat_id, now_millis()),
            conversation: Conversation::default(),
            dirty: false,
            stored: false,
            history: None,
            stats_cache: None,
            current: None,
            waiting: VecDeque::new(),
        }
    }

    /// Takes a new policy (the configuration changed while running) from
    /// the next decision on. The limiter starts afresh if its limits
    /// changed: a user is never held back by a limit no longer in force.
    pub fn retune(&mut self, policy: Arc<Policy>, now: Instant) {
        if Arc::ptr_eq(&self.policy, &policy) {
            return;
        }
        if self.policy.limits != policy.limits {
            self.limiter = UserLimiter::new(&policy.limits, now);
        }
        self.policy = policy;
    }

    /// The conversation as it is to be saved at `now`, with what is left
    /// of the hourly allowance.
    pub fn conversation_to_save(&self, now: Instant, now_ms: i64) -> Conversation {
        let left = self.limiter.hourly_left(now).max(0.0);
        Conversation {
            allowance: Some(Allowance {
                left_milli: (left * 1000.0) as u64,
                at: now_ms,
            }),
            ..self.conversation.clone()
        }
    }

    /// Takes a conversation loaded from the record: the hourly allowance it
    /// saved goes on from where it was, refilled for the time since.
    pub fn restore(&mut self, conversation: Conversation, now: Instant, now_ms: i64) {
        if let Some(allowance) = conversation.allowance {
            let ago = Duration::from_millis(u64::try_from(now_ms - allowance.at).unwrap_or(0));
            self.limiter.resume_hourly(
                allowance.left_milli as f64 / 1000.0,
                ago,
                &self.policy.limits,
                now,
            );
        }
        self.conversation = Conversation {
            allowance: None,
            ..conversation
        };
    }

    fn changed(&mut self, effects: &mut Vec<Effect>) {
        self.dirty = true;
        effects.push(Effect::Changed);
    }

    /// A message in the chat.
    pub fn on_message(
        &mut self,
        update: &RawUpdate,
        message: &TgMessage,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(from) = &message.from {
            self.record.username = from.username.clone();
            self.record.first_name = Some(from.first_name.clone());
            self.record.language = from.language_code.clone();
        }
        self.record.messages += 1;
        self.record.last_seen = now_millis();
        self.changed(&mut effects);

        match self.limiter.check(now) {
            Verdict::Allowed => {}
            Verdict::Refused {
                retry_after,
                hourly,
            } => {
                effects.push(Effect::Skipped("rate_limited"));
                effects.push(reply("rate_limit", refusal_text(retry_after, hourly)));
                return effects;
            }
            Verdict::RefusedQuietly => {
                effects.push(Effect::Skipped("rate_limited"));
                effects.push(Effect::Done);
                return effects;
            }
        }

        if let Some(photo) = photo_of(message, self.conversation.photos.len() + 1) {
            if self.conversation.photos.len() >= self.policy.max_photos {
                effects.push(reply(
                    "photo",
                    commands::too_many_photos(self.policy.max_photos),
                ));
            } else {
                effects.push(Effect::CheckPhoto {
                    photo,
                    priority: self.priority(),
                });
            }
            return effects;
        }
        let Some(text) = message.text.as_deref() else {
            effects.push(if message.document.is_some() {
                reply("command", commands::NOT_AN_IMAGE)
            } else {
                Effect::Done
            });
            return effects;
        };
        if commands::for_another_bot(text, &self.policy.bot_username) {
            effects.push(Effect::Skipped("other_bot"));
            effects.push(Effect::Done);
            return effects;
        }
        let Some(command) = commands::parse(text, &self.policy.bot_username) else {
            let question = Question {
                update: update.clone(),
                text: text.to_string(),
                private: message.chat.type_field == ChatType::Private,
            };
            self.question(question, &mut effects);
            return effects;
        };
        let text = match command.name.as_str() {
            "start" => commands::start_text(self.record.first_name.as_deref().unwrap_or("there")),
            "help" => commands::help_text(),
            "stats" => self.stats_text(now),
            "reset" => {
                self.conversation.epoch += 1;
                self.history = Some(VecDeque::new());
                self.changed(&mut effects);
                effects.push(Effect::ClearHistory);
                commands::RESET_TEXT.to_string()
            }
            name @ ("health" | "performance" | "admin_stats" | "admin_cleanup") => {
                // Anyone else gets the unknown-command reply.
                if self.admin {
                    effects.push(Effect::Admin(name.to_string()));
                } else {
                    effects.push(Effect::Warn(format!(
                        "chat_id={} (@{}) tried the admin command /{name}",
                        self.record.chat_id,
                        self.record.username.as_deref().unwrap_or("-")
                    )));
                    effects.push(reply("command", commands::unknown_text(name)));
                }
                return effects;
            }
            "report" => {
                let user_name = self
                    .record
                    .first_name
                    .clone()
                    .or_else(|| self.record.username.clone())
                    .unwrap_or_else(|| format!("user {}", self.record.user_id));
                effects.push(Effect::LoadReport { user_name });
                return effects;
            }
            "pdf" => {
                if self.conversation.photos.is_empty() {
                    effects.push(reply("command", commands::NO_PHOTOS));
                } else {
                    let photos = std::mem::take(&mut self.conversation.photos);
                    self.changed(&mut effects);
                    effects.push(Effect::Submit(JobSpec::Album { photos }));
                }
                return effects;
            }
            other => commands::unknown_text(other),
        };
        effects.push(reply("command", text));
        effects
    }

    fn priority(&self) -> u8 {
        if self.admin { 200 } else { 100 }
    }

    /// Answers a question now, or after the one being answered, or refuses
    /// it when too many wait.
    fn question(&mut self, question: Question, effects: &mut Vec<Effect>) {
        if self.current.is_none() {
            return self.start(question, effects);
        }
        if self.waiting.len() < self.policy.user_queue {
            // Its update stays open until its own answer is delivered.
            self.waiting.push_back(question);
        } else {
            effects.push(reply("ai_refused", commands::ONE_AT_A_TIME));
        }
    }

    fn start(&mut self, question: Question, effects: &mut Vec<Effect>) {
        self.record.ai_questions += 1;
        self.changed(effects);
        self.current = Some(Answering { draft_id: None });
        effects.push(Effect::Ask(question));
    }

    /// The answer under way shows as this draft.
    pub fn answering(&mut self, draft_id: i32) {
        if let Some(current) = &mut self.current {
            current.draft_id = Some(draft_id);
        }
    }

    /// The user pressed stop on a draft.
    pub fn stop(&mut self, draft_id: i64) -> Vec<Effect> {
        match self.current {
            Some(Answering { draft_id: Some(id) }) if i64::from(id) == draft_id => {
                vec![Effect::Cancel, Effect::Done]
            }
            _ => vec![Effect::Done],
        }
    }

    /// The answer to a question is ready, before it is delivered: it joins
    /// the history unless /reset came since, so that a /report the user
    /// sends on seeing it finds it.
    pub fn answer_ready(&mut self, epoch: u32, question: String, answer: String) -> Vec<Effect> {
        if epoch != self.conversation.epoch {
            return Vec::new();
        }
        let limit = self.policy.history_turns;
        let history = self.history.get_or_insert_with(VecDeque::new);
        history.push_back((question.clone(), answer.clone()));
        while history.len() > limit {
            history.pop_front();
        }
        vec![Effect::SaveExchange {
            question,
            answer,
            with_record: !self.stored,
        }]
    }

    /// The answer was delivered (or given up on): the next question starts.
    pub fn answer_finished(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.current = None;
        if let Some(next) = self.waiting.pop_front() {
            self.start(next, &mut effects);
        }
        effects
    }

    /// A photo was checked: collected, or refused with the text to say.
    pub fn photo_checked(&mut self, photo: PhotoRef, checked: Result<(), String>) -> Vec<Effect> {
        let mut effects = Vec::new();
        match checked {
            Ok(()) => {
                self.conversation.photos.push(photo);
                self.changed(&mut effects);
                effects.push(reply(
                    "photo",
                    commands::photo_added(self.conversation.photos.len()),
                ));
            }
            Err(text) => effects.push(reply("photo", text)),
        }
        effects
    }

    /// The conversation for a report was loaded (`None`: it could not be).
    pub fn report_loaded(
        &mut self,
        user_name: String,
        turns: Option<Vec<(String, String)>>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        match turns {
            None => effects.push(reply("command", commands::TRY_AGAIN)),
            Some(turns) if turns.is_empty() => {
                effects.push(reply("command", commands::NOTHING_TO_REPORT));
            }
            Some(exchanges) => {
                self.record.reports += 1;
                self.changed(&mut effects);
                effects.push(Effect::Submit(JobSpec::Report {
                    user_name,
                    generated_at: commands::format_millis(now_millis()),
                    exchanges,
                }));
            }
        }
        effects
    }

    /// The PDF jobs actor answered a submission.
    pub fn job_answered(&mut self, spec: JobSpec, answer: JobAnswer) -> Vec<Effect> {
        let refused = match answer {
            JobAnswer::Accepted { ahead, wait } => {
                return match ahead.filter(|a| *a >= self.policy.notice_ahead) {
                    Some(ahead) => vec![reply("job", commands::queue_position(ahead, wait))],
                    // The chat shows "sending a file…" until it arrives.
                    None => vec![Effect::Done],
                };
            }
            JobAnswer::Busy => commands::PDF_BUSY,
            JobAnswer::Failed => commands::TRY_AGAIN,
        };
        let mut effects = Vec::new();
        // Not accepted: the photos stay collected for another /pdf.
        if let JobSpec::Album { photos } = spec {
            self.conversation.photos = photos;
            self.changed(&mut effects);
        }
        effects.push(reply("job", refused));
        effects
    }

    fn stats_text(&mut self, now: Instant) -> String {
        if let Some((at, text)) = &self.stats_cache
            && now.duration_since(*at) < self.policy.stats_ttl
        {
            return text.clone();
        }
        let text = commands::stats_text(&self.record);
        self.stats_cache = Some((now, text.clone()));
        text
    }
}

/// The photo in a message: the largest size of a photo, or an image sent
/// as a file. `number` names a photo that has no file name.
pub fn photo_of(message: &TgMessage, number: usize) -> Option<PhotoRef> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use frankenstein::updates::UpdateContent;
    use serde_json::json;

    const CHAT: i64 = 5;

    fn policy() -> Policy {
        Policy {
            limits: RateLimits {
                per_hour: 100,
                flood_messages: 5,
                flood_window: Duration::from_secs(3),
            },
            bot_username: "test_bot".into(),
            stats_ttl: Duration::from_secs(10),
            user_queue: 2,
            history_turns: 3,
            max_photos: 2,
            notice_ahead: 1,
            pace: Pace {
                draft: Duration::from_millis(100),
                edit: Duration::from_millis(300),
                typing: Duration::from_secs(4),
            },
        }
    }

    /// A chat and the time its tests start at.
    fn chat(policy: Policy) -> (Chat, Instant) {
        chat_of(policy, false)
    }

    fn chat_of(policy: Policy, admin: bool) -> (Chat, Instant) {
        let now = Instant::now();
        (Chat::new(CHAT, Arc::new(policy), admin, now), now)
    }

    fn update(id: i64, message: serde_json::Value) -> RawUpdate {
        let mut message = message;
        message["message_id"] = json!(id);
        message["date"] = json!(0);
        message["chat"] = json!({"id": CHAT, "type": "private"});
        message["from"] = json!({"id": CHAT, "is_bot": false, "first_name": "Ann"});
        RawUpdate::from_json(&json!({"update_id": id, "message": message}).to_string()).unwrap()
    }

    /// Feeds a message in; answers the effects.
    fn send(chat: &mut Chat, id: i64, message: serde_json::Value, now: Instant) -> Vec<Effect> {
        let update = update(id, message);
        let Ok(UpdateContent::Message(message)) = update.parse() else {
            panic!("not a message");
        };
        chat.on_message(&update, &message, now)
    }

    fn text(chat: &mut Chat, id: i64, text: &str, now: Instant) -> Vec<Effect> {
        send(chat, id, json!({"text": text}), now)
    }

    fn photo(chat: &mut Chat, id: i64, now: Instant) -> Vec<Effect> {
        let sizes = json!([
            {"file_id": format!("small{id}"), "file_unique_id": format!("s{id}"), "width": 90, "height": 60},
            {"file_id": format!("big{id}"), "file_unique_id": format!("b{id}"), "width": 900, "height": 600}
        ]);
        send(chat, id, json!({"photo": sizes}), now)
    }

    /// The reply among the effects, if one.
    fn replied(effects: &[Effect]) -> Option<(&'static str, &str)> {
        effects.iter().find_map(|e| match e {
            Effect::Reply { kind, text } => Some((*kind, text.as_str())),
            _ => None,
        })
    }

    fn asked(effects: &[Effect]) -> Option<&Question> {
        effects.iter().find_map(|e| match e {
            Effect::Ask(q) => Some(q),
            _ => None,
        })
    }

    #[test]
    fn commands_are_answered_and_the_profile_kept() {
        let (mut chat, now) = chat(policy());
        let effects = text(&mut chat, 1, "/start", now);
        assert_eq!(effects[0], Effect::Changed);
        let (kind, reply) = replied(&effects).expect("a reply");
        assert_eq!(kind, "command");
        assert!(reply.contains("Ann"), "{reply}");
        assert_eq!(chat.record.first_name.as_deref(), Some("Ann"));
        assert_eq!(chat.record.messages, 1);
        assert!(chat.dirty);

        let help = text(&mut chat, 2, "/help@test_bot", now);
        assert_eq!(replied(&help).unwrap().1, commands::help_text());
        let unknown = text(&mut chat, 3, "/frobnicate", now);
        assert!(replied(&unknown).unwrap().1.contains("frobnicate"));
        // A message with nothing to answer is done without a reply.
        let sticker = send(&mut chat, 4, json!({"sticker_like": true}), now);
        assert_eq!(sticker.last(), Some(&Effect::Done));
        assert!(replied(&sticker).is_none());
    }

    #[test]
    fn a_command_for_another_bot_is_neither_answered_nor_asked() {
        let (mut chat, now) = chat(policy());
        for other in [
            "/report@otherbot",
            "/start@other_bot now",
            "/help@test_bot_2",
        ] {
            let effects = text(&mut chat, 1, other, now);
            assert_eq!(effects.last(), Some(&Effect::Done), "{other}: {effects:?}");
            assert!(
                replied(&effects).is_none() && asked(&effects).is_none(),
                "{other}"
            );
            assert!(effects.contains(&Effect::Skipped("other_bot")));
        }
        let mine = text(&mut chat, 2, "/help@TEST_BOT", now);
        assert!(replied(&mine).is_some());
    }

    #[test]
    fn stats_are_reused_for_their_ttl() {
        let policy = policy();
        let ttl = policy.stats_ttl;
        let (mut chat, now) = chat(policy);
        let first = replied(&text(&mut chat, 1, "/stats", now))
            .unwrap()
            .1
            .to_string();
        let soon = replied(&text(&mut chat, 2, "/stats", now + ttl / 2))
            .unwrap()
            .1
            .to_string();
        assert_eq!(
            first, soon,
            "the cached answer, although a message came since"
        );
        let later = replied(&text(&mut chat, 3, "/stats", now + ttl * 2))
            .unwrap()
            .1
            .to_string();
        assert_ne!(first, later);
    }

    #[test]
    fn a_flood_is_told_once_then_dropped_quietly_until_it_passes() {
        let policy = policy();
        let (burst, window) = (policy.limits.flood_messages, policy.limits.flood_window);
        let (mut chat, now) = chat(policy);
        for id in 0..i64::from(burst) {
            assert!(!text(&mut chat, id, "/help", now).contains(&Effect::Skipped("rate_limited")));
        }
        let told = text(&mut chat, 100, "/help", now);
        assert!(told.contains(&Effect::Skipped("rate_limited")));
        assert_eq!(replied(&told).unwrap().0, "rate_limit");
        let quiet = text(&mut chat, 101, "/help", now);
        assert_eq!(quiet.last(), Some(&Effect::Done));
        assert!(replied(&quiet).is_none());
        let after = text(&mut chat, 102, "/help", now + window);
        assert_eq!(replied(&after).unwrap().0, "command");
    }

    #[test]
    fn the_hourly_allowance_carries_over_a_save_and_a_restore() {
        let policy = policy();
        let (per_hour, window) = (policy.limits.per_hour, policy.limits.flood_window);
        let (mut chat, start) = chat(policy.clone());
        // Spend the hour's allowance, as fast as the anti-flood lets.
        let mut now = start;
        let hourly_refusal = |effects: &[Effect]| {
            replied(effects)
                .is_some_and(|(kind, text)| kind == "rate_limit" && text.contains("hourly"))
        };
        let mut id = 0;
        loop {
            id += 1;
            let effects = text(&mut chat, id, "/help", now);
            if hourly_refusal(&effects) {
                break;
            }
            if effects.contains(&Effect::Skipped("rate_limited")) {
                now += window;
            }
            assert!(id < 10 * i64::from(per_hour), "the hourly limit never came");
        }
        let saved_ms = 1_000_000;
        let saved =
            serde_json::to_string(&chat.conversation_to_save(now, saved_ms)).expect("saved");

        // Restored at once (another session, another instance): still spent.
        let (mut again, _) = chat_of(policy.clone(), false);
        again.restore(serde_json::from_str(&saved).expect("read"), now, saved_ms);
        assert!(
            again.conversation.allowance.is_none(),
            "kept in the limiter"
        );
        let refused = text(&mut again, 500, "/help", now);
        assert!(hourly_refusal(&refused), "{refused:?}");

        // Restored an hour later: refilled.
        let (mut later, _) = chat_of(policy, false);
        let hour = 3_600_000;
        later.restore(
            serde_json::from_str(&saved).expect("read"),
            now,
            saved_ms + hour,
        );
        let answered = text(&mut later, 501, "/help", now);
        assert_eq!(replied(&answered).unwrap().0, "command");
    }

    #[test]
    fn a_policy_changed_while_running_applies_to_the_next_message() {
        let policy = policy();
        let burst = policy.limits.flood_messages;
        let (mut chat, now) = chat(policy.clone());
        for id in 0..i64::from(burst) {
            text(&mut chat, id, "/help", now);
        }
        assert!(text(&mut chat, 50, "/help", now).contains(&Effect::Skipped("rate_limited")));
        // A higher anti-flood limit: the limiter starts afresh under it.
        let looser = Policy {
            limits: RateLimits {
                flood_messages: burst * 4,
                ..policy.limits
            },
            ..policy.clone()
        };
        chat.retune(Arc::new(looser), now);
        for id in 60..60 + i64::from(burst) * 2 {
            let effects = text(&mut chat, id, "/help", now);
            assert_eq!(replied(&effects).unwrap().0, "command", "message {id}");
        }
        // The same limits again keep the limiter's count.
        let same = Arc::new(Policy {
            user_queue: 9,
            ..(*chat.policy).clone()
        });
        chat.retune(same, now);
        assert_eq!(chat.policy.user_queue, 9);
        for id in 100..100 + i64::from(burst) * 2 {
            text(&mut chat, id, "/help", now);
        }
        assert!(text(&mut chat, 200, "/help", now).contains(&Effect::Skipped("rate_limited")));
    }

    #[test]
    fn questions_wait_their_turn_and_a_full_queue_is_refused() {
        let policy = policy();
        let queue = policy.user_queue;
        let (mut chat, now) = chat(policy);
        let first = text(&mut chat, 1, "What is an actor?", now);
        assert_eq!(asked(&first).unwrap().text, "What is an actor?");
        assert_eq!(chat.record.ai_questions, 1);
        for n in 0..queue {
            let waiting = text(&mut chat, 2 + n as i64, &format!("And {n}?"), now);
            assert!(asked(&waiting).is_none() && replied(&waiting).is_none());
            // Its update stays open: not done either.
            assert!(!waiting.contains(&Effect::Done));
        }
        let refused = text(&mut chat, 50, "One more?", now);
        assert_eq!(
            replied(&refused).unwrap(),
            ("ai_refused", commands::ONE_AT_A_TIME)
        );

        let epoch = chat.conversation.epoch;
        let ready = chat.answer_ready(epoch, "What is an actor?".into(), "A unit.".into());
        assert_eq!(
            ready,
            vec![Effect::SaveExchange {
                question: "What is an actor?".into(),
                answer: "A unit.".into(),
                with_record: true,
            }]
        );
        let next = chat.answer_finished();
        assert_eq!(asked(&next).unwrap().text, "And 0?");
        assert_eq!(chat.history.as_ref().unwrap().len(), 1);
        assert_eq!(chat.record.ai_questions, 2);
    }

    #[test]
    fn the_history_keeps_the_last_turns_only() {
        let policy = policy();
        let turns = policy.history_turns;
        let (mut chat, now) = chat(policy);
        for n in 0..turns + 2 {
            text(
                &mut chat,
                n as i64,
                &format!("Q{n}"),
                now + Duration::from_secs(n as u64),
            );
            chat.answer_ready(0, format!("Q{n}"), format!("A{n}"));
            chat.answer_finished();
        }
        let history = chat.history.as_ref().unwrap();
        assert_eq!(history.len(), turns);
        assert_eq!(history.front().unwrap().0, "Q2");
    }

    #[test]
    fn reset_during_an_answer_keeps_that_answer_out_of_the_history() {
        let (mut chat, now) = chat(policy());
        text(&mut chat, 1, "Tell me a story", now);
        let epoch = chat.conversation.epoch;
        let reset = text(&mut chat, 2, "/reset", now);
        assert!(reset.contains(&Effect::ClearHistory));
        assert_eq!(replied(&reset).unwrap().1, commands::RESET_TEXT);
        assert_eq!(chat.conversation.epoch, epoch + 1);
        let ready = chat.answer_ready(epoch, "Tell me a story".into(), "Once…".into());
        assert!(ready.is_empty(), "{ready:?}");
        assert!(chat.history.as_ref().unwrap().is_empty());
    }

    #[test]
    fn stop_cancels_only_the_draft_being_shown() {
        let (mut chat, now) = chat(policy());
        text(&mut chat, 1, "Explain", now);
        chat.answering(42);
        assert_eq!(chat.stop(41), vec![Effect::Done]);
        assert_eq!(chat.stop(42), vec![Effect::Cancel, Effect::Done]);
        chat.answer_finished();
        assert_eq!(chat.stop(42), vec![Effect::Done]);
    }

    #[test]
    fn photos_are_checked_collected_and_sent_as_one_album() {
        let policy = policy();
        let max = policy.max_photos;
        let (mut chat, now) = chat(policy);
        assert_eq!(
            replied(&text(&mut chat, 1, "/pdf", now)).unwrap().1,
            commands::NO_PHOTOS
        );
        let mut collected = Vec::new();
        for id in 0..max as i64 {
            let effects = photo(&mut chat, 10 + id, now);
            let Some(Effect::CheckPhoto { photo, priority }) = effects.last().cloned() else {
                panic!("{effects:?}");
            };
            assert_eq!(photo.file_id, format!("big{}", 10 + id), "the largest size");
            assert_eq!(priority, 100);
            let added = chat.photo_checked(photo.clone(), Ok(()));
            assert_eq!(
                replied(&added).unwrap().1,
                commands::photo_added(id as usize + 1)
            );
            collected.push(photo);
        }
        let over = photo(&mut chat, 20, now);
        assert_eq!(replied(&over).unwrap().1, commands::too_many_photos(max));
        // A broken photo is named and not collected.
        let broken = chat.photo_checked(collected[0].clone(), Err("cannot read photo 1".into()));
        assert_eq!(replied(&broken).unwrap().1, "cannot read photo 1");
        assert_eq!(chat.conversation.photos.len(), max);

        let pdf = text(&mut chat, 30, "/pdf", now);
        let album = JobSpec::Album {
            photos: collected.clone(),
        };
        assert!(pdf.contains(&Effect::Submit(album.clone())), "{pdf:?}");
        assert!(chat.conversation.photos.is_empty());
        // Refused: the photos are collected again for another /pdf.
        let busy = chat.job_answered(album.clone(), JobAnswer::Busy);
        assert_eq!(replied(&busy).unwrap().1, commands::PDF_BUSY);
        assert_eq!(chat.conversation.photos, collected);
        // Accepted behind others: told its place; first in line: nothing.
        let queued = chat.job_answered(
            album.clone(),
            JobAnswer::Accepted {
                ahead: Some(3),
                wait: None,
            },
        );
        assert_eq!(
            replied(&queued).unwrap().1,
            commands::queue_position(3, None)
        );
        let first = chat.job_answered(
            album,
            JobAnswer::Accepted {
                ahead: Some(0),
                wait: None,
            },
        );
        assert_eq!(first, vec![Effect::Done]);
    }

    #[test]
    fn a_report_needs_a_conversation() {
        let (mut chat, now) = chat(policy());
        let effects = text(&mut chat, 1, "/report", now);
        let Some(Effect::LoadReport { user_name }) = effects.last().cloned() else {
            panic!("{effects:?}");
        };
        assert_eq!(user_name, "Ann");
        let none = chat.report_loaded(user_name.clone(), Some(Vec::new()));
        assert_eq!(replied(&none).unwrap().1, commands::NOTHING_TO_REPORT);
        let failed = chat.report_loaded(user_name.clone(), None);
        assert_eq!(replied(&failed).unwrap().1, commands::TRY_AGAIN);
        let report = chat.report_loaded(user_name, Some(vec![("Q".into(), "A".into())]));
        assert!(matches!(
            report.last(),
            Some(Effect::Submit(JobSpec::Report { .. }))
        ));
        assert_eq!(chat.record.reports, 1);
    }

    #[test]
    fn admin_commands_are_for_admins_only() {
        let (mut user, now) = chat(policy());
        let effects = text(&mut user, 1, "/health", now);
        assert!(matches!(effects[1], Effect::Warn(_)), "{effects:?}");
        assert_eq!(
            replied(&effects).unwrap().1,
            commands::unknown_text("health")
        );
        assert!(!effects.iter().any(|e| matches!(e, Effect::Admin(_))));

        let (mut admin, now) = chat_of(policy(), true);
        let effects = text(&mut admin, 1, "/admin_stats", now);
        assert_eq!(effects.last(), Some(&Effect::Admin("admin_stats".into())));
        // An admin's photos go first.
        let effects = photo(&mut admin, 2, now);
        assert!(matches!(
            effects.last(),
            Some(Effect::CheckPhoto { priority: 200, .. })
        ));
    }
}
