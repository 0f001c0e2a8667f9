//! The HTTP side of the fake: Bot API methods at `/bot<token>/<method>`,
//! file downloads at `/file/bot<token>/<path>`, a control API for tools at
//! `/_fake/...`, and webhook delivery to the bot.
//!
//! Parameters arrive the ways Telegram accepts them (query string, JSON,
//! urlencoded form, multipart), and answers keep Telegram's shape:
//! `{"ok":true,"result":...}` or `{"ok":false,"error_code":...,
//! "description":...,"parameters":{...}}`.
//!
//! # The control API
//!
//! What a tool in another process needs to play users and read what the
//! bot did (the load test's `--emulator URL` drives a running emulator with
//! nothing else). Paths are relative to the emulator's base URL: the
//! `TELEGRAM_API_URL` the bot is given, or `http://HTTP_ADDR/sandbox/emulator`
//! for the one inside `actorbot sandbox`. It takes no token.
//!
//! - `POST /_fake/updates` with `{"chat_id": N, "text": "...", "from": ID}`
//!   (`from` defaults to the chat): a text message; a leading `/command`
//!   gets its `bot_command` entity. Any other JSON object is queued as a
//!   raw update. Answers `{"update_id": N}`.
//! - `POST /_fake/photo?chat_id=N[&from=ID][&caption=TEXT]` with the image
//!   as the body: a photo message; the bot can fetch the file with getFile.
//!   Answers `{"update_id": N}`.
//! - `GET /_fake/messages[?chat_id=N]`: every message the bot sent (to that
//!   chat), as it stands now: `method`, `text` (or caption), `file`
//!   (name, type and size of an upload), `edits`, ...
//! - `GET /_fake/chat?chat_id=N[&messages=M][&drafts=D][&timeout=S]`: the
//!   chat's counts, `{"messages": count, "drafts": count, "new": [...]}`,
//!   where `new` holds the messages after the first `M` (none without `M`).
//!   With `timeout` (seconds, at most 60) it first waits until the chat has
//!   more than `M` messages or more than `D` drafts (sendMessageDraft
//!   calls), whichever is given: a long poll for the bot's reply.
//! - `GET /_fake/stats`: counters over all chats: `messages`, `drafts`,
//!   `calls`, `rejected_429`, `http2_calls` (Bot API calls that came over
//!   HTTP/2), `unconfirmed` (updates queued and not yet confirmed by the
//!   bot), `confirmed_offset`, `next_update_id`, `webhook_deliveries`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::state::{
    BotCommand, ChatNews, Draft, Failure, FakeState, SentMessage, UploadedFile, WebhookInfo,
};
use super::updates;
use crate::wait::Watched;
use tokio::sync::Notify;

/// What every handler shares.
pub(crate) struct Shared {
    pub token: String,
    pub bot_id: i64,
    pub state: Watched<FakeState>,
    /// Wakes the webhook deliverer when a webhook is set. Without one it
    /// waits here rather than on every change of the state, which would
    /// cost the fake a thread switch per request.
    pub webhook_set: Notify,
}

type Params = Map<String, Value>;

/// A failed call: HTTP status, description and optional `parameters`.
struct ApiError {
    code: u16,
    description: String,
    parameters: Option<Value>,
}

impl ApiError {
    fn new(code: u16, description: impl Into<String>) -> Self {
        ApiError {
            code,
            description: description.into(),
            parameters: None,
        }
    }

    fn bad_request(description: &str) -> Self {
        ApiError::new(400, format!("Bad Request: {description}"))
    }
}

/// A successful call's `result`: a JSON tree, or JSON text already
/// written (updates kept as text, a sent message serialized from its
/// struct), which the answer takes as it is.
enum Answer {
    Json(Value),
    Text(String),
}

impl From<Value> for Answer {
    fn from(value: Value) -> Self {
        Answer::Json(value)
    }
}

type ApiResult = Result<Answer, ApiError>;

/// The largest photo the control API takes, Telegram's download limit.
const MAX_PHOTO: usize = 20 << 20;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    configure_control(cfg);
    cfg.default_service(web::to(bot_api));
}

/// The control API's routes (see the module docs); every path is static,
/// so the Bot API calls that pass them are not slowed by a pattern match.
pub(crate) fn configure_control(cfg: &mut web::ServiceConfig) {
    cfg.route("/_fake/updates", web::post().to(control_inject))
        .service(
            web::resource("/_fake/photo")
                .app_data(web::PayloadConfig::new(MAX_PHOTO))
                .route(web::post().to(control_photo)),
        )
        .route("/_fake/messages", web::get().to(control_messages))
        .route("/_fake/chat", web::get().to(control_chat))
        .route("/_fake/stats", web::get().to(control_stats));
}

/// `/bot<token>/<method>` and `/file/bot<token>/<path>`, matched by hand:
/// patterns with segments are matched by a regex engine, which was a tenth
/// of the fake's time in a load test, time the daemon could have had.
async fn bot_api(
    request: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let path = request.path();
    if let Some((token, file_path)) = path
        .strip_prefix("/file/bot")
        .and_then(|rest| rest.split_once('/'))
    {
        if request.method() != actix_web::http::Method::GET {
            return respond(Err(ApiError::new(405, "Method Not Allowed")));
        }
        return download(token, file_path, &shared);
    }
    match path
        .strip_prefix("/bot")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((token, method)) if !method.is_empty() && !method.contains('/') => {
            api(token, method, &request, payload, &shared).await
        }
        _ => respond(Err(ApiError::new(404, "Not Found"))),
    }
}

fn respond(result: ApiResult) -> HttpResponse {
    match result {
        Ok(Answer::Json(result)) => HttpResponse::Ok().json(json!({"ok": true, "result": result})),
        Ok(Answer::Text(result)) => {
            let mut body = String::with_capacity(result.len() + 22);
            body.push_str("{\"ok\":true,\"result\":");
            body.push_str(&result);
            body.push('}');
            HttpResponse::Ok()
                .content_type(ContentType::json())
                .body(body)
        }
        Err(error) => {
            let mut body = json!({
                "ok": false,
                "error_code": error.code,
                "description": error.description,
            });
            if let Some(parameters) = error.parameters {
                body["parameters"] = parameters;
            }
            HttpResponse::build(StatusCode::from_u16(error.code).unwrap_or(StatusCode::BAD_REQUEST))
                .json(body)
        }
    }
}

async fn api(
    token: &str,
    method: &str,
    request: &HttpRequest,
    payload: web::Payload,
    shared: &Shared,
) -> HttpResponse {
    let at = Instant::now();
    if token != shared.token {
        return respond(Err(ApiError::new(401, "Unauthorized")));
    }
    // As proxies in front of a local Bot API server do: a body must say
    // its length.
    let chunked = request.headers().get("transfer-encoding").is_some()
        || (request.headers().get("content-length").is_none()
            && request.headers().get("content-type").is_some());
    if chunked && shared.state.read(|s| s.require_content_length) {
        return HttpResponse::LengthRequired().body("411 Length Required");
    }
    let (params, files) = match read_params(request, payload).await {
        Ok(parsed) => parsed,
        Err(message) => return respond(Err(ApiError::bad_request(&message))),
    };
    let chat_id = int(&params, "chat_id");
    let http2 = request.version() == actix_web::http::Version::HTTP_2;
    let failure = shared.state.update(|s| s.take_failure(method, chat_id));
    let scripted = match failure {
        Some(Failure::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            None
        }
        Some(Failure::TooManyRequests { retry_after }) => Some(ApiError {
            code: 429,
            description: format!("Too Many Requests: retry after {retry_after}"),
            parameters: Some(json!({"retry_after": retry_after})),
        }),
        Some(Failure::Status { code, description }) => Some(ApiError::new(code, description)),
        Some(Failure::MigrateToChat { chat_id }) => Some(ApiError {
            code: 400,
            description: "Bad Request: group chat was upgraded to a supergroup chat".into(),
            parameters: Some(json!({"migrate_to_chat_id": chat_id})),
        }),
        None => None,
    };
    // A call is recorded in the same update that applies it, so a test
    // woken by a new message also sees the call that sent it.
    let result = match (scripted, method.eq_ignore_ascii_case("getUpdates")) {
        (None, false) => {
            let result = shared.state.update(|s| {
                let result = call(s, shared.bot_id, method, &params, files, at);
                s.record_call(method, chat_id, status_of(&result), http2, at);
                result
            });
            if method.eq_ignore_ascii_case("setWebhook") {
                shared.webhook_set.notify_one();
            }
            return respond(result);
        }
        (None, true) => get_updates(shared, &params).await,
        (Some(error), _) => Err(error),
    };
    shared
        .state
        .update(|s| s.record_call(method, chat_id, status_of(&result), http2, at));
    respond(result)
}

fn status_of(result: &ApiResult) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.code,
    }
}

/// Methods that post to a chat count against the flood limits.
fn is_flood_limited(method: &str) -> bool {
    [
        "sendMessage",
        "sendDocument",
        "sendPhoto",
        "editMessageText",
        "sendMediaGroup",
        "copyMessage",
        "forwardMessage",
    ]
    .iter()
    .any(|m| m.eq_ignore_ascii_case(method))
}

fn call(
    s: &mut FakeState,
    bot_id: i64,
    method: &str,
    params: &Params,
    files: Vec<UploadedFile>,
    at: Instant,
) -> ApiResult {
    let chat_id = int(params, "chat_id");
    if let (true, Some(flood), Some(chat_id)) =
        (is_flood_limited(method), s.flood.as_mut(), chat_id)
        && let Err(retry_after) = flood.admit(chat_id, at)
    {
        return Err(ApiError {
            code: 429,
            description: format!("Too Many Requests: retry after {retry_after}"),
            parameters: Some(json!({"retry_after": retry_after})),
        });
    }
    match method.to_ascii_lowercase().as_str() {
        "getme" if s.minimal_get_me => Ok(json!({
            "id": bot_id, "first_name": "Fake actorbot", "username": "fake_actorbot",
        })
        .into()),
        "getme" => Ok(json!({
            "id": bot_id, "is_bot": true, "first_name": "Fake actorbot",
            "username": "fake_actorbot", "can_join_groups": true,
            "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false,
            "has_topics_enabled": false, "allows_users_to_create_topics": false,
        })
        .into()),
        "setwebhook" => set_webhook(s, params),
        "deletewebhook" => {
            if boolean(params, "drop_pending_updates") {
                s.queue.clear();
            }
            s.webhook = None;
            Ok(Value::Bool(true).into())
        }
        "getwebhookinfo" => Ok(json!({
            "url": s.webhook.as_ref().map(|w| w.url.clone()).unwrap_or_default(),
            "has_custom_certificate": false,
            "pending_update_count": s.queue.len(),
            "max_connections": s.webhook.as_ref().and_then(|w| w.max_connections),
        })
        .into()),
        "setmycommands" => {
            let commands = json_field(params, "commands")
                .and_then(|v| v.as_array().cloned())
                .ok_or_else(|| ApiError::bad_request("parameter \"commands\" is required"))?;
            s.commands = commands
                .iter()
                .map(|c| BotCommand {
                    command: c["command"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            Ok(Value::Bool(true).into())
        }
        "getmycommands" => Ok(json!(
            s.commands
                .iter()
                .map(|c| json!({"command": c.command, "description": c.description}))
                .collect::<Vec<_>>()
        )
        .into()),
        "sendmessage" => {
            let chat_id = require_chat(params)?;
            let text = string(params, "text").unwrap_or_default();
            if text.trim().is_empty() {
                return Err(ApiError::bad_request("message text is empty"));
            }
            if text.encode_utf16().count() > 4096 {
                return Err(ApiError::bad_request("message is too long"));
            }
            check_formatting(params, &text)?;
            new_message(s, bot_id, chat_id, "sendMessage", text, params, None, at)
        }
        "editmessagetext" => {
            let chat_id = require_chat(params)?;
            let message_id = int(params, "message_id")
                .ok_or_else(|| ApiError::bad_request("message identifier is not specified"))?;
            let text = string(params, "text").unwrap_or_default();
            if text.trim().is_empty() {
                return Err(ApiError::bad_request("message text is empty"));
            }
            if text.encode_utf16().count() > 4096 {
                return Err(ApiError::bad_request("MESSAGE_TOO_LONG"));
            }
            check_formatting(params, &text)?;
            let message = s
                .messages
                .iter_mut()
                .find(|m| m.chat_id == chat_id && m.message_id == message_id)
                .ok_or_else(|| ApiError::bad_request("message to edit not found"))?;
            if message.text == text && json_field(params, "reply_markup") == message.reply_markup {
                return Err(ApiError::bad_request(
                    "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
                ));
            }
            message.text = text;
            message.parse_mode = string(params, "parse_mode");
            message.entities = json_field(params, "entities");
            message.reply_markup = json_field(params, "reply_markup");
            message.edits += 1;
            message_json(bot_id, message)
        }
        "sendchataction" => {
            let chat_id = require_chat(params)?;
            let action =
                string(params, "action").ok_or_else(|| ApiError::bad_request("action is empty"))?;
            s.actions.push((chat_id, action, at));
            Ok(Value::Bool(true).into())
        }
        "sendmessagedraft" => {
            let chat_id = require_chat(params)?;
            if chat_id < 0 {
                return Err(ApiError::bad_request("TEXTDRAFT_PEER_INVALID"));
            }
            let draft_id = int(params, "draft_id").unwrap_or(0);
            if draft_id == 0 {
                return Err(ApiError::bad_request("draft_id must be non-zero"));
            }
            let text = string(params, "text").unwrap_or_default();
            if text.encode_utf16().count() > 4096 {
                return Err(ApiError::bad_request("message is too long"));
            }
            check_formatting(params, &text)?;
            s.record_draft(Draft {
                chat_id,
                draft_id,
                text,
                at,
            });
            Ok(Value::Bool(true).into())
        }
        "senddocument" | "sendphoto" => {
            let chat_id = require_chat(params)?;
            let field = if method.eq_ignore_ascii_case("sendPhoto") {
                "photo"
            } else {
                "document"
            };
            let file = files.into_iter().find(|f| f.field == field);
            if file.is_none() && string(params, field).is_none() {
                return Err(ApiError::bad_request(&format!(
                    "there is no {field} in the request"
                )));
            }
            if file.as_ref().is_some_and(|f| f.size == 0) {
                return Err(ApiError::bad_request("file must be non-empty"));
            }
            let caption = string(params, "caption").unwrap_or_default();
            let name = if field == "photo" {
                "sendPhoto"
            } else {
                "sendDocument"
            };
            new_message(s, bot_id, chat_id, name, caption, params, file, at)
        }
        "getfile" => {
            let file_id = string(params, "file_id")
                .ok_or_else(|| ApiError::bad_request("file_id is empty"))?;
            let file = s
                .files
                .get(&file_id)
                .ok_or_else(|| ApiError::bad_request("invalid file_id"))?;
            if s.local_dir.is_none() && file.bytes.len() > 20 * 1024 * 1024 {
                return Err(ApiError::bad_request("file is too big"));
            }
            Ok(json!({
                "file_id": file_id,
                "file_unique_id": file.file_unique_id,
                "file_size": file.bytes.len(),
                "file_path": file.file_path,
            })
            .into())
        }
        "answercallbackquery" => {
            let id = string(params, "callback_query_id")
                .ok_or_else(|| ApiError::bad_request("query_id is empty"))?;
            s.callback_answers.push((id, string(params, "text")));
            Ok(Value::Bool(true).into())
        }
        "deletemessage" => Ok(Value::Bool(true).into()),
        _ => Err(ApiError::new(404, "Not Found")),
    }
}

/// Records a message the bot sent and answers it as Telegram does.
#[allow(clippy::too_many_arguments)]
fn new_message(
    s: &mut FakeState,
    bot_id: i64,
    chat_id: i64,
    method: &str,
    text: String,
    params: &Params,
    file: Option<UploadedFile>,
    at: Instant,
) -> ApiResult {
    let message = SentMessage {
        message_id: s.next_message_id,
        chat_id,
        method: method.to_string(),
        text,
        parse_mode: string(params, "parse_mode"),
        entities: json_field(params, "entities"),
        reply_markup: json_field(params, "reply_markup"),
        file,
        edits: 0,
        at,
    };
    s.next_message_id += 1;
    let answer = message_json(bot_id, &message);
    s.record_message(message);
    answer
}

/// A sent file as a message describes it.
#[derive(Serialize)]
struct FileJson<'a> {
    file_id: String,
    file_unique_id: String,
    file_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'a str>,
}

/// The `Message` Telegram answers a send or an edit with.
#[derive(Serialize)]
struct MessageJson<'a> {
    message_id: i64,
    date: i64,
    chat: updates::ChatJson,
    from: BotJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edit_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    photo: Option<[FileJson<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<FileJson<'a>>,
}

#[derive(Serialize)]
struct BotJson {
    id: i64,
    is_bot: bool,
    first_name: &'static str,
    username: &'static str,
}

fn message_json(bot_id: i64, message: &SentMessage) -> ApiResult {
    let text = (!message.text.is_empty()).then_some(message.text.as_str());
    let is_text = message.method == "sendMessage";
    let described = |named: bool| {
        message.file.as_ref().map(|file| FileJson {
            file_id: format!("BQAC-sent-{}", message.message_id),
            file_unique_id: format!("AgAD-sent-{}", message.message_id),
            file_size: file.size,
            file_name: named.then_some(file.file_name.as_deref()).flatten(),
            mime_type: named.then_some(file.content_type.as_deref()).flatten(),
        })
    };
    let is_photo = message.method == "sendPhoto";
    let json = MessageJson {
        message_id: message.message_id,
        date: updates::now_unix(),
        chat: updates::ChatJson::new(message.chat_id),
        from: BotJson {
            id: bot_id,
            is_bot: true,
            first_name: "Fake actorbot",
            username: "fake_actorbot",
        },
        text: if is_text { text } else { None },
        caption: if is_text { None } else { text },
        edit_date: (message.edits > 0).then(updates::now_unix),
        photo: if is_photo {
            described(false).map(|f| [f])
        } else {
            None
        },
        document: if is_photo { None } else { described(true) },
    };
    serde_json::to_string(&json)
        .map(Answer::Text)
        .map_err(|err| ApiError::new(500, format!("Internal Server Error: {err}")))
}

fn set_webhook(s: &mut FakeState, params: &Params) -> ApiResult {
    let url = string(params, "url").unwrap_or_default();
    if url.is_empty() {
        s.webhook = None;
        return Ok(Value::Bool(true).into());
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::bad_request("bad webhook: invalid URL"));
    }
    let max_connections = int(params, "max_connections").map(|n| n as u64);
    if max_connections.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(ApiError::bad_request(
            "bad webhook: invalid max_connections",
        ));
    }
    if let Some(secret) = string(params, "secret_token") {
        let valid = (1..=256).contains(&secret.len())
            && secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ApiError::bad_request("bad webhook: invalid secret token"));
        }
    }
    if boolean(params, "drop_pending_updates") {
        s.queue.clear();
    }
    s.webhook = Some(WebhookInfo {
        url,
        secret_token: string(params, "secret_token"),
        max_connections,
        allowed_updates: string_list(params, "allowed_updates"),
    });
    if params.contains_key("allowed_updates") {
        s.allowed_updates = string_list(params, "allowed_updates");
    }
    Ok(Value::Bool(true).into())
}

/// Long-polled getUpdates with Telegram's semantics: `offset` confirms
/// every update below it; a newer call ends an older one with 409.
async fn get_updates(shared: &Shared, params: &Params) -> ApiResult {
    let offset = int(params, "offset").unwrap_or(0);
    let limit = int(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = int(params, "timeout").unwrap_or(0).max(0) as u64;
    // Kept for later updates; an absent parameter keeps the last setting.
    let allowed = params
        .contains_key("allowed_updates")
        .then(|| string_list(params, "allowed_updates"));
    let sloppy = shared.state.read(|s| s.sloppy_polling);
    // An emulator that ignores both: every update it has, at once.
    let (offset, timeout) = if sloppy {
        if offset > 0 {
            shared
                .state
                .update(|s| s.confirmed_offset = s.confirmed_offset.max(offset));
        }
        (0, 0)
    } else {
        (offset, timeout)
    };
    let generation = shared.state.update(|s| {
        if s.webhook.is_some() {
            return Err(ApiError::new(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            ));
        }
        if offset > 0 {
            while s.queue.front().is_some_and(|(id, _)| *id < offset) {
                s.queue.pop_front();
            }
            s.confirmed_offset = s.confirmed_offset.max(offset);
        } else if offset < 0 {
            let keep = offset.unsigned_abs() as usize;
            while s.queue.len() > keep {
                s.queue.pop_front();
            }
        }
        if let Some(allowed) = allowed {
            s.allowed_updates = allowed;
        }
        s.poll_generation += 1;
        Ok(s.poll_generation)
    })?;
    // Updates are kept as JSON text: the answer is written, not built.
    let take = |s: &FakeState| -> Option<String> {
        let mut taken = s
            .queue
            .iter()
            .filter(|(id, _)| *id >= offset)
            .take(limit)
            .peekable();
        taken.peek()?;
        let mut text = String::with_capacity(limit * 400);
        text.push('[');
        for (n, (_, update)) in taken.enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(update.get());
        }
        text.push(']');
        Some(text)
    };
    let none = || Answer::Text("[]".into());
    let ready = shared.state.read(take);
    if ready.is_some() || timeout == 0 {
        return Ok(ready.map_or_else(none, Answer::Text));
    }
    let _ = shared
        .state
        .until("updates", Duration::from_secs(timeout), |s| {
            s.poll_generation != generation || s.queue.iter().any(|(id, _)| *id >= offset)
        })
        .await;
    shared.state.read(|s| {
        if s.poll_generation != generation {
            Err(ApiError::new(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            ))
        } else {
            Ok(take(s).map_or_else(none, Answer::Text))
        }
    })
}

fn download(token: &str, file_path: &str, shared: &Shared) -> HttpResponse {
    if token != shared.token {
        return respond(Err(ApiError::new(401, "Unauthorized")));
    }
    let bytes = shared.state.read(|s| {
        s.files
            .values()
            .find(|f| f.file_path == file_path)
            .map(|f| f.bytes.clone())
    });
    match bytes {
        Some(bytes) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        None => respond(Err(ApiError::new(404, "Not Found"))),
    }
}

/// Reads the parameters from the query string and the body, whichever
/// encoding the body has; files in a multipart body come back separately.
async fn read_params(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<(Params, Vec<UploadedFile>), String> {
    let mut params = Params::new();
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map_err(|e| format!("can't parse query string: {e}"))?;
    for (key, value) in query.into_inner() {
        params.insert(key, Value::String(value));
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut files = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = actix_multipart::Multipart::new(request.headers(), payload);
        while let Some(field) = multipart.next().await {
            let mut field = field.map_err(|e| format!("can't parse multipart body: {e}"))?;
            let disposition = field.content_disposition().cloned();
            let name = disposition
                .as_ref()
                .and_then(|d| d.get_name())
                .unwrap_or_default()
                .to_string();
            let file_name = disposition
                .as_ref()
                .and_then(|d| d.get_filename())
                .map(str::to_string);
            let content_type = field.content_type().map(|m| m.to_string());
            let mut bytes = Vec::new();
            while let Some(chunk) = field.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| format!("broken multipart: {e}"))?);
            }
            if file_name.is_some() {
                files.push(UploadedFile {
                    field: name,
                    file_name,
                    content_type,
                    size: bytes.len(),
                    bytes,
                });
            } else {
                params.insert(
                    name,
                    Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                );
            }
        }
        return Ok((params, files));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        body.extend_from_slice(&chunk.map_err(|e| format!("can't read body: {e}"))?);
    }
    if body.is_empty() {
        return Ok((params, files));
    }
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(object)) => params.extend(object),
            _ => return Err("can't parse JSON object".into()),
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_string())?;
        let form = web::Query::<HashMap<String, String>>::from_query(text)
            .map_err(|e| format!("can't parse form: {e}"))?;
        for (key, value) in form.into_inner() {
            params.insert(key, Value::String(value));
        }
    }
    Ok((params, files))
}

fn int(params: &Params, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn string(params: &Params, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn boolean(params: &Params, key: &str) -> bool {
    match params.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}

/// A structured parameter: JSON in a JSON body, a JSON string in a form.
fn json_field(params: &Params, key: &str) -> Option<Value> {
    match params.get(key)? {
        Value::String(s) => serde_json::from_str(s).ok(),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

fn string_list(params: &Params, key: &str) -> Vec<String> {
    json_field(params, key)
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Checks a text's formatting the way Telegram does: entities must lie
/// within the text, and a parse mode must parse.
fn check_formatting(params: &Params, text: &str) -> Result<(), ApiError> {
    let len = text.encode_utf16().count() as i64;
    if let Some(entities) = json_field(params, "entities").and_then(|v| v.as_array().cloned()) {
        for entity in entities {
            let offset = entity["offset"].as_i64().unwrap_or(-1);
            let length = entity["length"].as_i64().unwrap_or(-1);
            if offset < 0 || length <= 0 || offset + length > len {
                return Err(ApiError::bad_request(&format!(
                    "can't parse entities: entity at offset {offset} with length {length} is outside a text of {len} characters"
                )));
            }
        }
    }
    match string(params, "parse_mode").as_deref() {
        Some("MarkdownV2") => {
            let mut escaped = false;
            for (i, c) in text.chars().enumerate() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if ">#+-=|{}.!".contains(c) {
                    // Characters that are never markup must be escaped.
                    return Err(ApiError::bad_request(&format!(
                        "can't parse entities: Character '{c}' is reserved and must be escaped with the preceding '\\' (at {i})"
                    )));
                }
            }
            Ok(())
        }
        Some("HTML") => {
            let opened = text.matches('<').count();
            let closed = text.matches('>').count();
            if opened != closed {
                return Err(ApiError::bad_request(
                    "can't parse entities: Unclosed start tag",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn require_chat(params: &Params) -> Result<i64, ApiError> {
    int(params, "chat_id").ok_or_else(|| ApiError::bad_request("chat_id is empty"))
}

/// Delivers queued updates to the webhook, as Telegram does: POST with the
/// secret header, up to `max_connections` at once but one at a time per
/// chat (a chat's next update goes once its last was answered), retried
/// with backoff until the bot answers 2xx.
pub(crate) async fn deliver_webhooks(shared: Arc<Shared>) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut backoff = Duration::from_millis(50);
    // Mixed into the choice of target, so that a delivery retried after a
    // failure may go to another instance, as a load balancer does.
    let mut round: i64 = 0;
    loop {
        round += 1;
        if shared.state.read(|s| s.webhook.is_none()) {
            shared.webhook_set.notified().await;
            continue;
        }
        let _ = shared
            .state
            .until("webhook work", Duration::from_secs(3600), |s| {
                s.webhook.is_none() || !s.queue.is_empty()
            })
            .await;
        let Some((hook, targets, batch)) = shared.state.read(|s| {
            let hook = s.webhook.clone()?;
            let n = hook.max_connections.unwrap_or(40) as usize;
            let mut chats = std::collections::HashSet::new();
            let batch = s
                .queue
                .iter()
                .filter(|(_, update)| chat_of(update).is_none_or(|chat| chats.insert(chat)))
                .take(n)
                .cloned()
                .collect::<Vec<_>>();
            Some((hook, s.webhook_targets.clone(), batch))
        }) else {
            continue;
        };
        let posts = batch.into_iter().map(|(id, update)| {
            let url = if targets.is_empty() {
                &hook.url
            } else {
                &targets[spread(id ^ (round << 40)) % targets.len()]
            };
            let mut request = client.post(url);
            if let Some(secret) = &hook.secret_token {
                request =
                    request.insert_header(("X-Telegram-Bot-Api-Secret-Token", secret.as_str()));
            }
            async move {
                match request.send_json(&update).await {
                    Ok(response) if response.status().is_success() => Some(id),
                    _ => None,
                }
            }
        });
        let delivered: Vec<i64> = futures_util::future::join_all(posts)
            .await
            .into_iter()
            .flatten()
            .collect();
        let all = shared.state.update(|s| {
            let before = s.queue.len();
            s.queue.retain(|(id, _)| !delivered.contains(id));
            s.webhook_deliveries += delivered.len();
            if let Some(max) = delivered.iter().max() {
                s.confirmed_offset = s.confirmed_offset.max(max + 1);
            }
            before - s.queue.len()
        });
        if all == 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// The chat an update belongs to, if it names one.
fn chat_of(update: &serde_json::value::RawValue) -> Option<i64> {
    let update: Value = serde_json::from_str(update.get()).ok()?;
    update.as_object()?.values().find_map(|content| {
        content
            .get("chat")
            .or_else(|| content.get("message").and_then(|m| m.get("chat")))
            .and_then(|chat| chat.get("id"))
            .and_then(Value::as_i64)
    })
}

/// A well-mixed number from an update id (splitmix64): which instance
/// behind the load balancer gets it.
fn spread(id: i64) -> usize {
    let mut z = (id as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as usize
}

/// `POST /_fake/updates`: a raw update (its `update_id` is assigned), or
/// `{"text": ..., "chat_id": ..., "from": ...}` for a text message.
async fn control_inject(body: web::Json<Value>, shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let body = body.into_inner();
    let update = match (
        body.get("text").and_then(Value::as_str),
        int_value(&body, "chat_id"),
    ) {
        (Some(text), Some(chat_id)) => {
            let from = int_value(&body, "from").unwrap_or(chat_id);
            shared.state.update(|s| s.push_text(chat_id, from, text))
        }
        _ => shared.state.update(|s| s.push_update(body)),
    };
    HttpResponse::Ok().json(json!({"update_id": update}))
}

fn int_value(value: &Value, key: &str) -> Option<i64> {
    value.get(key).and_then(Value::as_i64)
}

/// `GET /_fake/messages?chat_id=N`: what the bot sent to a chat.
async fn control_messages(
    query: web::Query<HashMap<String, String>>,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let chat_id = query.get("chat_id").and_then(|c| c.parse::<i64>().ok());
    let messages = shared.state.read(|s| match chat_id {
        Some(chat_id) => s.messages_to(chat_id),
        None => s.messages.clone(),
    });
    HttpResponse::Ok().json(messages)
}

#[derive(Deserialize)]
struct PhotoQuery {
    chat_id: i64,
    from: Option<i64>,
    caption: Option<String>,
}

/// `POST /_fake/photo?chat_id=N[&from=ID][&caption=TEXT]`, the image as
/// the body: a photo message.
async fn control_photo(
    query: web::Query<PhotoQuery>,
    body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let PhotoQuery {
        chat_id,
        from,
        caption,
    } = query.into_inner();
    if body.is_empty() {
        return HttpResponse::BadRequest().json(json!({"error": "the body holds no image"}));
    }
    let from = from.unwrap_or(chat_id);
    let update = shared
        .state
        .update(|s| s.push_photo(chat_id, from, body.to_vec(), caption.as_deref()));
    HttpResponse::Ok().json(json!({"update_id": update}))
}

#[derive(Deserialize)]
struct ChatQuery {
    chat_id: i64,
    messages: Option<usize>,
    drafts: Option<usize>,
    timeout: Option<f64>,
}

/// The longest a `GET /_fake/chat` waits.
const LONGEST_CHAT_WAIT: Duration = Duration::from_secs(60);

/// `GET /_fake/chat?chat_id=N[&messages=M][&drafts=D][&timeout=S]`: the
/// chat's counts and the messages after the first `M`, once it has more
/// than `M` messages or `D` drafts (or `S` seconds have passed).
async fn control_chat(
    query: web::Query<ChatQuery>,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let ChatQuery {
        chat_id,
        messages,
        drafts,
        timeout,
    } = query.into_inner();
    let timeout = timeout
        .filter(|t| t.is_finite() && *t > 0.0)
        .map_or(Duration::ZERO, |t| {
            Duration::from_secs_f64(t).min(LONGEST_CHAT_WAIT)
        });
    let news = chat_news(&shared.state, chat_id, messages, drafts, timeout).await;
    HttpResponse::Ok().json(news)
}

/// See [`super::FakeTelegram::chat_news`].
pub(crate) async fn chat_news(
    state: &Watched<FakeState>,
    chat_id: i64,
    messages: Option<usize>,
    drafts: Option<usize>,
    timeout: Duration,
) -> ChatNews {
    if !timeout.is_zero() && (messages.is_some() || drafts.is_some()) {
        // The answer comes either way: the counts say whether it changed.
        // Woken by news in this chat only, not by every change.
        let changed = |s: &FakeState| {
            let (sent, drafted) = s.chat_counts(chat_id);
            messages.is_some_and(|n| sent > n) || drafts.is_some_and(|n| drafted > n)
        };
        let news = state.quietly(|s| s.news_of(chat_id));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = news.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if state.read(changed) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        state.quietly(|s| s.release_news(chat_id, news));
    }
    state.read(|s| s.chat_news(chat_id, messages))
}

/// `GET /_fake/stats`: counters for load tools.
async fn control_stats(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let stats = shared.state.read(|s| {
        json!({
            "messages": s.messages.len(),
            "drafts": s.drafts.len(),
            "calls": s.calls.len(),
            "rejected_429": s.rejected_429,
            "http2_calls": s.http2_calls,
            "unconfirmed": s.queue.len(),
            "confirmed_offset": s.confirmed_offset,
            "next_update_id": s.next_update_id,
            "webhook_deliveries": s.webhook_deliveries,
        })
    });
    HttpResponse::Ok().json(stats)
}
