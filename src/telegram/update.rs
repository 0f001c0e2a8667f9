//! Incoming updates, kept raw until their session needs them typed.
//!
//! Intake only needs an update's id (to confirm and journal it), its kind
//! and its chat (to route it), so it reads just those from the JSON text as
//! Telegram sent it and keeps the text: the journal stores it as it came,
//! and the session parses it into a typed update. Typed parsing may fail
//! for one update (an unknown kind, a field of the wrong type) without
//! affecting the others.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use frankenstein::updates::UpdateContent;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An update as received: its id, kind and chat, and its JSON text.
#[derive(Debug, Clone)]
pub struct RawUpdate {
    pub update_id: i64,
    /// The JSON text, shared: an update passes through several actors.
    pub body: Arc<str>,
    kind: Box<str>,
    /// Where the content (the value of the kind's field) is in `body`.
    content: Range<usize>,
    chat_id: Option<i64>,
    /// When this process received it, for update-to-reply latency.
    pub received: Instant,
}

impl RawUpdate {
    /// Reads an update's JSON text; `None` if it is not an object with a
    /// numeric `update_id`.
    pub fn from_json(text: &str) -> Option<RawUpdate> {
        let header: Header = serde_json::from_str(text).ok()?;
        // The content was borrowed from `text`: its place there.
        let content = header
            .content
            .and_then(|c| {
                let start = (c.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
                let range = start..start + c.len();
                (text.get(range.clone()) == Some(c)).then_some(range)
            })
            .unwrap_or(0..0);
        Some(RawUpdate {
            update_id: header.update_id?,
            body: Arc::from(text),
            kind: header
                .kind
                .map_or_else(|| "empty".into(), String::into_boxed_str),
            content,
            chat_id: header.chat_id,
            received: Instant::now(),
        })
    }

    /// The typed content of the update, or why it could not be read.
    ///
    /// Only the content's own text is parsed: a message is read straight
    /// into its type, where reading the whole update would first buffer all
    /// of it in a generic tree (the update type flattens its content).
    pub fn parse(&self) -> Result<UpdateContent, serde_json::Error> {
        let content = self
            .body
            .get(self.content.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| serde_json::Error::custom(format!("no content in {}", self.kind)))?;
        match self.kind() {
            "message" => serde_json::from_str(content).map(UpdateContent::Message),
            kind => {
                let key = serde_json::to_string(kind)?;
                serde_json::from_str(&format!("{{{key}:{content}}}"))
            }
        }
    }

    /// The chat the update belongs to: the key its session is found by.
    /// `None` for updates outside any chat (inline queries, polls) and for
    /// malformed ones.
    pub fn chat_id(&self) -> Option<i64> {
        self.chat_id
    }

    /// The update's kind: the name of its one field besides `update_id`.
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

/// What routing needs of an update, read in one pass without building the
/// rest: its id, the name of its content field, and the chat in it.
#[derive(Default)]
struct Header<'a> {
    update_id: Option<i64>,
    kind: Option<String>,
    content: Option<&'a str>,
    chat_id: Option<i64>,
}

/// The content of an update, as far as finding its chat goes: its `chat`,
/// or the chat of the `message` it is about (a button press), or the user
/// it is from. Kept raw, so that a field of the wrong shape only means "no
/// chat" instead of an unreadable update.
#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    chat: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    from: Option<&'a RawValue>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Id {
    id: i64,
}

#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow)]
    chat: Option<&'a RawValue>,
}

fn id_of(raw: Option<&RawValue>) -> Option<i64> {
    serde_json::from_str::<Id>(raw?.get()).ok().map(|i| i.id)
}

impl Content<'_> {
    fn chat_id(&self) -> Option<i64> {
        id_of(self.chat)
            .or_else(|| {
                self.message
                    .and_then(|m| serde_json::from_str::<InMessage>(m.get()).ok())
                    .and_then(|m| id_of(m.chat))
            })
            .or_else(|| id_of(self.from))
            .or_else(|| id_of(self.user))
    }
}

impl<'de> Deserialize<'de> for Header<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Header<'de>, D::Error> {
        struct HeaderVisitor;

        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an update object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Header<'de>, M::Error> {
                let mut header = Header::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "update_id" {
                        header.update_id = Some(map.next_value()?);
                    } else if header.kind.is_none() {
                        let content: Option<&'de RawValue> = map.next_value()?;
                        header.chat_id = content
                            .and_then(|c| serde_json::from_str::<Content>(c.get()).ok())
                            .and_then(|c| c.chat_id());
                        header.content = content.map(RawValue::get);
                        header.kind = Some(key.into_owned());
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(header)
            }
        }

        deserializer.deserialize_map(HeaderVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_text(value: serde_json::Value) -> String {
        value.to_string()
    }

    #[test]
    fn reads_known_and_tolerates_unknown() {
        let known = RawUpdate::from_json(&json_text(json!({
            "update_id": 10,
            "message": {"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "hi",
                        "some_future_field": {"x": 1}}
        })))
        .unwrap();
        assert_eq!(known.kind(), "message");
        match known.parse() {
            Ok(UpdateContent::Message(message)) => assert_eq!(message.text.as_deref(), Some("hi")),
            other => panic!("expected the message, got {other:?}"),
        }
        let stop = RawUpdate::from_json(&json_text(json!({
            "update_id": 15,
            "stopped_message_generation": {"chat": {"id": 5, "type": "private"}, "draft_id": 77}
        })))
        .unwrap();
        match stop.parse() {
            Ok(UpdateContent::StoppedMessageGeneration(stop)) => assert_eq!(stop.draft_id, 77),
            other => panic!("expected the stop, got {other:?}"),
        }
        let wrong_type = RawUpdate::from_json(&json_text(json!({
            "update_id": 16, "message": {"message_id": "one", "date": 0, "chat": {"id": 5, "type": "private"}}
        })))
        .unwrap();
        assert!(wrong_type.parse().is_err());

        let unknown =
            RawUpdate::from_json(&json_text(json!({"update_id": 11, "brand_new_kind": {}})))
                .unwrap();
        assert_eq!(unknown.update_id, 11);
        assert!(unknown.parse().is_err());

        assert_eq!(known.chat_id(), Some(5));
        assert_eq!(unknown.chat_id(), None);
        let callback =
            RawUpdate::from_json(&json_text(json!({"update_id": 12, "callback_query": {
            "id": "q", "from": {"id": 9}, "message": {"chat": {"id": -100}}}})))
            .unwrap();
        assert_eq!(callback.chat_id(), Some(-100));
        let broken =
            RawUpdate::from_json(&json_text(json!({"update_id": 13, "message": {"chat": 5}})))
                .unwrap();
        assert_eq!(broken.chat_id(), None);

        assert!(RawUpdate::from_json(&json_text(json!({"message": {}}))).is_none());
        assert!(RawUpdate::from_json(&json_text(json!("text"))).is_none());
        assert!(RawUpdate::from_json(r#"{"update_id": "14", "message": {}}"#).is_none());
        assert!(RawUpdate::from_json("{not json").is_none());
    }
}
