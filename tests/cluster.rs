//! Several instances, one bot (`CLUSTER=true`) on one PostgreSQL and one
//! fake Telegram: a standby takes over from a leader killed under load, a
//! rolling restart hands the lease over without losing or repeating
//! anything, a leader cut off from the database stops, a failover keeps
//! Telegram's flood limits, and in webhook mode deliveries spread over
//! all three instances are routed by the leader, once and in order, across
//! a kill -9 of the leader.
//!
//! Skipped (visibly) without `ACTORBOT_TEST_POSTGRES_URL`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actorbot_testkit::telegram::FakeTelegram;
use common::{PgDatabase, TestApp, TestAppBuilder, seq_of, unthrottled};

/// The lease's TTL the instances are given: failover is bounded by it.
const TTL: f64 = 2.0;
const WAIT: Duration = Duration::from_secs(60);

fn instance(db: &str, name: &str, fake: Option<&FakeTelegram>) -> TestAppBuilder {
    let builder = unthrottled(TestApp::builder())
        .env("DATABASE_URL", db)
        .env("CLUSTER", "true")
        .env("CLUSTER_LEASE_TTL", TTL)
        .env("INSTANCE_ID", name)
        .env("RUST_LOG", "info");
    match fake {
        Some(fake) => builder.with_fake(fake.clone()),
        None => builder,
    }
}

/// The role an instance's `/health` shows.
async fn role(app: &TestApp) -> String {
    let (_, health) = app.get_json("/health").await;
    health["cluster"]["role"].as_str().unwrap_or("").to_string()
}

/// Waits until one of `apps` leads; answers its index.
async fn leader_among(apps: &[&TestApp], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (i, app) in apps.iter().enumerate() {
            if role(app).await == "leader" {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance leads within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three instances: the first leads, the other two stand by.
async fn three(db: &str) -> Vec<TestApp> {
    let a = instance(db, "a", None).start().await;
    assert_eq!(leader_among(&[&a], WAIT).await, 0);
    let b = instance(db, "b", Some(&a.tg)).start().await;
    let c = instance(db, "c", Some(&a.tg)).start().await;
    for standby in [&b, &c] {
        assert_eq!(role(standby).await, "standby");
    }
    vec![a, b, c]
}

/// `users` users each send `/seq0`, `/seq1`, … `per_user` times, a round
/// of all users every `every`; answers what was sent, by chat.
fn chatting(
    tg: &FakeTelegram,
    first: i64,
    users: i64,
    per_user: u64,
    every: Duration,
) -> tokio::task::JoinHandle<HashMap<i64, Vec<u64>>> {
    let tg = tg.clone();
    tokio::spawn(async move {
        let mut sent: HashMap<i64, Vec<u64>> = HashMap::new();
        let mut ticks = tokio::time::interval(every);
        for n in 0..per_user {
            ticks.tick().await;
            for user in first..first + users {
                tg.inject_text(user, &format!("/seq{n}"));
                sent.entry(user).or_default().push(n);
            }
        }
        sent
    })
}

/// Every update of `sent` answered, each chat's first answers in the order
/// sent; answers the `(chat, seq, index of the first answer)` answered
/// more than once.
async fn all_answered_in_order(
    tg: &FakeTelegram,
    sent: &HashMap<i64, Vec<u64>>,
) -> Vec<(i64, u64, usize)> {
    tg.wait_until(WAIT, |s| {
        sent.iter().all(|(chat, seqs)| {
            let answered: HashSet<u64> = s
                .messages_to(*chat)
                .iter()
                .filter_map(|m| seq_of(&m.text))
                .collect();
            seqs.iter().all(|n| answered.contains(n))
        })
    })
    .await
    .expect("every update answered");
    let all = tg.all_messages();
    let mut first_seen: HashMap<(i64, u64), usize> = HashMap::new();
    let mut repeated = Vec::new();
    for (index, message) in all.iter().enumerate() {
        let Some(seq) = seq_of(&message.text) else {
            continue;
        };
        match first_seen.get(&(message.chat_id, seq)) {
            Some(first) => repeated.push((message.chat_id, seq, *first)),
            None => {
                first_seen.insert((message.chat_id, seq), index);
            }
        }
    }
    for (chat, seqs) in sent {
        let order: Vec<u64> = all
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.chat_id == *chat && seq_of(&m.text).is_some_and(|n| first_seen[&(*chat, n)] == *i)
            })
            .filter_map(|(_, m)| seq_of(&m.text))
            .collect();
        assert_eq!(&order, seqs, "chat {chat}: first answers out of order");
    }
    repeated
}

/// Waits until the inbox holds no update that is not marked done.
async fn wait_all_done(url: &str) {
    use diesel::{Connection, RunQueryDsl, pg::PgConnection, sql_types::BigInt};
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(url).expect("PostgreSQL");
    let deadline = Instant::now() + WAIT;
    loop {
        let pending: Count =
            diesel::sql_query("SELECT count(*) AS n FROM inbox WHERE done_at IS NULL")
                .get_result(&mut conn)
                .expect("the inbox");
        if pending.n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} updates never marked done",
            pending.n
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_standby_takes_over_from_a_leader_killed_under_load() {
    let Some(db) = PgDatabase::create("the cluster's failover") else {
        return;
    };
    let mut apps = three(&db.url).await;
    let (users, rounds) = (1_000, 6);
    let load = chatting(
        &apps[0].tg,
        50_000,
        users,
        rounds,
        Duration::from_millis(400),
    );
    // Kill the leader once it has answered a part of the load.
    apps[0]
        .tg
        .wait_for_total_messages(2 * users as usize, WAIT)
        .await
        .expect("the leader answers");
    let leader = apps.remove(0);
    let (tg, _) = leader.kill();
    let killed = Instant::now();
    let answered_before_kill = tg.total_messages();
    let standbys: Vec<&TestApp> = apps.iter().collect();
    let new = leader_among(&standbys, WAIT).await;
    let took = killed.elapsed();
    // The old lease ends a TTL after its last renewal, and a standby looks
    // four times per TTL.
    let bound = Duration::from_secs_f64(TTL * 1.25 + 1.0);
    assert!(
        took <= bound,
        "a standby led after {took:?}, past {bound:?}"
    );
    assert_eq!(role(standbys[1 - new]).await, "standby");
    let sent = load.await.expect("the load ran");
    let repeated = all_answered_in_order(&tg, &sent).await;
    // Only what the old leader had answered before the kill, and not yet
    // marked done, is answered again.
    for (chat, seq, first) in &repeated {
        assert!(
            *first < answered_before_kill,
            "chat {chat} /seq{seq}: first answered after the kill, and again"
        );
    }
    let (_, metrics) = standbys[new].get("/metrics").await;
    assert!(
        metrics.contains("actorbot_cluster_failovers_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("actorbot_cluster_role 1"), "{metrics}");
    eprintln!(
        "failover after {took:?} (bound {bound:?}); {} updates, {} answered twice",
        sent.values().map(Vec::len).sum::<usize>(),
        repeated.len()
    );
}

#[actix_rt::test]
async fn a_rolling_restart_loses_nothing_and_repeats_nothing() {
    let Some(db) = PgDatabase::create("the cluster's rolling restart") else {
        return;
    };
    let mut apps = three(&db.url).await;
    let tg = apps[0].tg.clone();
    let load = chatting(&tg, 60_000, 300, 12, Duration::from_millis(300));
    for round in 0..3 {
        let refs: Vec<&TestApp> = apps.iter().collect();
        let leader = leader_among(&refs, WAIT).await;
        let mut old = apps.remove(leader);
        old.signal("TERM");
        let stopped = Instant::now();
        let status = old.wait_exit(WAIT).await;
        assert!(
            status.success(),
            "round {round}: the leader exited with {status}"
        );
        let refs: Vec<&TestApp> = apps.iter().collect();
        leader_among(&refs, WAIT).await;
        // Released, not expired: taken at a standby's next look.
        let took = stopped.elapsed();
        eprintln!("round {round}: a standby led {took:?} after SIGTERM");
        apps.push(
            instance(&db.url, &format!("r{round}"), Some(&tg))
                .start()
                .await,
        );
    }
    let sent = load.await.expect("the load ran");
    let repeated = all_answered_in_order(&tg, &sent).await;
    assert!(repeated.is_empty(), "answered twice: {repeated:?}");
}

#[actix_rt::test]
async fn a_leader_cut_off_from_the_database_stops_and_a_standby_answers() {
    let Some(db) = PgDatabase::create("the cluster's partition") else {
        return;
    };
    let (proxy, through) = db.through_proxy();
    let mut a = instance(&through, "a", None).start().await;
    assert_eq!(leader_among(&[&a], WAIT).await, 0);
    let b = instance(&db.url, "b", Some(&a.tg)).start().await;
    let tg = a.tg.clone();
    let before: Vec<i64> = (70_000..70_100).collect();
    for user in &before {
        tg.inject_text(*user, "/seq0");
    }
    tg.wait_for_total_messages(before.len(), WAIT)
        .await
        .expect("the leader answers");
    wait_all_done(&db.url).await;
    proxy.cut();
    let cut = Instant::now();
    let status = a.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(i32::from(actorbot::cluster::LeaseLost::EXIT_STATUS)),
        "the cut-off leader exits to be started again as a standby"
    );
    assert!(
        cut.elapsed() <= Duration::from_secs_f64(TTL + 2.0),
        "it stopped {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        a.log().contains("lost the cluster's leader lease"),
        "{}",
        a.log()
    );
    assert_eq!(leader_among(&[&b], WAIT).await, 0);
    let after: Vec<i64> = (71_000..71_100).collect();
    for user in &after {
        tg.inject_text(*user, "/seq1");
    }
    tg.wait_until(WAIT, |s| {
        after.iter().all(|u| !s.messages_to(*u).is_empty())
    })
    .await
    .expect("the new leader answers");
    for user in before.iter().chain(&after) {
        let answers = tg.messages_to(*user).len();
        assert_eq!(answers, 1, "user {user} answered {answers} times");
    }
}

#[actix_rt::test]
async fn a_failover_keeps_telegrams_flood_limits() {
    let Some(db) = PgDatabase::create("the cluster's flood limits") else {
        return;
    };
    // The daemon's own limits as configured by default, against a fake that
    // answers 429 past Telegram's.
    let defaults = common::test_config(&[]);
    let limited = |builder: TestAppBuilder| {
        builder
            .env("TELEGRAM_GLOBAL_RATE", defaults.telegram_global_rate)
            .env("TELEGRAM_GLOBAL_BURST", defaults.telegram_global_burst)
            .env("TELEGRAM_PRIVATE_RATE", defaults.telegram_private_rate)
            .env("TELEGRAM_PRIVATE_BURST", defaults.telegram_private_burst)
    };
    let a = limited(instance(&db.url, "a", None).flood_limits())
        .start()
        .await;
    assert_eq!(leader_among(&[&a], WAIT).await, 0);
    let b = limited(instance(&db.url, "b", Some(&a.tg))).start().await;
    let (users, rounds) = (60, 3);
    let load = chatting(&a.tg, 80_000, users, rounds, Duration::from_secs(1));
    a.tg.wait_for_total_messages(users as usize, WAIT)
        .await
        .expect("the leader answers");
    let (tg, _) = a.kill();
    assert_eq!(leader_among(&[&b], WAIT).await, 0);
    let sent = load.await.expect("the load ran");
    all_answered_in_order(&tg, &sent).await;
    assert_eq!(tg.rejected_429(), 0, "Telegram's limits were passed");
}

#[actix_rt::test]
async fn webhook_deliveries_spread_over_three_instances_are_answered_once_in_order() {
    let Some(db) = PgDatabase::create("the cluster's webhook") else {
        return;
    };
    let a = instance(&db.url, "a", None).webhook().start().await;
    assert_eq!(leader_among(&[&a], WAIT).await, 0);
    let b = instance(&db.url, "b", Some(&a.tg)).webhook().start().await;
    let c = instance(&db.url, "c", Some(&a.tg)).webhook().start().await;
    let tg = a.tg.clone();
    // A load balancer in front of the three: each delivery to any of them.
    tg.spread_webhook_over(
        [&a, &b, &c]
            .iter()
            .map(|app| format!("{}/telegram/webhook", app.base_url()))
            .collect(),
    );
    let (users, rounds) = (1_000, 6);
    let load = chatting(&tg, 70_000, users, rounds, Duration::from_millis(400));
    tg.wait_for_total_messages(2 * users as usize, WAIT)
        .await
        .expect("the leader answers");
    // Each instance took deliveries into the shared inbox.
    for (name, app) in [("a", &a), ("b", &b), ("c", &c)] {
        let (_, metrics) = app.get("/metrics").await;
        let taken = metrics
            .lines()
            .find_map(|l| l.strip_prefix("actorbot_updates_received_total{source=\"webhook\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(taken > 0.0, "instance {name} took no delivery");
    }
    // The leader dies: its deliveries fail and go to the others, and a
    // standby routes what they take.
    let (_, _) = a.kill();
    let killed = Instant::now();
    let answered_before_kill = tg.total_messages();
    let new = leader_among(&[&b, &c], WAIT).await;
    let took = killed.elapsed();
    let sent = load.await.expect("the load ran");
    let repeated = all_answered_in_order(&tg, &sent).await;
    for (chat, seq, first) in &repeated {
        assert!(
            *first < answered_before_kill,
            "chat {chat} /seq{seq}: first answered after the kill, and again"
        );
    }
    wait_all_done(&db.url).await;
    eprintln!(
        "webhook over three instances: {} updates; the leader killed, {} led after {took:?}; {} answered twice",
        sent.values().map(Vec::len).sum::<usize>(),
        ["b", "c"][new],
        repeated.len()
    );
}

/// A job as the shared table has it.
#[derive(diesel::QueryableByName, Debug)]
struct Job {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    claimed_by: Option<String>,
}

fn jobs(url: &str) -> Vec<Job> {
    use diesel::{Connection, RunQueryDsl, pg::PgConnection};
    let mut conn = PgConnection::establish(url).expect("PostgreSQL");
    diesel::sql_query("SELECT id, status, attempts, claimed_by FROM jobs ORDER BY id")
        .load(&mut conn)
        .expect("the jobs")
}

/// Waits until `done(jobs)` holds.
async fn wait_jobs(url: &str, what: &str, done: impl Fn(&[Job]) -> bool) -> Vec<Job> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = jobs(url);
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: jobs were {now:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `actorbot worker` for the cluster on `db`, sending through `tg`.
fn worker(db: &str, name: &str, tg: &FakeTelegram) -> TestAppBuilder {
    unthrottled(TestApp::builder())
        .worker()
        .with_fake(tg.clone())
        .env("DATABASE_URL", db)
        .env("INSTANCE_ID", name)
        .env("RUST_LOG", "info")
}

/// The claims a process's `/metrics` counts for `worker`.
async fn claimed(app: &TestApp, worker: &str) -> f64 {
    let (_, metrics) = app.get("/metrics").await;
    let line = format!("actorbot_jobs_claimed_total{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[actix_rt::test]
async fn document_workers_share_the_jobs_and_a_killed_workers_jobs_are_delivered_once() {
    use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
    let Some(db) = PgDatabase::create("document workers") else {
        return;
    };
    let ai = FakeAi::start(FakeAiConfig::default()).expect("the fake AI starts");
    // The leader's and the first worker's renders hold: the leader's until
    // its gate opens, the first worker's for ever (it is killed).
    let gates = common::unique_dir("gates");
    std::fs::create_dir_all(&gates).expect("the gates' directory");
    let (leader_gate, never) = (gates.join("leader"), gates.join("never"));
    let (lease, leader_pdf, w1_pdf) = (2.0, 1usize, 2usize);
    let a = instance(&db.url, "a", None)
        .env("AI_API_URL", ai.api_url())
        .env("JOB_LEASE", lease)
        .env("JOB_CLAIM_INTERVAL", 0.05)
        .env("PDF_SEMAPHORE_LIMIT", leader_pdf)
        .env("FAULT_HOLD", format!("render={}", leader_gate.display()))
        .start()
        .await;
    assert_eq!(leader_among(&[&a], WAIT).await, 0);
    let tg = a.tg.clone();
    let w1 = worker(&db.url, "w1", &tg)
        .env("JOB_LEASE", lease)
        .env("JOB_CLAIM_INTERVAL", 0.05)
        .env("PDF_SEMAPHORE_LIMIT", w1_pdf)
        .env("FAULT_HOLD", format!("render={}", never.display()))
        .start()
        .await;

    // Each user has one exchange, then asks for the report of it.
    let users: Vec<i64> = (90_001..=90_020).collect();
    for user in &users {
        tg.inject_text(*user, &format!("What is {user}?"));
    }
    for user in &users {
        tg.wait_until(WAIT, |s| {
            s.messages_to(*user)
                .iter()
                .any(|m| m.text.contains("earlier messages."))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: user {user} was not answered\n{}", a.log()));
    }
    for user in &users {
        tg.inject_text(*user, "/report");
    }
    // The leader runs one at once, the first worker claims one per free
    // worker; both hold them.
    let held = wait_jobs(&db.url, "the leader and w1 hold their shares", |jobs| {
        let by = |name: &str| {
            jobs.iter()
                .filter(|j| j.claimed_by.as_deref() == Some(name) && j.status == "running")
                .count()
        };
        jobs.len() == users.len() && by("a") == leader_pdf && by("w1") == w1_pdf
    })
    .await;
    let w1_jobs: Vec<i64> = held
        .iter()
        .filter(|j| j.claimed_by.as_deref() == Some("w1"))
        .map(|j| j.id)
        .collect();
    // The cluster's /health shows who holds what.
    let (_, health) = a.get_json("/health").await;
    let claims = &health["cluster"]["job_claims"];
    assert!(
        claims.as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["worker"] == "w1" && c["running"] == w1_pdf)),
        "/health's job claims: {claims}"
    );

    // A second worker takes the rest.
    let w2 = worker(&db.url, "w2", &tg)
        .env("JOB_LEASE", lease)
        .env("JOB_CLAIM_INTERVAL", 0.05)
        .start()
        .await;
    let rest = users.len() - leader_pdf - w1_pdf;
    wait_jobs(&db.url, "w2 delivers the rest", |jobs| {
        jobs.iter().filter(|j| j.status == "done").count() == rest
    })
    .await;
    assert_eq!(claimed(&w2, "w2").await as usize, rest);

    // The first worker dies mid-render; the leader's gate opens.
    let killed = Instant::now();
    let _ = w1.kill();
    std::fs::write(&leader_gate, b"").expect("the gate opens");
    let finished = wait_jobs(&db.url, "every job delivered", |jobs| {
        jobs.iter().all(|j| j.status == "done")
    })
    .await;
    let took = killed.elapsed();
    for job in finished.iter().filter(|j| w1_jobs.contains(&j.id)) {
        assert_ne!(job.claimed_by.as_deref(), Some("w1"), "{job:?}");
        assert_eq!(
            job.attempts, 2,
            "a killed worker's job counts its attempt: {job:?}"
        );
    }
    assert!(
        took >= Duration::from_secs_f64(lease * 0.6),
        "w1's jobs were taken before its lease ended ({took:?})"
    );
    // Each user has exactly one report.
    for user in &users {
        let documents = tg
            .messages_to(*user)
            .iter()
            .filter(|m| m.method == "sendDocument")
            .count();
        assert_eq!(documents, 1, "user {user} got {documents} reports");
    }
    assert!(claimed(&a, "a").await >= leader_pdf as f64);
    eprintln!(
        "document workers: {} jobs; w1 killed holding {}, taken over and delivered {took:?} later",
        finished.len(),
        w1_jobs.len()
    );
}
