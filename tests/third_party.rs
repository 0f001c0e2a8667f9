//! actorbot against servers it did not write: the Bot API emulator of the
//! npm package `telegram-test-api` 4.2.1 (behind `tests/third_party/tg-front.js`,
//! which adds only the methods the package lacks) and the OpenAI-compatible
//! mock of the PyPI package `fakellm` 0.3.5, both installed from their
//! registries by `tests/third_party/install.sh`.
//!
//! The package's quirks stay as they are, since they are what this test is
//! about: getMe without `is_bot`, getUpdates answering at once and ignoring
//! `offset`, sendMessage echoing the request with `date` in milliseconds,
//! editMessageText answering `result: null`, and unsupported methods
//! answering HTTP 500 `{"message": ...}`. The front answers
//! sendMessageDraft with a 404, as a server without drafts does.
//!
//! Without the installs the test is skipped with a visible line, unless
//! `ACTORBOT_REQUIRE_THIRD_PARTY=1` (as in CI) makes that a failure.

mod common;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actorbot_testkit::pdf::extract_text;
use common::{TOKEN, TestApp, free_addr, unique_dir};
use serde_json::{Value, json};

/// How long each server gets to start, and each reply to arrive.
const WAIT: Duration = Duration::from_secs(30);

const USER_ID: i64 = 5_150_001;
const FIRST_NAME: &str = "Ada";
/// Matched by the rule in `tests/third_party/fakellm.yaml`.
const QUESTION: &str = "How do actors keep their state safe?";
/// That rule's answer.
const ANSWER: &str = "Each actor owns its state and is the only one that touches it. \
    Other actors cannot reach in; they send it messages, and it handles those messages \
    one at a time, in the order its mailbox holds them. Because no two threads ever \
    change the same state at once, no locks are needed, and a crash stays inside the \
    actor that made it, where its supervisor can restart it cleanly.";

const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/third_party");

/// Where `install.sh` puts the servers: `$CARGO_TARGET_DIR/third-party`,
/// or `target/third-party` in the repository.
fn install_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(|dir| manifest.join(dir))
        .unwrap_or_else(|| manifest.join("target"));
    target.join("third-party")
}

/// A server run as a child process, killed when dropped.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Server {
    fn start(name: &'static str, command: &mut Command, dir: &Path, port: u16) -> Server {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Server {
            name,
            child,
            log,
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }

    /// Fails at once if the server has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish()
}

/// Status and JSON body of a request; `None` while nothing answers.
async fn call(method: &str, url: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let request = match method {
        "GET" => client().get(url),
        _ => client().post(url),
    };
    let mut response = match body {
        Some(body) => request.send_json(body).await.ok()?,
        None => request.send().await.ok()?,
    };
    let bytes = response.body().limit(16 << 20).await.ok()?;
    Some((
        response.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Polls `check` every 100 ms until it gives a value; past `WAIT`, fails
/// with `what` and what `context` describes.
async fn wait_until<T, F, Fut>(what: &str, context: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running servers and the daemon between them.
struct World {
    tg: Server,
    ai: Server,
    app: TestApp,
}

impl World {
    /// The last lines of every log, for a failure: the daemon's own
    /// (its libraries' debug lines left out) and the servers', without
    /// the getUpdates calls that fill the emulator's.
    fn logs(&self) -> String {
        let own = |line: &&str| !line.contains(" DEBUG ") || line.contains(" DEBUG actorbot");
        let log = self.app.log();
        let daemon: Vec<&str> = log.lines().filter(own).collect();
        let tg = self.tg.log_tail(400);
        let tg: Vec<&str> = tg.lines().filter(|l| !l.ends_with(" getUpdates")).collect();
        format!(
            "--- actorbot ---\n{}\n--- {} ---\n{}\n--- {} ---\n{}",
            tail(&daemon.join("\n"), 80),
            self.tg.name,
            tail(&tg.join("\n"), 40),
            self.ai.name,
            self.ai.log_tail(20)
        )
    }

    /// Everything the emulator holds for the bot, oldest first (its
    /// `/getUpdatesHistory`): the user's updates and the bot's messages,
    /// edits applied.
    async fn history(&self) -> Vec<Value> {
        match call(
            "POST",
            &format!("{}/getUpdatesHistory", self.tg.url()),
            Some(&json!({ "token": TOKEN })),
        )
        .await
        {
            Some((200, body)) => body["result"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The bot's messages to the user's chat: (message_id, message).
    async fn bot_messages(&self) -> Vec<(i64, Value)> {
        self.history()
            .await
            .into_iter()
            .filter(|item| {
                item["message"]["chat_id"].to_string().trim_matches('"') == USER_ID.to_string()
            })
            .map(|item| {
                (
                    item["messageId"].as_i64().unwrap_or(0),
                    item["message"].clone(),
                )
            })
            .collect()
    }

    /// The sum of the daemon's metric lines that start with `prefix` (a
    /// name, or a name and labels).
    async fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = self.app.get("/metrics").await;
        text.lines()
            .filter(|line| {
                line.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with([' ', '{']) || prefix.ends_with('}'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The user sends `text` through the package's client routes:
    /// `/sendCommand` (with its `bot_command` entity) for a command,
    /// `/sendMessage` otherwise.
    async fn user_sends(&self, text: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock")
            .as_secs();
        let mut message = json!({
            "botToken": TOKEN,
            "from": {"id": USER_ID, "is_bot": false, "first_name": FIRST_NAME, "username": "ada_l", "language_code": "en"},
            "chat": {"id": USER_ID, "type": "private", "first_name": FIRST_NAME, "username": "ada_l"},
            "date": now,
            "text": text,
        });
        let route = if text.starts_with('/') {
            let length = text.split_whitespace().next().unwrap_or(text).len();
            message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": length}]);
            "sendCommand"
        } else {
            "sendMessage"
        };
        let answer = call(
            "POST",
            &format!("{}/{route}", self.tg.url()),
            Some(&message),
        )
        .await;
        assert!(
            matches!(answer, Some((200, _))),
            "POST /{route}: {answer:?}\n{}",
            self.logs()
        );
    }

    /// Waits for a bot message after `after` (a message_id) that `matches`.
    async fn wait_for_bot_message(
        &self,
        what: &str,
        after: i64,
        matches: impl Fn(&Value) -> bool,
    ) -> (i64, Value) {
        wait_until(
            what,
            || self.logs(),
            || async {
                self.bot_messages()
                    .await
                    .into_iter()
                    .find(|(id, message)| *id > after && matches(message))
            },
        )
        .await
    }
}

fn text_of(message: &Value) -> &str {
    message["text"].as_str().unwrap_or_default()
}

#[actix_rt::test]
async fn a_conversation_through_telegram_test_api_and_fakellm() {
    let dir = install_dir();
    let modules = dir.join("node/node_modules");
    let fakellm = dir.join("venv/bin/fakellm");
    let installed = modules.join("telegram-test-api/package.json").is_file()
        && fakellm.is_file()
        && Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var("ACTORBOT_REQUIRE_THIRD_PARTY").as_deref() != Ok("1"),
            "ACTORBOT_REQUIRE_THIRD_PARTY=1 but the third-party servers are not installed in {} \
             (or node is missing): run tests/third_party/install.sh",
            dir.display()
        );
        // Straight to stderr: the test harness captures print macros.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the third-party servers test (telegram-test-api, fakellm) is not installed in {}: run tests/third_party/install.sh",
            dir.display()
        );
        return;
    }
    // The rule's answer is the one this test expects.
    let rules = std::fs::read_to_string(format!("{SOURCES}/fakellm.yaml")).expect("the rules");
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words(&rules).contains(&words(ANSWER)),
        "fakellm.yaml's answer differs from ANSWER"
    );

    let started = Instant::now();
    let logs = unique_dir("third-party");
    let tg_port = free_addr().port();
    let mut tg = Server::start(
        "telegram-test-api",
        Command::new("node")
            .arg(format!("{SOURCES}/tg-front.js"))
            .arg(tg_port.to_string())
            .env("NODE_PATH", &modules),
        &logs,
        tg_port,
    );
    let ai_port = free_addr().port();
    let mut ai = Server::start(
        "fakellm",
        Command::new(&fakellm)
            .args(["serve", "--host", "127.0.0.1", "--port"])
            .arg(ai_port.to_string())
            .arg("--config")
            .arg(format!("{SOURCES}/fakellm.yaml")),
        &logs,
        ai_port,
    );
    // Ready when their HTTP ports answer.
    let tg_ready = format!("{}/getUpdatesHistory", tg.url());
    let ai_ready = format!("{}/_fakellm/stats", ai.url());
    let tg_log = tg.log.clone();
    let ai_log = ai.log.clone();
    let context = || {
        format!(
            "--- telegram-test-api ---\n{}\n--- fakellm ---\n{}",
            tail(&std::fs::read_to_string(&tg_log).unwrap_or_default(), 20),
            tail(&std::fs::read_to_string(&ai_log).unwrap_or_default(), 20)
        )
    };
    wait_until("the servers answer", context, || {
        tg.assert_running();
        ai.assert_running();
        let (tg_ready, ai_ready) = (tg_ready.clone(), ai_ready.clone());
        async move {
            let tg = call("POST", &tg_ready, Some(&json!({"token": TOKEN}))).await;
            let ai = call("GET", &ai_ready, None).await;
            (matches!(tg, Some((200, _))) && matches!(ai, Some((200, _)))).then_some(())
        }
    })
    .await;
    let servers_up = started.elapsed();

    let app = TestApp::builder()
        .env("TELEGRAM_API_URL", tg.url())
        .env("AI_API_URL", format!("{}/v1", ai.url()))
        .start()
        .await;
    let world = World { tg, ai, app };

    // /start: the greeting names the user.
    world.user_sends("/start").await;
    let (greeting_id, greeting) = world
        .wait_for_bot_message("the greeting", 0, |m| !text_of(m).is_empty())
        .await;
    assert!(
        text_of(&greeting).starts_with(&format!("Hello, {FIRST_NAME}!")),
        "the greeting: {greeting}"
    );

    // A question: the answer streams from fakellm; drafts are refused (404),
    // so it is shown in a message that is edited until it holds all of it.
    world.user_sends(QUESTION).await;
    let (answer_id, _) = world
        .wait_for_bot_message("the AI's answer, complete", greeting_id, |m| {
            text_of(m) == ANSWER
        })
        .await;
    let after_question: Vec<String> = world
        .bot_messages()
        .await
        .into_iter()
        .filter(|(id, _)| *id > greeting_id)
        .map(|(_, m)| text_of(&m).to_string())
        .collect();
    assert_eq!(
        after_question,
        [ANSWER],
        "the answer comes as one message\n{}",
        world.logs()
    );

    // ... and the daemon knows it was delivered: each edit was taken, though
    // the package answers them with `"result": null`.
    wait_until(
        "the answer counted as a delivered reply",
        || world.logs(),
        || async { (world.metric("actorbot_replies_total").await >= 2.0).then_some(()) },
    )
    .await;
    assert!(
        world
            .metric("actorbot_telegram_sent_total{method=\"editMessageText\"}")
            .await
            >= 1.0,
        "no edit counted as sent\n{}",
        world.logs()
    );

    // /report: a PDF of the conversation.
    world.user_sends("/report").await;
    let (_, report) = world
        .wait_for_bot_message("the report", answer_id, |m| m.get("document").is_some())
        .await;
    let document = &report["document"];
    let file_name = document["file_name"].as_str().unwrap_or_default();
    assert!(
        file_name.starts_with("report-") && file_name.ends_with(".pdf"),
        "the report's file name: {report}"
    );
    assert_eq!(document["mime_type"], "application/pdf", "{report}");
    assert!(
        report["caption"]
            .as_str()
            .is_some_and(|c| c.starts_with("Your conversation report")),
        "the report's caption: {report}"
    );
    // Downloaded the Bot API way: getFile, then the file's path.
    let file_id = document["file_id"].as_str().expect("a file_id");
    let got = call(
        "POST",
        &format!("{}/bot{TOKEN}/getFile", world.tg.url()),
        Some(&json!({ "file_id": file_id })),
    )
    .await;
    let file_path = match &got {
        Some((200, body)) => body["result"]["file_path"].as_str().unwrap_or_default(),
        _ => "",
    };
    assert!(!file_path.is_empty(), "getFile: {got:?}");
    let mut response = client()
        .get(format!("{}/file/bot{TOKEN}/{file_path}", world.tg.url()))
        .send()
        .await
        .expect("the download");
    assert_eq!(response.status().as_u16(), 200);
    let pdf = response.body().limit(16 << 20).await.expect("the PDF");
    assert!(
        pdf.starts_with(b"%PDF"),
        "not a PDF: {:?}",
        &pdf[..pdf.len().min(16)]
    );
    let text = words(&extract_text(&pdf).expect("the report's text").join("\n"));
    for needle in [FIRST_NAME, QUESTION, "Each actor owns its state"] {
        assert!(
            text.contains(needle),
            "{needle:?} not in the report:\n{text}"
        );
    }

    // Nothing failed but the one draft the server has no method for.
    assert_eq!(
        world.metric("actorbot_telegram_send_failures_total").await,
        1.0,
        "sends failed besides the refused draft\n{}",
        world.logs()
    );

    let _ = writeln!(
        std::io::stderr(),
        "third-party servers up in {servers_up:?}, conversation done in {:?}",
        started.elapsed()
    );
}
