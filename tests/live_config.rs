//! The configuration changed while the daemon runs: `PUT /config`, SIGHUP,
//! profiles, refusals, and the cleanup on demand.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use common::{TestApp, TestAppBuilder};
use serde_json::json;

const TOKEN: &str = "live-admin-token";
const WAIT: Duration = Duration::from_secs(20);

fn fake_ai() -> FakeAi {
    FakeAi::start(FakeAiConfig::default()).expect("the fake AI starts")
}

fn with_admin(ai: &FakeAi) -> TestAppBuilder {
    common::unthrottled(TestApp::builder())
        .env("ADMIN_HTTP_TOKEN", TOKEN)
        .env("AI_API_URL", ai.api_url())
}

/// Users `first..first+count` each send `/start`; answers their ids.
fn crowd(app: &TestApp, first: i64, count: i64) -> Vec<i64> {
    let users: Vec<i64> = (first..first + count).collect();
    for user in &users {
        app.tg.inject_text(*user, "/start");
    }
    users
}

/// Every user of `users` answered exactly once.
async fn each_answered_once(app: &TestApp, users: &[i64]) {
    app.tg
        .wait_until(WAIT, |s| {
            users.iter().all(|u| !s.messages_to(*u).is_empty())
        })
        .await
        .expect("every user answered");
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for message in app.tg.all_messages() {
        *counts.entry(message.chat_id).or_default() += 1;
    }
    for user in users {
        assert_eq!(counts[user], 1, "user {user}");
    }
}

/// GETs a JSON endpoint with the admin token.
async fn get(app: &TestApp, path: &str) -> serde_json::Value {
    let (status, body) = app.request("GET", path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// How many of `user`'s replies say they are sending too fast.
fn told_too_fast(app: &TestApp, user: i64) -> usize {
    app.tg
        .messages_to(user)
        .iter()
        .filter(|m| m.text.contains("too fast"))
        .count()
}

#[actix_rt::test]
async fn put_config_changes_a_rate_limit_and_the_model_under_load_losing_nothing() {
    let ai = fake_ai();
    let app = with_admin(&ai).start().await;
    let before = crowd(&app, 10_000, 100);
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"ANTI_FLOOD_MESSAGES": 2, "anti_flood_window": 60, "ai_model": "model-b"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let changed: Vec<&str> = body["changed"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert_eq!(
        changed,
        ["ai_model", "anti_flood_messages", "anti_flood_window"]
    );
    let after = crowd(&app, 20_000, 100);
    each_answered_once(&app, &[before, after].concat()).await;

    // The new anti-flood limit: the third message in a minute is refused.
    let user = 30_001;
    for n in 0..3 {
        app.tg.inject_text(user, &format!("/help {n}"));
    }
    app.tg
        .wait_until(WAIT, |s| s.messages_to(user).len() == 3)
        .await
        .expect("three replies");
    assert_eq!(told_too_fast(&app, user), 1);
    // The new model for the next question.
    app.tg.inject_text(30_002, "Which model are you?");
    app.tg
        .wait_for_messages(30_002, 1, WAIT)
        .await
        .expect("answered");
    let requests = ai.requests();
    assert_eq!(requests.last().map(|r| r.model.as_str()), Some("model-b"));

    let config = get(&app, "/config").await;
    assert_eq!(config["anti_flood_messages"], 2);
    assert_eq!(config["sources"]["anti_flood_messages"], "runtime");
    assert_eq!(config["sources"]["admin_http_token"], "environment");
    assert_eq!(config["sources"]["cleanup_interval"], "default");
    app.wait_for_log("configuration changed by PUT /config: AI_MODEL", WAIT)
        .await;
}

#[actix_rt::test]
async fn a_bad_value_or_a_fixed_setting_changes_nothing() {
    let ai = fake_ai();
    let app = with_admin(&ai).start().await;
    let before = get(&app, "/config").await;
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"rate_limit_per_user": 5, "anti_flood_window": "soon"}),
        )
        .await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().expect("one line");
    assert!(error.contains("ANTI_FLOOD_WINDOW"), "{error}");
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"rate_limit_per_user": 5, "http_addr": "0.0.0.0:9"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "HTTP_ADDR cannot change while the daemon runs: set it and restart"
    );
    let after = get(&app, "/config").await;
    assert_eq!(before, after, "a refused change changed something");
    // And without the token, nothing is even considered.
    let (status, _) = app
        .send_json("PUT", "/config", None, json!({"rate_limit_per_user": 5}))
        .await;
    assert_eq!(status, 401);
}

#[actix_rt::test]
async fn without_an_admin_token_changes_are_refused_with_how_to_enable_them() {
    let app = common::unthrottled(TestApp::builder()).start().await;
    for (method, path) in [
        ("PUT", "/config"),
        ("POST", "/config/profile/development"),
        ("POST", "/cleanup"),
    ] {
        let (status, body) = app.send_json(method, path, None, json!({})).await;
        assert_eq!(status, 403, "{method} {path}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("ADMIN_HTTP_TOKEN"),
            "{body}"
        );
    }
    let (status, _) = app.get("/config/profiles").await;
    assert_eq!(status, 200);
}

/// A copy of the configuration files the test may edit.
fn config_copy() -> PathBuf {
    let dir = common::unique_dir("config");
    std::fs::create_dir_all(&dir).expect("config dir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(source).expect("config files") {
        let path = entry.expect("an entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("a name"))).expect("copied");
    }
    dir
}

#[actix_rt::test]
async fn sighup_rereads_the_files_and_a_fixed_setting_waits_for_a_restart() {
    let ai = fake_ai();
    let config = config_copy();
    let app = with_admin(&ai)
        .env("CONFIG_DIR", config.display())
        .start()
        .await;
    let prompt = "You answer in one word, from the re-read file.";
    let profile = config.join("testing.toml");
    let mut text = std::fs::read_to_string(&profile).expect("testing.toml");
    text.push_str(&format!(
        "\nai_system_prompt = \"{prompt}\"\nsupervisor_exit_grace = 7.0\n"
    ));
    std::fs::write(&profile, text).expect("written");
    let users = crowd(&app, 40_000, 50);
    app.signal("HUP");
    app.wait_for_log("configuration changed by SIGHUP: AI_SYSTEM_PROMPT", WAIT)
        .await;
    app.wait_for_log(
        "SUPERVISOR_EXIT_GRACE changed but take effect only after a restart",
        WAIT,
    )
    .await;
    app.tg.inject_text(41_000, "Hello?");
    app.tg
        .wait_for_messages(41_000, 1, WAIT)
        .await
        .expect("answered");
    let last = ai.requests().pop().expect("a request");
    assert_eq!(last.messages[0], ("system".into(), prompt.into()));
    each_answered_once(&app, &users).await;
    let config = get(&app, "/config").await;
    assert_ne!(config["supervisor_exit_grace"], 7.0);
    assert_eq!(config["sources"]["ai_system_prompt"], "profile");
}

#[actix_rt::test]
async fn a_profile_applies_on_top_and_the_environment_still_wins() {
    let ai = fake_ai();
    let app = with_admin(&ai).env("LOG_LEVEL", "warn").start().await;
    let profiles = get(&app, "/config/profiles").await;
    assert_eq!(profiles["current"], "testing");
    let names: Vec<&str> = profiles["profiles"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"high-load"), "{names:?}");
    let (status, body) = app
        .send_json(
            "POST",
            "/config/profile/development",
            Some(TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let config = get(&app, "/config").await;
    assert_eq!(config["profile"], "development");
    assert_eq!(
        config["log_level"], "warn",
        "the environment lost to the profile"
    );
    assert!(
        body["needs_restart"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|k| k == "db_pool_max_size"),
        "{body}"
    );
    let (status, body) = app
        .send_json("POST", "/config/profile/nonsense", Some(TOKEN), json!({}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown profile"),
        "{body}"
    );
}

#[actix_rt::test]
async fn post_cleanup_frees_what_it_reports() {
    let ai = fake_ai();
    let app = with_admin(&ai)
        .env("INBOX_RETENTION", 0.001)
        .env("TEMP_FILE_MAX_AGE", 0.001)
        .env("USER_STATE_TIMEOUT", 3600)
        .start()
        .await;
    let users = crowd(&app, 50_000, 5);
    each_answered_once(&app, &users).await;
    let temp = app.data_dir.join("tmp");
    std::fs::create_dir_all(&temp).expect("temp dir");
    for n in 0..3 {
        std::fs::write(temp.join(format!("left-{n}.tmp")), vec![0u8; 1000]).expect("a file");
    }
    let (status, freed) = app
        .send_json("POST", "/cleanup", Some(TOKEN), json!({}))
        .await;
    assert_eq!(status, 200, "{freed}");
    assert_eq!(freed["files"], 3);
    assert_eq!(freed["bytes"], 3000);
    assert_eq!(std::fs::read_dir(&temp).expect("temp dir").count(), 0);
    // Each user's row is marked done a moment after its reply: the rows
    // reported over the runs add up to the five, none counted twice.
    let mut rows = freed["inbox_rows"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + WAIT;
    while rows < users.len() as u64 && std::time::Instant::now() < deadline {
        let (_, again) = app
            .send_json("POST", "/cleanup", Some(TOKEN), json!({}))
            .await;
        assert_eq!(again["files"], 0, "a file was freed twice");
        rows += again["inbox_rows"].as_u64().unwrap_or(0);
    }
    assert_eq!(rows, users.len() as u64);
}

/// The memory guard's last reading, in MiB, from `/actors`.
async fn rss_mb(app: &TestApp) -> f64 {
    let tree = get(app, "/actors").await;
    common::find_node(&tree, "memory").expect("the memory guard")["details"]["rss_mb"]
        .as_f64()
        .unwrap_or(0.0)
}

/// A long answer: each session keeps its exchanges in memory.
fn long_answer(_: &[(String, String)]) -> String {
    "All work and no play. ".repeat(180)
}

#[actix_rt::test]
async fn the_memory_limit_holds_under_a_crowd_and_every_update_is_answered() {
    let ai = FakeAi::start(FakeAiConfig {
        streaming: false,
        answer: long_answer,
        ..FakeAiConfig::default()
    })
    .expect("the fake AI starts");
    let app = with_admin(&ai)
        .env("MAX_USER_STATES", 1_000_000)
        .env("USER_STATE_TIMEOUT", 3600)
        .env("AI_SEMAPHORE_LIMIT", 64)
        .env("AI_QUEUE_SIZE", 100_000)
        .start()
        .await;
    // Warm up, then set the limit a little above what the daemon holds.
    let warm: Vec<i64> = (100_000..100_500).collect();
    for user in &warm {
        app.tg.inject_text(*user, &format!("Warm up {user}"));
    }
    each_answered_once(&app, &warm).await;
    let baseline = rss_mb(&app).await;
    let limit = (baseline + 24.0).ceil() as u64;
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"memory_limit_mb": limit}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A crowd whose conversations, kept for an hour, would need far more,
    // arriving at a thousand questions a second.
    let users = 12_000;
    let injecting = {
        let tg = app.tg.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            for wave in (200_000..200_000 + users).collect::<Vec<i64>>().chunks(100) {
                ticks.tick().await;
                for user in wave {
                    tg.inject_text(*user, &format!("A question from {user}"));
                }
            }
        })
    };
    let figures = || async {
        let (_, metrics) = app.request("GET", "/metrics", Some(TOKEN)).await;
        let figure = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            figure("actorbot_memory_shed_total{what=\"sessions\"} "),
            figure("actorbot_intake_held_for_memory_total "),
        )
    };
    let mut peak = 0.0f64;
    let total = warm.len() + users as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while app.tg.total_messages() < total {
        if std::time::Instant::now() > deadline {
            let (shed, held) = figures().await;
            panic!(
                "{} of {total} answered; memory {:.0} MB, limit {limit} MB; {shed} sessions shed, intake held {held} times",
                app.tg.total_messages(),
                rss_mb(&app).await
            );
        }
        peak = peak.max(rss_mb(&app).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    injecting.await.expect("the crowd came");
    let crowd: Vec<i64> = (200_000..200_000 + users).collect();
    each_answered_once(&app, &crowd).await;
    let (shed, held) = figures().await;
    eprintln!(
        "memory limit {limit} MB (baseline {baseline:.0} MB): peak {peak:.0} MB, {shed} sessions shed, intake held {held} times"
    );
    assert!(shed > 0.0, "nothing was shed under the limit");
    assert!(held > 0.0, "intake never held at the limit");
    // What is taken keeps allocating as it is answered; intake takes no
    // more than fits under the limit at MEMORY_PER_UPDATE_KB each.
    assert!(
        peak < limit as f64,
        "memory peaked at {peak:.0} MB past the limit of {limit} MB"
    );
    // Once the crowd is answered, intake takes updates again.
    app.tg.inject_text(300_000, "/start");
    app.tg
        .wait_for_messages(300_000, 1, WAIT)
        .await
        .expect("intake runs again");
}

#[actix_rt::test]
async fn a_suggestion_appears_when_provoked_and_optimize_applies_it_and_undo_restores_it() {
    let ai = FakeAi::start(FakeAiConfig {
        latency: Duration::from_millis(400),
        ..FakeAiConfig::default()
    })
    .expect("the fake AI starts");
    let app = with_admin(&ai)
        .env("AI_SEMAPHORE_LIMIT", 1)
        .env("AI_QUEUE_SIZE", 1000)
        .env("HEALTH_INTERVAL", 0.5)
        .start()
        .await;
    // A first round of figures, then questions that queue for the one slot.
    let deadline = std::time::Instant::now() + WAIT;
    while get(&app, "/performance/history").await["samples"]
        .as_array()
        .is_none_or(|s| s.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "no round of figures");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, quiet) = app
        .request("GET", "/performance/suggestions", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    assert!(!quiet.contains("AI_SEMAPHORE_LIMIT"), "{quiet}");
    let askers: Vec<i64> = (60_000..60_008).collect();
    for user in &askers {
        app.tg.inject_text(*user, &format!("Slow question {user}"));
    }
    app.tg
        .wait_until(Duration::from_secs(30), |s| {
            askers.iter().all(|u| !s.messages_to(*u).is_empty())
        })
        .await
        .expect("all answered");
    let found = get(&app, "/performance/suggestions").await;
    let ai_slots = found["suggestions"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["setting"] == "AI_SEMAPHORE_LIMIT")
        .unwrap_or_else(|| panic!("no suggestion for the AI slots: {found}"))
        .clone();
    assert_eq!(ai_slots["current"], 1);
    assert_eq!(ai_slots["proposed"], 2);
    assert!(
        ai_slots["value"].as_f64().unwrap_or(0.0) >= 0.5,
        "{ai_slots}"
    );

    let (status, applied) = app
        .send_json("POST", "/performance/optimize", Some(TOKEN), json!({}))
        .await;
    assert_eq!(status, 200, "{applied}");
    let config = get(&app, "/config").await;
    assert_eq!(config["ai_semaphore_limit"], 2);
    assert_eq!(config["sources"]["ai_semaphore_limit"], "runtime");
    app.wait_for_log(
        "configuration changed by POST /performance/optimize: AI_SEMAPHORE_LIMIT 1 -> 2",
        WAIT,
    )
    .await;

    let (status, undone) = app
        .send_json("POST", "/performance/optimize?undo", Some(TOKEN), json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    let config = get(&app, "/config").await;
    assert_eq!(config["ai_semaphore_limit"], 1);
    assert_eq!(config["sources"]["ai_semaphore_limit"], "environment");
    let (status, _) = app
        .send_json("POST", "/performance/optimize?undo", Some(TOKEN), json!({}))
        .await;
    assert_eq!(status, 409, "a second undo has nothing to undo");
}

/// Waits until the daemon runs `count` threads of the pool `prefix`.
async fn wait_for_workers(app: &TestApp, prefix: &str, count: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while app.worker_threads(prefix) != count {
        assert!(
            std::time::Instant::now() < deadline,
            "{prefix}: {} worker threads, not {count}",
            app.worker_threads(prefix)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn the_document_pools_grow_and_shrink_while_running() {
    let ai = fake_ai();
    let (pdf, images) = (1, 1);
    let app = with_admin(&ai)
        .env("PDF_SEMAPHORE_LIMIT", pdf)
        .env("THREAD_POOL_SIZE", images)
        .start()
        .await;
    wait_for_workers(&app, "pdf", pdf).await;
    wait_for_workers(&app, "images", images).await;

    let (pdf, images, queue) = (3, 2, 7);
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"pdf_semaphore_limit": pdf, "thread_pool_size": images, "pdf_queue_size": queue}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_workers(&app, "pdf", pdf).await;
    wait_for_workers(&app, "images", images).await;
    let actors = get(&app, "/actors").await;
    let node = common::find_node(&actors, "pdf").expect("the pdf actor");
    assert_eq!(node["mailbox"]["capacity"], queue, "{node}");

    // Shrunk again, the pool still renders.
    let pdf = 1;
    let (status, body) = app
        .send_json(
            "PUT",
            "/config",
            Some(TOKEN),
            json!({"pdf_semaphore_limit": pdf}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_workers(&app, "pdf", pdf).await;
    let user = 40_001;
    app.tg.inject_text(user, "Hello");
    app.tg
        .wait_for_messages(user, 1, WAIT)
        .await
        .expect("an answer");
    app.tg.inject_text(user, "/report");
    app.tg
        .wait_until(WAIT, |s| {
            s.messages_to(user)
                .iter()
                .any(|m| m.method == "sendDocument")
        })
        .await
        .expect("the report is delivered");
}
