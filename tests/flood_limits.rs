//! Telegram's flood limits under a crowd: the fake answers 429 to anything
//! over them, so zero 429s means the outbox kept the limits by itself.

mod common;

use std::time::Duration;

use common::TestApp;

#[actix_rt::test]
async fn three_hundred_users_at_once_are_answered_within_the_limits() {
    let app = TestApp::builder().flood_limits().start().await;
    let users: Vec<i64> = (1..=300).map(|i| 20_000 + i).collect();
    for user in &users {
        app.tg.inject_text(*user, "/start");
    }
    app.tg
        .wait_for_total_messages(users.len(), Duration::from_secs(60))
        .await
        .expect("all 300 answered");
    assert_eq!(app.tg.rejected_429(), 0, "the fake had to refuse a send");

    let mut times: Vec<_> = app
        .tg
        .calls()
        .into_iter()
        .filter(|c| c.method == "sendMessage" && c.status == 200)
        .map(|c| c.at)
        .collect();
    times.sort();
    assert_eq!(times.len(), 300);
    let span = times[299].duration_since(times[0]).as_secs_f64();
    let rate = 299.0 / span;
    println!("300 replies in {span:.2} s: {rate:.1} messages/s, 0 refused");
    assert!(rate >= 29.0, "only {rate:.1} messages/s");
    // And not over the limit either: any 1-second window holds at most
    // 30 + burst sends.
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 36, "{in_window} sends within one second");
    }
}

#[actix_rt::test]
async fn a_busy_chat_does_not_starve_the_others() {
    // The per-user anti-flood limit would refuse most of the busy chat's
    // messages; this test is about the outbox, so it is lifted.
    let app = TestApp::builder()
        .flood_limits()
        .env("ANTI_FLOOD_MESSAGES", 100)
        .start()
        .await;
    // One chat asks for help twenty times; it is paced at about 1/s.
    for _ in 0..20 {
        app.tg.inject_text(30_001, "/help");
    }
    for user in 30_100..30_140 {
        app.tg.inject_text(user, "/start");
    }
    app.tg
        .wait_until(Duration::from_secs(30), |state| {
            (30_100..30_140).all(|u| state.messages_to(u).len() == 1)
        })
        .await
        .expect("the other chats are answered");
    // By then the busy chat has had only its burst and a few more.
    let busy = app.tg.messages_to(30_001).len();
    assert!(busy < 20, "the busy chat got {busy} replies first");
    assert_eq!(app.tg.rejected_429(), 0);
    app.tg
        .wait_for_messages(30_001, 20, Duration::from_secs(40))
        .await
        .expect("and it gets all of them in the end");
}
