//! `actorbot sandbox`: the daemon, exactly as `run` starts it, against a
//! Telegram emulator in the same process, with a web chat to talk to it.
//!
//! Nobody should need a bot token, or a route to api.telegram.org, to see
//! what the bot does. The sandbox starts the Bot API emulator from
//! `actorbot-emulator` on a loopback port of its own, points the
//! configuration at it (a token of its own, `TELEGRAM_API_URL`), and runs the
//! daemon with every actor, the storage and the HTTP endpoint as usual. The
//! AI backend is `AI_API_URL` when the operator set one, otherwise the
//! emulator's offline stand-in, whose answers say plainly that they are not
//! a model's. Storage goes under `DATA_DIR/sandbox`, apart from a real
//! bot's.
//!
//! The web chat is a page of the daemon's own HTTP server (`/sandbox`, one
//! self-contained file) and a small JSON API under `/sandbox/api/` that the
//! page calls: what the emulator saw the bot send (messages with their
//! edits, drafts, chat actions, documents, the commands menu) and what the
//! simulated users send (texts, photos, button presses, a stop). The page
//! shows it as Telegram would; the emulator keeps speaking the real wire
//! formats to the daemon, flood limits included.
//!
//! The emulator's control API (the `/_fake/...` paths documented in
//! `emulator/src/telegram/server.rs`) is served under [`EMULATOR_PATH`] of
//! the same server, `http://HTTP_ADDR/sandbox/emulator`, printed at start:
//! a tool in another process, such as `actorbot loadtest --emulator URL`,
//! plays users through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use actorbot_emulator::openai::{FakeAi, FakeAiConfig, stand_in_answer};
use actorbot_emulator::telegram::{FakeState, FakeTelegram, FakeTelegramConfig, FloodLimits};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Config, Secret};

/// The token the emulator and the daemon share.
const TOKEN: &str = "100000001:SANDBOX-local-emulator";
/// How long the page's request for news is held when nothing happens.
const LONG_POLL: Duration = Duration::from_secs(20);
/// How long a chat action shows ("typing…"), as in Telegram's clients.
const ACTION_SHOWN: Duration = Duration::from_secs(5);
/// The largest photo the page may send.
const MAX_PHOTO: usize = 20 << 20;
/// Where the emulator's control API is served, on the daemon's server.
pub const EMULATOR_PATH: &str = "/sandbox/emulator";

/// A simulated user of the web chat.
#[derive(Debug, Clone, Serialize)]
struct User {
    id: i64,
    name: &'static str,
}

const USERS: [User; 3] = [
    User {
        id: 7_000_001,
        name: "Alice",
    },
    User {
        id: 7_000_002,
        name: "Bob",
    },
    User {
        id: 7_000_003,
        name: "Chen",
    },
];

/// The one group chat, in which every simulated user is a member.
const GROUP: i64 = -1_007_000_000;

/// What a simulated user sent, for the page to show beside the replies.
#[derive(Debug, Clone, Serialize)]
struct Sent {
    chat_id: i64,
    from: i64,
    text: String,
    at_ms: u64,
}

/// A running sandbox: the emulator, the AI stand-in if it runs, and what
/// the users sent.
pub struct Sandbox {
    tg: FakeTelegram,
    /// Kept for as long as the sandbox runs; the stand-in stops with it.
    _ai: Option<FakeAi>,
    started: Instant,
    sent: Mutex<Vec<Sent>>,
    /// Message ids for what the users send, apart from the emulator's own.
    next_message_id: std::sync::atomic::AtomicI64,
}

impl Sandbox {
    /// Starts the emulator (and the AI stand-in unless `AI_API_URL` was set
    /// by the operator) and points `config` at them.
    pub fn start(config: &mut Config, ai_url_set: bool) -> std::io::Result<Arc<Sandbox>> {
        let tg = FakeTelegram::start(FakeTelegramConfig {
            token: TOKEN.into(),
            flood_limits: Some(FloodLimits::telegram_default()),
            ..Default::default()
        })?;
        let ai = if ai_url_set {
            None
        } else {
            let ai = FakeAi::start(FakeAiConfig {
                latency: Duration::from_millis(400),
                word_delay: Duration::from_millis(60),
                answer: stand_in_answer,
                ..Default::default()
            })?;
            config.ai_api_url = ai.api_url();
            config.ai_api_key = Secret::new("");
            Some(ai)
        };
        config.bot_token = Secret::new(TOKEN);
        config.telegram_api_url = tg.api_url();
        config.webhook_url.clear();
        config.data_dir = config.data_dir.join("sandbox");
        Ok(Arc::new(Sandbox {
            tg,
            _ai: ai,
            started: Instant::now(),
            sent: Mutex::new(Vec::new()),
            next_message_id: std::sync::atomic::AtomicI64::new(1_000_000_000),
        }))
    }

    /// Whether the AI is the offline stand-in.
    pub fn offline_ai(&self) -> bool {
        self._ai.is_some()
    }

    /// The routes of the web chat, for [`crate::daemon::run_with`].
    pub fn routes(self: &Arc<Self>) -> crate::http::Extra {
        let data = web::Data::from(Arc::clone(self));
        let control = self.tg.control_api();
        Arc::new(move |cfg: &mut web::ServiceConfig| {
            cfg.service(web::scope(EMULATOR_PATH).configure(&control))
                .app_data(data.clone())
                .route("/sandbox", web::get().to(page))
                .route("/sandbox/api/state", web::get().to(state))
                .route("/sandbox/api/send", web::post().to(send))
                .service(
                    web::resource("/sandbox/api/photo")
                        .app_data(web::PayloadConfig::new(MAX_PHOTO))
                        .route(web::post().to(photo)),
                )
                .route("/sandbox/api/button", web::post().to(button))
                .route("/sandbox/api/stop", web::post().to(stop))
                .route("/sandbox/api/files/{message_id}", web::get().to(file));
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, chat_id: i64, from: i64, text: String) {
        let at_ms = self.millis(Instant::now());
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sent {
                chat_id,
                from,
                text,
                at_ms,
            });
    }

    /// Everything the page shows, at the emulator's `version` (its count of
    /// calls: any change the bot makes is a call).
    fn snapshot(&self, s: &FakeState) -> Value {
        let now = Instant::now();
        let mut chats: Vec<i64> = USERS.iter().map(|u| u.id).collect();
        chats.push(GROUP);
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut by_chat: HashMap<i64, Vec<Value>> = HashMap::new();
        for line in sent {
            by_chat.entry(line.chat_id).or_default().push(json!({
                "from": line.from, "text": line.text, "at_ms": line.at_ms, "mine": true,
            }));
        }
        for message in s.messages() {
            by_chat.entry(message.chat_id).or_default().push(json!({
                "message_id": message.message_id,
                "text": message.text,
                "entities": message.entities,
                "buttons": message.reply_markup.as_ref().and_then(|m| m.get("inline_keyboard")),
                "edits": message.edits,
                "method": message.method,
                "file": message.file.as_ref().map(|f| json!({
                    "name": f.file_name, "type": f.content_type, "size": f.size,
                    "url": format!("/sandbox/api/files/{}", message.message_id),
                })),
                "at_ms": self.millis(message.at),
            }));
        }
        let chats: Vec<Value> = chats
            .into_iter()
            .map(|chat_id| {
                let mut lines = by_chat.remove(&chat_id).unwrap_or_default();
                lines.sort_by_key(|l| l["at_ms"].as_u64().unwrap_or(0));
                let last_message = s
                    .messages()
                    .iter()
                    .filter(|m| m.chat_id == chat_id)
                    .map(|m| m.at)
                    .max();
                // A draft shows while it is newer than the last message.
                let draft = s
                    .drafts()
                    .iter()
                    .rev()
                    .find(|d| d.chat_id == chat_id)
                    .filter(|d| last_message.is_none_or(|m| d.at > m))
                    .map(|d| json!({"draft_id": d.draft_id, "text": d.text}));
                let action = s
                    .last_action(chat_id)
                    .filter(|(_, at)| {
                        now.saturating_duration_since(*at) < ACTION_SHOWN
                            && last_message.is_none_or(|m| *at > m)
                    })
                    .map(|(action, _)| action.to_string());
                json!({"chat_id": chat_id, "lines": lines, "draft": draft, "action": action})
            })
            .collect();
        json!({
            "version": s.calls().len(),
            "users": USERS,
            "group": {"chat_id": GROUP, "title": "Sandbox group"},
            "commands": s.bot_commands(),
            "chats": chats,
            "limits": {
                "rejected_429": s.rejected_429(),
                "unconfirmed_updates": s.unconfirmed(),
            },
            "offline_ai": self.offline_ai(),
        })
    }
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(include_str!("chat.html"))
}

#[derive(Deserialize)]
struct Since {
    version: Option<usize>,
}

/// `GET /sandbox/api/state?version=N`: the chats, once the emulator has seen
/// a call past `N` (or after [`LONG_POLL`]); at once without `version`.
async fn state(sandbox: web::Data<Sandbox>, since: web::Query<Since>) -> HttpResponse {
    if let Some(version) = since.version {
        // The answer comes either way; the wait only saves requests.
        let _ = sandbox
            .tg
            .wait_until(LONG_POLL, |s| s.calls().len() > version)
            .await;
    }
    let snapshot = sandbox.tg.read(|s| sandbox.snapshot(s));
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(snapshot)
}

#[derive(Deserialize)]
struct Say {
    chat_id: i64,
    from: i64,
    text: String,
    /// Answer only once the bot has replied: `"reply"` (a message, with no
    /// draft after it) or `"document"` (a message with a file).
    wait: Option<Awaited>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Awaited {
    Reply,
    Document,
}

/// How long a send with `wait` waits for the bot.
const REPLY_WAIT: Duration = Duration::from_secs(60);

impl Sandbox {
    /// Waits until the bot has answered in `chat_id` after `since`, as
    /// `awaited` says; answers what it sent meanwhile: messages, and drafts
    /// of a streamed answer.
    async fn wait_for_reply(&self, chat_id: i64, since: Instant, awaited: Awaited) -> Value {
        let done = |s: &FakeState| {
            let after: Vec<_> = s
                .messages()
                .iter()
                .filter(|m| m.chat_id == chat_id && m.at > since)
                .collect();
            let last = after.iter().map(|m| m.at).max();
            let drafting = s
                .drafts()
                .iter()
                .any(|d| d.chat_id == chat_id && d.at > since && last.is_none_or(|l| d.at > l));
            match awaited {
                Awaited::Reply => last.is_some() && !drafting,
                Awaited::Document => after.iter().any(|m| m.file.is_some()),
            }
        };
        let answered = self.tg.wait_until(REPLY_WAIT, done).await.is_ok();
        self.tg.read(|s| {
            let messages = s
                .messages()
                .iter()
                .filter(|m| m.chat_id == chat_id && m.at > since)
                .count();
            let drafts = s
                .drafts()
                .iter()
                .filter(|d| d.chat_id == chat_id && d.at > since)
                .count();
            json!({"answered": answered, "messages": messages, "drafts": drafts})
        })
    }
}

fn known(chat_id: i64, from: i64) -> bool {
    USERS.iter().any(|u| u.id == from) && (chat_id == from || chat_id == GROUP)
}

/// `POST /sandbox/api/send {"chat_id", "from", "text"}`: a user writes.
async fn send(sandbox: web::Data<Sandbox>, say: web::Json<Say>) -> HttpResponse {
    let Say {
        chat_id,
        from,
        text,
        wait,
    } = say.into_inner();
    if !known(chat_id, from) || text.trim().is_empty() {
        return HttpResponse::BadRequest()
            .json(json!({"error": "unknown chat or user, or no text"}));
    }
    let message_id = sandbox
        .next_message_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let since = Instant::now();
    let update_id = sandbox
        .tg
        .inject_raw(text_update(chat_id, from, message_id, &text));
    sandbox.record(chat_id, from, text);
    let mut answer = json!({"update_id": update_id});
    if let Some(awaited) = wait {
        answer["reply"] = sandbox.wait_for_reply(chat_id, since, awaited).await;
    }
    HttpResponse::Ok().json(answer)
}

/// A text message from a simulated user, as Telegram sends it: the user's
/// name, the chat, and a `bot_command` entity for a leading command.
fn text_update(chat_id: i64, from: i64, message_id: i64, text: &str) -> Value {
    let name = USERS
        .iter()
        .find(|u| u.id == from)
        .map_or("User", |u| u.name);
    let user = json!({"id": from, "is_bot": false, "first_name": name,
        "username": name.to_lowercase(), "language_code": "en"});
    let chat = if chat_id == GROUP {
        json!({"id": chat_id, "type": "supergroup", "title": "Sandbox group"})
    } else {
        json!({"id": chat_id, "type": "private", "first_name": name,
            "username": name.to_lowercase()})
    };
    let date = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut message = json!({"message_id": message_id, "date": date, "chat": chat,
        "from": user, "text": text});
    if text.starts_with('/') {
        let command = text.split(char::is_whitespace).next().unwrap_or(text);
        message["entities"] = json!([{"offset": 0, "length": command.encode_utf16().count(),
            "type": "bot_command"}]);
    }
    // The emulator gives it its update_id.
    json!({"message": message})
}

#[derive(Deserialize)]
struct PhotoFrom {
    from: i64,
    caption: Option<String>,
    /// Send the built-in sample photo instead of the body.
    sample: Option<bool>,
    wait: Option<Awaited>,
}

/// A photo for users with none at hand: a 1600×1200 JPEG of colour
/// gradients, made once.
fn sample_photo() -> &'static [u8] {
    static SAMPLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let (width, height) = (1600u32, 1200u32);
        let pixels = image::RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            image::Rgb([
                (255.0 * fx) as u8,
                (255.0 * fy) as u8,
                (255.0 * (1.0 - fx * fy)) as u8,
            ])
        });
        let mut bytes = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85);
        if let Err(err) = pixels.write_with_encoder(encoder) {
            log::warn!("sandbox: the sample photo could not be made: {err}");
        }
        bytes
    })
}

/// `POST /sandbox/api/photo?from=ID` with the image as the body (or
/// `&sample=true` for the built-in one): a user sends a photo in their
/// private chat.
async fn photo(
    sandbox: web::Data<Sandbox>,
    query: web::Query<PhotoFrom>,
    body: web::Bytes,
) -> HttpResponse {
    let PhotoFrom {
        from,
        caption,
        sample,
        wait,
    } = query.into_inner();
    let bytes = if sample == Some(true) {
        sample_photo().to_vec()
    } else {
        body.to_vec()
    };
    if !known(from, from) || bytes.is_empty() || bytes.len() > MAX_PHOTO {
        return HttpResponse::BadRequest()
            .json(json!({"error": "unknown user, or no photo, or one over 20 MB"}));
    }
    let shown = match &caption {
        Some(caption) => format!("[photo, {} KB] {caption}", bytes.len() / 1024),
        None => format!("[photo, {} KB]", bytes.len() / 1024),
    };
    let since = Instant::now();
    let update_id = sandbox.tg.inject_photo(from, bytes, caption.as_deref());
    sandbox.record(from, from, shown);
    let mut answer = json!({"update_id": update_id});
    if let Some(awaited) = wait {
        answer["reply"] = sandbox.wait_for_reply(from, since, awaited).await;
    }
    HttpResponse::Ok().json(answer)
}

#[derive(Deserialize)]
struct Press {
    from: i64,
    message_id: i64,
    data: String,
}

/// `POST /sandbox/api/button`: a user presses an inline button.
async fn button(sandbox: web::Data<Sandbox>, press: web::Json<Press>) -> HttpResponse {
    if !known(press.from, press.from) {
        return HttpResponse::BadRequest().json(json!({"error": "unknown user"}));
    }
    let update_id = sandbox
        .tg
        .inject_callback(press.from, press.message_id, &press.data);
    HttpResponse::Ok().json(json!({"update_id": update_id}))
}

#[derive(Deserialize)]
struct Stop {
    chat_id: i64,
    draft_id: i64,
}

/// `POST /sandbox/api/stop`: the stop button under a draft.
async fn stop(sandbox: web::Data<Sandbox>, stop: web::Json<Stop>) -> HttpResponse {
    let update_id = sandbox.tg.inject_stop(stop.chat_id, stop.draft_id);
    HttpResponse::Ok().json(json!({"update_id": update_id}))
}

/// `GET /sandbox/api/files/{message_id}`: a document or photo the bot sent.
async fn file(sandbox: web::Data<Sandbox>, message_id: web::Path<i64>) -> HttpResponse {
    let message_id = message_id.into_inner();
    let found = sandbox.tg.read(|s| {
        s.messages()
            .iter()
            .find(|m| m.message_id == message_id)
            .and_then(|m| m.file.clone())
    });
    match found {
        Some(file) => HttpResponse::Ok()
            .content_type(
                file.content_type
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )
            .insert_header((
                "Content-Disposition",
                format!(
                    "inline; filename=\"{}\"",
                    file.file_name
                        .unwrap_or_else(|| "file".into())
                        .replace('"', "")
                ),
            ))
            .body(file.bytes),
        None => HttpResponse::NotFound().json(json!({"error": "no such file"})),
    }
}
