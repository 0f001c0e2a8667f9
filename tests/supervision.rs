//! Supervision end to end: panics injected with `FAULT_PANIC` into every
//! long-lived actor under load, a crash loop past the restart intensity,
//! and an update that crashes its session every time.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use common::{TestApp, find_node, jpeg, seq_of, unthrottled};

const WAIT: Duration = Duration::from_secs(60);

/// The points `rules` names, each with the number of panics its rules make
/// (a rule `point:N` makes one).
fn points(rules: &str) -> Vec<(&str, u64)> {
    let mut points: Vec<(&str, u64)> = Vec::new();
    for rule in rules.split(',') {
        let point = rule.split(':').next().unwrap_or(rule);
        match points.iter_mut().find(|(p, _)| *p == point) {
            Some((_, panics)) => *panics += 1,
            None => points.push((point, 1)),
        }
    }
    points
}

/// The node of `/actors` that a fault point's actor is: the outbox's
/// shards are counted together, the sessions as their group.
fn node_of(point: &str) -> &str {
    match point {
        "session" => "sessions",
        other => other,
    }
}

#[actix_rt::test]
async fn a_panic_in_each_actor_under_load_loses_no_update() {
    let ai = FakeAi::start(FakeAiConfig::default()).expect("the fake AI starts");
    let users = 2_000i64;
    let first_user = 100_000i64;
    let asking: Vec<i64> = (0..200).map(|i| 200_000 + i).collect();
    let (photo_user, report_user) = (300_001i64, 300_002i64);
    let rules = format!(
        // The journal's first write is a batch of updates being recorded, its
        // later ones mostly done marks: both kinds crash.
        "intake:3,router:4,journal:1,journal:40,outbox:50,ai:5,pdf:1,images:1,health:2,\
         scheduler:1,session:chat_id={}:1",
        first_user + 7
    );
    let app = unthrottled(TestApp::builder())
        .env("AI_API_URL", ai.api_url())
        .env("AI_STREAM", "false")
        .env("FAULT_PANIC", &rules)
        .env("HEALTH_INTERVAL", 0.2)
        .env("CLEANUP_INTERVAL", 0.2)
        .start()
        .await;

    // The report's user has an exchange to report on before the load.
    app.tg.inject_text(report_user, "What is supervision?");
    app.tg
        .wait_for_messages(report_user, 1, WAIT)
        .await
        .expect("an answer");
    for n in 0..users {
        app.tg.inject_text(first_user + n, &format!("/seq{n}"));
        if n % 10 == 0 {
            let asker = asking[(n / 10) as usize];
            app.tg.inject_text(asker, &format!("Question {n}?"));
        }
    }
    app.tg.inject_photo(photo_user, jpeg(64, 48), None);
    app.tg.inject_text(report_user, "/report");

    let answered = app
        .tg
        .wait_until(WAIT, |s| {
            let seen: HashSet<u64> = (0..users)
                .flat_map(|n| s.messages_to(first_user + n))
                .filter_map(|m| seq_of(&m.text))
                .collect();
            seen.len() as i64 == users
                && asking.iter().all(|a| !s.messages_to(*a).is_empty())
                && !s.messages_to(photo_user).is_empty()
                && s.messages_to(report_user).len() >= 2
        })
        .await;
    if let Err(err) = answered {
        let seen: HashSet<u64> = app
            .tg
            .all_messages()
            .iter()
            .filter_map(|m| seq_of(&m.text))
            .collect();
        let unanswered: Vec<i64> = (0..users)
            .filter(|n| !seen.contains(&(*n as u64)))
            .collect();
        panic!(
            "{err}: {} of {users} unanswered (e.g. {:?}); askers without a reply: {}\nlog:\n{}",
            unanswered.len(),
            &unanswered[..unanswered.len().min(5)],
            asking
                .iter()
                .filter(|a| app.tg.messages_to(**a).is_empty())
                .count(),
            app.log()
        );
    }

    let (status, actors) = app.get_json("/actors").await;
    assert_eq!(status, 200);
    let (_, metrics) = app.get("/metrics").await;
    for (point, panics) in points(&rules) {
        let name = node_of(point);
        let node = find_node(&actors, name).unwrap_or_else(|| panic!("no {name} in {actors}"));
        let supervision = &node["details"]["supervision"];
        let restarts = match name {
            // Restarted as its shards.
            "outbox" => node["children"]
                .as_array()
                .map(|shards| {
                    shards
                        .iter()
                        .map(|s| {
                            s["details"]["supervision"]["restarts"]
                                .as_u64()
                                .unwrap_or(0)
                        })
                        .sum::<u64>()
                })
                .unwrap_or(0),
            _ => supervision["restarts"].as_u64().unwrap_or(0),
        };
        assert_eq!(restarts, panics, "{name}: {node}");
        if name != "outbox" {
            let crash = &supervision["last_crash"]["message"];
            assert!(
                crash.as_str().is_some_and(|m| m.contains("injected fault")),
                "{name}: {supervision}"
            );
        }
        let line = format!("actorbot_actor_restarts{{actor=\"{name}\"}} ");
        let counted: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in /metrics"));
        assert!(counted >= panics, "{name}: {counted} restarts counted");
    }
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(health["supervision"]["given_up"].is_null(), "{health}");
}

#[actix_rt::test]
async fn a_crash_loop_past_the_intensity_is_reported_and_ends_the_process() {
    let max_restarts = 2;
    let mut app = TestApp::builder()
        .env("FAULT_PANIC", "router:1..")
        .env("SUPERVISOR_MAX_RESTARTS", max_restarts)
        .env("SUPERVISOR_PERIOD", 60)
        .env("SUPERVISOR_EXIT_GRACE", 3)
        .start()
        .await;
    app.tg.inject_text(41, "/start");
    let health = app
        .wait_for_json("/health", WAIT, |status, body| {
            status == 503 && !body["supervision"]["given_up"].is_null()
        })
        .await;
    let gave_up = &health["supervision"]["given_up"];
    assert!(
        gave_up["actor"]
            .as_str()
            .is_some_and(|a| a.contains("router")),
        "{health}"
    );
    assert!(
        gave_up["reason"]
            .as_str()
            .is_some_and(|r| r.contains("injected fault")),
        "{health}"
    );
    let status = app.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(70), "{status:?}\n{}", app.log());
    // Restarted within the intensity before it gave up.
    let restarts = app.log().matches("actor router crashed").count();
    assert!(restarts > max_restarts, "{restarts} crashes logged");
}

#[actix_rt::test]
async fn an_update_that_always_crashes_its_session_is_set_aside_and_can_be_retried() {
    let user = 77;
    let attempts = 3;
    let data_dir = common::unique_dir("poison");
    let app = TestApp::builder()
        .data_dir(data_dir.clone())
        .env(
            "FAULT_PANIC",
            format!("session:chat_id={user}:1..{attempts}"),
        )
        .start()
        .await;
    let poison = app.tg.inject_text(user, "/start");
    app.tg
        .wait_for_messages(user, 1, WAIT)
        .await
        .expect("an answer");
    let apology = &app.tg.messages_to(user)[0];
    assert!(apology.text.contains("set it aside"), "{:?}", apology.text);
    // The next message is handled as usual, and the first is not tried again.
    app.tg.inject_text(user, "/help");
    app.tg
        .wait_for_messages(user, 2, WAIT)
        .await
        .expect("a reply to /help");
    let replies = app.tg.messages_to(user);
    assert!(
        !replies[1].text.contains("set it aside"),
        "{:?}",
        replies[1].text
    );
    app.wait_for_metric("actorbot_updates_skipped_total{reason=\"poison\"} 1", WAIT)
        .await;
    let (_, actors) = app.get_json("/actors").await;
    let sessions = find_node(&actors, "sessions").expect("sessions");
    assert_eq!(
        sessions["details"]["supervision"]["restarts"], attempts,
        "{sessions}"
    );
    let letters = app
        .wait_for_json("/dead-letters", WAIT, |_, body| body["count"] == 1)
        .await;
    assert_eq!(letters["dead_letters"][0]["update_id"], poison, "{letters}");
    assert_eq!(
        letters["dead_letters"][0]["attempts"], attempts,
        "{letters}"
    );

    // kill -9 and a start without the fault: the update set aside is not
    // replayed (the /help after it is answered, and nothing before it).
    let (tg, _) = app.kill();
    let app = TestApp::builder()
        .with_fake(tg)
        .data_dir(data_dir)
        .start()
        .await;
    app.tg.inject_text(user, "/help");
    app.tg
        .wait_for_messages(user, 3, WAIT)
        .await
        .expect("a reply to the second /help");
    assert_eq!(app.tg.messages_to(user).len(), 3);
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["dead_letters"], 1, "{health}");

    let listed = app.cli(&["dead-letters", "list"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(&format!("\"update_id\":{poison}")),
        "{stdout}"
    );

    // Retried by the operator: the running daemon handles it at once.
    let retried = app
        .cli(&["dead-letters", "retry", &poison.to_string()])
        .await;
    assert!(retried.status.success(), "{retried:?}");
    app.tg
        .wait_for_messages(user, 4, WAIT)
        .await
        .expect("the retried /start is answered");
    let answer = &app.tg.messages_to(user)[3];
    assert!(!answer.text.contains("set it aside"), "{:?}", answer.text);
    let (_, letters) = app.get_json("/dead-letters").await;
    assert_eq!(letters["count"], 0, "{letters}");
    let dropped = app
        .cli(&["dead-letters", "drop", &poison.to_string()])
        .await;
    assert!(!dropped.status.success(), "no such dead letter any more");
}

#[actix_rt::test]
async fn a_crash_of_the_outbox_while_it_queues_a_reply_keeps_the_chats_order() {
    let user = 4_242;
    let replies = 5u64;
    let app = unthrottled(TestApp::builder())
        .env("FAULT_PANIC", format!("outbox:chat_id={user}:1"))
        .start()
        .await;
    for n in 0..replies {
        app.tg.inject_text(user, &format!("/seq{n}"));
    }
    app.tg
        .wait_for_messages(user, replies as usize, WAIT)
        .await
        .expect("every reply");
    let order: Vec<u64> = app
        .tg
        .messages_to(user)
        .iter()
        .filter_map(|m| seq_of(&m.text))
        .collect();
    assert_eq!(order, (0..replies).collect::<Vec<_>>(), "{}", app.log());
    assert!(
        app.log().contains("injected fault: outbox"),
        "the fault was not hit"
    );
}
