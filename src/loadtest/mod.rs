//! `actorbot loadtest`: the operator's stress test.
//!
//! Simulated users, each in a loop of its own: think (an exponential pause
//! around `--think`), pick an interaction by the `--mix` weights, send it,
//! and wait for the bot's answer before thinking again, as a person would.
//! The daemon is this very binary, started as a child process (`run`)
//! against the Bot API emulator and the AI stand-in of `actorbot-emulator`,
//! which run in this process (the [`actorbot_emulator::rig`]); the
//! emulator's flood limits are off unless `--flood-limits`, so that what is
//! measured is the daemon, and so are the per-user rate limits, which would
//! refuse users this quick.
//!
//! With `--emulator URL` it starts nothing: it drives an emulator that is
//! already running, and that a running daemon polls (`actorbot sandbox`
//! serves its own at `http://HTTP_ADDR/sandbox/emulator`), through the
//! emulator's control API over HTTP alone: it injects the users' messages
//! and long-polls for the bot's replies. The times then include that HTTP
//! round trip. What only a rig knows is absent from the report: the
//! daemon's memory and CPU unless `--pid` names its process, its `/metrics`
//! (for the hints) unless `--daemon-url` names its endpoint.
//!
//! Per interaction it records the time from the update to the first reply
//! and to the complete answer (the final message of a streamed answer, the
//! document of a report or an album). At the end it reports counts and
//! percentiles per kind, errors by kind, updates taken but never answered
//! (after a drain of `--drain` seconds), 429s, the daemon's peak resident
//! memory and CPU, and tuning hints drawn from what it measured; `--output`
//! writes the same as JSON, and `--slo` makes the exit status say whether
//! the thresholds held.
//!
//! What to decide (the mix, the percentiles, the verdict of an SLO, the
//! hints) is plain code in [`plan`]; this module runs it.

pub mod plan;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbot_actors::process::Process;
use actorbot_emulator::openai::{FakeAi, FakeAiConfig};
use actorbot_emulator::rig::{self, Rig, RigConfig};
use actorbot_emulator::telegram::{FakeTelegram, FakeTelegramConfig, FloodLimits};
use rand::Rng;
use serde::Deserialize;

pub use plan::{Kind, Mix, Outcome, Report, Slo};

const TOKEN: &str = "100000002:LOADTEST-local-emulator";
/// Users are numbered from here: apart from anyone else's.
const FIRST_USER: i64 = 9_000_000_000;

/// What `actorbot loadtest` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub users: usize,
    pub duration: Duration,
    pub ramp: Duration,
    pub think: Duration,
    pub mix: Mix,
    pub output: Option<PathBuf>,
    pub slo: Option<Slo>,
    pub drain: Duration,
    pub flood_limits: bool,
    /// Extra environment for the daemon, `KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// The AI stand-in's time to its first word, and between words.
    pub ai_latency: Duration,
    pub ai_word_delay: Duration,
    pub quiet: bool,
    /// A running emulator's base URL: drive it instead of a rig of our own.
    pub emulator: Option<String>,
    /// With `emulator`: the daemon's process, for its memory and CPU.
    pub pid: Option<u32>,
    /// With `emulator`: the daemon's HTTP endpoint, for its `/metrics`.
    pub daemon_url: Option<String>,
}

/// Starts the daemon and the emulators, as `actorbot loadtest` wants them.
fn start_rig(options: &Options) -> std::io::Result<Rig> {
    let ai = FakeAi::start(FakeAiConfig {
        latency: options.ai_latency,
        word_delay: options.ai_word_delay,
        workers: 1,
        ..Default::default()
    })?;
    let mut env = rig::unlimited(!options.flood_limits);
    env.extend(options.env.iter().cloned());
    Rig::start(RigConfig {
        daemon: std::env::current_exe()?,
        telegram: FakeTelegramConfig {
            token: TOKEN.into(),
            flood_limits: options.flood_limits.then(FloodLimits::telegram_default),
            workers: 1,
            ..Default::default()
        },
        ai: Some(ai),
        env,
        show_log: false,
    })
}

/// What the users record as they go.
#[derive(Default)]
struct Record {
    outcomes: Vec<Outcome>,
    sent: u64,
}

/// A message the bot sent to a user.
#[derive(Debug, Clone, Deserialize)]
struct Reply {
    text: String,
    /// Whether it carries a file (a document or a photo).
    #[serde(default, deserialize_with = "present")]
    file: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(!serde_json::Value::deserialize(d)?.is_null())
}

/// A user's chat as the emulator has it.
#[derive(Debug, Deserialize)]
struct Chat {
    /// Messages and drafts the bot sent there.
    messages: usize,
    drafts: usize,
    /// The messages after the count asked about.
    new: Vec<Reply>,
}

/// Where the users' messages go and the bot's replies are read.
#[derive(Clone)]
enum Emulator {
    /// The rig's own, through its Rust API.
    Local(FakeTelegram),
    /// A running one, through its control API.
    Remote(Remote),
}

/// An emulator's control API (see `emulator/src/telegram/server.rs`).
#[derive(Clone)]
struct Remote {
    base: Rc<str>,
    client: awc::Client,
}

impl Remote {
    fn new(base: &str, users: usize) -> Remote {
        // A connection per user, each of whom has one request out at a time.
        let connector = awc::Connector::new().limit(users + 8);
        Remote {
            base: base.trim_end_matches('/').into(),
            client: awc::Client::builder().connector(connector).finish(),
        }
    }

    async fn send(&self, user: i64, kind: Kind, text: &str) -> Result<(), String> {
        let timeout = Duration::from_secs(30);
        let response = if kind == Kind::Photo {
            self.client
                .post(format!("{}/_fake/photo?chat_id={user}", self.base))
                .timeout(timeout)
                .send_body(plan::sample_jpeg())
                .await
        } else {
            self.client
                .post(format!("{}/_fake/updates", self.base))
                .timeout(timeout)
                .send_json(&serde_json::json!({"chat_id": user, "text": text}))
                .await
        };
        answer::<serde_json::Value, _>(response).await.map(drop)
    }

    async fn chat(
        &self,
        user: i64,
        messages: Option<usize>,
        drafts: Option<usize>,
        timeout: Duration,
    ) -> Result<Chat, String> {
        let mut url = format!("{}/_fake/chat?chat_id={user}", self.base);
        if let Some(n) = messages {
            url.push_str(&format!("&messages={n}"));
        }
        if let Some(n) = drafts {
            url.push_str(&format!("&drafts={n}"));
        }
        if !timeout.is_zero() {
            url.push_str(&format!("&timeout={:.3}", timeout.as_secs_f64()));
        }
        let response = self
            .client
            .get(url)
            .timeout(timeout.min(Duration::from_secs(60)) + Duration::from_secs(30))
            .send()
            .await;
        answer(response).await
    }

    /// Sends the emulator refused with 429, and updates not yet confirmed.
    async fn counters(&self) -> Result<(usize, usize), String> {
        #[derive(Deserialize)]
        struct Stats {
            rejected_429: usize,
            unconfirmed: usize,
        }
        let response = self
            .client
            .get(format!("{}/_fake/stats", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let stats: Stats = answer(response).await?;
        Ok((stats.rejected_429, stats.unconfirmed))
    }
}

/// A control API's JSON answer, or what went wrong.
async fn answer<T, S>(
    response: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut response = response.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the emulator answered {}", response.status()));
    }
    let body = response
        .body()
        .limit(32 << 20)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("the emulator's answer: {e}"))
}

impl Emulator {
    /// A user sends an interaction of this kind.
    async fn send(&self, user: i64, kind: Kind) -> Result<(), String> {
        let text = match kind {
            Kind::Start => "/start".to_string(),
            Kind::Stats => "/stats".to_string(),
            Kind::Report => "/report".to_string(),
            Kind::Ask => {
                let n: u32 = rand::rng().random_range(0..1_000_000);
                format!("What is the answer to question {n}?")
            }
            Kind::Photo => String::new(),
        };
        match self {
            Emulator::Local(tg) if kind == Kind::Photo => {
                tg.inject_photo(user, plan::sample_jpeg().to_vec(), None);
                Ok(())
            }
            Emulator::Local(tg) => {
                tg.inject_text(user, &text);
                Ok(())
            }
            Emulator::Remote(remote) => remote.send(user, kind, &text).await,
        }
    }

    /// The user's chat, as [`FakeTelegram::chat_news`] (or the control API's
    /// `GET /_fake/chat`) answers it.
    async fn chat(
        &self,
        user: i64,
        messages: Option<usize>,
        drafts: Option<usize>,
        timeout: Duration,
    ) -> Result<Chat, String> {
        match self {
            Emulator::Local(tg) => {
                let news = tg.chat_news(user, messages, drafts, timeout).await;
                Ok(Chat {
                    messages: news.messages,
                    drafts: news.drafts,
                    new: news
                        .new
                        .into_iter()
                        .map(|m| Reply {
                            text: m.text,
                            file: m.file.is_some(),
                        })
                        .collect(),
                })
            }
            Emulator::Remote(remote) => remote.chat(user, messages, drafts, timeout).await,
        }
    }

    /// Waits until the chat has more than `messages` messages or more than
    /// `drafts` drafts; `None` at the deadline.
    async fn news(
        &self,
        user: i64,
        messages: Option<usize>,
        drafts: Option<usize>,
        deadline: Instant,
    ) -> Result<Option<Chat>, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chat = self.chat(user, messages, drafts, left).await?;
            if messages.is_some_and(|n| chat.messages > n)
                || drafts.is_some_and(|n| chat.drafts > n)
            {
                return Ok(Some(chat));
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Sends the emulator refused with 429, and updates not yet confirmed.
    async fn counters(&self) -> Result<(usize, usize), String> {
        match self {
            Emulator::Local(tg) => Ok(tg.read(|s| (s.rejected_429(), s.unconfirmed()))),
            Emulator::Remote(remote) => remote.counters().await,
        }
    }
}

/// One interaction: sends it and waits for its first reply and its
/// completion (a document for a report), within `wait` of sending it.
async fn interact(emulator: &Emulator, user: i64, kind: Kind, wait: Duration) -> Outcome {
    match try_interact(emulator, user, kind, wait).await {
        Ok(outcome) => outcome,
        Err(error) => Outcome {
            error: Some(error),
            ..Outcome::lost(kind)
        },
    }
}

async fn try_interact(
    emulator: &Emulator,
    user: i64,
    kind: Kind,
    wait: Duration,
) -> Result<Outcome, String> {
    let before = emulator.chat(user, None, None, Duration::ZERO).await?;
    let sent = Instant::now();
    let deadline = sent + wait;
    emulator.send(user, kind).await?;
    let Some(first) = emulator
        .news(user, Some(before.messages), Some(before.drafts), deadline)
        .await?
    else {
        return Ok(Outcome::lost(kind));
    };
    let first_at = sent.elapsed();
    // A streamed answer is complete with its final message; a report may
    // be preceded by a place in the queue, and one that has nothing to
    // report yet is complete with its first reply.
    let done = |replies: &[Reply]| match kind {
        Kind::Ask => !replies.is_empty(),
        Kind::Report => {
            replies.iter().any(|r| r.file)
                || replies
                    .last()
                    .is_some_and(|r| r.text == crate::bot::commands::NOTHING_TO_REPORT)
        }
        _ => true,
    };
    let mut replies = first.new;
    let mut complete = done(&replies).then_some(first_at);
    while complete.is_none() {
        let seen = Some(before.messages + replies.len());
        let Some(chat) = emulator.news(user, seen, None, deadline).await? else {
            break;
        };
        replies.extend(chat.new);
        complete = done(&replies).then(|| sent.elapsed());
    }
    Ok(Outcome {
        kind,
        first: Some(first_at),
        complete,
        replies: replies.len(),
        error: None,
    })
}

/// Runs the load test; answers its report.
pub async fn run(options: Options) -> Result<Report, String> {
    // Kept until the end: dropping it stops the daemon.
    let mut own_rig = None;
    let (emulator, process, daemon_url) = match &options.emulator {
        None => {
            let mut rig = start_rig(&options).map_err(|e| format!("cannot start: {e}"))?;
            rig.ready(Duration::from_secs(60)).await?;
            let emulator = Emulator::Local(rig.telegram().clone());
            let (pid, url) = (rig.pid(), format!("http://{}", rig.http_addr()));
            own_rig = Some(rig);
            (emulator, Some(Process::Pid(pid)), Some(url))
        }
        Some(url) => {
            let remote = Remote::new(url, options.users);
            remote
                .counters()
                .await
                .map_err(|e| format!("cannot reach the emulator's control API at {url}: {e}"))?;
            let daemon_url = options
                .daemon_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string());
            (
                Emulator::Remote(remote),
                options.pid.map(Process::Pid),
                daemon_url,
            )
        }
    };
    let (rejected_before, _) = emulator.counters().await?;
    let started = Instant::now();
    let cpu_before = process.map(Process::cpu_seconds);
    let record = Arc::new(Mutex::new(Record::default()));
    let stop_at = started + options.ramp + options.duration;
    let peak_rss = Arc::new(AtomicU64::new(0));

    // Sampling: peak memory, and the live line.
    let sampler = {
        let (record, peak, quiet) = (record.clone(), peak_rss.clone(), options.quiet);
        actix_rt::spawn(async move {
            let mut last_count = 0usize;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rss = process.map(Process::rss_bytes);
                if let Some(rss) = rss {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                if !quiet {
                    let (done, p95) = {
                        let r = record.lock().unwrap_or_else(|e| e.into_inner());
                        let mut firsts: Vec<Duration> =
                            r.outcomes.iter().filter_map(|o| o.first).collect();
                        (r.outcomes.len(), plan::percentile(&mut firsts, 0.95))
                    };
                    eprint!(
                        "\r{:>5.0} s  {done:>8} interactions  {:>6}/s  p95 {:>7.1} ms  RSS {:>5} MB   ",
                        started.elapsed().as_secs_f64(),
                        done - last_count,
                        p95.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                        rss.map_or_else(|| "-".to_string(), |b| (b >> 20).to_string())
                    );
                    last_count = done;
                }
            }
        })
    };

    let mut users = Vec::with_capacity(options.users);
    for n in 0..options.users {
        let (emulator, record, mix, think) = (
            emulator.clone(),
            record.clone(),
            options.mix.clone(),
            options.think,
        );
        let user = FIRST_USER + n as i64;
        // Users join evenly over the ramp.
        let join = options.ramp.mul_f64(n as f64 / options.users.max(1) as f64);
        let wait = options.drain.max(Duration::from_secs(5));
        users.push(actix_rt::spawn(async move {
            tokio::time::sleep(join).await;
            // Everyone says /start first, as a new user does.
            let mut kind = Kind::Start;
            while Instant::now() < stop_at {
                let outcome = interact(&emulator, user, kind, wait).await;
                {
                    let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                    r.sent += 1;
                    r.outcomes.push(outcome);
                }
                let (pause, next) = {
                    let mut rng = rand::rng();
                    let u: f64 = rng.random_range(1e-6..1.0);
                    (
                        think.mul_f64(-u.ln()).min(think * 5),
                        mix.pick(rng.random_range(0.0..1.0)),
                    )
                };
                let left = stop_at.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(left)).await;
                kind = next;
            }
        }));
    }
    for user in users {
        let _ = user.await;
    }
    sampler.abort();
    if !options.quiet {
        eprintln!();
    }
    let elapsed = started.elapsed();
    // A process that cannot be read (gone, or not ours) measured nothing.
    let peak_rss_bytes = Some(peak_rss.load(Ordering::Relaxed)).filter(|b| *b > 0);
    let cpu_seconds = cpu_before
        .zip(process)
        .filter(|_| peak_rss_bytes.is_some())
        .map(|(before, process)| process.cpu_seconds() - before);
    let metrics = match &daemon_url {
        Some(url) => rig::get(&format!("{url}/metrics"))
            .await
            .unwrap_or_default(),
        None => String::new(),
    };
    // The daemon's own suggestions, from the figures of the run: the same
    // as `GET /performance/suggestions` answers an operator.
    let suggestions = match &daemon_url {
        Some(url) => rig::get(&format!("{url}/performance/suggestions"))
            .await
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|body| serde_json::from_value(body["suggestions"].clone()).ok())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let (rejected, unconfirmed) = emulator.counters().await?;
    drop(own_rig);
    let record = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    let figures = plan::Figures {
        elapsed,
        users: options.users,
        outcomes: record.outcomes,
        rejected_429: rejected.saturating_sub(rejected_before),
        unconfirmed,
        peak_rss_bytes,
        cpu_seconds,
        metrics: plan::metric_values(&metrics),
        suggestions,
    };
    Ok(Report::from_figures(&figures, options.slo.as_ref()))
}

/// `KEY=VALUE` pairs.
pub fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--env {pair:?}: expected KEY=VALUE"))
        })
        .collect()
}
