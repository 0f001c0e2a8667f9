//! A daemon under test: an `actorbot` binary started as a child process
//! (`run`, SQLite in a fresh data directory, its HTTP endpoint on a free
//! loopback port) against a Bot API emulator of its own (over HTTPS, its
//! certificate trusted, when the emulator has TLS) and, if given, an AI
//! stand-in. What `actorbot loadtest` and the `loadtest` developer tool
//! in `tests/testkit` both measure; each adds its own configuration.
//!
//! Dropping the rig kills the daemon and removes its data directory; the
//! emulators stop with their last handle.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::openai::FakeAi;
use crate::telegram::{FakeTelegram, FakeTelegramConfig};

/// How to start a rig.
pub struct RigConfig {
    /// The `actorbot` binary.
    pub daemon: PathBuf,
    /// The emulator the daemon polls; its token is the daemon's `BOT_TOKEN`.
    pub telegram: FakeTelegramConfig,
    /// The AI backend the daemon is pointed at (`AI_API_URL`), if any.
    pub ai: Option<FakeAi>,
    /// More environment for the daemon, applied after the rig's own (so it
    /// can override them), in order.
    pub env: Vec<(String, String)>,
    /// Whether the daemon's log (stderr) shows; off, it is discarded.
    pub show_log: bool,
}

/// The daemon's own limits lifted, for users quicker than people: the
/// per-user rate limit and the anti-flood notice, and with `outbox` also
/// the outbox's pace, which is Telegram's flood limits (for an emulator
/// that does not enforce them).
pub fn unlimited(outbox: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("RATE_LIMIT_PER_USER", "1000000"),
        ("ANTI_FLOOD_MESSAGES", "1000000"),
    ];
    if outbox {
        env.extend([
            ("TELEGRAM_GLOBAL_RATE", "1000000"),
            ("TELEGRAM_GLOBAL_BURST", "100000"),
            ("TELEGRAM_PRIVATE_RATE", "1000000"),
            ("TELEGRAM_PRIVATE_BURST", "100000"),
        ]);
    }
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The body of a GET of `url` (plain HTTP), if it answers 2xx within 10 s:
/// a daemon's `/ready` or `/metrics`.
pub async fn get(url: &str) -> Option<String> {
    let mut response = awc::Client::default()
        .get(url)
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

/// A running daemon and the emulators it talks to; see the module docs.
pub struct Rig {
    tg: FakeTelegram,
    ai: Option<FakeAi>,
    daemon: Child,
    http: SocketAddr,
    data_dir: PathBuf,
}

impl Rig {
    /// Starts the emulator and the daemon; [`Rig::ready`] waits for it.
    pub fn start(config: RigConfig) -> std::io::Result<Rig> {
        let token = config.telegram.token.clone();
        let tg = FakeTelegram::start(config.telegram)?;
        let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let data_dir = std::env::temp_dir().join(format!(
            "actorbot-rig-{}-{}",
            std::process::id(),
            http.port()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let mut command = Command::new(&config.daemon);
        command
            .arg("run")
            .env("BOT_TOKEN", token)
            .env("TELEGRAM_API_URL", tg.api_url())
            .env("HTTP_ADDR", http.to_string())
            .env("DATA_DIR", &data_dir)
            // SQLite in the data directory, long polling: nothing of a real
            // deployment's configuration in the environment applies.
            .env("DATABASE_URL", "")
            .env("WEBHOOK_URL", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(if config.show_log {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        // A fake with TLS: the daemon trusts its certificate.
        if let Some(ca_file) = tg.write_certificate(&data_dir)? {
            command.env("TELEGRAM_CA_FILE", ca_file);
        }
        if let Some(ai) = &config.ai {
            command
                .env("AI_API_URL", ai.api_url())
                .env("AI_API_KEY", "");
        }
        for (key, value) in &config.env {
            command.env(key, value);
        }
        let daemon = match command.spawn() {
            Ok(daemon) => daemon,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("{}: {err}", config.daemon.display()),
                ));
            }
        };
        Ok(Rig {
            tg,
            ai: config.ai,
            daemon,
            http,
            data_dir,
        })
    }

    /// Waits until the daemon is ready (its `/ready` answers 200); an
    /// error if it exits first or is not ready `within`.
    pub async fn ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.daemon.try_wait() {
                return Err(format!("the daemon exited at start with {status}"));
            }
            if self.get("/ready").await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("the daemon was not ready within {within:?}"))
    }

    /// The body of a GET of the daemon's endpoint, if it answers 2xx.
    pub async fn get(&self, path: &str) -> Option<String> {
        get(&format!("http://{}{path}", self.http)).await
    }

    /// The emulator the daemon polls.
    pub fn telegram(&self) -> &FakeTelegram {
        &self.tg
    }

    /// The AI backend the daemon asks, if it was given one.
    pub fn ai(&self) -> Option<&FakeAi> {
        self.ai.as_ref()
    }

    /// The daemon's process id, for its CPU time and memory.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The daemon's HTTP endpoint.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
