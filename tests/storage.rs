//! The storage layer on both backends: the same checks run on SQLite
//! always and on PostgreSQL when a server is configured.

mod common;

use std::time::Duration;

use actorbot::config::Config;
use actorbot::storage::{
    DeadLetter, InboxRow, NewJob, SAME_UPDATE_WITHIN, Storage, UserRecord, job_status, now_millis,
};
use common::{PgDatabase, test_config};

fn sqlite_config() -> Config {
    let dir = common::unique_dir("storage");
    test_config(&[("DATA_DIR", dir.display().to_string())])
}

fn row(update_id: i64) -> InboxRow {
    InboxRow {
        update_id,
        chat_id: Some(update_id % 7),
        body: format!("{{\"update_id\":{update_id}}}"),
    }
}

/// Moves the done marks of `ids` back by `by`, as a long stop leaves them.
fn age_answered_rows(config: &Config, ids: &[i64], by: Duration) {
    use diesel::{Connection, RunQueryDsl};
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let sql = format!(
        "UPDATE inbox SET done_at = done_at - {} WHERE update_id IN ({})",
        by.as_millis(),
        ids.join(",")
    );
    let url = config.database_url.expose();
    let changed = if url.starts_with("postgres") {
        let mut conn = diesel::PgConnection::establish(url).expect("connects");
        diesel::sql_query(sql).execute(&mut conn)
    } else {
        let path = config.data_dir.join("actorbot.sqlite3");
        let mut conn =
            diesel::SqliteConnection::establish(&path.display().to_string()).expect("opens");
        diesel::sql_query(sql).execute(&mut conn)
    };
    assert_eq!(changed.expect("the rows are aged"), ids.len());
}

/// The update_ids the inbox holds and has not marked done.
async fn pending_ids(storage: &Storage) -> Vec<i64> {
    storage
        .inbox_pending()
        .await
        .unwrap()
        .iter()
        .map(|r| r.update_id)
        .collect()
}

async fn exercise(config: &Config) {
    let storage = Storage::open(config).await.expect("opens and migrates");
    // Opening again finds nothing to migrate.
    let again = Storage::open(config).await.expect("opens twice");
    assert!(again.migrate_blocking().unwrap().is_empty());
    assert!(storage.ping().await.is_ok());

    // Inbox: rows sent again are still to answer while not done, pending
    // and done tracked, purge works.
    let new = storage
        .inbox_journal((1..=5).map(row).collect(), vec![])
        .await
        .unwrap();
    assert_eq!(new.len(), 5);
    let new = storage
        .inbox_journal((4..=7).map(row).collect(), vec![])
        .await
        .unwrap();
    assert_eq!(new, (4..=7).collect());
    storage.inbox_journal(vec![], vec![1, 2, 6]).await.unwrap();
    // Done rows sent again (to a new leader, say) are not to answer.
    let again = storage
        .inbox_journal(vec![row(1), row(2), row(3)], vec![])
        .await
        .unwrap();
    assert_eq!(again, [3].into_iter().collect());
    assert_eq!(pending_ids(&storage).await, vec![3, 4, 5, 7]);
    assert_eq!(storage.inbox_pending().await.unwrap()[0], row(3));
    assert!(storage.inbox_is_done(2).await.unwrap());
    assert!(!storage.inbox_is_done(3).await.unwrap());
    assert_eq!(storage.inbox_stats().await.unwrap(), (4, 3));
    assert_eq!(storage.inbox_purge_done(0).await.unwrap(), 0);
    assert_eq!(storage.inbox_purge_done(now_millis() + 1).await.unwrap(), 3);
    assert_eq!(storage.inbox_stats().await.unwrap(), (4, 0));

    // Dead letters: set aside marks the inbox row done in the same write;
    // dropped, gone; taken back, the row is pending again.
    let letter = DeadLetter::new(7, Some(0), row(7).body, "crashed".into(), 3);
    storage.dead_letter_put(letter.clone()).await.unwrap();
    storage.dead_letter_put(letter.clone()).await.unwrap();
    assert_eq!(storage.dead_letters_count().await.unwrap(), 1);
    assert!(storage.inbox_is_done(7).await.unwrap());
    assert_eq!(
        storage.dead_letters_list(10).await.unwrap(),
        vec![letter.clone()]
    );
    assert!(storage.dead_letter_drop(7).await.unwrap());
    assert!(!storage.dead_letter_drop(7).await.unwrap());
    storage.dead_letter_put(letter.clone()).await.unwrap();
    assert_eq!(storage.dead_letter_take(7).await.unwrap(), Some(letter));
    assert_eq!(storage.dead_letter_take(7).await.unwrap(), None);
    assert!(!storage.inbox_is_done(7).await.unwrap());
    assert_eq!(storage.dead_letters_count().await.unwrap(), 0);

    // One write journals updates (more than one statement takes, one of
    // them twice, one already there and not done) and marks some of them
    // done.
    let mut rows: Vec<InboxRow> = (100..2_600).map(row).collect();
    rows.push(row(100));
    rows.push(row(5));
    let new = storage.inbox_journal(rows, vec![100, 2_599]).await.unwrap();
    assert_eq!(new.len(), 2_500 + 1);
    assert!(new.contains(&100) && new.contains(&2_599) && new.contains(&5));
    assert_eq!(storage.inbox_stats().await.unwrap(), (4 + 2_498, 2));
    assert_eq!(storage.inbox_pending().await.unwrap()[4], row(101));
    storage
        .inbox_journal(vec![], (100..2_600).collect())
        .await
        .unwrap();
    assert_eq!(
        storage.inbox_purge_done(now_millis() + 1).await.unwrap(),
        2_500
    );
    assert_eq!(storage.inbox_stats().await.unwrap(), (4, 0));

    // An id answered longer ago than Telegram's week of sequence is a new
    // update's: it takes the row over, pending again with its own body;
    // one answered within the week is still a resend.
    let mut reused = row(9_000);
    storage
        .inbox_journal(vec![reused.clone(), row(9_001)], vec![])
        .await
        .unwrap();
    storage
        .inbox_journal(vec![], vec![9_000, 9_001])
        .await
        .unwrap();
    age_answered_rows(
        config,
        &[9_000],
        SAME_UPDATE_WITHIN + Duration::from_secs(60),
    );
    reused.body = "{\"update_id\":9000,\"message\":{}}".into();
    let new = storage
        .inbox_journal(vec![reused.clone(), row(9_001)], vec![])
        .await
        .unwrap();
    assert_eq!(new, [9_000].into_iter().collect());
    let pending = storage.inbox_pending().await.unwrap();
    assert!(pending.contains(&reused), "{pending:?}");
    assert!(!storage.inbox_is_done(9_000).await.unwrap());
    storage.inbox_journal(vec![], vec![9_000]).await.unwrap();

    // Users: upsert and load back.
    assert_eq!(storage.user_load(42).await.unwrap(), None);
    let mut user = UserRecord::new(42, 1_000);
    user.first_name = Some("Ада".into());
    user.messages = 3;
    storage.users_save(vec![user.clone()]).await.unwrap();
    user.messages = 4;
    user.last_seen = 2_000;
    user.state = r#"{"epoch":1}"#.into();
    storage.users_save(vec![user.clone()]).await.unwrap();
    assert_eq!(storage.user_load(42).await.unwrap(), Some(user.clone()));
    // A record is saved whole: a name gone is gone.
    user.first_name = None;
    storage.users_save(vec![user.clone()]).await.unwrap();
    assert_eq!(storage.user_load(42).await.unwrap(), Some(user));
    assert_eq!(storage.users_count().await.unwrap(), 1);
    assert_eq!(storage.users_active_since(1_500).await.unwrap(), 1);
    assert_eq!(storage.users_active_since(2_500).await.unwrap(), 0);

    // Conversation turns: numbered, recent ones in order, cleared.
    for i in 1..=4 {
        storage
            .exchange_save(None, 42, format!("q{i}"), format!("a{i}"))
            .await
            .unwrap();
    }
    // A new user's first exchange saves their record with it.
    let newcomer = UserRecord::new(43, 3_000);
    storage
        .exchange_save(Some(newcomer.clone()), 43, "other".into(), "user".into())
        .await
        .unwrap();
    assert_eq!(storage.user_load(43).await.unwrap(), Some(newcomer));
    let recent = storage.turns_recent(42, 2).await.unwrap();
    let questions: Vec<&str> = recent.iter().map(|t| t.question.as_str()).collect();
    assert_eq!(questions, ["q3", "q4"]);
    assert_eq!(storage.turns_clear(42).await.unwrap(), 4);
    assert!(storage.turns_recent(42, 10).await.unwrap().is_empty());
    assert_eq!(storage.turns_recent(43, 10).await.unwrap().len(), 1);

    // Jobs: queued, run, finished, purged; unfinished ones by priority,
    // the highest first.
    let job = |priority| NewJob {
        kind: "report".into(),
        user_id: 42,
        chat_id: 42,
        priority,
        payload: "{}".into(),
    };
    let high = storage.job_insert(job(5)).await.unwrap().id;
    let low = storage.job_insert(job(1)).await.unwrap().id;
    assert!(low > high, "ids grow with time");
    let order: Vec<i64> = storage
        .jobs_unfinished()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(order, vec![high, low]);
    storage
        .job_update(high, job_status::DONE, 1, None)
        .await
        .unwrap();
    storage
        .job_update(low, job_status::RUNNING, 2, Some("retrying".into()))
        .await
        .unwrap();
    let unfinished = storage.jobs_unfinished().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].attempts, 2);
    assert_eq!(unfinished[0].error.as_deref(), Some("retrying"));
    assert_eq!(
        storage.jobs_purge_finished(now_millis() + 1).await.unwrap(),
        1
    );

    // Writers at once: no "database is locked".
    let writers = (0..8).map(|w| {
        let storage = storage.clone();
        async move {
            for batch in 0..10 {
                let base = 1_000 + w * 1_000 + batch * 10;
                storage
                    .inbox_journal((base..base + 10).map(row).collect(), vec![])
                    .await
                    .expect("concurrent insert");
            }
        }
    });
    futures_util::future::join_all(writers).await;
    assert_eq!(storage.inbox_stats().await.unwrap().0, 4 + 800);
}

#[actix_rt::test]
async fn sqlite_storage() {
    let config = sqlite_config();
    exercise(&config).await;
    let storage = Storage::open(&config).await.unwrap();
    assert_eq!(storage.backend(), "sqlite");
    assert!(storage.describe().contains("actorbot.sqlite3"));
}

#[actix_rt::test]
async fn postgres_storage() {
    let Some(db) = PgDatabase::create("storage tests") else {
        return;
    };
    let config = test_config(&[("DATABASE_URL", db.url.clone())]);
    exercise(&config).await;
    let storage = Storage::open(&config).await.unwrap();
    assert_eq!(storage.backend(), "postgres");
}

/// The leader lease and its fencing token: a write by an instance whose
/// lease has passed to another is refused, the new holder's goes through,
/// and the cleanup's purges are not fenced.
#[actix_rt::test]
async fn a_deposed_leaders_writes_are_refused_by_the_fencing_token() {
    use actorbot::storage::{Fence, StorageError};
    use std::sync::Arc;
    let Some(db) = PgDatabase::create("fencing") else {
        return;
    };
    let config = test_config(&[("DATABASE_URL", db.url.clone())]);
    let plain = Storage::open(&config).await.unwrap();
    let (fence_a, fence_b) = (
        Arc::new(Fence::new("a".into())),
        Arc::new(Fence::new("b".into())),
    );
    let a = plain.clone().fenced(fence_a.clone());
    let b = plain.clone().fenced(fence_b.clone());
    // Without a token nothing is written.
    assert!(matches!(
        a.inbox_journal(vec![row(1)], vec![]).await,
        Err(StorageError::Fenced { token: 0 })
    ));
    let ttl_ms = 300;
    let token_a = plain
        .lease_acquire("a", ttl_ms)
        .await
        .unwrap()
        .expect("free");
    fence_a.set(token_a);
    assert_eq!(
        plain.lease_acquire("b", ttl_ms).await.unwrap(),
        None,
        "held by a"
    );
    assert!(plain.lease_renew("a", token_a, ttl_ms).await.unwrap());
    a.inbox_journal(vec![row(1), row(2)], vec![]).await.unwrap();

    // a stops renewing (a partition); once its lease has ended b takes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let token_b = loop {
        if let Some(token) = plain.lease_acquire("b", ttl_ms).await.unwrap() {
            break token;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(token_b > token_a);
    fence_b.set(token_b);
    // a, still believing it leads, can neither journal nor mark done.
    assert!(matches!(
        a.inbox_journal(vec![row(3)], vec![1]).await,
        Err(StorageError::Fenced { .. })
    ));
    assert!(!plain.lease_renew("a", token_a, ttl_ms).await.unwrap());
    assert_eq!(pending_ids(&plain).await, vec![1, 2]);
    b.inbox_journal(vec![row(3)], vec![1]).await.unwrap();
    assert_eq!(pending_ids(&plain).await, vec![2, 3]);
    // Purges are any instance's to make.
    assert!(a.inbox_purge_done(now_millis() + 1).await.is_ok());
    // A release ends the lease at once.
    assert!(plain.lease_release("b", token_b).await.unwrap());
    assert!(plain.lease_acquire("a", ttl_ms).await.unwrap().is_some());
    let lease = plain.lease_read().await.unwrap().expect("a lease");
    assert_eq!(lease.holder, "a");
}

#[actix_rt::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let config = test_config(&[(
        "DATABASE_URL",
        "postgres://bot:hunter2@127.0.0.1:1/actorbot".to_string(),
    )]);
    let err = match Storage::open(&config).await {
        Ok(_) => panic!("connected to nothing"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("postgres"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// Every reply posted is counted until its done mark is with the journal,
/// so a flush once the count is zero writes every mark. Marks made in one
/// turn of the event loop go to the journal at its end.
#[actix_rt::test]
async fn done_marks_of_ended_replies_are_written_by_the_next_flush() {
    use actix::Actor;
    use actorbot::journal::{DoneMarks, Flush, InFlight, Journal, Record};

    let storage = Storage::open(&sqlite_config()).await.expect("opens");
    let journal = Journal::new(storage.clone()).start();
    let new = journal
        .send(Record((1..=5).map(row).collect()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.len(), 5);

    let marks = DoneMarks::new(journal.clone(), InFlight::default());
    for _ in 0..4 {
        marks.reply_posted();
    }
    assert_eq!(marks.replies_in_flight(), 4);
    // Three delivered, one given up on for a replay, one needing no reply.
    for id in 1..=3 {
        marks.reply_ended(id, true);
    }
    marks.reply_ended(4, false);
    marks.mark(5);
    assert_eq!(marks.replies_in_flight(), 3, "gathered until the turn ends");
    tokio::time::timeout(Duration::from_secs(5), async {
        while marks.replies_in_flight() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the gathered marks are sent");
    journal.send(Flush).await.unwrap();
    for id in [1, 2, 3, 5] {
        assert!(storage.inbox_is_done(id).await.unwrap(), "{id} not done");
    }
    assert_eq!(pending_ids(&storage).await, vec![4]);
}

/// The same update recorded twice at about the same time (a webhook
/// delivery retried while the first is written) is new to one record only,
/// so it is handled once.
#[actix_rt::test]
async fn an_update_recorded_twice_at_once_is_new_once() {
    use actix::Actor;
    use actorbot::journal::{Journal, Record};

    let storage = Storage::open(&sqlite_config()).await.expect("opens");
    let journal = Journal::new(storage.clone()).start();
    // The first write is under way while the next two records arrive, so
    // that they share the next write.
    let first = journal.send(Record((1..=50).map(row).collect()));
    let second = journal.send(Record((51..=60).map(row).collect()));
    let third = journal.send(Record((55..=65).map(row).collect()));
    let (first, second, third) = tokio::join!(first, second, third);
    let mut answered: Vec<i64> = [first, second, third]
        .into_iter()
        .flat_map(|answer| answer.unwrap().unwrap())
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, (1..=65).collect::<Vec<_>>());
}
