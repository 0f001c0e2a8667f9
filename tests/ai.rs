//! The AI assistant end to end: the real daemon, the fake Telegram and the
//! fake OpenAI-compatible backend.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use actorbot::storage::Storage;
use actorbot_testkit::openai::{AiFailure, FakeAi, FakeAiConfig};
use common::{TestApp, TestAppBuilder, test_config};

const WAIT: Duration = Duration::from_secs(30);

fn fake_ai(word_delay_ms: u64) -> FakeAi {
    FakeAi::start(FakeAiConfig {
        word_delay: Duration::from_millis(word_delay_ms),
        ..Default::default()
    })
    .expect("the fake AI starts")
}

/// A daemon using `ai` as its backend, without Telegram-side throttling.
fn with_ai(ai: &FakeAi) -> TestAppBuilder {
    TestApp::builder()
        .env("AI_API_URL", ai.api_url())
        .env("TELEGRAM_GLOBAL_RATE", 100_000)
        .env("TELEGRAM_GLOBAL_BURST", 10_000)
        .env("TELEGRAM_PRIVATE_RATE", 100_000)
        .env("TELEGRAM_PRIVATE_BURST", 10_000)
        .env("TELEGRAM_GROUP_PER_MINUTE", 100_000)
        .env("TELEGRAM_GROUP_BURST", 10_000)
}

fn expected(question: &str, users: usize, earlier: usize) -> String {
    format!("Answer {users} to: {question}. I have seen {earlier} earlier messages.")
}

/// Waits for a chat's message whose text contains `needle`; returns it.
async fn wait_for_text(app: &TestApp, chat: i64, needle: &str) -> String {
    app.tg
        .wait_until(WAIT, |s| {
            s.messages_to(chat).iter().any(|m| m.text.contains(needle))
        })
        .await
        .unwrap_or_else(|e| {
            let log = app.log();
            let related: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&chat.to_string()) || l.contains("ai::"))
                .collect();
            panic!(
                "{e}: {:?}\n{}",
                app.tg.messages_to(chat),
                related.join("\n")
            )
        });
    app.tg
        .messages_to(chat)
        .into_iter()
        .find(|m| m.text.contains(needle))
        .map(|m| m.text)
        .unwrap_or_default()
}

#[actix_rt::test]
async fn twenty_users_get_streamed_answers_drafts_in_private_edits_in_groups() {
    let ai = fake_ai(40);
    // Long enough a wait before the first word for "typing…" to show.
    ai.set_latency(Duration::from_millis(600));
    let app = with_ai(&ai).start().await;
    let private: Vec<i64> = (1..=18).map(|u| 50_000 + u).collect();
    let groups = [-100_501i64, -100_502];
    for user in &private {
        app.tg.inject_text(*user, &format!("question from {user}"));
    }
    for (i, group) in groups.iter().enumerate() {
        app.tg
            .inject_group_text(*group, 60_000 + i as i64, &format!("group question {i}"));
    }
    for user in &private {
        let question = format!("question from {user}");
        let text = wait_for_text(&app, *user, &expected(&question, 1, 0)).await;
        assert_eq!(text, expected(&question, 1, 0));
        let drafts = app.tg.drafts_to(*user);
        assert!(!drafts.is_empty(), "user {user} saw no draft");
        assert!(drafts.iter().all(|d| d.draft_id != 0));
        assert!(
            expected(&question, 1, 0).starts_with(drafts[0].text.trim_end()),
            "a draft shows the start of the answer: {:?}",
            drafts[0].text
        );
        assert_eq!(app.tg.messages_to(*user).len(), 1, "one final message");
        assert!(app.tg.actions_to(*user).iter().any(|a| a == "typing"));
    }
    for (i, group) in groups.iter().enumerate() {
        let question = format!("group question {i}");
        wait_for_text(&app, *group, &expected(&question, 1, 0)).await;
        let messages = app.tg.messages_to(*group);
        assert_eq!(messages.len(), 1, "the answer is edited into one message");
        assert!(messages[0].edits >= 1, "{:?}", messages[0]);
        assert!(app.tg.drafts_to(*group).is_empty());
    }
}

#[actix_rt::test]
async fn a_conversation_carries_its_history_until_reset() {
    let ai = fake_ai(0);
    let app = with_ai(&ai).start().await;
    let user = 51_001;
    app.tg.inject_text(user, "first");
    wait_for_text(&app, user, &expected("first", 1, 0)).await;
    app.tg.inject_text(user, "second");
    wait_for_text(&app, user, &expected("second", 2, 2)).await;
    let requests = ai.requests();
    let second = &requests[1].messages;
    assert_eq!(second[0].0, "system");
    assert_eq!(second[1], ("user".into(), "first".into()));
    assert_eq!(second[2], ("assistant".into(), expected("first", 1, 0)));
    app.tg.inject_text(user, "/reset");
    app.tg.inject_text(user, "third");
    wait_for_text(&app, user, &expected("third", 1, 0)).await;
    // /stats counts the questions.
    app.tg.inject_text(user, "/stats");
    let stats = wait_for_text(&app, user, "AI questions").await;
    assert!(stats.contains("AI questions: 3"), "{stats}");
}

/// Waits until every update the daemon in `data_dir` took is marked done
/// in its inbox. A reply delivered in the instant before a kill -9 is sent
/// again after the restart, its done mark not yet written; a test about
/// something else waits this window out before it kills.
async fn wait_for_done_marks(data_dir: &Path) {
    let config = test_config(&[("DATA_DIR", data_dir.display().to_string())]);
    let storage = Storage::open(&config).await.expect("the inbox opens");
    let deadline = Instant::now() + WAIT;
    while !storage.inbox_pending().await.expect("reads").is_empty() {
        assert!(Instant::now() < deadline, "updates left undone");
        // The daemon writes marks from its own process: nothing to await.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new user's first exchange is written with their record: a session
/// started after a kill -9 (before any periodic save) finds the record and
/// so looks for, and carries, the exchange.
#[actix_rt::test]
async fn a_first_exchange_survives_a_kill_9() {
    let ai = fake_ai(0);
    let data_dir = common::unique_dir("first-exchange");
    let app = with_ai(&ai).data_dir(data_dir.clone()).start().await;
    let user = 51_101;
    app.tg.inject_text(user, "first");
    wait_for_text(&app, user, &expected("first", 1, 0)).await;
    // The session holds its mailbox until the exchange is saved: a reply to
    // a command sent after the answer comes once it is.
    app.tg.inject_text(user, "/help");
    wait_for_text(&app, user, "/reset").await;
    wait_for_done_marks(&data_dir).await;
    let (tg, _) = app.kill();
    let app = with_ai(&ai).with_fake(tg).data_dir(data_dir).start().await;
    app.tg.inject_text(user, "second");
    wait_for_text(&app, user, &expected("second", 2, 2)).await;
    let requests = ai.requests();
    let second = &requests.last().expect("asked").messages;
    assert_eq!(second[1], ("user".into(), "first".into()));
    assert_eq!(second[2], ("assistant".into(), expected("first", 1, 0)));
}

#[actix_rt::test]
async fn the_user_can_stop_an_answer() {
    let ai = fake_ai(150);
    ai.answer_next(&"word ".repeat(200));
    let app = with_ai(&ai).start().await;
    let user = 51_101;
    app.tg.inject_text(user, "tell me a long story");
    app.tg
        .wait_until(WAIT, |s| !s.drafts_to(user).is_empty())
        .await
        .expect("the answer starts streaming");
    let draft_id = app.tg.drafts_to(user)[0].draft_id;
    app.tg.inject_stop(user, draft_id);
    ai.wait_for_cancelled(1, WAIT)
        .await
        .expect("the backend request is cancelled");
    let text = wait_for_text(&app, user, "(stopped)").await;
    assert!(text.starts_with("word"), "{text}");
    assert!(text.split_whitespace().count() < 200);
}

#[actix_rt::test]
async fn server_errors_and_429s_are_retried() {
    let ai = fake_ai(0);
    ai.fail_next(AiFailure::Status {
        code: 500,
        message: "boom".into(),
    });
    ai.fail_next(AiFailure::TooManyRequests {
        retry_after_secs: 1,
    });
    let app = with_ai(&ai).start().await;
    let user = 51_201;
    app.tg.inject_text(user, "retry me");
    wait_for_text(&app, user, &expected("retry me", 1, 0)).await;
    let requests = ai.requests();
    assert_eq!(requests.len(), 3);
    let waited = requests[2].at.duration_since(requests[1].at);
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After kept: {waited:?}"
    );
}

#[actix_rt::test]
async fn a_broken_stream_is_never_passed_off_as_complete() {
    let ai = fake_ai(0);
    for _ in 0..3 {
        ai.answer_next("one two three four five six seven eight");
        ai.fail_next(AiFailure::NoDone { words: 3 });
    }
    let app = with_ai(&ai).env("AI_MAX_ATTEMPTS", 3).start().await;
    let user = 51_301;
    app.tg.inject_text(user, "break please");
    let text = wait_for_text(&app, user, "cut off").await;
    assert!(text.starts_with("one two three"), "{text}");

    // A stall past the timeout is retried and then answered in full.
    ai.fail_next(AiFailure::StallAfter { words: 2 });
    app.tg.inject_text(user + 1, "stall please");
    wait_for_text(&app, user + 1, &expected("stall please", 1, 0)).await;
}

#[actix_rt::test]
async fn a_dead_backend_opens_the_breaker_and_everyone_is_told_within_a_second() {
    let ai = fake_ai(0);
    ai.fail_all(AiFailure::Status {
        code: 503,
        message: "down".into(),
    });
    let app = with_ai(&ai)
        .env("AI_BREAKER_FAILURES", 3)
        .env("AI_BREAKER_COOLDOWN", 30)
        .start()
        .await;
    let users: Vec<i64> = (1..=10).map(|u| 52_000 + u).collect();
    let asked = Instant::now();
    for user in &users {
        app.tg.inject_text(*user, "anyone there?");
    }
    for user in &users {
        wait_for_text(&app, *user, "unavailable").await;
        let told = app.tg.messages_to(*user)[0].at.duration_since(asked);
        assert!(
            told < Duration::from_secs(1),
            "user {user} told after {told:?}"
        );
    }
    assert!(
        ai.requests().len() < users.len() * 3,
        "the breaker spared the backend: {} requests",
        ai.requests().len()
    );
    let (_, health) = app.get_json("/health").await;
    let ai_health = health["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ai")
        .cloned()
        .unwrap();
    assert_eq!(ai_health["health"]["state"], "degraded", "{health}");
    app.wait_for_metric("actorbot_ai_breaker_state 2", WAIT)
        .await;
}

#[actix_rt::test]
async fn a_full_queue_answers_busy_at_once() {
    let ai = FakeAi::start(FakeAiConfig {
        latency: Duration::from_secs(3),
        ..Default::default()
    })
    .unwrap();
    let app = with_ai(&ai)
        .env("AI_SEMAPHORE_LIMIT", 1)
        .env("AI_QUEUE_SIZE", 1)
        .start()
        .await;
    app.tg.inject_text(53_001, "q53001");
    ai.wait_for_requests(1, WAIT).await.unwrap();
    app.tg.inject_text(53_002, "q53002");
    app.wait_for_metric("actorbot_queue_depth{actor=\"ai\"} 1", WAIT)
        .await;
    app.tg.inject_text(53_003, "q53003");
    let busy = wait_for_text(&app, 53_003, "busy").await;
    assert!(busy.contains("try again"), "{busy}");
    assert_eq!(ai.completed(), 0, "told before the first answer finished");
    wait_for_text(&app, 53_001, &expected("q53001", 1, 0)).await;
    wait_for_text(&app, 53_002, &expected("q53002", 1, 0)).await;
}

async fn cached_repeat(app: &TestApp, ai: &FakeAi, question: &str) {
    app.tg.inject_text(54_001, question);
    wait_for_text(app, 54_001, &expected(question, 1, 0)).await;
    let before = ai.requests().len();
    // Another user, same model, prompt and conversation: the cache answers.
    app.tg.inject_text(54_002, question);
    wait_for_text(app, 54_002, &expected(question, 1, 0)).await;
    assert_eq!(
        ai.requests().len(),
        before,
        "no backend call for the repeat"
    );
    app.wait_for_metric("actorbot_ai_cache_total{result=\"hit\"} 1", WAIT)
        .await;
}

#[actix_rt::test]
async fn the_in_process_cache_serves_a_repeat() {
    let ai = fake_ai(0);
    let app = with_ai(&ai).start().await;
    cached_repeat(&app, &ai, "what is an actor?").await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["dependencies"]["cache"]["backend"], "memory");
}

#[actix_rt::test]
async fn the_redis_cache_serves_a_repeat() {
    let Some(redis) = common::redis_url("the Redis answer cache") else {
        return;
    };
    let ai = fake_ai(0);
    let app = with_ai(&ai).env("REDIS_URL", redis).start().await;
    // A question no earlier run asked: Redis outlives test runs.
    let question = format!("what is redis? ({:?})", std::time::SystemTime::now());
    cached_repeat(&app, &ai, &question).await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["dependencies"]["cache"]["backend"], "redis");
}

#[actix_rt::test]
async fn long_markdown_answers_arrive_whole_and_well_formed() {
    let ai = fake_ai(0);
    let section = "## Раздел\n\nТекст с **жирным**, _курсивом_ и `кодом`. 2 * 3 = 6_ [ссылка](https://example.org)\n\n";
    let answer = section.repeat(120);
    ai.answer_next(&answer);
    let app = with_ai(&ai).start().await;
    let user = 55_001;
    app.tg.inject_text(user, "write a lot");
    app.tg
        .wait_until(WAIT, |s| {
            s.messages_to(user)
                .last()
                .is_some_and(|m| m.text.trim_end().ends_with("ссылка"))
                && s.messages_to(user).len() >= 2
        })
        .await
        .unwrap_or_else(|e| {
            let refused: Vec<_> = app
                .tg
                .calls()
                .into_iter()
                .filter(|c| c.status != 200)
                .collect();
            panic!(
                "{e}: {} messages; refused {refused:?}\n{}",
                app.tg.messages_to(user).len(),
                app.log()
            )
        });
    let messages = app.tg.messages_to(user);
    let words: usize = messages
        .iter()
        .map(|m| m.text.matches("Раздел").count())
        .sum();
    assert_eq!(words, 120, "every section arrives");
    for m in &messages {
        assert!(m.text.encode_utf16().count() <= 4096);
        assert!(m.parse_mode.is_none());
        assert!(m.entities.is_some(), "formatting is kept as entities");
    }
    assert_eq!(app.tg.rejected_429(), 0);
}

#[actix_rt::test]
async fn a_backend_that_ends_its_stream_by_closing_the_connection_is_answered_in_full() {
    use actorbot_testkit::wire::{Scripted, Step, close_delimited_head, completion_chunk};
    let steps = vec![
        close_delimited_head("text/event-stream"),
        Step::text(&completion_chunk("Closed ", None, "\n\n")),
        Step::Pause(Duration::from_millis(50)),
        Step::text(&completion_chunk("by the server.", Some("stop"), "\n\n")),
        Step::text("data: [DONE]\n\n"),
    ];
    let backend = Scripted::start(steps).expect("the scripted backend starts");
    let app = common::unthrottled(TestApp::builder())
        .env("AI_API_URL", backend.url())
        .start()
        .await;
    app.tg.inject_text(77_001, "What happens?");
    let answer = wait_for_text(&app, 77_001, "by the server.").await;
    assert_eq!(answer, "Closed by the server.");
    assert_eq!(backend.completions(), 1, "the answer was asked again");
}

#[actix_rt::test]
async fn a_wrong_key_is_reported_once_and_the_user_told_plainly() {
    let ai = FakeAi::start(FakeAiConfig {
        api_key: Some("right-key".into()),
        ..Default::default()
    })
    .expect("the fake AI starts");
    let app = with_ai(&ai)
        .env("AI_API_KEY", "wrong-key")
        .env("ANTI_FLOOD_MESSAGES", 100)
        .start()
        .await;
    app.tg.inject_text(77_101, "First?");
    wait_for_text(&app, 77_101, "unavailable").await;
    app.tg.inject_text(77_101, "Second?");
    app.tg
        .wait_for_messages(77_101, 2, WAIT)
        .await
        .expect("both answered");
    let log = app.log();
    // Not retried.
    assert!(!log.contains("retrying in"), "{log}");
    assert_eq!(
        log.matches("check AI_API_KEY").count(),
        1,
        "one line for the operator: {log}"
    );
    assert!(!log.contains("wrong-key"), "the key reached the log");
}

#[actix_rt::test]
async fn a_server_without_drafts_is_asked_once_and_answers_come_by_edits() {
    use actorbot_testkit::telegram::{Failure, FailureMatch};
    let ai = fake_ai(20);
    let app = with_ai(&ai).start().await;
    app.tg.start_outage(
        FailureMatch::method("sendMessageDraft"),
        Failure::Status {
            code: 404,
            description: "Not Found: method not found".into(),
        },
    );
    let users: Vec<i64> = (0..4).map(|n| 78_001 + n).collect();
    for (n, user) in users.iter().enumerate() {
        app.tg
            .inject_text(*user, &format!("Tell me a long story number {n}?"));
        let answer = expected(&format!("Tell me a long story number {n}?"), 1, 0);
        assert_eq!(wait_for_text(&app, *user, &answer).await, answer);
    }
    let drafts = app
        .tg
        .calls()
        .iter()
        .filter(|c| c.method.eq_ignore_ascii_case("sendMessageDraft"))
        .count();
    assert_eq!(
        drafts, 1,
        "drafts were tried again after the server said it has none"
    );
    let log = app.log();
    assert_eq!(log.matches("has no sendMessageDraft").count(), 1, "{log}");
}

#[actix_rt::test]
async fn a_command_for_another_bot_in_a_group_is_not_a_question() {
    let ai = fake_ai(0);
    let app = with_ai(&ai).start().await;
    let group = -1_007_001;
    app.tg
        .inject_group_text(group, 79_001, "/report@someotherbot");
    app.tg.inject_group_text(group, 79_001, "/help");
    app.tg
        .wait_for_messages(group, 1, WAIT)
        .await
        .expect("the /help is answered");
    assert_eq!(
        app.tg.messages_to(group)[0].text,
        actorbot::bot::commands::help_text()
    );
    assert!(ai.requests().is_empty(), "{:?}", ai.requests());
}
