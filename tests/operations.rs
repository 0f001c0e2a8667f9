//! Operations end to end: the health checker, readiness, alerts to admins,
//! admin commands, the token-guarded endpoints, the dashboard page in a
//! headless browser and the terminal dashboard.

mod common;

use std::process::Command;
use std::time::Duration;

use actorbot_testkit::proxy::TcpProxy;
use common::{PgDatabase, TOKEN, TestApp, redis_url};

const WAIT: Duration = Duration::from_secs(30);

fn status_of(body: &serde_json::Value) -> &str {
    body["status"].as_str().unwrap_or("")
}

#[actix_rt::test]
async fn a_blocked_actor_turns_health_to_503_and_names_it() {
    let app = TestApp::builder()
        .env("DEBUG_ENDPOINTS", "true")
        .start()
        .await;
    let (status, _) = app.get("/health").await;
    assert_eq!(status, 200);
    let (status, _) = app
        .request("POST", "/debug/stall/journal?secs=4", None)
        .await;
    assert_eq!(status, 202);
    let body = app
        .wait_for_json("/health", WAIT, |status, _| status == 503)
        .await;
    assert_eq!(status_of(&body), "unhealthy");
    let journal = body["actors"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "journal"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(journal["health"]["state"], "unhealthy", "{body}");
    assert!(
        journal["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no answer")),
        "{body}"
    );
    // Once the actor answers again, so does /health.
    app.wait_for_json("/health", WAIT, |status, _| status == 200)
        .await;
}

#[actix_rt::test]
async fn redis_going_away_is_degraded_while_the_bot_answers_and_recovers() {
    let Some(url) = redis_url("redis_going_away_is_degraded") else {
        return;
    };
    let upstream = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("ACTORBOT_TEST_REDIS_URL as redis://host:port");
    let proxy = TcpProxy::start(upstream).expect("the proxy starts");
    let app = TestApp::builder()
        .env("REDIS_URL", format!("redis://{}", proxy.addr()))
        .env("HEALTH_INTERVAL", 0.3)
        .start()
        .await;
    let healthy = app
        .wait_for_json("/ready", WAIT, |s, b| s == 200 && status_of(b) == "ready")
        .await;
    assert_eq!(
        healthy["dependencies"]["cache"]["backend"], "redis",
        "{healthy}"
    );

    proxy.cut();
    let ready = app
        .wait_for_json("/ready", WAIT, |s, b| {
            s == 200 && status_of(b) == "degraded"
        })
        .await;
    assert_eq!(
        ready["dependencies"]["cache"]["health"]["state"], "degraded",
        "{ready}"
    );
    let (status, health) = app.get_json("/health").await;
    assert_eq!((status, status_of(&health)), (200, "degraded"), "{health}");
    // The bot keeps answering meanwhile.
    app.tg.inject_text(81_001, "/start");
    app.tg
        .wait_until(WAIT, |s| !s.messages_to(81_001).is_empty())
        .await
        .expect("answered while Redis is away");

    proxy.restore();
    app.wait_for_json("/ready", WAIT, |s, b| s == 200 && status_of(b) == "ready")
        .await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(status_of(&health), "ok", "{health}");
}

#[actix_rt::test]
async fn an_unreachable_database_turns_ready_to_503() {
    let Some(db) = PgDatabase::create("an_unreachable_database_turns_ready_to_503") else {
        return;
    };
    let (proxy, url) = db.through_proxy();
    let app = TestApp::builder().env("DATABASE_URL", url).start().await;
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, 200);
    proxy.cut();
    let ready = app.wait_for_json("/ready", WAIT, |s, _| s == 503).await;
    assert!(
        ready["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "database")),
        "{ready}"
    );
    proxy.restore();
    app.wait_for_json("/ready", WAIT, |s, _| s == 200).await;
}

#[actix_rt::test]
async fn an_alert_reaches_the_admins_once_and_its_resolution_once() {
    let admin = 82_001;
    let app = TestApp::builder()
        .env("ADMIN_IDS", admin)
        .env("HEALTH_INTERVAL", 0.3)
        .env("ALERT_P95_LATENCY_MS", 0.001)
        .env("ANTI_FLOOD_MESSAGES", 1000)
        .start()
        .await;
    for user in 0..5 {
        app.tg.inject_text(82_100 + user, "/start");
    }
    let about_latency = |s: &actorbot_testkit::telegram::FakeState, needle: &str| {
        s.messages_to(admin)
            .iter()
            .filter(|m| m.text.contains("latency") && m.text.contains(needle))
            .count()
    };
    app.tg
        .wait_until(WAIT, |s| about_latency(s, "alert") >= 1)
        .await
        .unwrap_or_else(|e| panic!("{e}: no alert; log:\n{}", app.log()));
    // With no more replies, the next samples have no latency: resolved.
    app.tg
        .wait_until(WAIT, |s| about_latency(s, "resolved") >= 1)
        .await
        .unwrap_or_else(|e| panic!("{e}: no resolution; log:\n{}", app.log()));
    // Several more rounds: nothing new about this rule.
    let (_, status) = app.get_json("/performance/status").await;
    let rounds_then = status["uptime_s"].as_u64().unwrap_or(0);
    app.wait_for_json("/performance/status", WAIT, |_, b| {
        b["uptime_s"].as_u64().unwrap_or(0) >= rounds_then + 2
    })
    .await;
    let (alerts, resolutions) = app.tg.read(|s| {
        (
            s.messages_to(admin)
                .iter()
                .filter(|m| m.text.contains("latency") && m.text.contains("alert"))
                .count(),
            s.messages_to(admin)
                .iter()
                .filter(|m| m.text.contains("latency") && m.text.contains("resolved"))
                .count(),
        )
    });
    assert_eq!((alerts, resolutions), (1, 1));
    let (_, status) = app.get_json("/performance/status").await;
    assert!(
        status["alerts"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["rule"] == "p95_latency" && x["state"] == "resolved")),
        "{status}"
    );
}

#[actix_rt::test]
async fn admin_commands_answer_admins_only() {
    let admin = 83_001;
    let stranger = 83_002;
    let app = TestApp::builder()
        .env("ADMIN_IDS", admin)
        .env("HEALTH_INTERVAL", 0.3)
        .env("ANTI_FLOOD_MESSAGES", 1000)
        .start()
        .await;
    // Replies only: the admin also receives alerts (the testing profile's
    // AI backend is unreachable on purpose).
    let replies = |s: &actorbot_testkit::telegram::FakeState, chat: i64| -> Vec<String> {
        s.messages_to(chat)
            .into_iter()
            .map(|m| m.text)
            .filter(|t| !t.contains("actorbot alert") && !t.contains("actorbot: resolved"))
            .collect()
    };
    let answers = |chat: i64, n: usize| {
        let tg = app.tg.clone();
        async move {
            tg.wait_until(WAIT, |s| replies(s, chat).len() >= n)
                .await
                .expect("answered");
            tg.read(|s| replies(s, chat))[n - 1].clone()
        }
    };
    app.tg.inject_text(admin, "/health");
    let health = answers(admin, 1).await;
    assert!(
        health.contains("Status:") && health.contains("database"),
        "{health}"
    );
    app.tg.inject_text(admin, "/performance");
    let performance = answers(admin, 2).await;
    assert!(
        performance.contains("updates/s") || performance.contains("No figures yet"),
        "{performance}"
    );
    app.tg.inject_text(admin, "/admin_stats");
    let stats = answers(admin, 3).await;
    assert!(stats.contains("1 in conversation now"), "{stats}");
    assert!(stats.contains("Messages today (UTC): 3"), "{stats}");
    assert!(stats.contains("Uptime:"), "{stats}");

    for command in ["/health", "/performance", "/admin_stats"] {
        app.tg.inject_text(stranger, command);
    }
    let last = answers(stranger, 3).await;
    assert!(
        last.contains("I don't know the command /admin_stats"),
        "{last}"
    );
    for message in app.tg.messages_to(stranger) {
        assert!(
            message.text.contains("I don't know the command"),
            "{}",
            message.text
        );
    }
    app.wait_for_log("tried the admin command /health", WAIT)
        .await;
}

#[actix_rt::test]
async fn endpoints_need_the_token_and_config_shows_no_secret() {
    let token = "ops-SECRET-token-42";
    let app = TestApp::builder()
        .env("ADMIN_HTTP_TOKEN", token)
        .env("AI_API_KEY", "sk-SECRET-ai-key")
        .env("HEALTH_INTERVAL", 0.3)
        .start()
        .await;
    for open in ["/health", "/ready"] {
        let (status, _) = app.get(open).await;
        assert_eq!(status, 200, "{open} is open");
    }
    app.tg.inject_text(86_001, "/start");
    app.tg
        .wait_until(WAIT, |s| !s.messages_to(86_001).is_empty())
        .await
        .expect("answered");
    for guarded in [
        "/config",
        "/actors",
        "/metrics",
        "/performance/status",
        "/performance/metrics",
        "/performance/history",
    ] {
        let (status, _) = app.get(guarded).await;
        assert_eq!(status, 401, "{guarded} without the token");
        let (status, _) = app.request("GET", guarded, Some("wrong")).await;
        assert_eq!(status, 401, "{guarded} with a wrong token");
        let (status, _) = app.request("GET", guarded, Some(token)).await;
        assert_eq!(status, 200, "{guarded} with the token");
    }
    let (_, config) = app.request("GET", "/config", Some(token)).await;
    for secret in [token, "sk-SECRET-ai-key", TOKEN] {
        assert!(!config.contains(secret), "{secret} in /config: {config}");
    }
    let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["bot_token"], "<redacted>");
    assert_eq!(config["health_interval"], 0.3);
    assert!(!app.log().contains(token), "the token reached the log");

    // The performance endpoints fill up as samples are taken.
    loop {
        let (_, history) = app
            .request("GET", "/performance/history", Some(token))
            .await;
        let history: serde_json::Value = serde_json::from_str(&history).expect("JSON");
        if history["samples"].as_array().is_some_and(|s| s.len() >= 2) {
            assert_eq!(history["interval_s"], 0.3);
            assert!(
                history["samples"][0]["rss_bytes"].as_u64().unwrap_or(0) > 0,
                "{history}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status) = app.request("GET", "/performance/status", Some(token)).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(
        status["dependencies"]["database"]["health"]["state"], "healthy",
        "{status}"
    );
    assert!(status["current"]["cpu_percent"].is_number(), "{status}");
    let (_, metrics) = app
        .request("GET", "/performance/metrics", Some(token))
        .await;
    assert!(metrics.contains("updates_received_total"), "{metrics}");
}

#[actix_rt::test]
async fn the_terminal_dashboard_prints_once_and_exports() {
    let app = TestApp::builder().env("HEALTH_INTERVAL", 0.3).start().await;
    app.tg.inject_text(84_001, "/start");
    app.wait_for_json("/performance/history", WAIT, |_, b| {
        b["samples"].as_array().is_some_and(|s| s.len() >= 2)
    })
    .await;
    let output = Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .args(["dashboard", "--once", "--url", &app.base_url()])
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("actorbot: "), "{stdout}");
    assert!(stdout.contains("router"), "{stdout}");
    assert!(stdout.contains("database"), "{stdout}");

    let file = app.data_dir.join("export.json");
    let output = Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .args(["dashboard", "--url", &app.base_url(), "--export"])
        .arg(&file)
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("JSON");
    assert!(
        exported["history"]["samples"]
            .as_array()
            .is_some_and(|s| s.len() >= 2)
    );
    assert_eq!(exported["actors"]["name"], "actorbot");
    assert!(exported["status"]["uptime_s"].is_number());

    // The container health check is the same binary.
    let checked = Command::new(env!("CARGO_BIN_EXE_actorbot"))
        .args(["healthcheck", "--url", &app.base_url()])
        .env("CONFIG_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .status()
        .expect("runs");
    assert!(checked.success());
}

#[actix_rt::test]
async fn the_dashboard_draws_its_charts_in_a_headless_browser() {
    if !common::chromium_or_skip("the dashboard's headless-browser test") {
        return;
    }
    let token = "dash-token-7";
    let app = TestApp::builder()
        .env("HEALTH_INTERVAL", 0.3)
        .env("ADMIN_HTTP_TOKEN", token)
        .start()
        .await;
    for user in 0..20 {
        app.tg.inject_text(85_000 + user, "/start");
    }
    app.tg
        .wait_until(WAIT, |s| s.total_messages() >= 20)
        .await
        .expect("answered");
    loop {
        let (_, history) = app
            .request("GET", "/performance/history", Some(token))
            .await;
        let history: serde_json::Value = serde_json::from_str(&history).expect("JSON");
        if history["samples"].as_array().is_some_and(|s| s.len() >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("{}/dashboard?token={token}", app.base_url());
    let check = common::check_page(url, "dashboard.png", Duration::from_secs(12)).await;
    assert!(
        check.console_errors.is_empty(),
        "console: {:?}",
        check.console_errors
    );
    assert!(
        check.dom.contains("data-charts-drawn=\"4\""),
        "charts: {}",
        &check.dom[..check.dom.len().min(2000)]
    );
    let actors = check
        .dom
        .split("data-actors=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(actors >= 8, "actor rows: {actors}");
    assert!(
        check.dom.contains("data-banner-shown=\"0\""),
        "an error banner showed"
    );
    let shot = check.screenshot.expect("a screenshot");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// The replies counted by the performance summaries in `log`, added up.
fn replies_in_summaries(log: &str) -> u64 {
    log.lines()
        .filter_map(|line| line.split_once("performance over the last "))
        .filter_map(|(_, rest)| rest.split_once(" updates, "))
        .filter_map(|(_, rest)| rest.split_once(" replies")?.0.parse::<u64>().ok())
        .sum()
}

#[actix_rt::test]
async fn the_performance_summary_counts_what_happened() {
    let app = TestApp::builder()
        .env("SUMMARY_INTERVAL", 0.3)
        .start()
        .await;
    let users = [95_001, 95_002, 95_003];
    for user in users {
        app.tg.inject_text(user, "/start");
    }
    for user in users {
        app.tg
            .wait_for_messages(user, 1, WAIT)
            .await
            .expect("answered");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while replies_in_summaries(&app.log()) < users.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the summaries never counted the replies: {}",
            app.log()
        );
        app.wait_for_log_count(
            "performance over the last",
            app.log().matches("performance over the last").count() + 1,
            WAIT,
        )
        .await;
    }
    assert_eq!(replies_in_summaries(&app.log()), users.len() as u64);
    assert!(app.log().contains("Telegram 429s 0"), "{}", app.log());
}
