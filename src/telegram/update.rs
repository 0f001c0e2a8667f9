//! Incoming updates, kept raw until the router needs them typed.
//!
//! Intake only needs an update's id to confirm it and store it, so it keeps
//! the JSON as Telegram sent it. Typed parsing happens later and may fail
//! for one update (an unknown kind, a field of the wrong type) without
//! affecting the others.

use frankenstein::updates::Update;
use serde_json::Value;

/// An update as received: its id and its JSON body.
#[derive(Debug, Clone)]
pub struct RawUpdate {
    pub update_id: i64,
    /// Shared: an update passes through several actors, and cloning a
    /// JSON tree for each would cost more than handling it.
    pub body: std::sync::Arc<Value>,
    /// When this process received it, for update-to-reply latency.
    pub received: std::time::Instant,
}

impl RawUpdate {
    /// Takes the id out of a received JSON value; `None` if it has none.
    pub fn from_value(body: Value) -> Option<RawUpdate> {
        let update_id = body.get("update_id")?.as_i64()?;
        Some(RawUpdate {
            update_id,
            body: std::sync::Arc::new(body),
            received: std::time::Instant::now(),
        })
    }

    /// The typed update, or why it could not be read.
    pub fn parse(&self) -> Result<Update, serde_json::Error> {
        serde::Deserialize::deserialize(&*self.body)
    }

    /// The chat the update belongs to, read without parsing the rest: the
    /// key its session is found by. `None` for updates outside any chat
    /// (inline queries, polls) and for malformed ones.
    pub fn chat_id(&self) -> Option<i64> {
        let content = self.body.get(self.kind())?;
        let id = |v: &Value| v.get("id").and_then(Value::as_i64);
        content
            .get("chat")
            .and_then(id)
            .or_else(|| {
                content
                    .get("message")
                    .and_then(|m| m.get("chat"))
                    .and_then(id)
            })
            .or_else(|| content.get("from").and_then(id))
            .or_else(|| content.get("user").and_then(id))
    }

    /// The update's kind: the name of its one field besides `update_id`.
    pub fn kind(&self) -> &str {
        self.body
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "update_id"))
            .map_or("empty", |k| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_known_and_tolerates_unknown() {
        let known = RawUpdate::from_value(json!({
            "update_id": 10,
            "message": {"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "hi",
                        "some_future_field": {"x": 1}}
        }))
        .unwrap();
        assert_eq!(known.kind(), "message");
        assert!(known.parse().is_ok());

        let unknown =
            RawUpdate::from_value(json!({"update_id": 11, "brand_new_kind": {}})).unwrap();
        assert_eq!(unknown.update_id, 11);
        assert!(unknown.parse().is_err());

        assert_eq!(known.chat_id(), Some(5));
        assert_eq!(unknown.chat_id(), None);
        let callback = RawUpdate::from_value(json!({"update_id": 12, "callback_query": {
            "id": "q", "from": {"id": 9}, "message": {"chat": {"id": -100}}}}))
        .unwrap();
        assert_eq!(callback.chat_id(), Some(-100));
        let broken =
            RawUpdate::from_value(json!({"update_id": 13, "message": {"chat": 5}})).unwrap();
        assert_eq!(broken.chat_id(), None);

        assert!(RawUpdate::from_value(json!({"message": {}})).is_none());
        assert!(RawUpdate::from_value(json!("text")).is_none());
    }
}
