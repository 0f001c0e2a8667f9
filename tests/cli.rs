//! The command line: `config` output and configuration errors at start.

use std::process::Command;

fn actorbot(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_actorbot"));
    command
        .args(args)
        .env_clear()
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("actorbot runs")
}

#[test]
fn config_prints_the_effective_configuration_without_secrets() {
    let output = actorbot(
        &["config"],
        &[
            ("APP_PROFILE", "high-load"),
            ("BOT_TOKEN", "123456:SUPER-secret"),
            ("DATABASE_URL", "postgres://bot:DBPASS@db/actorbot"),
            ("POLLING_TIMEOUT", "25"),
        ],
    );
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains("SUPER-secret") && !text.contains("DBPASS"),
        "{text}"
    );
    assert!(text.contains("profile = \"high-load\""), "{text}");
    assert!(text.contains("polling_timeout = 25"), "{text}");
    assert!(text.contains("telegram_max_connections = 256"), "{text}");
    assert!(
        text.contains("postgres://bot:<redacted>@db/actorbot"),
        "{text}"
    );
}

#[test]
fn a_malformed_value_stops_the_start_with_one_line() {
    let output = actorbot(
        &["run"],
        &[("BOT_TOKEN", "123456:abc"), ("HTTP_TIMEOUT", "soon")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "actorbot: configuration error: HTTP_TIMEOUT: expected a number, got \"soon\""
    );
}

#[test]
fn run_without_a_token_names_the_variable() {
    let output = actorbot(&["run"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("BOT_TOKEN is not set"), "{stderr}");
}

#[test]
fn migrate_creates_the_schema_once() {
    let dir = std::env::temp_dir().join(format!("actorbot-cli-migrate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.display().to_string();
    let first = actorbot(&["migrate"], &[("DATA_DIR", &data_dir)]);
    assert!(first.status.success(), "{first:?}");
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("applied 20261124000000"), "{text}");
    assert!(dir.join("actorbot.sqlite3").exists());
    let second = actorbot(&["migrate"], &[("DATA_DIR", &data_dir)]);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn migrate_names_an_unreachable_database_without_its_password() {
    let output = actorbot(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://bot:hunter2@127.0.0.1:1/actorbot",
        )],
    );
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("postgres") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn loadtest_reports_as_json_and_its_slo_sets_the_exit_status() {
    let output =
        std::env::temp_dir().join(format!("actorbot-loadtest-{}.json", std::process::id()));
    let users = 6;
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_actorbot"))
            .args(["loadtest", "--users", &users.to_string(), "--duration", "3"])
            .args([
                "--ramp",
                "0.5",
                "--think",
                "0.2",
                "--quiet",
                "--ai-word-delay-ms",
                "1",
            ])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP_PROFILE", "testing")
            .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .output()
            .expect("the loadtest runs")
    };
    let out = run(&["--output", output.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("the report")).expect("JSON");
    assert_eq!(report["users"], users);
    assert!(
        report["interactions"].as_u64().unwrap() >= users as u64,
        "{report}"
    );
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let kinds = report["kinds"].as_array().expect("kinds");
    assert!(kinds.iter().any(|k| k["kind"] == "start"), "{report}");
    assert!(report["peak_rss_mb"].as_f64().unwrap() > 1.0, "{report}");

    let impossible = run(&["--slo", "p95=0ms"]);
    assert_eq!(
        impossible.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&impossible.stdout)
    );
    assert!(String::from_utf8_lossy(&impossible.stdout).contains("SLO missed: p95"));
}

/// A GET's status over plain HTTP/1.0, or `None` while nothing answers.
fn status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Kills the child when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn loadtest_drives_the_sandbox_through_its_emulator_url() {
    let dir = std::env::temp_dir().join(format!("actorbot-cli-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let log = dir.join("sandbox.log");
    let sandbox = std::process::Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .arg("sandbox")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APP_PROFILE", "testing")
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .env("HTTP_ADDR", addr.to_string())
        .env("DATA_DIR", dir.join("data"))
        // Simulated users are quicker than people.
        .env("RATE_LIMIT_PER_USER", "1000000")
        .env("ANTI_FLOOD_MESSAGES", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the sandbox starts");
    let _sandbox = Killed(sandbox);
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while status_of(addr, "/ready") != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox was not ready: {}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let output = dir.join("report.json");
    let url = format!("http://{addr}/sandbox/emulator");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .args([
            "loadtest",
            "--emulator",
            &url,
            "--users",
            "20",
            "--duration",
            "3",
        ])
        .args([
            "--ramp", "0.5", "--think", "0.5", "--quiet", "--drain", "30",
        ])
        .args(["--output", output.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APP_PROFILE", "testing")
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .output()
        .expect("the loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("the report")).expect("JSON");
    assert_eq!(report["users"], 20, "{report}");
    assert!(report["interactions"].as_u64().unwrap() >= 20, "{report}");
    assert!(
        report["replies_per_interaction"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["lost"], 0, "{report}\n{}", log());
    assert_eq!(report["errors"], 0, "{report}\n{}", log());
    // The daemon is not the tool's child: what only its process shows is
    // absent, not zero.
    assert!(report["peak_rss_mb"].is_null(), "{report}");
    assert!(report["cpu_seconds"].is_null(), "{report}");
    assert!(stdout.contains("peak RSS not measured"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_socks_proxy_for_the_bot_api_stops_the_start_with_one_line() {
    let data = std::env::temp_dir().join(format!("actorbot-cli-socks-{}", std::process::id()));
    let output = actorbot(
        &["run"],
        &[
            ("BOT_TOKEN", "123:abc"),
            ("DATA_DIR", &data.display().to_string()),
            ("ALL_PROXY", "socks5://user:secret@127.0.0.1:1080"),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("socks5"))
        .unwrap_or_else(|| panic!("no line names the proxy: {stderr}"));
    assert!(line.contains("not supported"), "{line}");
    assert!(!stderr.contains("secret"), "{stderr}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn an_unusable_ca_file_or_http_version_stops_the_start_naming_the_variable() {
    let data = std::env::temp_dir().join(format!("actorbot-cli-ca-{}", std::process::id()));
    let missing = data.join("no-such-ca.pem");
    let data_dir = data.display().to_string();
    let ca_file = missing.display().to_string();
    let output = actorbot(
        &["run"],
        &[
            ("BOT_TOKEN", "123:abc"),
            ("DATA_DIR", &data_dir),
            ("TELEGRAM_CA_FILE", &ca_file),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TELEGRAM_CA_FILE") && stderr.contains(&ca_file),
        "{stderr}"
    );

    let output = actorbot(
        &["run"],
        &[("BOT_TOKEN", "123:abc"), ("TELEGRAM_HTTP_VERSION", "3")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "actorbot: configuration error: TELEGRAM_HTTP_VERSION: expected 1.1 or 2"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn an_untrusted_certificate_is_named_with_the_setting_that_trusts_it() {
    use std::io::BufRead;
    let token = "7000001:UNTRUSTED-secret";
    let fake = actorbot_testkit::telegram::FakeTelegram::start(
        actorbot_testkit::telegram::FakeTelegramConfig {
            token: token.into(),
            tls: true,
            ..Default::default()
        },
    )
    .expect("the fake Telegram starts");
    let data = std::env::temp_dir().join(format!("actorbot-cli-tls-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .arg("run")
        .env_clear()
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .env("BOT_TOKEN", token)
        .env("TELEGRAM_API_URL", fake.api_url())
        .env("DATA_DIR", &data)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("actorbot runs");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The start retries getMe; its first failure is the line wanted.
    let line = loop {
        match seen.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if line.contains("getMe failed") => break line,
            Ok(_) => continue,
            Err(err) => panic!("no getMe failure logged: {err}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    assert!(line.contains("certificate"), "{line}");
    assert!(line.contains("TELEGRAM_CA_FILE"), "{line}");
    assert!(!line.contains("UNTRUSTED-secret"), "{line}");
}
