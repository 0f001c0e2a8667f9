//! Builders for the updates a test injects, in the Bot API's JSON shape.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn user(id: i64) -> Value {
    json!({
        "id": id,
        "is_bot": false,
        "first_name": format!("User{id}"),
        "username": format!("user{id}"),
        "language_code": "en",
    })
}

/// A chat as the fake describes it: negative ids are supergroups, the
/// others private chats with their user.
#[derive(Serialize)]
pub(crate) struct ChatJson {
    id: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
}

impl ChatJson {
    pub(crate) fn new(id: i64) -> ChatJson {
        let group = id < 0;
        ChatJson {
            id,
            kind: if group { "supergroup" } else { "private" },
            title: group.then(|| format!("Group {id}")),
            first_name: (!group).then(|| format!("User{id}")),
            username: (!group).then(|| format!("user{id}")),
        }
    }
}

pub(crate) fn chat(id: i64) -> Value {
    serde_json::to_value(ChatJson::new(id)).unwrap_or(Value::Null)
}

/// The entities Telegram attaches to a text: a leading `/command`.
fn entities(text: &str) -> Option<Value> {
    if !text.starts_with('/') {
        return None;
    }
    let command = text.split_whitespace().next().unwrap_or(text);
    let length: usize = command.encode_utf16().count();
    Some(json!([{"type": "bot_command", "offset": 0, "length": length}]))
}

/// A text message from `from` in `chat_id` (the same id for a private chat).
pub(crate) fn text_message(chat_id: i64, from: i64, message_id: i64, text: &str) -> Value {
    let mut message = json!({
        "message_id": message_id,
        "date": now_unix(),
        "chat": chat(chat_id),
        "from": user(from),
        "text": text,
    });
    if let Some(entities) = entities(text) {
        message["entities"] = entities;
    }
    json!({"message": message})
}

/// A photo message: Telegram sends several sizes of the same picture.
pub(crate) fn photo_message(
    chat_id: i64,
    from: i64,
    message_id: i64,
    file_id: &str,
    file_unique_id: &str,
    size: usize,
    caption: Option<&str>,
) -> Value {
    let mut message = json!({
        "message_id": message_id,
        "date": now_unix(),
        "chat": chat(chat_id),
        "from": user(from),
        "photo": [
            {"file_id": format!("{file_id}-thumb"), "file_unique_id": format!("{file_unique_id}-thumb"),
             "width": 90, "height": 90, "file_size": 1024},
            {"file_id": file_id, "file_unique_id": file_unique_id,
             "width": 1280, "height": 960, "file_size": size},
        ],
    });
    if let Some(caption) = caption {
        message["caption"] = Value::from(caption);
    }
    json!({"message": message})
}

/// A file as Telegram describes it in a document message.
pub(crate) struct DocumentFile<'a> {
    pub file_id: &'a str,
    pub file_unique_id: &'a str,
    pub size: usize,
    pub file_name: &'a str,
    pub mime_type: &'a str,
}

/// A file sent as a document.
pub(crate) fn document_message(
    chat_id: i64,
    from: i64,
    message_id: i64,
    file: DocumentFile<'_>,
) -> Value {
    json!({"message": {
        "message_id": message_id,
        "date": now_unix(),
        "chat": chat(chat_id),
        "from": user(from),
        "document": {"file_id": file.file_id, "file_unique_id": file.file_unique_id,
                     "file_name": file.file_name, "mime_type": file.mime_type, "file_size": file.size},
    }})
}

/// A press on an inline keyboard button under a bot message.
pub(crate) fn callback_query(from: i64, query_id: &str, message_id: i64, data: &str) -> Value {
    json!({"callback_query": {
        "id": query_id,
        "from": user(from),
        "chat_instance": format!("ci-{from}"),
        "data": data,
        "message": {
            "message_id": message_id,
            "date": now_unix(),
            "chat": chat(from),
            "text": "",
        },
    }})
}
