//! The integration tests' one way to start actorbot: the real binary, run
//! against the fake Telegram Bot API from `actorbot-testkit`.
//!
//! `TestApp::builder()...start()` starts the fake, picks a free port for
//! the daemon's HTTP endpoint, runs `actorbot run` with a fresh data
//! directory and the `testing` profile, captures its log, and waits until
//! `/ready` answers 200 (and, with a webhook, until the fake has been given
//! its URL). Dropping the app kills the daemon.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actorbot_testkit::telegram::{FakeTelegram, FakeTelegramConfig, FloodLimits};
use tokio::sync::Notify;

pub const TOKEN: &str = "7000001:TEST-secret_token-abcdef";
pub const WEBHOOK_SECRET: &str = "hook-secret-123";
pub const STARTUP: Duration = Duration::from_secs(20);

/// The configuration the daemon under test loads (the `testing` profile),
/// with `vars` on top: for tests that open its storage themselves.
pub fn test_config(vars: &[(&str, String)]) -> actorbot::config::Config {
    let mut env: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.insert(
        "CONFIG_DIR".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/config").into(),
    );
    env.insert("APP_PROFILE".into(), "testing".into());
    actorbot::config::Config::load(&env).expect("a valid configuration")
}

pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    flood_limits: Option<FloodLimits>,
    webhook: bool,
    fake: Option<FakeTelegram>,
    data_dir: Option<PathBuf>,
    sandbox: bool,
    worker: bool,
    user: Option<(u32, u32)>,
}

impl TestAppBuilder {
    /// Runs the daemon as this user and group (the tests run as root, for
    /// whom file permissions do not apply).
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Runs `actorbot sandbox`: the daemon's own emulator and AI stand-in;
    /// the test's fake Telegram then sees nothing.
    pub fn sandbox(mut self) -> Self {
        self.sandbox = true;
        self
    }

    /// Runs `actorbot worker`: the document pools alone, claiming jobs from
    /// the cluster's PostgreSQL (`DATABASE_URL` must be set).
    pub fn worker(mut self) -> Self {
        self.worker = true;
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The fake enforces Telegram's flood limits with real 429 answers.
    pub fn flood_limits(mut self) -> Self {
        self.flood_limits = Some(FloodLimits::telegram_default());
        self
    }

    /// Runs in webhook mode: the fake posts updates to the daemon.
    pub fn webhook(mut self) -> Self {
        self.webhook = true;
        self
    }

    /// Uses this data directory (a restart on the same SQLite database).
    pub fn data_dir(mut self, dir: PathBuf) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Reuses a running fake (a restart against the same Telegram).
    pub fn with_fake(mut self, fake: FakeTelegram) -> Self {
        self.fake = Some(fake);
        self
    }

    pub async fn start(self) -> TestApp {
        let tg = match self.fake {
            Some(fake) => fake,
            None => FakeTelegram::start(FakeTelegramConfig {
                token: TOKEN.to_string(),
                flood_limits: self.flood_limits,
                ..Default::default()
            })
            .expect("the fake Telegram starts"),
        };
        let data_dir = self.data_dir.unwrap_or_else(|| unique_dir("data"));
        // The daemon binds port 0 and says where in a file, so no other
        // process can take the port between a choice and the bind. A
        // webhook's URL names the port before the start: only then is one
        // chosen here.
        let addr_file = data_dir.join("http.addr");
        let _ = std::fs::remove_file(&addr_file);
        let http_addr = if self.webhook {
            free_addr()
        } else {
            "127.0.0.1:0".parse().expect("an address")
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_actorbot"));
        command
            .arg(match (self.sandbox, self.worker) {
                (true, _) => "sandbox",
                (_, true) => "worker",
                _ => "run",
            })
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP_PROFILE", "testing")
            .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .env("BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", tg.api_url())
            .env("HTTP_ADDR", http_addr.to_string())
            .env("HTTP_ADDR_FILE", &addr_file)
            .env("DATA_DIR", &data_dir)
            .env(
                "RUST_LOG",
                "debug,actix_server=info,actix_http=info,h2=info,rustls=info",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.webhook {
            command
                .env(
                    "WEBHOOK_URL",
                    format!("http://{http_addr}/telegram/webhook"),
                )
                .env("WEBHOOK_SECRET", WEBHOOK_SECRET);
        }
        // A fake with TLS: the daemon trusts its certificate.
        if let Some(ca_file) = tg
            .write_certificate(&data_dir)
            .expect("the fake's certificate is written")
        {
            command.env("TELEGRAM_CA_FILE", ca_file);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().expect("the actorbot binary starts");
        let log = Arc::new(LogBuffer::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.push(&line);
                }
            });
        }
        let http_addr = if self.webhook {
            http_addr
        } else {
            listening_at(&addr_file, &mut child, &log).await
        };
        let app = TestApp {
            tg,
            child: Some(child),
            http_addr,
            data_dir,
            log,
            env: self.env.clone(),
        };
        app.wait_ready(self.webhook).await;
        app
    }
}

pub struct TestApp {
    pub tg: FakeTelegram,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log: Arc<LogBuffer>,
    /// The variables the builder set, for [`TestApp::cli`].
    env: Vec<(String, String)>,
}

impl TestApp {
    /// Waits until the daemon says it is ready (`/ready` answers 200: the
    /// database answers and intake runs) and, for a webhook, until the fake
    /// has been told where to post.
    async fn wait_ready(&self, webhook: bool) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let ready = matches!(self.try_get("/ready").await, Some(200));
            if ready && (!webhook || self.tg.webhook().is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon was not ready within {STARTUP:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The status of a GET, or `None` while nothing answers.
    async fn try_get(&self, path: &str) -> Option<u16> {
        let response = awc::Client::default()
            .get(format!("{}{path}", self.base_url()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: Vec::new(),
            flood_limits: None,
            webhook: false,
            fake: None,
            data_dir: None,
            sandbox: false,
            worker: false,
            user: None,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// How many of the daemon's threads are named `{prefix}-N`: the
    /// workers of the pool called `prefix`.
    pub fn worker_threads(&self, prefix: &str) -> usize {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("/proc");
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .filter(|name| {
                name.trim_end()
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`; panics with the log on timeout.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout).await;
    }

    /// Waits until the log holds `needle` at least `n` times.
    pub async fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.log.changed.notified();
            if self.log().matches(needle).count() >= n {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!(
                    "{needle:?} not {n} times in the log within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// GETs a path on the daemon's HTTP endpoint: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, None).await
    }

    /// A request with an optional bearer token: status and body.
    pub async fn request(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.send(method, path, token, None).await
    }

    /// A request with a JSON body and an optional bearer token: status and
    /// the answer as JSON.
    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.send(method, path, token, Some(body)).await;
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with no JSON ({e}): {text}"));
        (status, json)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = client.request(method, format!("{}{path}", self.base_url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut response = sent.unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = response.body().limit(16 << 20).await.expect("a body");
        (
            response.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// GETs a JSON endpoint.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path).await;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
        (status, json)
    }

    /// Polls a JSON endpoint until `done(status, body)` holds; answers the
    /// last body.
    pub async fn wait_for_json(
        &self,
        path: &str,
        timeout: Duration,
        done: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if done(status, &json) {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: condition not met within {timeout:?}; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/metrics` holds a line starting with `line`, checking
    /// again after each scrape.
    pub async fn wait_for_metric(&self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, metrics) = self.get("/metrics").await;
            if metrics.lines().any(|l| l.starts_with(line)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in /metrics within {timeout:?}:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the daemon to exit, polling its status without blocking.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "actorbot did not exit within {timeout:?}; log:\n{}",
                self.log.text.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `actorbot ARGS` as an operator would beside this daemon: the
    /// same configuration, data directory and endpoint.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_actorbot"));
        command
            .args(args)
            .env_clear()
            .env("APP_PROFILE", "testing")
            .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .env("HTTP_ADDR", self.http_addr.to_string())
            .env("DATA_DIR", &self.data_dir);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        tokio::task::spawn_blocking(move || command.output().expect("actorbot runs"))
            .await
            .expect("the command's thread")
    }

    /// Stops the daemon with SIGKILL and gives back the fake, for a restart.
    pub fn kill(mut self) -> (FakeTelegram, String) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = self.log();
        let fake = self.tg.clone();
        (fake, log)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Default)]
struct LogBuffer {
    text: Mutex<String>,
    changed: Notify,
}

impl LogBuffer {
    fn push(&self, line: &str) {
        {
            let mut text = self.text.lock().unwrap();
            text.push_str(line);
            text.push('\n');
        }
        self.changed.notify_waiters();
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

/// Where the daemon listens, once it has written `file`
/// (`HTTP_ADDR_FILE`).
async fn listening_at(file: &Path, child: &mut Child, log: &LogBuffer) -> SocketAddr {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(addr) = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the daemon exited with {status} before it listened; log:\n{}",
                log.text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not listen within {STARTUP:?}; log:\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port free now: for servers whose port must be named before they
/// start (a webhook's URL, a third-party server's command line).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

pub fn unique_dir(prefix: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("actorbot-test-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    /// Creates a fresh database on the server at `ACTORBOT_TEST_POSTGRES_URL`.
    /// Without that variable the test is skipped with a visible line, unless
    /// `ACTORBOT_REQUIRE_POSTGRES=1` (as in CI) makes that a failure.
    pub fn create(test: &str) -> Option<PgDatabase> {
        use diesel::{Connection, RunQueryDsl, pg::PgConnection};
        let Ok(admin_url) = std::env::var("ACTORBOT_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("ACTORBOT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "ACTORBOT_REQUIRE_POSTGRES=1 but ACTORBOT_TEST_POSTGRES_URL is not set"
            );
            // Straight to stderr: the test harness captures print macros.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} on PostgreSQL (set ACTORBOT_TEST_POSTGRES_URL)"
            );
            return None;
        };
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("actorbot_test_{}_{n}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("PostgreSQL at ACTORBOT_TEST_POSTGRES_URL: {e}"));
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .expect("drop a leftover test database");
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create a test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// A TCP proxy in front of the server, and this database's URL through
    /// it: a test can cut the database off and restore it.
    pub fn through_proxy(&self) -> (actorbot_testkit::proxy::TcpProxy, String) {
        // postgres://user@host:port/name
        let (user, rest) = self
            .url
            .trim_start_matches("postgres://")
            .split_once('@')
            .expect("a user");
        let (host_port, name) = rest.split_once('/').expect("a database name");
        let proxy = actorbot_testkit::proxy::TcpProxy::start(host_port.parse().expect("host:port"))
            .expect("the proxy starts");
        let url = format!("postgres://{user}@{}/{name}", proxy.addr());
        (proxy, url)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use diesel::{Connection, RunQueryDsl, pg::PgConnection};
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// The Redis to test against (`ACTORBOT_TEST_REDIS_URL`), or a visible skip
/// (a failure when `ACTORBOT_REQUIRE_REDIS=1`, as in CI).
pub fn redis_url(test: &str) -> Option<String> {
    match std::env::var("ACTORBOT_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("ACTORBOT_REQUIRE_REDIS").as_deref() != Ok("1"),
                "ACTORBOT_REQUIRE_REDIS=1 but ACTORBOT_TEST_REDIS_URL is not set"
            );
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} (set ACTORBOT_TEST_REDIS_URL)"
            );
            None
        }
    }
}

/// The node called `name` anywhere in an `/actors` tree.
pub fn find_node<'a>(node: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|child| find_node(child, name))
}

/// Limits high enough that a test's own bursts are never throttled.
pub fn unthrottled(builder: TestAppBuilder) -> TestAppBuilder {
    builder
        .env("ANTI_FLOOD_MESSAGES", 100_000)
        .env("RATE_LIMIT_PER_USER", 100_000)
        .env("TELEGRAM_GLOBAL_RATE", 100_000)
        .env("TELEGRAM_GLOBAL_BURST", 10_000)
        .env("TELEGRAM_PRIVATE_RATE", 100_000)
        .env("TELEGRAM_PRIVATE_BURST", 10_000)
}

/// The number in a reply to `/seq<N>` (answered as an unknown command that
/// names it), so replies can be matched to the updates they answer.
pub fn seq_of(text: &str) -> Option<u64> {
    let start = text.find("/seq")? + 4;
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A JPEG of `width`×`height` with a gradient, as a phone would send.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("encodes");
    out.into_inner()
}

/// Whether headless Chromium is here; without it, a visible skip (a failure
/// when `ACTORBOT_REQUIRE_CHROMIUM=1`, as in CI).
pub fn chromium_or_skip(test: &str) -> bool {
    if actorbot_testkit::browser::chromium().is_some() {
        return true;
    }
    assert!(
        std::env::var("ACTORBOT_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
        "ACTORBOT_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test} (install Debian's chromium)"
    );
    false
}

/// Loads `url` in headless Chromium for `wait` of page time, keeping its
/// screenshot as `name` among the test artifacts (`target/tmp/artifacts`).
pub async fn check_page(
    url: String,
    name: &str,
    wait: Duration,
) -> actorbot_testkit::browser::PageCheck {
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("an artifacts directory");
    let screenshot = artifacts.join(name);
    actix_rt::task::spawn_blocking(move || {
        actorbot_testkit::browser::check_page(&url, &screenshot, wait)
    })
    .await
    .expect("joined")
    .expect("chromium ran")
}
