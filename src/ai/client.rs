//! One call to an OpenAI-compatible chat-completions endpoint.
//!
//! `POST {AI_API_URL}/chat/completions` with `stream: true`, read as
//! server-sent events: each `data:` event is a chunk whose
//! `choices[0].delta.content` is the next piece of the answer. A backend that
//! answers with plain JSON instead (some do, whatever `stream` says) is read
//! as one completion. An answer counts as complete only when the stream says
//! so (`[DONE]` or a `finish_reason`); a stream that stalls, breaks off or
//! just ends is reported as truncated, with what arrived, and never passed
//! off as a full answer.
//!
//! Retries, limits and the breaker are the pool's business, not this file's.

use std::time::Duration;

use awc::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a streaming call reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The next piece of the answer.
    Delta(String),
    /// The attempt failed and another starts: forget what came so far.
    Restart,
}

/// Why a call produced no complete answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AiError {
    #[error("the AI backend answered {code}: {message}")]
    Status {
        code: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the AI backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the AI backend: {0}")]
    Connect(String),
    #[error("the AI backend sent a malformed answer: {0}")]
    Malformed(String),
    #[error("the answer broke off after {} characters", partial.chars().count())]
    Truncated { partial: String },
    #[error("the request was cancelled")]
    Cancelled,
    #[error("the assistant is busy")]
    Busy,
    #[error("the AI backend is failing; not trying again for {0:?}")]
    Unavailable(Duration),
}

impl AiError {
    /// Whether another attempt may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            AiError::Status { code, .. } => *code == 429 || *code == 408 || *code >= 500,
            AiError::Timeout(_)
            | AiError::Connect(_)
            | AiError::Malformed(_)
            | AiError::Truncated { .. } => true,
            AiError::Cancelled | AiError::Busy | AiError::Unavailable(_) => false,
        }
    }

    /// Whether it says something about the backend's health (the breaker
    /// counts these); a cancelled or refused call does not.
    pub fn is_backend_failure(&self) -> bool {
        match self {
            AiError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            AiError::Cancelled | AiError::Busy | AiError::Unavailable(_) => false,
            _ => true,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AiError::Status { .. } => "status",
            AiError::Timeout(_) => "timeout",
            AiError::Connect(_) => "connect",
            AiError::Malformed(_) => "malformed",
            AiError::Truncated { .. } => "truncated",
            AiError::Cancelled => "cancelled",
            AiError::Busy => "busy",
            AiError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where the backend is and how to call it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub url: String,
    pub api_key: String,
    pub model: String,
    pub max_tokens: u32,
    pub stream: bool,
    pub timeout: Duration,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    max_tokens: u32,
}

/// One event of a streamed completion, as far as the answer goes; the rest
/// of what backends put in it is skipped unread.
#[derive(Deserialize)]
struct StreamEvent {
    choices: Option<Vec<StreamChoice>>,
    error: Option<Value>,
}

/// Lenient where backends differ: a field of an unexpected shape is read
/// as absent, as it was when events were read as untyped JSON.
#[derive(Deserialize)]
struct StreamChoice {
    delta: Option<StreamDelta>,
    finish_reason: Option<Value>,
}

#[derive(Deserialize)]
struct StreamDelta {
    content: Option<Value>,
}

/// Makes one call; streamed pieces go to `progress`. Answers the full text.
pub async fn complete(
    http: &awc::Client,
    backend: &Backend,
    messages: &[ChatMessage],
    progress: Option<&UnboundedSender<Progress>>,
) -> Result<String, AiError> {
    let url = format!("{}/chat/completions", backend.url.trim_end_matches('/'));
    let mut request = http
        .post(url)
        .timeout(backend.timeout)
        .insert_header(("Accept", "text/event-stream, application/json"));
    if !backend.api_key.is_empty() {
        request = request.bearer_auth(&backend.api_key);
    }
    let body = Request {
        model: &backend.model,
        messages,
        stream: backend.stream,
        max_tokens: backend.max_tokens,
    };
    let mut response = request.send_json(&body).await.map_err(|err| match err {
        awc::error::SendRequestError::Timeout => AiError::Timeout(backend.timeout),
        other => AiError::Connect(other.to_string()),
    })?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
        let body = read_all(&mut response, backend.timeout)
            .await
            .unwrap_or_default();
        return Err(AiError::Status {
            code: status.as_u16(),
            message: error_message(status, &body),
            retry_after,
        });
    }
    let event_stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !event_stream {
        let body = read_all(&mut response, backend.timeout).await?;
        let text = parse_completion(&body)?;
        if let Some(progress) = progress {
            let _ = progress.send(Progress::Delta(text.clone()));
        }
        return Ok(text);
    }
    let mut events = EventReader::default();
    let mut answer = String::new();
    let mut finished = false;
    // Pieces go to `progress` once nothing more is already there to read:
    // what arrived together is shown together, and pieces that arrive
    // with the end of the answer are not previewed at all, since the
    // final text follows at once.
    let mut arrived = String::new();
    loop {
        let item = match response.next().now_or_never() {
            Some(item) => item,
            None => {
                if !arrived.is_empty()
                    && let Some(progress) = progress
                {
                    let _ = progress.send(Progress::Delta(std::mem::take(&mut arrived)));
                }
                match tokio::time::timeout(backend.timeout, response.next()).await {
                    Err(_) => return Err(truncated_or(answer, AiError::Timeout(backend.timeout))),
                    Ok(item) => item,
                }
            }
        };
        let chunk = match item {
            None => break,
            Some(Err(err)) => {
                return Err(truncated_or(answer, AiError::Connect(err.to_string())));
            }
            Some(Ok(chunk)) => chunk,
        };
        for data in events.push(&chunk) {
            if data.trim() == "[DONE]" {
                finished = true;
                continue;
            }
            let event: StreamEvent = serde_json::from_str(&data)
                .map_err(|e| AiError::Malformed(format!("an event is not JSON: {e}")))?;
            if let Some(error) = event.error {
                let message = error["message"].as_str().unwrap_or("error in stream");
                return Err(truncated_or(answer, AiError::Malformed(message.into())));
            }
            let Some(choice) = event.choices.into_iter().flatten().next() else {
                continue;
            };
            if let Some(Value::String(piece)) = choice.delta.and_then(|d| d.content) {
                answer.push_str(&piece);
                if !finished {
                    arrived.push_str(&piece);
                }
            }
            if choice.finish_reason.as_ref().is_some_and(Value::is_string) {
                finished = true;
                arrived.clear();
            }
        }
    }
    if finished {
        Ok(answer)
    } else {
        Err(AiError::Truncated { partial: answer })
    }
}

fn truncated_or(partial: String, error: AiError) -> AiError {
    if partial.is_empty() {
        error
    } else {
        AiError::Truncated { partial }
    }
}

async fn read_all(
    response: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
    >,
    timeout: Duration,
) -> Result<Bytes, AiError> {
    match tokio::time::timeout(timeout, response.body().limit(8 << 20)).await {
        Err(_) => Err(AiError::Timeout(timeout)),
        Ok(Err(err)) => Err(AiError::Malformed(err.to_string())),
        Ok(Ok(body)) => Ok(body),
    }
}

/// The `error.message` of an OpenAI error body, or the status.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string())
}

/// The text of a non-streamed completion.
pub fn parse_completion(body: &[u8]) -> Result<String, AiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AiError::Malformed(format!("the body is not JSON: {e}")))?;
    let choice = &value["choices"][0];
    match choice["message"]["content"].as_str() {
        Some(text) if choice["finish_reason"].is_string() || choice["finish_reason"].is_null() => {
            Ok(text.to_string())
        }
        _ => Err(AiError::Malformed("no choices[0].message.content".into())),
    }
}

/// Splits a server-sent event stream into the data of each event.
#[derive(Default)]
pub struct EventReader {
    buffer: BytesMut,
}

impl EventReader {
    /// Adds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.buffer) {
            let event = self.buffer.split_to(end + separator);
            let text = String::from_utf8_lossy(&event[..end]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        events
    }
}

fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks() {
        let mut reader = EventReader::default();
        assert!(reader.push(b"data: {\"a\"").is_empty());
        assert_eq!(reader.push(b":1}\n\ndata: [DONE]\n"), vec!["{\"a\":1}"]);
        assert_eq!(reader.push(b"\n"), vec!["[DONE]"]);
        assert_eq!(
            reader.push(b": comment\r\ndata: x\r\ndata: y\r\n\r\n"),
            vec!["x\ny"]
        );
    }

    #[test]
    fn completions_are_read_or_refused() {
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_completion(ok).unwrap(), "hi");
        assert!(matches!(
            parse_completion(b"<html>"),
            Err(AiError::Malformed(_))
        ));
        assert!(matches!(
            parse_completion(br#"{"choices":[]}"#),
            Err(AiError::Malformed(_))
        ));
    }

    #[test]
    fn which_errors_are_retried() {
        let status = |code| AiError::Status {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(500).is_retriable() && status(429).is_retriable());
        assert!(!status(400).is_retriable() && !status(401).is_retriable());
        assert!(!AiError::Cancelled.is_retriable());
        assert!(
            AiError::Truncated {
                partial: "x".into()
            }
            .is_retriable()
        );
    }
}
