//! Load test: runs the real `actorbot` binary against an in-process fake
//! Telegram without flood limits and reports throughput, update-to-reply
//! latency and memory per idle user actor.
//!
//! ```sh
//! cargo build --release --workspace
//! target/release/loadtest --daemon target/release/actorbot
//! ```
//!
//! - throughput: `--updates` /start updates from `--users` users, queued at
//!   once; updates/s from the first reply to the last.
//! - latency: updates at `--rate` per second for `--seconds`, each from a
//!   new user; percentiles of the time from injection to the reply's arrival.
//! - memory: `--idle-users` users each send /start and go quiet, in
//!   `--memory-steps` bursts; the daemon's resident memory growth per live
//!   user actor.
//! - ai: `--ai-users` users ask the assistant at once, against a fake
//!   OpenAI backend that takes `--ai-latency-ms` per answer; the time until
//!   the last user has the full answer, and the time above the backend's own.
//!
//! `--tls` puts the fake behind HTTPS (HTTP/2 and HTTP/1.1 offered by
//! ALPN): with `--env TELEGRAM_HTTP_VERSION=2` or `=1.1`, what each costs.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actorbot_actors::process::Process;
use actorbot_testkit::openai::{FakeAi, FakeAiConfig};
use actorbot_testkit::rig::{self, Rig, RigConfig};
use actorbot_testkit::telegram::{FakeState, FakeTelegram, FakeTelegramConfig};
use clap::Parser;

/// The fakes share the machine with the daemon: allocation should cost
/// them no more than it costs the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "7000001:LOAD-test_token";

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Load test for actorbot against the fake Telegram"
)]
struct Args {
    /// The actorbot binary to run.
    #[arg(long, default_value = "target/release/actorbot")]
    daemon: PathBuf,
    /// Which measurements: throughput, latency, memory (comma-separated).
    #[arg(long, default_value = "throughput,latency,memory")]
    run: String,
    /// Throughput: updates queued at once.
    #[arg(long, default_value_t = 100_000)]
    updates: u64,
    /// Throughput: users they come from.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Latency: updates per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Latency: seconds at that rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Memory: users who each send one /start and go quiet.
    #[arg(long, default_value_t = 100_000)]
    idle_users: u64,
    /// Memory: the steps they come in, each a burst of as many new users
    /// at once; what a burst holds for a moment (queues, updates in
    /// flight) the allocator keeps for the next, so more, smaller steps
    /// leave less of it in the figure.
    #[arg(long, default_value_t = 10)]
    memory_steps: u64,
    /// AI: users asking at once.
    #[arg(long, default_value_t = 1_000)]
    ai_users: u64,
    /// AI: the fake backend's time per answer.
    #[arg(long, default_value_t = 1_000)]
    ai_latency_ms: u64,
    /// AI: bursts, one after the other, each of new users: the first meets
    /// a daemon just started, the later ones a daemon that has run.
    #[arg(long, default_value_t = 2)]
    ai_rounds: usize,
    /// Extra environment for the daemon, KEY=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Run this bot instead of actorbot (program and arguments, split at
    /// spaces): throughput, latency and startup only.
    #[arg(long)]
    peer: Option<String>,
    /// Startup: starts to time.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// The fake serves HTTPS (ALPN h2 and http/1.1) with a certificate the
    /// daemon is given to trust; `--env TELEGRAM_HTTP_VERSION=2` lets the
    /// daemon take HTTP/2. actorbot only.
    #[arg(long)]
    tls: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.peer.is_some()
        && let Some(what) = args
            .run
            .split(',')
            .map(str::trim)
            .find(|r| ["memory", "ai"].contains(r))
    {
        return Err(format!("{what} measures actorbot alone, not a --peer").into());
    }
    if args.peer.is_some() && args.tls {
        return Err("--tls is for actorbot alone, not a --peer".into());
    }
    // awc runs on actix's single-threaded runtime.
    let runtime = actix_rt::System::new();
    for what in args.run.split(',').map(str::trim) {
        match what {
            "throughput" => runtime.block_on(throughput(&args))?,
            "latency" => runtime.block_on(latency(&args))?,
            "memory" => runtime.block_on(memory(&args))?,
            "ai" => runtime.block_on(ai(&args))?,
            "startup" => runtime.block_on(startup(&args))?,
            other => return Err(format!("unknown measurement {other:?}").into()),
        }
    }
    Ok(())
}

/// The bot under test, against a fake of its own: actorbot in its rig,
/// or a peer's bot (`--peer`).
enum Bot {
    Actorbot(Rig),
    Peer(Peer),
}

impl Bot {
    async fn start(args: &Args) -> Result<Bot, Box<dyn std::error::Error>> {
        Ok(match &args.peer {
            None => Bot::Actorbot(start(args, None).await?),
            Some(command) => {
                let tg = FakeTelegram::start(FakeTelegramConfig {
                    token: TOKEN.into(),
                    workers: 1,
                    ..Default::default()
                })?;
                let child = peer_command(command, &tg)?.spawn()?;
                Bot::Peer(Peer { tg, child })
            }
        })
    }

    fn telegram(&self) -> &FakeTelegram {
        match self {
            Bot::Actorbot(rig) => rig.telegram(),
            Bot::Peer(peer) => &peer.tg,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Bot::Actorbot(rig) => rig.pid(),
            Bot::Peer(peer) => peer.child.id(),
        }
    }
}

/// A peer's bot and the fake it polls; dropping it kills the bot.
struct Peer {
    tg: FakeTelegram,
    child: Child,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--peer`'s command, pointed at `tg`.
fn peer_command(command: &str, tg: &FakeTelegram) -> Result<Command, Box<dyn std::error::Error>> {
    let mut words = command.split_whitespace();
    let program = words.next().ok_or("--peer is empty")?;
    let mut command = Command::new(program);
    command
        .args(words)
        .env("BOT_TOKEN", TOKEN)
        .env("TELEGRAM_API_URL", tg.api_url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(command)
}

/// What `work` answers, and the peak resident memory (bytes) of `pid`
/// while it ran, sampled every 20 ms.
async fn peak_rss<T>(pid: u32, work: impl Future<Output = T>) -> (T, u64) {
    let peak = Cell::new(Process::Pid(pid).rss_bytes());
    let sample = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peak.set(peak.get().max(Process::Pid(pid).rss_bytes()));
        }
    };
    let out = tokio::select! {
        out = work => out,
        _ = sample => unreachable!("the sampler never ends"),
    };
    (out, peak.get())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The daemon under test against a fake of its own (and the fake AI
/// backend, if given), ready: the shared rig with what these measurements
/// want of the daemon.
async fn start(args: &Args, ai: Option<FakeAi>) -> Result<Rig, Box<dyn std::error::Error>> {
    let mut env = vec![("APP_PROFILE".to_string(), "high-load".to_string())];
    env.extend(rig::unlimited(true));
    // Room for every idle user of the memory run and its warm-up.
    env.push((
        "MAX_USER_STATES".into(),
        (args.idle_users + 10_000).max(100_000).to_string(),
    ));
    if ai.is_some() {
        for key in ["AI_SEMAPHORE_LIMIT", "AI_QUEUE_SIZE"] {
            env.push((key.into(), args.ai_users.to_string()));
        }
    }
    env.extend(args.env.iter().filter_map(|pair| {
        pair.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    }));
    let mut rig = Rig::start(RigConfig {
        daemon: args.daemon.clone(),
        telegram: FakeTelegramConfig {
            token: TOKEN.into(),
            record_calls: args.run.split(',').any(|r| r.trim() == "ai"),
            workers: 1,
            tls: args.tls,
            ..Default::default()
        },
        ai,
        env,
        show_log: true,
    })?;
    rig.ready(Duration::from_secs(30)).await?;
    Ok(rig)
}

/// CPU time the daemon has used so far (user + system), in seconds.
fn cpu_seconds(rig: &Rig) -> f64 {
    Process::Pid(rig.pid()).cpu_seconds()
}

async fn metrics(rig: &Rig) -> Result<String, Box<dyn std::error::Error>> {
    Ok(rig
        .get("/metrics")
        .await
        .ok_or("the daemon's /metrics did not answer")?)
}

/// Resident memory (KiB) and live user actors once the daemon has
/// settled: the outbox forgets idle chats' lanes after a few seconds.
async fn memory_level(rig: &Rig) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    tokio::time::sleep(Duration::from_secs(12)).await;
    let live = metric_value(&metrics(rig).await?, "actorbot_user_actors");
    Ok((Process::Pid(rig.pid()).rss_bytes() / 1024, live))
}

async fn wait_messages(
    rig: &Rig,
    n: usize,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    wait_total(rig.telegram(), n, timeout).await
}

async fn wait_total(
    tg: &FakeTelegram,
    n: usize,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    tg.wait_for_total_messages(n, timeout)
        .await
        .map_err(|e| e.to_string().into())
}

async fn throughput(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let bot = Bot::start(args).await?;
    let tg = bot.telegram();
    // Warm up: connections open, sessions' code paths hot.
    for user in 0..1_000 {
        tg.inject_text(1_000_000 + user, "/start");
    }
    wait_total(tg, 1_000, Duration::from_secs(60)).await?;
    let base = tg.total_messages();
    let rss_before = Process::Pid(bot.pid()).rss_bytes();
    let cpu_before = Process::Pid(bot.pid()).cpu_seconds();
    let started = Instant::now();
    tg.inject_texts((0..args.updates).map(|n| ((n % args.users) as i64 + 1, "/start")));
    let injected = started.elapsed();
    // The updates are built before the fake's queue takes them at once, so
    // the daemon sees none of them until then: what this process uses from
    // here on is the fake serving the daemon.
    let own_before = Process::Current.cpu_seconds();
    let (done, rss_peak) = peak_rss(
        bot.pid(),
        wait_total(tg, base + args.updates as usize, Duration::from_secs(600)),
    )
    .await;
    done?;
    let all = tg.all_messages();
    let replies = &all[base..];
    let first = replies.iter().map(|m| m.at).min().unwrap_or(started);
    let last = replies.iter().map(|m| m.at).max().unwrap_or(started);
    let span = last.duration_since(first).as_secs_f64();
    let total = last.duration_since(started).as_secs_f64();
    let cpu = Process::Pid(bot.pid()).cpu_seconds() - cpu_before;
    let own = Process::Current.cpu_seconds() - own_before;
    println!(
        "throughput: {} /start updates from {} users: {:.0} updates/s between the first and last reply \
         ({span:.2} s); {:.0} updates/s from queueing to the last reply ({total:.2} s; queueing took {:.2} s)",
        args.updates,
        args.users,
        args.updates as f64 / span,
        args.updates as f64 / total,
        injected.as_secs_f64()
    );
    println!(
        "throughput: the daemon used {cpu:.2} CPU-seconds ({:.0} µs per update, {:.2} cores on average); \
         the fake Telegram serving it used {own:.2} ({:.0} µs per update)",
        cpu * 1e6 / args.updates as f64,
        cpu / total,
        own * 1e6 / args.updates as f64,
    );
    println!(
        "throughput: RSS {:.1} MiB before the burst, peak {:.1} MiB during it",
        mib(rss_before),
        mib(rss_peak)
    );
    print_protocol(args, tg, "throughput");
    Ok(())
}

async fn latency(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let bot = Bot::start(args).await?;
    let tg = bot.telegram();
    for user in 0..1_000 {
        tg.inject_text(1_000_000 + user, "/start");
    }
    wait_total(tg, 1_000, Duration::from_secs(60)).await?;
    let base = tg.total_messages();
    let rss_before = Process::Pid(bot.pid()).rss_bytes();
    let cpu_before = Process::Pid(bot.pid()).cpu_seconds();
    let total = args.rate * args.seconds;
    let tick = Duration::from_millis(1);
    let per_tick = args.rate as f64 / 1000.0;
    let mut injected_at: HashMap<i64, Instant> = HashMap::with_capacity(total as usize);
    let run = async {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while sent < total {
            interval.tick().await;
            let due = ((started.elapsed().as_secs_f64() * 1000.0 * per_tick) as u64).min(total);
            while sent < due {
                let user = 2_000_000 + sent as i64;
                tg.inject_text(user, "/start");
                injected_at.insert(user, Instant::now());
                sent += 1;
            }
        }
        wait_total(tg, base + total as usize, Duration::from_secs(600)).await
    };
    let (done, rss_peak) = peak_rss(bot.pid(), run).await;
    done?;
    let cpu = Process::Pid(bot.pid()).cpu_seconds() - cpu_before;
    let mut latencies: Vec<f64> = tg.all_messages()[base..]
        .iter()
        .filter_map(|m| {
            injected_at
                .get(&m.chat_id)
                .map(|t| m.at.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "latency at {} updates/s for {} s ({} replies): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.rate,
        args.seconds,
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!(
        "latency: RSS {:.1} MiB before, peak {:.1} MiB during the run; the bot used {cpu:.2} CPU-seconds ({:.0} µs per update)",
        mib(rss_before),
        mib(rss_peak),
        cpu * 1e6 / total as f64
    );
    print_protocol(args, tg, "latency");
    Ok(())
}

/// With `--tls`: how many of the fake's calls came over HTTP/2.
fn print_protocol(args: &Args, tg: &FakeTelegram, run: &str) {
    if args.tls {
        println!(
            "{run}: over TLS, {} of the fake's Bot API calls came over HTTP/2",
            tg.http2_calls()
        );
    }
}

/// Exec to the first getUpdates and to the first reply, `--starts` times,
/// each against a fresh fake that holds one update from before the start.
async fn startup(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("actorbot-startup-{}", std::process::id()));
    let mut result = Ok(());
    let mut next_update_id = 0;
    for start in 0..args.starts.max(1) {
        let tg = FakeTelegram::start(FakeTelegramConfig {
            token: TOKEN.into(),
            record_calls: true,
            workers: 1,
            ..Default::default()
        })?;
        // A restarted bot has seen the ids before its stop: Telegram's
        // go on from there.
        tg.continue_update_ids_from(next_update_id);
        tg.inject_text(5_000_000, "/start");
        next_update_id = tg.next_update_id();
        let mut command = match &args.peer {
            Some(command) => peer_command(command, &tg)?,
            None => {
                std::fs::create_dir_all(&data_dir)?;
                actorbot_command(args, &tg, &data_dir)?
            }
        };
        let exec = Instant::now();
        let child = command.spawn()?;
        let mut peer = Peer { tg, child };
        let timed = first_poll_and_reply(&mut peer, exec).await;
        let (poll, reply) = match timed {
            Ok(timed) => timed,
            Err(err) => {
                result = Err(err);
                break;
            }
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = Process::Pid(peer.child.id()).rss_bytes();
        let what = match (&args.peer, start) {
            (Some(_), _) => "start",
            (None, 0) => "start, fresh data directory",
            (None, _) => "restart",
        };
        println!(
            "startup {} ({what}): exec → first getUpdates {:.1} ms, → first reply {:.1} ms; RSS {:.1} MiB a second later",
            start + 1,
            poll.as_secs_f64() * 1000.0,
            reply.as_secs_f64() * 1000.0,
            mib(rss)
        );
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

/// The time from `exec` to the bot's first getUpdates, and to its first
/// message.
async fn first_poll_and_reply(
    peer: &mut Peer,
    exec: Instant,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let deadline = exec + Duration::from_secs(60);
    // The fake stamps each call and message as it takes it, so waking up
    // on its state later than that changes no figure.
    let first = |s: &FakeState| {
        let poll = s
            .calls()
            .iter()
            .find(|c| c.method.eq_ignore_ascii_case("getUpdates"))
            .map(|c| c.at);
        poll.zip(s.messages().first().map(|m| m.at))
    };
    loop {
        if let Some(status) = peer.child.try_wait()? {
            return Err(format!("the bot exited at start with {status}").into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the bot sent no reply within 60 s of its start".into());
        }
        // In slices, to notice a bot that exits meanwhile.
        let slice = left.min(Duration::from_millis(100));
        if peer
            .tg
            .wait_until(slice, |s| first(s).is_some())
            .await
            .is_ok()
            && let Some((poll, reply)) = peer.tg.read(first)
        {
            return Ok((poll - exec, reply - exec));
        }
    }
}

/// `actorbot run` as the rig starts it, against `tg`, with its data in
/// `data_dir`.
fn actorbot_command(
    args: &Args,
    tg: &FakeTelegram,
    data_dir: &std::path::Path,
) -> Result<Command, Box<dyn std::error::Error>> {
    let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut command = Command::new(&args.daemon);
    command
        .arg("run")
        .env("BOT_TOKEN", TOKEN)
        .env("TELEGRAM_API_URL", tg.api_url())
        .env("HTTP_ADDR", http.to_string())
        .env("DATA_DIR", data_dir)
        .env("DATABASE_URL", "")
        .env("WEBHOOK_URL", "")
        .env("RUST_LOG", "warn")
        .env("APP_PROFILE", "high-load")
        .envs(rig::unlimited(true))
        .envs(args.env.iter().filter_map(|pair| pair.split_once('=')))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(command)
}

async fn memory(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let rig = start(args, None).await?;
    let warm = 1_000u64;
    for user in 0..warm {
        rig.telegram()
            .inject_text(3_000_000 + user as i64, "/start");
    }
    wait_messages(&rig, warm as usize, Duration::from_secs(60)).await?;
    // Steps of new users: the first also fills what is bounded whatever
    // the number of users (the database's page caches, thread stacks,
    // pools), so the later ones show what one more user costs.
    let steps = args.memory_steps.max(2);
    let step = args.idle_users / steps;
    let mut levels = vec![memory_level(&rig).await?];
    let mut next_user = 4_000_000i64;
    let mut sent = warm as usize;
    for _ in 0..steps {
        rig.telegram()
            .inject_texts((0..step).map(|n| (next_user + n as i64, "/start")));
        next_user += step as i64;
        sent += step as usize;
        wait_messages(&rig, sent, Duration::from_secs(600)).await?;
        levels.push(memory_level(&rig).await?);
    }
    let per_actor = |from: &(u64, f64), to: &(u64, f64)| {
        (to.0.saturating_sub(from.0)) as f64 * 1024.0 / (to.1 - from.1).max(1.0)
    };
    let (first, second, last) = (&levels[0], &levels[1], &levels[levels.len() - 1]);
    println!(
        "memory: {:.0} idle user actors live, in {steps} steps of {step} new users: RSS {} MiB -> {} MiB, \
         {:.0} bytes per idle user actor over all of them; {:.0} bytes per actor after the first step, for the last {:.0} \
         (everything the daemon keeps per user, allocator overhead included)",
        last.1,
        first.0 / 1024,
        last.0 / 1024,
        per_actor(first, last),
        per_actor(second, last),
        last.1 - second.1,
    );
    Ok(())
}

async fn ai(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let latency = Duration::from_millis(args.ai_latency_ms);
    let backend = FakeAi::start(FakeAiConfig {
        latency,
        ..Default::default()
    })?;
    let rig = start(args, Some(backend.clone())).await?;
    // Warm up the connections to both fakes.
    rig.telegram().inject_text(9_000_000, "warm up");
    wait_messages(&rig, 1, Duration::from_secs(30)).await?;
    let n = args.ai_users as usize;
    for round in 0..args.ai_rounds.max(1) {
        let when = if round == 0 {
            "the first burst after start"
        } else {
            "a later burst, new users"
        };
        println!("ai: round {}, {when}", round + 1);
        ai_round(&rig, &backend, n, latency, round).await?;
    }
    Ok(())
}

/// One burst of `n` new users asking at once, and where its time went.
async fn ai_round(
    rig: &Rig,
    backend: &FakeAi,
    n: usize,
    latency: Duration,
    round: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let first_user = 8_000_000 + (round * n) as i64;
    let base = rig.telegram().total_messages();
    let metrics_before = metrics(rig).await?;
    let cpu_before = cpu_seconds(rig);
    let own_before = Process::Current.cpu_seconds();
    let started = Instant::now();
    for user in 0..n as i64 {
        rig.telegram().inject_text(
            first_user + user,
            &format!("question {}", first_user + user),
        );
    }
    wait_messages(rig, base + n, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(rig) - cpu_before;
    let own = Process::Current.cpu_seconds() - own_before;
    let mut times: Vec<f64> = rig.telegram().all_messages()[base..]
        .iter()
        .map(|m| m.at.duration_since(started).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    let last = times.last().copied().unwrap_or(0.0);
    let median = times[times.len() / 2];
    println!(
        "ai: {n} users asking at once, backend {} ms per answer: last full answer after {last:.3} s; \
         median {median:.3} s; above the backend's own time: median {:.0} ms, last {:.0} ms; \
         backend saw at most {} requests at once",
        latency.as_millis(),
        (median - latency.as_secs_f64()) * 1000.0,
        (last - latency.as_secs_f64()) * 1000.0,
        backend.max_in_flight()
    );
    println!(
        "ai: CPU over the {elapsed:.2} s: daemon {cpu:.2} s ({:.0} µs per user), this tool and its fakes {own:.2} s",
        cpu / n as f64 * 1e6
    );
    // Where the rest goes: from the question to the first call for its
    // chat (intake, journal, session, history), and from the backend's
    // answer to the final message (delivery).
    let calls = rig.telegram().calls();
    let mut methods: Vec<(String, usize)> = Vec::new();
    for call in calls.iter().filter(|c| c.at >= started) {
        match methods.iter_mut().find(|(m, _)| *m == call.method) {
            Some((_, n)) => *n += 1,
            None => methods.push((call.method.clone(), 1)),
        }
    }
    let methods: Vec<String> = methods.iter().map(|(m, n)| format!("{m} {n}")).collect();
    println!("ai: Bot API calls: {}", methods.join(", "));
    let mut first_call: HashMap<i64, Instant> = HashMap::new();
    for call in &calls {
        if let Some(chat) = call.chat_id
            && call.at >= started
        {
            first_call.entry(chat).or_insert(call.at);
        }
    }
    let mut to_first: Vec<f64> = first_call
        .values()
        .map(|at| at.duration_since(started).as_secs_f64() * 1000.0)
        .collect();
    to_first.sort_by(f64::total_cmp);
    if !to_first.is_empty() {
        println!(
            "ai: question to the first call for its chat (intake, journal, session, and the \
             daemon's pause before \"typing…\"): median {:.0} ms, last {:.0} ms",
            to_first[to_first.len() / 2],
            to_first[to_first.len() - 1]
        );
    }
    // The backend's side: when each chat's request arrived, and how long
    // its final message took after the backend's answer was due.
    let asked: HashMap<i64, Instant> = backend
        .requests()
        .iter()
        .filter(|r| r.at >= started)
        .filter_map(|r| {
            let chat: i64 = r.question().strip_prefix("question ")?.parse().ok()?;
            Some((chat, r.at))
        })
        .collect();
    let mut to_request: Vec<f64> = asked
        .values()
        .map(|at| at.duration_since(started).as_secs_f64() * 1000.0)
        .collect();
    let mut delivery: Vec<f64> = rig.telegram().all_messages()[base..]
        .iter()
        .filter_map(|m| {
            let due = *asked.get(&m.chat_id)? + latency;
            Some(m.at.saturating_duration_since(due).as_secs_f64() * 1000.0)
        })
        .collect();
    to_request.sort_by(f64::total_cmp);
    delivery.sort_by(f64::total_cmp);
    if !to_request.is_empty() && !delivery.is_empty() {
        println!(
            "ai: question to its backend request: median {:.0} ms, last {:.0} ms; \
             backend's answer to the final message: median {:.0} ms, last {:.0} ms",
            to_request[to_request.len() / 2],
            to_request[to_request.len() - 1],
            delivery[delivery.len() / 2],
            delivery[delivery.len() - 1],
        );
    }
    // The pool's own share, from the daemon's histograms: time waiting for
    // a slot, and each attempt's time beyond the backend's latency
    // (connection, request, reading and parsing the stream).
    let metrics = metrics(rig).await?;
    let mean = |name: &str| {
        let delta =
            |key: String| metric_value(&metrics, &key) - metric_value(&metrics_before, &key);
        let sum = delta(format!("{name}_sum"));
        let count = delta(format!("{name}_count"));
        if count > 0.0 { sum / count } else { 0.0 }
    };
    println!(
        "ai: pool overhead per request: {:.2} ms waiting for a slot, {:.2} ms per attempt beyond the backend's {} ms",
        mean("actorbot_ai_queue_wait_seconds") * 1000.0,
        (mean("actorbot_ai_request_seconds") - latency.as_secs_f64()) * 1000.0,
        latency.as_millis()
    );
    Ok(())
}

/// The value of an unlabelled metric line in Prometheus text.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
