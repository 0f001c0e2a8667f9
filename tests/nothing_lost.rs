//! Nothing taken is lost: a full outbox slows intake instead of dropping
//! replies, and an outage of Telegram or of the database is ridden out
//! without a restart.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use actorbot_testkit::telegram::{Failure, FailureMatch};
use common::TestApp;

/// Each user's replies, in the order the fake took them.
fn replies_by_user(app: &TestApp) -> HashMap<i64, Vec<String>> {
    let mut by_user: HashMap<i64, Vec<String>> = HashMap::new();
    for message in app.tg.all_messages() {
        by_user
            .entry(message.chat_id)
            .or_default()
            .push(message.text);
    }
    by_user
}

#[actix_rt::test]
async fn a_full_outbox_holds_intake_back_and_every_update_is_answered() {
    let (capacity, states, batch, users) = (20usize, 10usize, 20usize, 300i64);
    let app = TestApp::builder()
        .flood_limits()
        .env("OUTBOX_CAPACITY", capacity)
        .env("MAX_USER_STATES", states)
        .env("POLLING_LIMIT", batch)
        .start()
        .await;
    let mut last_id = 0;
    for user in 1..=users {
        last_id = app.tg.inject_text(40_000 + user, "/start");
    }

    // Replies leave at Telegram's pace. What the daemon holds meanwhile is
    // bounded by its capacities: the outbox, the sessions live and retiring
    // with one reply each, and the router's batch. So once a first few are
    // out, intake cannot have taken every update.
    let answered = 30;
    app.tg
        .wait_for_total_messages(answered, Duration::from_secs(30))
        .await
        .expect("the first replies");
    let held = capacity + 2 * states + 2 * batch;
    let taken = app.tg.confirmed_offset() - (last_id - users + 1);
    assert!(
        taken <= (answered + held) as i64 + batch as i64,
        "intake took {taken} updates while about {answered} were answered and at most {held} could wait"
    );
    assert!(taken < users, "intake took every update at once");

    app.tg
        .wait_for_total_messages(users as usize, Duration::from_secs(60))
        .await
        .expect("every user answered");
    let by_user = replies_by_user(&app);
    for user in 1..=users {
        let replies = by_user.get(&(40_000 + user)).map_or(0, Vec::len);
        assert_eq!(replies, 1, "user {user} got {replies} replies");
    }
    assert_eq!(app.tg.rejected_429(), 0, "the fake had to refuse a send");
    app.tg
        .wait_confirmed(last_id, Duration::from_secs(10))
        .await
        .expect("every update confirmed");
    app.wait_for_metric("actorbot_replies_held_total", Duration::from_secs(5))
        .await;
    let (_, metrics) = app.get("/metrics").await;
    let held_replies = metrics
        .lines()
        .find_map(|l| l.strip_prefix("actorbot_replies_held_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(held_replies > 0.0, "no reply ever waited for room");
}

#[actix_rt::test]
async fn an_outage_of_telegram_is_ridden_out_in_order_without_a_restart() {
    let app = common::unthrottled(TestApp::builder()).start().await;
    let bad_gateway = Failure::Status {
        code: 502,
        description: "Bad Gateway".into(),
    };
    // Sends fail first; the updates are taken.
    app.tg
        .start_outage(FailureMatch::method("sendMessage"), bad_gateway.clone());
    let mut last = 0;
    for user in 1..=5 {
        last = app.tg.inject_text(50_000 + user, "/start");
    }
    app.tg
        .wait_confirmed(last, Duration::from_secs(10))
        .await
        .expect("taken");
    // Then Telegram answers nothing but 502, getUpdates included.
    app.tg.start_outage(FailureMatch::any(), bad_gateway);
    app.tg.inject_text(50_001, "/help");
    // The quick retries are spent: the outbox says Telegram is unreachable
    // and keeps the replies.
    app.wait_for_json("/actors", Duration::from_secs(30), |_, body| {
        body.to_string().contains("Telegram unreachable")
    })
    .await;
    assert_eq!(app.tg.total_messages(), 0);

    app.tg.end_outage();
    app.tg
        .wait_until(Duration::from_secs(60), |s| {
            (1..=5).all(|u| !s.messages_to(50_000 + u).is_empty())
                && s.messages_to(50_001).len() >= 2
        })
        .await
        .expect("every reply delivered once Telegram is back");
    let by_user = replies_by_user(&app);
    for user in 2..=5 {
        assert_eq!(by_user[&(50_000 + user)].len(), 1, "user {user}");
    }
    // In the chat's order: /start's reply, then /help's.
    assert_eq!(
        by_user[&50_001],
        vec![
            actorbot::bot::commands::start_text("User50001"),
            actorbot::bot::commands::help_text()
        ]
    );
    let log = app.log();
    assert!(log.contains("Telegram takes sends again"), "{log}");
    assert!(!log.contains("left for the next start"), "{log}");
}

#[actix_rt::test]
async fn a_database_outage_holds_intake_and_every_update_is_answered_after_it() {
    let Some(db) = common::PgDatabase::create("a_database_outage_holds_intake") else {
        return;
    };
    let (proxy, url) = db.through_proxy();
    let app = common::unthrottled(TestApp::builder())
        .env("DATABASE_URL", url)
        .start()
        .await;
    let before = app.tg.inject_text(60_001, "/start");
    app.tg
        .wait_for_messages(60_001, 1, Duration::from_secs(20))
        .await
        .expect("answered before the outage");
    app.tg
        .wait_confirmed(before, Duration::from_secs(10))
        .await
        .expect("confirmed");

    proxy.cut();
    let mut last = 0;
    for user in 1..=20 {
        last = app.tg.inject_text(60_100 + user, "/start");
    }
    app.tg.inject_text(60_001, "/stats");
    app.wait_for_json("/ready", Duration::from_secs(30), |s, _| s == 503)
        .await;
    // Nothing can be journaled: nothing new is confirmed to Telegram.
    assert_eq!(app.tg.confirmed_offset(), before + 1);

    proxy.restore();
    app.tg
        .wait_until(Duration::from_secs(60), |s| {
            (1..=20).all(|u| s.messages_to(60_100 + u).len() == 1)
                && s.messages_to(60_001).len() == 2
        })
        .await
        .expect("every update taken during the outage answered after it");
    app.tg
        .wait_confirmed(last + 1, Duration::from_secs(10))
        .await
        .expect("and confirmed");
    app.wait_for_json("/ready", Duration::from_secs(30), |s, _| s == 200)
        .await;
}

/// A connection of another program to the daemon's SQLite file.
fn another_program(app: &TestApp) -> diesel::SqliteConnection {
    use diesel::connection::{Connection, SimpleConnection};
    let path = app.data_dir.join("actorbot.sqlite3");
    let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy())
        .expect("the daemon's database opens");
    conn.batch_execute("PRAGMA busy_timeout = 10000;")
        .expect("busy timeout");
    conn
}

/// Writes fail for a while (`block` makes them fail, `unblock` ends it):
/// updates injected meanwhile are neither confirmed nor lost, `/ready` says
/// why with `reason` in its answer, and each of them is answered once when
/// writes work again.
async fn writes_refused_then_restored(
    app: &TestApp,
    first_user: i64,
    reason: &str,
    block: impl FnOnce(),
    unblock: impl FnOnce(),
) {
    let before = app.tg.inject_text(first_user, "/start");
    app.tg
        .wait_for_messages(first_user, 1, Duration::from_secs(20))
        .await
        .expect("answered before writes fail");
    app.tg
        .wait_confirmed(before, Duration::from_secs(10))
        .await
        .expect("confirmed");

    block();
    let users = 20;
    let last = held_while_writes_fail(app, first_user, users, reason).await;
    unblock();
    each_answered_once_and_confirmed(app, first_user, users, last).await;
}

/// While writes fail: users `first_user + 1..=users` send /start, `/ready`
/// answers 503 with `reason` in its answer, and not every update is
/// confirmed; answers the last update's id.
async fn held_while_writes_fail(app: &TestApp, first_user: i64, users: i64, reason: &str) -> i64 {
    let mut last = 0;
    for user in 1..=users {
        last = app.tg.inject_text(first_user + user, "/start");
    }
    let body = app
        .wait_for_json("/ready", Duration::from_secs(30), |s, _| s == 503)
        .await;
    assert!(body.to_string().contains(reason), "{body}\n{}", app.log());
    assert!(
        app.tg.confirmed_offset() <= last,
        "every update was confirmed although writes fail"
    );
    last
}

/// Once writes work again: users `first_user + 1..=users` answered once
/// each, the last update (`last`) confirmed, and `/ready` 200 again.
async fn each_answered_once_and_confirmed(app: &TestApp, first_user: i64, users: i64, last: i64) {
    app.tg
        .wait_until(Duration::from_secs(60), |s| {
            (1..=users).all(|u| !s.messages_to(first_user + u).is_empty())
        })
        .await
        .expect("every update answered once writes work again");
    let by_user = replies_by_user(app);
    for user in 1..=users {
        assert_eq!(by_user[&(first_user + user)].len(), 1, "user {user}");
    }
    app.tg
        .wait_confirmed(last, Duration::from_secs(10))
        .await
        .expect("and confirmed");
    app.wait_for_json("/ready", Duration::from_secs(30), |s, _| s == 200)
        .await;
}

#[actix_rt::test]
async fn a_full_sqlite_file_holds_intake_until_there_is_room() {
    use diesel::connection::SimpleConnection;
    let cap_mb = 1u64;
    let app = common::unthrottled(TestApp::builder())
        .env("SQLITE_MAX_SIZE_MB", cap_mb)
        .start()
        .await;
    let other = std::cell::RefCell::new(another_program(&app));
    // Another program takes the file past the daemon's bound, as a full
    // disk would: the daemon's writes that need a new page fail. Dropping
    // the ballast frees its pages for them.
    let ballast = (cap_mb << 20) + (256 << 10);
    writes_refused_then_restored(
        &app,
        70_000,
        "full",
        || {
            other
                .borrow_mut()
                .batch_execute(&format!(
                    "CREATE TABLE ballast (b BLOB); INSERT INTO ballast VALUES (zeroblob({ballast}));"
                ))
                .expect("the ballast is written");
        },
        || {
            other
                .borrow_mut()
                .batch_execute("DROP TABLE ballast;")
                .expect("the ballast is dropped");
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_sqlite_file_locked_by_another_program_holds_intake_until_it_is_released() {
    use diesel::connection::SimpleConnection;
    let app = common::unthrottled(TestApp::builder()).start().await;
    let other = std::cell::RefCell::new(another_program(&app));
    writes_refused_then_restored(
        &app,
        80_000,
        "locked",
        || {
            other
                .borrow_mut()
                .batch_execute("BEGIN EXCLUSIVE;")
                .expect("the lock is taken");
        },
        || {
            other
                .borrow_mut()
                .batch_execute("COMMIT;")
                .expect("the lock is released");
        },
    )
    .await;
}

/// The user the read-only test runs the daemon as: `nobody`.
const NOBODY: (u32, u32) = (65534, 65534);

#[actix_rt::test]
async fn a_read_only_sqlite_file_holds_intake_until_it_can_be_written() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the read-only database test (it needs root, to run the daemon as another user)"
        );
        return;
    }
    // The file belongs to root and the daemon runs as nobody, who may read
    // it but not write it.
    let dir = common::unique_dir("read-only");
    let config = common::test_config(&[("DATA_DIR", dir.display().to_string())]);
    drop(
        actorbot::storage::Storage::open(&config)
            .await
            .expect("the database is made"),
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("actorbot.sqlite3"))
        .collect();
    let set_mode = |mode: u32| {
        for file in &files {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_mode(0o644);
    let app = common::unthrottled(TestApp::builder())
        .data_dir(dir.clone())
        .run_as(NOBODY.0, NOBODY.1)
        .start()
        .await;
    let users = 20;
    let first_user = 90_000;
    let last = held_while_writes_fail(&app, first_user, users, "readonly").await;
    assert!(
        app.tg.all_messages().is_empty(),
        "answered without a journal"
    );

    // Writable again: the daemon opens its connections afresh and answers
    // every update once, with no restart.
    set_mode(0o666);
    each_answered_once_and_confirmed(&app, first_user, users, last).await;
}
