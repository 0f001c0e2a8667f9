//! A fake OpenAI-compatible chat-completions server.
//!
//! `POST /v1/chat/completions` answers as OpenAI does: server-sent events
//! (`chat.completion.chunk`s, one per word, a last chunk with
//! `finish_reason`, then `data: [DONE]`) when the request asks for a stream,
//! one `chat.completion` JSON otherwise. Errors use OpenAI's
//! `{"error": {...}}` shape; a 429 carries `Retry-After`.
//!
//! The default answer shows the context it was given, so a test can check
//! that a conversation's history was sent: `Answer N to: QUESTION. I have
//! seen K earlier messages.`, where N counts the user messages and K the
//! user and assistant messages before the question (the system prompt not
//! counted). Tests can script answers and failures: statuses, 429s, hangs,
//! streams that stall, break off or end without `[DONE]`, malformed bodies.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::serve::{Running, Served, serve};
use crate::wait::{WaitTimeout, Watched};

/// How to start the fake.
#[derive(Clone, Debug)]
pub struct FakeAiConfig {
    pub addr: SocketAddr,
    pub workers: usize,
    /// Time before the first word (or the whole non-streamed answer).
    pub latency: Duration,
    /// Time between streamed words.
    pub word_delay: Duration,
    /// When set, requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// False: answer one JSON completion even when a stream is asked for.
    pub streaming: bool,
    /// How an answer is made from the conversation, when no test scripted
    /// one: [`default_answer`] unless set ([`stand_in_answer`] for the
    /// sandbox).
    pub answer: fn(&[(String, String)]) -> String,
}

impl Default for FakeAiConfig {
    fn default() -> Self {
        FakeAiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 2,
            latency: Duration::ZERO,
            word_delay: Duration::ZERO,
            api_key: None,
            streaming: true,
            answer: default_answer,
        }
    }
}

/// A scripted misbehaviour.
#[derive(Clone, Debug)]
pub enum AiFailure {
    /// An error status in OpenAI's shape.
    Status { code: u16, message: String },
    /// 429 with `Retry-After`.
    TooManyRequests { retry_after_secs: u64 },
    /// Never answers.
    Hang,
    /// Streams this many words, then nothing more, the connection open.
    StallAfter { words: usize },
    /// Streams this many words, then drops the connection.
    BreakAfter { words: usize },
    /// Streams this many words, then ends without `finish_reason` or `[DONE]`.
    NoDone { words: usize },
    /// 200 with a body that is not JSON.
    Malformed,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct AiRequest {
    pub model: String,
    /// `(role, content)` pairs.
    pub messages: Vec<(String, String)>,
    pub stream: bool,
    pub authorization: Option<String>,
    pub at: Instant,
}

impl AiRequest {
    /// The last user message.
    pub fn question(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map_or("", |(_, c)| c.as_str())
    }
}

/// Everything the fake knows.
#[derive(Default)]
pub struct AiState {
    pub requests: Vec<AiRequest>,
    pub completed: usize,
    pub cancelled: usize,
    pub in_flight: usize,
    pub max_in_flight: usize,
    latency: Duration,
    word_delay: Duration,
    answers: VecDeque<String>,
    failures: VecDeque<AiFailure>,
    failing: Option<AiFailure>,
}

struct Shared {
    api_key: Option<String>,
    streaming: bool,
    answer: fn(&[(String, String)]) -> String,
    state: Watched<AiState>,
}

/// A running fake; clones share it, and it stops with the last one.
#[derive(Clone)]
pub struct FakeAi {
    inner: Arc<Inner>,
}

type Inner = Running<Shared>;

impl FakeAi {
    pub fn start(config: FakeAiConfig) -> std::io::Result<FakeAi> {
        let shared = Arc::new(Shared {
            api_key: config.api_key.clone(),
            streaming: config.streaming,
            answer: config.answer,
            state: Watched::new(AiState {
                latency: config.latency,
                word_delay: config.word_delay,
                ..AiState::default()
            }),
        });
        let data = web::Data::new(shared.clone());
        let Served { addr, system } = serve(
            "fake-ai",
            config.addr,
            config.workers,
            None,
            None,
            move |cfg: &mut web::ServiceConfig| {
                cfg.app_data(data.clone())
                    .route("/v1/chat/completions", web::post().to(completions))
                    .route("/v1/models", web::get().to(models));
            },
            None,
        )?;
        Ok(FakeAi {
            inner: Arc::new(Inner {
                shared,
                addr,
                system,
            }),
        })
    }

    /// The value for `AI_API_URL`.
    pub fn api_url(&self) -> String {
        format!("http://{}/v1", self.inner.addr)
    }

    fn state(&self) -> &Watched<AiState> {
        &self.inner.shared.state
    }

    pub fn read<R>(&self, f: impl FnOnce(&AiState) -> R) -> R {
        self.state().read(f)
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state().update(|s| s.latency = latency);
    }

    pub fn set_word_delay(&self, delay: Duration) {
        self.state().update(|s| s.word_delay = delay);
    }

    /// The next request is answered with `text` (Markdown, any script).
    pub fn answer_next(&self, text: &str) {
        self.state()
            .update(|s| s.answers.push_back(text.to_string()));
    }

    /// The next request misbehaves so.
    pub fn fail_next(&self, failure: AiFailure) {
        self.state().update(|s| s.failures.push_back(failure));
    }

    /// Every request misbehaves so until [`FakeAi::recover`].
    pub fn fail_all(&self, failure: AiFailure) {
        self.state().update(|s| s.failing = Some(failure));
    }

    pub fn recover(&self) {
        self.state().update(|s| s.failing = None);
    }

    pub fn requests(&self) -> Vec<AiRequest> {
        self.read(|s| s.requests.clone())
    }

    pub fn completed(&self) -> usize {
        self.read(|s| s.completed)
    }

    pub fn cancelled(&self) -> usize {
        self.read(|s| s.cancelled)
    }

    pub fn max_in_flight(&self) -> usize {
        self.read(|s| s.max_in_flight)
    }

    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut(&AiState) -> bool,
    ) -> Result<(), WaitTimeout> {
        self.state()
            .until("a condition on the fake AI", timeout, condition)
            .await
    }

    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.state()
            .until(format!("{n} AI requests"), timeout, |s| {
                s.requests.len() >= n
            })
            .await
    }

    pub async fn wait_for_cancelled(&self, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.state()
            .until(format!("{n} cancelled AI requests"), timeout, |s| {
                s.cancelled >= n
            })
            .await
    }
}

/// The deterministic answer that shows its context.
pub fn default_answer(messages: &[(String, String)]) -> String {
    let users = messages.iter().filter(|(r, _)| r == "user").count();
    let earlier = messages
        .iter()
        .filter(|(r, _)| r != "system")
        .count()
        .saturating_sub(1);
    let question = messages
        .iter()
        .rev()
        .find(|(r, _)| r == "user")
        .map_or("", |(_, c)| c.as_str());
    format!("Answer {users} to: {question}. I have seen {earlier} earlier messages.")
}

/// The sandbox's answer: plainly not a model's, so that nobody mistakes
/// it for one, and long enough to show an answer streaming in.
pub fn stand_in_answer(messages: &[(String, String)]) -> String {
    let question = messages
        .iter()
        .rev()
        .find(|(r, _)| r == "user")
        .map_or("", |(_, c)| c.as_str());
    let earlier = messages
        .iter()
        .filter(|(r, _)| r != "system")
        .count()
        .saturating_sub(1);
    format!(
        "**This is actorbot's offline stand-in, not an AI model.** You asked: \u{201c}{question}\u{201d}. \
         A real backend would answer here: start the sandbox with `AI_API_URL` (and `AI_API_KEY`) \
         set to use yours. Meanwhile this text arrives word by word, as a model's answer would, \
         so you can watch it stream in as a draft and then become the final message. \
         It was sent with {earlier} earlier messages of this conversation as context."
    )
}

/// Counts a request in flight; on drop, it is finished or cancelled.
struct InFlight {
    shared: Arc<Shared>,
    finished: bool,
}

impl InFlight {
    fn new(shared: Arc<Shared>) -> InFlight {
        shared.state.update(|s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        InFlight {
            shared,
            finished: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let finished = self.finished;
        self.shared.state.update(|s| {
            s.in_flight -= 1;
            if finished {
                s.completed += 1;
            } else {
                s.cancelled += 1;
            }
        });
    }
}

fn error(code: u16, message: &str, kind: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(code)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": null}
    }))
}

async fn models(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let _ = shared;
    HttpResponse::Ok().json(json!({"object": "list", "data": [
        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "actorbot"}
    ]}))
}

async fn completions(
    request: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let shared: Arc<Shared> = shared.get_ref().clone();
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(key) = &shared.api_key
        && authorization.as_deref() != Some(&format!("Bearer {key}"))
    {
        return error(401, "Incorrect API key provided", "invalid_request_error");
    }
    let messages: Vec<(String, String)> = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["role"].as_str().unwrap_or_default().to_string(),
                        m["content"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        return error(
            400,
            "'messages' is a required property",
            "invalid_request_error",
        );
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let stream = body["stream"].as_bool().unwrap_or(false) && shared.streaming;
    let (failure, answer, latency, word_delay) = shared.state.update(|s| {
        s.requests.push(AiRequest {
            model: model.clone(),
            messages: messages.clone(),
            stream: body["stream"].as_bool().unwrap_or(false),
            authorization,
            at: Instant::now(),
        });
        let failure = s.failures.pop_front().or_else(|| s.failing.clone());
        let answer = s
            .answers
            .pop_front()
            .unwrap_or_else(|| (shared.answer)(&messages));
        (failure, answer, s.latency, s.word_delay)
    });
    let mut guard = InFlight::new(shared.clone());
    // A streamed answer starts at once, as real backends do, and waits for
    // its first word inside the stream, where a client leaving is noticed.
    if !stream || failure.is_some() {
        tokio::time::sleep(latency).await;
    }
    let first_delay = if stream && failure.is_none() {
        latency
    } else {
        Duration::ZERO
    };
    let words_limit = match &failure {
        Some(AiFailure::Status { code, message }) => {
            guard.finished = true;
            return error(*code, message, "server_error");
        }
        Some(AiFailure::TooManyRequests { retry_after_secs }) => {
            guard.finished = true;
            let mut response = error(429, "Rate limit reached", "rate_limit_error");
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(*retry_after_secs),
            );
            return response;
        }
        Some(AiFailure::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(AiFailure::Malformed) => {
            guard.finished = true;
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"choices\": [{\"message\": ");
        }
        Some(AiFailure::StallAfter { words })
        | Some(AiFailure::BreakAfter { words })
        | Some(AiFailure::NoDone { words }) => Some(*words),
        None => None,
    };
    let id = format!("chatcmpl-fake{}", rand_id());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !stream {
        guard.finished = true;
        let tokens = answer.split_whitespace().count();
        return HttpResponse::Ok().json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": tokens + 10},
        }));
    }
    let chunk = move |delta: Value, finish: Value| -> Bytes {
        let event = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {event}\n\n"))
    };
    let words: Vec<String> = answer.split_inclusive(' ').map(str::to_string).collect();
    let shown = words_limit.map_or(words.len(), |n| n.min(words.len()));
    let mut events: VecDeque<Result<Bytes, actix_web::Error>> = VecDeque::new();
    events.push_back(Ok(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )));
    for word in &words[..shown] {
        events.push_back(Ok(chunk(json!({"content": word}), Value::Null)));
    }
    let ending = failure.clone();
    match &ending {
        None => {
            events.push_back(Ok(chunk(json!({}), Value::from("stop"))));
            events.push_back(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
        }
        Some(AiFailure::BreakAfter { .. }) => {
            events.push_back(Err(actix_web::error::ErrorInternalServerError("broken")));
        }
        _ => {}
    }
    let stall = matches!(ending, Some(AiFailure::StallAfter { .. }));
    let clean_end = ending.is_none() || matches!(ending, Some(AiFailure::NoDone { .. }));
    // While waiting for the next word, an SSE comment goes out every 250 ms:
    // clients ignore it, and a write to a client that left ends the stream.
    let heartbeat = Duration::from_millis(250);
    let body = futures_util::stream::unfold(
        (events, guard, tokio::time::Instant::now() + first_delay),
        move |(mut events, mut guard, next_at)| async move {
            let now = tokio::time::Instant::now();
            if now < next_at {
                tokio::time::sleep_until(next_at.min(now + heartbeat)).await;
                if tokio::time::Instant::now() < next_at {
                    let comment = Ok(Bytes::from_static(b": waiting\n\n"));
                    return Some((comment, (events, guard, next_at)));
                }
            }
            let next_at = tokio::time::Instant::now() + word_delay;
            match events.pop_front() {
                Some(event) => Some((event, (events, guard, next_at))),
                None if stall => {
                    std::future::pending::<()>().await;
                    None
                }
                None => {
                    guard.finished = clean_end;
                    drop(guard);
                    None
                }
            }
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(body)
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(fake: &FakeAi, stream: bool) -> (u16, Option<String>, String) {
        let client = awc::Client::default();
        let mut response = client
            .post(format!("{}/chat/completions", fake.api_url()))
            .send_json(&json!({"model": "m", "stream": stream, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you"}]}))
            .await
            .expect("answers");
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .body()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (
            response.status().as_u16(),
            retry,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[actix_rt::test]
    async fn streams_words_then_finish_then_done() {
        let fake = FakeAi::start(FakeAiConfig::default()).unwrap();
        let (status, _, body) = post(&fake, true).await;
        assert_eq!(status, 200);
        let events: Vec<&str> = body
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").expect("data events"))
            .collect();
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text,
            "Answer 2 to: how are you. I have seen 2 earlier messages."
        );
        assert_eq!(fake.completed(), 1);
    }

    #[actix_rt::test]
    async fn scripted_failures_keep_openai_shapes() {
        let fake = FakeAi::start(FakeAiConfig::default()).unwrap();
        fake.fail_next(AiFailure::TooManyRequests {
            retry_after_secs: 2,
        });
        let (status, retry, body) = post(&fake, true).await;
        assert_eq!((status, retry.as_deref()), (429, Some("2")));
        assert!(body.contains("\"error\""));

        fake.fail_next(AiFailure::NoDone { words: 2 });
        let (_, _, body) = post(&fake, true).await;
        assert!(!body.contains("[DONE]") && !body.contains("\"stop\""));

        fake.answer_next("Привет, **мир**");
        let (status, _, body) = post(&fake, false).await;
        assert_eq!(status, 200);
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["choices"][0]["message"]["content"], "Привет, **мир**");
        assert_eq!(json["object"], "chat.completion");
    }

    #[actix_rt::test]
    async fn a_client_that_leaves_is_counted_as_cancelled() {
        let fake = FakeAi::start(FakeAiConfig {
            latency: Duration::from_secs(30),
            ..Default::default()
        })
        .unwrap();
        let client = awc::Client::default();
        let mut response = client
            .post(format!("{}/chat/completions", fake.api_url()))
            .send_json(&json!({"model": "m", "stream": true,
                "messages": [{"role": "user", "content": "x"}]}))
            .await
            .expect("the stream starts at once");
        let body = tokio::time::timeout(Duration::from_millis(100), response.body()).await;
        assert!(body.is_err(), "no words yet");
        drop(response);
        fake.wait_for_cancelled(1, Duration::from_secs(10))
            .await
            .expect("the disconnect is noticed");
    }

    #[actix_rt::test]
    async fn the_key_is_checked_when_set() {
        let fake = FakeAi::start(FakeAiConfig {
            api_key: Some("sk-test".into()),
            ..Default::default()
        })
        .unwrap();
        let (status, _, _) = post(&fake, false).await;
        assert_eq!(status, 401);
    }
}
