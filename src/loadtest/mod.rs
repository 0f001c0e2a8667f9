//! `actorbot loadtest`: the operator's stress test.
//!
//! Simulated users, each in a loop of its own: think (an exponential pause
//! around `--think`), pick an interaction by the `--mix` weights, send it,
//! and wait for the bot's answer before thinking again, as a person would.
//! The daemon is this very binary, started as a child process (`run`)
//! against the Bot API emulator and the AI stand-in of `actorbot-emulator`,
//! which run in this process; the emulator's flood limits are off unless
//! `--flood-limits`, so that what is measured is the daemon, and so are the
//! per-user rate limits, which would refuse users this quick.
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

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbot_actors::process::Process;
use actorbot_emulator::openai::{FakeAi, FakeAiConfig};
use actorbot_emulator::telegram::{FakeState, FakeTelegram, FakeTelegramConfig, FloodLimits};
use rand::Rng;

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
}

/// The daemon under test, and the emulators it talks to.
struct Rig {
    tg: FakeTelegram,
    _ai: FakeAi,
    daemon: Child,
    http: SocketAddr,
    data_dir: PathBuf,
}

impl Rig {
    fn start(options: &Options) -> std::io::Result<Rig> {
        let tg = FakeTelegram::start(FakeTelegramConfig {
            token: TOKEN.into(),
            flood_limits: options.flood_limits.then(FloodLimits::telegram_default),
            workers: 1,
            ..Default::default()
        })?;
        let ai = FakeAi::start(FakeAiConfig {
            latency: options.ai_latency,
            word_delay: options.ai_word_delay,
            workers: 1,
            ..Default::default()
        })?;
        let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let data_dir = std::env::temp_dir().join(format!(
            "actorbot-loadtest-{}-{}",
            std::process::id(),
            http.port()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("run")
            .env("BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", tg.api_url())
            .env("AI_API_URL", ai.api_url())
            .env("AI_API_KEY", "")
            .env("HTTP_ADDR", http.to_string())
            .env("DATA_DIR", &data_dir)
            .env("DATABASE_URL", "")
            .env("WEBHOOK_URL", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Simulated users think for a fraction of a person's time: the
        // per-user limits would refuse them (quietly, past the anti-flood
        // notice). `--env` can set them back.
        command
            .env("RATE_LIMIT_PER_USER", "1000000")
            .env("ANTI_FLOOD_MESSAGES", "1000000");
        if !options.flood_limits {
            for (key, value) in [
                ("TELEGRAM_GLOBAL_RATE", "1000000"),
                ("TELEGRAM_GLOBAL_BURST", "100000"),
                ("TELEGRAM_PRIVATE_RATE", "1000000"),
                ("TELEGRAM_PRIVATE_BURST", "100000"),
            ] {
                command.env(key, value);
            }
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let daemon = command.spawn()?;
        Ok(Rig {
            tg,
            _ai: ai,
            daemon,
            http,
            data_dir,
        })
    }

    async fn get(&self, path: &str) -> Option<String> {
        let client = awc::Client::default();
        let mut response = client
            .get(format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.body().limit(32 << 20).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits until the daemon is ready (its `/ready` answers 200).
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.daemon.try_wait() {
                return Err(format!("the daemon exited at start with {status}"));
            }
            if self.get("/ready").await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the daemon was not ready within 60 s".into())
    }

    fn process(&self) -> Process {
        Process::Pid(self.daemon.id())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// What the users record as they go.
#[derive(Default)]
struct Record {
    outcomes: Vec<Outcome>,
    sent: u64,
}

/// The number of bot messages in a chat, and whether one carries a file.
fn answered(s: &FakeState, chat_id: i64, before: usize) -> (usize, bool) {
    let messages: Vec<_> = s
        .messages()
        .iter()
        .filter(|m| m.chat_id == chat_id)
        .collect();
    let new = messages.len().saturating_sub(before);
    let file = messages.iter().skip(before).any(|m| m.file.is_some());
    (new, file)
}

fn count(s: &FakeState, chat_id: i64) -> usize {
    s.messages().iter().filter(|m| m.chat_id == chat_id).count()
}

fn drafts(s: &FakeState, chat_id: i64) -> usize {
    s.drafts().iter().filter(|d| d.chat_id == chat_id).count()
}

/// One interaction: sends it and waits for its first reply and its
/// completion (a document for a report or an album).
async fn interact(tg: &FakeTelegram, user: i64, kind: Kind, deadline: Duration) -> Outcome {
    let (before, drafts_before) = tg.read(|s| (count(s, user), drafts(s, user)));
    let sent = Instant::now();
    match kind {
        Kind::Start => tg.inject_text(user, "/start"),
        Kind::Stats => tg.inject_text(user, "/stats"),
        Kind::Ask => {
            let n: u32 = rand::rng().random_range(0..1_000_000);
            tg.inject_text(user, &format!("What is the answer to question {n}?"))
        }
        Kind::Report => tg.inject_text(user, "/report"),
        Kind::Photo => tg.inject_photo(user, plan::sample_jpeg().to_vec(), None),
    };
    let wants_file = matches!(kind, Kind::Report);
    let first = tg
        .wait_until(deadline, |s| {
            answered(s, user, before).0 >= 1 || drafts(s, user) > drafts_before
        })
        .await
        .ok()
        .map(|()| sent.elapsed());
    let Some(first) = first else {
        return Outcome::lost(kind);
    };
    let complete = if kind == Kind::Ask {
        tg.wait_until(deadline, |s| answered(s, user, before).0 >= 1)
            .await
            .ok()
            .map(|()| sent.elapsed())
    } else if wants_file {
        // A report may be preceded by a place in the queue; one that has
        // nothing to report yet is complete with its first reply.
        let done = tg
            .wait_until(deadline, |s| {
                let (new, file) = answered(s, user, before);
                file || (new >= 1
                    && s.messages()
                        .iter()
                        .rev()
                        .find(|m| m.chat_id == user)
                        .is_some_and(|m| m.text == crate::bot::commands::NOTHING_TO_REPORT))
            })
            .await;
        done.ok().map(|()| sent.elapsed())
    } else {
        Some(first)
    };
    let replies = tg.read(|s| answered(s, user, before).0);
    Outcome {
        kind,
        first: Some(first),
        complete,
        replies,
        error: None,
    }
}

/// Runs the load test; answers its report.
pub async fn run(options: Options) -> Result<Report, String> {
    let mut rig = Rig::start(&options).map_err(|e| format!("cannot start: {e}"))?;
    rig.ready().await?;
    let started = Instant::now();
    let cpu_before = rig.process().cpu_seconds();
    let record = Arc::new(Mutex::new(Record::default()));
    let stop_at = started + options.ramp + options.duration;
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // Sampling: peak memory, and the live line.
    let sampler = {
        let (record, peak, pid, quiet) = (
            record.clone(),
            peak_rss.clone(),
            rig.daemon.id(),
            options.quiet,
        );
        tokio::spawn(async move {
            let mut last_count = 0usize;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rss = Process::Pid(pid).rss_bytes();
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
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
                        rss >> 20
                    );
                    last_count = done;
                }
            }
        })
    };

    let mut users = Vec::with_capacity(options.users);
    for n in 0..options.users {
        let (tg, record, mix, think) = (
            rig.tg.clone(),
            record.clone(),
            options.mix.clone(),
            options.think,
        );
        let user = FIRST_USER + n as i64;
        // Users join evenly over the ramp.
        let join = options.ramp.mul_f64(n as f64 / options.users.max(1) as f64);
        let deadline = options.drain.max(Duration::from_secs(5));
        users.push(tokio::spawn(async move {
            tokio::time::sleep(join).await;
            // Everyone says /start first, as a new user does.
            let mut kind = Kind::Start;
            while Instant::now() < stop_at {
                let outcome = interact(&tg, user, kind, deadline).await;
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
    let cpu = rig.process().cpu_seconds() - cpu_before;
    let metrics = rig.get("/metrics").await.unwrap_or_default();
    let (rejected, unconfirmed) = rig.tg.read(|s| (s.rejected_429(), s.unconfirmed()));
    let record = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    let figures = plan::Figures {
        elapsed,
        users: options.users,
        outcomes: record.outcomes,
        rejected_429: rejected,
        unconfirmed,
        peak_rss_bytes: peak_rss.load(std::sync::atomic::Ordering::Relaxed),
        cpu_seconds: cpu,
        metrics: plan::metric_values(&metrics),
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
