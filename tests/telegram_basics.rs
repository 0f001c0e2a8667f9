//! The daemon against the fake Telegram: commands, malformed updates, retries
//! and secrets.

mod common;

use std::time::Duration;

use actorbot_testkit::telegram::{Failure, FailureMatch};
use common::{TOKEN, TestApp};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[actix_rt::test]
async fn start_is_answered_for_fifty_users_and_commands_are_registered() {
    let app = TestApp::builder().start().await;
    let users: Vec<i64> = (1..=50).map(|i| 10_000 + i).collect();
    for user in &users {
        app.tg.inject_text(*user, "/start");
    }
    app.tg
        .wait_for_total_messages(users.len(), WAIT)
        .await
        .expect("every user is answered");
    for user in &users {
        let messages = app.tg.messages_to(*user);
        assert_eq!(messages.len(), 1, "user {user}: {messages:?}");
        assert!(messages[0].text.contains("actorbot"), "{:?}", messages[0]);
    }

    let commands = app.tg.commands();
    let names: Vec<&str> = commands.iter().map(|c| c.command.as_str()).collect();
    assert!(
        names.contains(&"start") && names.contains(&"help"),
        "{names:?}"
    );

    app.tg.inject_text(42, "/help");
    app.tg.wait_for_messages(42, 1, WAIT).await.unwrap();
    let help = &app.tg.messages_to(42)[0].text;
    for name in names {
        assert!(help.contains(&format!("/{name}")), "{help}");
    }

    app.tg.inject_text(43, "/frobnicate");
    app.tg.wait_for_messages(43, 1, WAIT).await.unwrap();
    assert!(app.tg.messages_to(43)[0].text.contains("/help"));
}

#[actix_rt::test]
async fn malformed_and_unknown_updates_are_skipped() {
    let app = TestApp::builder().start().await;
    let unknown = app
        .tg
        .inject_raw(json!({"brand_new_update_kind": {"x": 1}}));
    let wrong_types = app
        .tg
        .inject_raw(json!({"message": {"message_id": "NaN", "chat": 5}}));
    app.tg.inject_text(77, "/start");
    app.tg.wait_for_messages(77, 1, WAIT).await.unwrap();
    let log = app.log();
    assert!(
        log.contains(&format!("skipping update_id={unknown}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("skipping update_id={wrong_types}")),
        "{log}"
    );
    // Skipped updates are still confirmed: the next poll's offset is past them.
    app.tg
        .wait_until(WAIT, |state| {
            state.confirmed_offset() > unknown.max(wrong_types)
        })
        .await
        .expect("offsets confirmed");
}

#[actix_rt::test]
async fn a_429_is_honoured_and_the_message_still_arrives() {
    let app = TestApp::builder().start().await;
    app.tg.fail_next(
        FailureMatch::method("sendMessage").chat(501),
        Failure::TooManyRequests { retry_after: 2 },
    );
    app.tg.inject_text(501, "/start");
    app.tg.wait_for_messages(501, 1, WAIT).await.unwrap();
    let calls: Vec<_> = app
        .tg
        .calls()
        .into_iter()
        .filter(|c| c.method == "sendMessage" && c.chat_id == Some(501))
        .collect();
    assert_eq!(calls.len(), 2, "one refused, one delivered: {calls:?}");
    assert_eq!(calls[0].status, 429);
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(app.log().contains("flood wait: chat_id=501"));
}

#[actix_rt::test]
async fn server_errors_are_retried() {
    let app = TestApp::builder().start().await;
    for _ in 0..2 {
        app.tg.fail_next(
            FailureMatch::method("sendMessage").chat(502),
            Failure::Status {
                code: 502,
                description: "Bad Gateway".into(),
            },
        );
    }
    app.tg.inject_text(502, "/help");
    app.tg.wait_for_messages(502, 1, WAIT).await.unwrap();
    assert_eq!(app.tg.messages_to(502).len(), 1);
}

#[actix_rt::test]
async fn polling_survives_telegram_errors() {
    let app = TestApp::builder().start().await;
    for _ in 0..3 {
        app.tg.fail_next(
            FailureMatch::method("getUpdates"),
            Failure::Status {
                code: 500,
                description: "Internal Server Error".into(),
            },
        );
    }
    app.tg.inject_text(601, "/start");
    app.tg.wait_for_messages(601, 1, WAIT).await.unwrap();
    // The poll under way when the failures were set may be the one that
    // brings the update; the failures come with the polls after it.
    app.wait_for_log("getUpdates failed", WAIT).await;
    app.tg.inject_text(602, "/start");
    app.tg.wait_for_messages(602, 1, WAIT).await.unwrap();
}

#[actix_rt::test]
async fn the_token_never_reaches_the_log() {
    let app = TestApp::builder().start().await;
    // Exercise error paths too: they are where URLs tend to leak.
    app.tg.fail_next(
        FailureMatch::method("getUpdates"),
        Failure::Status {
            code: 502,
            description: "Bad Gateway".into(),
        },
    );
    app.tg.fail_next(
        FailureMatch::method("sendMessage").chat(701),
        Failure::Status {
            code: 400,
            description: "Bad Request: chat not found".into(),
        },
    );
    app.tg.inject_text(701, "/start");
    app.tg.inject_text(702, "/start");
    app.tg.wait_for_messages(702, 1, WAIT).await.unwrap();
    app.wait_for_log("send failed", WAIT).await;
    let log = app.log();
    let secret = TOKEN.split_once(':').unwrap().1;
    assert_eq!(log.matches(secret).count(), 0, "token in log:\n{log}");
    assert!(
        log.contains("/bot<token>"),
        "the API URL is logged, redacted:\n{log}"
    );
}

#[actix_rt::test]
async fn a_bot_api_server_whose_get_me_leaves_out_fields_is_served() {
    let fake = actorbot_testkit::telegram::FakeTelegram::start(
        actorbot_testkit::telegram::FakeTelegramConfig {
            token: TOKEN.to_string(),
            ..Default::default()
        },
    )
    .expect("the fake Telegram starts");
    // As some emulators answer: no `is_bot`, no `can_*` flags.
    fake.answer_minimal_get_me();
    let app = TestApp::builder().with_fake(fake).start().await;
    assert!(
        app.log().contains("authorized as @fake_actorbot"),
        "{}",
        app.log()
    );
    app.tg.inject_text(43, "/start");
    app.tg
        .wait_for_messages(43, 1, WAIT)
        .await
        .expect("answered");
}

#[actix_rt::test]
async fn a_server_that_ignores_offset_and_timeout_is_polled_calmly_and_answered_once() {
    let app = common::unthrottled(TestApp::builder()).start().await;
    app.tg.ignore_offset_and_timeout();
    for user in 0..5 {
        app.tg.inject_text(95_001 + user, "/start");
    }
    app.tg
        .wait_for_total_messages(5, Duration::from_secs(20))
        .await
        .expect("all answered");
    let polls = |app: &TestApp| app.tg.read(|s| s.calls_of("getUpdates"));
    let before = polls(&app);
    // The server keeps sending the same five updates at once; a second of
    // that is a few calls, and none of them answered again.
    let started = std::time::Instant::now();
    app.tg
        .wait_until(Duration::from_secs(5), |s| {
            s.calls_of("getUpdates") >= before + 4
        })
        .await
        .expect("still polling");
    let calls = polls(&app) - before;
    let per_second = calls as f64 / started.elapsed().as_secs_f64();
    assert!(per_second < 10.0, "{per_second:.0} getUpdates a second");
    assert_eq!(app.tg.total_messages(), 5, "an update was answered twice");
}

/// Over HTTPS, the fake offering HTTP/2 and HTTP/1.1 by ALPN as Telegram's
/// servers do: the daemon speaks the version its setting offers, polling
/// and sending alike, and every reply arrives.
#[actix_rt::test]
async fn over_tls_the_daemon_speaks_the_http_version_it_is_set_to() {
    for (setting, http2) in [("2", true), ("1.1", false)] {
        let fake = actorbot_testkit::telegram::FakeTelegram::start(
            actorbot_testkit::telegram::FakeTelegramConfig {
                token: TOKEN.to_string(),
                tls: true,
                ..Default::default()
            },
        )
        .expect("the fake Telegram starts");
        assert!(fake.api_url().starts_with("https://"), "{}", fake.api_url());
        let app = TestApp::builder()
            .with_fake(fake)
            .env("TELEGRAM_HTTP_VERSION", setting)
            .start()
            .await;
        let users: Vec<i64> = (0..5).map(|n| 47_000 + n).collect();
        for user in &users {
            app.tg.inject_text(*user, "/start");
        }
        app.tg
            .wait_for_total_messages(users.len(), WAIT)
            .await
            .unwrap_or_else(|err| panic!("TELEGRAM_HTTP_VERSION={setting}: {err}"));
        let calls = app.tg.calls();
        for method in ["getUpdates", "sendMessage"] {
            assert!(
                calls.iter().any(|call| call.method == method),
                "{setting}: no {method} in {calls:?}"
            );
        }
        assert!(
            calls.iter().all(|call| call.http2 == http2),
            "TELEGRAM_HTTP_VERSION={setting}: {calls:?}"
        );
    }
}

#[actix_rt::test]
async fn a_server_that_closes_idle_connections_between_requests_loses_no_reply() {
    let fake = actorbot_testkit::telegram::FakeTelegram::start(
        actorbot_testkit::telegram::FakeTelegramConfig {
            token: TOKEN.to_string(),
            // Closed 50 ms after each answer, as some servers and proxies
            // do: the client's pooled connections go stale between sends.
            keep_alive: Some(Duration::from_millis(50)),
            ..Default::default()
        },
    )
    .expect("the fake Telegram starts");
    let app = common::unthrottled(TestApp::builder().with_fake(fake))
        .start()
        .await;
    let mut users = Vec::new();
    for round in 0..5i64 {
        for n in 0..10 {
            let user = 44_000 + round * 10 + n;
            app.tg.inject_text(user, "/start");
            users.push(user);
        }
        // Longer than the server keeps an idle connection.
        app.tg
            .wait_until(WAIT, |s| {
                users.iter().all(|u| !s.messages_to(*u).is_empty())
            })
            .await
            .expect("the round answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for user in &users {
        assert_eq!(app.tg.messages_to(*user).len(), 1, "user {user}");
    }
    assert!(!app.log().contains("given up"), "{}", app.log());
}
