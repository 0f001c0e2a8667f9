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
//! Backends differ in how they end a body. Most send it chunked; some
//! (HTTP/1.0-style servers, Python's `http.server`, Werkzeug's development
//! server, some proxies) send neither `Content-Length` nor chunked encoding
//! and close the connection at the end, which RFC 9112 §6.3 allows. The
//! client (reqwest, on hyper) reads such a body to the close; whether the
//! answer was complete is still judged by `[DONE]` or `finish_reason`.
//!
//! A stream is given `AI_FIRST_TOKEN_TIMEOUT` for its first event and
//! `AI_STREAM_IDLE_TIMEOUT` between events (SSE comments, the keep-alive
//! pings some servers send, do not count): a backend that stalls fails the
//! attempt, which the pool retries, rather than keep the user waiting for
//! the whole request timeout.
//!
//! Retries, limits and the breaker are the pool's business, not this file's.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
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
    /// For a whole non-streamed answer, and for the answer's head.
    pub timeout: Duration,
    /// From the request to a stream's first event.
    pub first_token_timeout: Duration,
    /// Between two events of a stream.
    pub idle_timeout: Duration,
}

impl Backend {
    /// The completions URL: `{url}/chat/completions`, with `/v1` added to a
    /// URL that names only a host (`http://localhost:8000`), and a trailing
    /// slash ignored.
    pub fn completions_url(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let path_start = base.find("://").map_or(0, |i| i + 3).min(base.len());
        let has_path = base[path_start..].contains('/');
        if has_path {
            format!("{base}/chat/completions")
        } else {
            format!("{base}/v1/chat/completions")
        }
    }
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

/// How long to wait before trying again, as the backend asked:
/// `retry-after-ms` (milliseconds, OpenAI and Azure send it), or
/// `Retry-After` as seconds or as an HTTP date. At most an hour.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let bounded = |secs: f64| {
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return bounded(ms / 1000.0);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return bounded(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

/// Makes one call; streamed pieces go to `progress`. Answers the full text.
pub async fn complete(
    http: &reqwest::Client,
    backend: &Backend,
    messages: &[ChatMessage],
    progress: Option<&UnboundedSender<Progress>>,
) -> Result<String, AiError> {
    let started = Instant::now();
    let mut request = http
        .post(backend.completions_url())
        .header("Accept", "text/event-stream, application/json");
    if !backend.api_key.is_empty() {
        request = request.bearer_auth(&backend.api_key);
    }
    let body = Request {
        model: &backend.model,
        messages,
        stream: backend.stream,
        max_tokens: backend.max_tokens,
    };
    let head_timeout = if backend.stream {
        backend.first_token_timeout.min(backend.timeout)
    } else {
        backend.timeout
    };
    let sent = tokio::time::timeout(head_timeout, request.json(&body).send()).await;
    let mut response = match sent {
        Err(_) => return Err(AiError::Timeout(head_timeout)),
        Ok(Err(err)) if err.is_timeout() => return Err(AiError::Timeout(head_timeout)),
        Ok(Err(err)) => return Err(AiError::Connect(error_chain(&err))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let body = read_all(response, backend.timeout)
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
        let body = read_all(response, backend.timeout).await?;
        let text = parse_completion(&body)?;
        if let Some(progress) = progress {
            let _ = progress.send(Progress::Delta(text.clone()));
        }
        return Ok(text);
    }
    let mut events = EventReader::default();
    let mut answer = String::new();
    let mut finished = false;
    // The deadline for the next event: the first has its own.
    let mut deadline = started + backend.first_token_timeout;
    let idle = backend.idle_timeout;
    // Pieces go to `progress` once nothing more is already there to read:
    // what arrived together is shown together, and pieces that arrive
    // with the end of the answer are not previewed at all, since the
    // final text follows at once.
    let mut arrived = String::new();
    loop {
        let item = match response.chunk().now_or_never() {
            Some(item) => item,
            None => {
                if !arrived.is_empty()
                    && let Some(progress) = progress
                {
                    let _ = progress.send(Progress::Delta(std::mem::take(&mut arrived)));
                }
                let wait = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, response.chunk()).await {
                    Err(_) => {
                        let limit = if answer.is_empty() && !events.seen_any() {
                            backend.first_token_timeout
                        } else {
                            idle
                        };
                        return Err(truncated_or(answer, AiError::Timeout(limit)));
                    }
                    Ok(item) => item,
                }
            }
        };
        let chunk = match item {
            Ok(None) => break,
            Err(err) => {
                return Err(truncated_or(answer, AiError::Connect(error_chain(&err))));
            }
            Ok(Some(chunk)) => chunk,
        };
        let datas = events.push(&chunk);
        if !datas.is_empty() {
            deadline = Instant::now() + idle;
        }
        for data in datas {
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
    for data in events.finish() {
        if data.trim() == "[DONE]" {
            finished = true;
        }
    }
    if finished {
        Ok(answer)
    } else {
        Err(AiError::Truncated { partial: answer })
    }
}

/// An error with its causes, which reqwest keeps apart ("error sending
/// request" says little without "connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn truncated_or(partial: String, error: AiError) -> AiError {
    if partial.is_empty() {
        error
    } else {
        AiError::Truncated { partial }
    }
}

/// The longest body read whole: an error or a non-streamed completion.
const MAX_BODY: usize = 8 << 20;

async fn read_all(mut response: reqwest::Response, timeout: Duration) -> Result<Bytes, AiError> {
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| AiError::Malformed(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(AiError::Malformed(format!(
                    "the body is over {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(AiError::Timeout(timeout)))
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

/// Splits a server-sent event stream into the data of each event, as the
/// HTML standard's event-stream format has it: lines end with CRLF, LF or a
/// lone CR; a blank line ends an event; `data:` lines are joined with LF;
/// comments (`: ping`) and the `event:`, `id:` and `retry:` fields are read
/// and put aside. Bytes may be split anywhere, inside a line ending or a
/// UTF-8 character: a line is decoded only once it is whole.
#[derive(Default)]
pub struct EventReader {
    /// The start of a line not yet ended.
    line: Vec<u8>,
    /// The last byte was a CR: an LF right after it ends nothing more.
    after_cr: bool,
    /// The data lines of the event being read.
    data: Option<String>,
    /// Whether any line at all has arrived.
    seen: bool,
}

impl EventReader {
    /// Adds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => self.end_line(&mut events),
                _ => self.line.push(byte),
            }
        }
        events
    }

    /// The end of the stream: an event not ended by a blank line is
    /// dispatched all the same (a server that closes right after its last
    /// `data:` line still said it).
    pub fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            events.push(data);
        }
        events
    }

    /// Whether any line has arrived, comments included.
    pub fn seen_any(&self) -> bool {
        self.seen
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        self.seen = true;
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            // An event with no data (or only empty data) is no event.
            if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
                events.push(data);
            }
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        if field == "data" {
            let data = self.data.get_or_insert_with(String::new);
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value);
        }
        // "" (a comment), "event", "id", "retry" and unknown fields: nothing
        // the answer needs.
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
    fn line_ends_of_every_kind_end_events() {
        let mut reader = EventReader::default();
        assert_eq!(reader.push(b"data: a\r\rdata: b\r"), vec!["a"]);
        // The CR ended the line; an LF right after it is part of that end.
        assert_eq!(reader.push(b"\n\r\n"), vec!["b"]);
        assert_eq!(
            reader.push(b"event: x\nid: 2\ndata:\n\n"),
            Vec::<String>::new()
        );
        assert_eq!(reader.push(b"data: last"), Vec::<String>::new());
        assert_eq!(reader.finish(), vec!["last"]);
        assert!(reader.seen_any());
    }

    #[test]
    fn base_urls_with_or_without_v1_and_slash() {
        let url = |base: &str| {
            Backend {
                url: base.into(),
                api_key: String::new(),
                model: String::new(),
                max_tokens: 1,
                stream: true,
                timeout: Duration::from_secs(1),
                first_token_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            }
            .completions_url()
        };
        for base in [
            "http://h:8000",
            "http://h:8000/",
            "http://h:8000/v1",
            "http://h:8000/v1/",
        ] {
            assert_eq!(url(base), "http://h:8000/v1/chat/completions", "{base}");
        }
        assert_eq!(
            url("https://x.openai.azure.com/openai/v1/"),
            "https://x.openai.azure.com/openai/v1/chat/completions"
        );
    }

    #[test]
    fn retry_after_as_milliseconds_seconds_or_a_date() {
        use reqwest::header::{HeaderName, HeaderValue};
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2.5")]), now),
            Some(Duration::from_millis(2500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
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
