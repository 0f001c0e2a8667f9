//! The health checker actor: every `HEALTH_INTERVAL` it probes every actor
//! under a deadline, checks the dependencies, takes a [`Sample`] of the
//! figures into an hour of history, and applies the alert rules, telling
//! the admins over Telegram when a rule fires and when it clears.
//!
//! The database and Redis are checked every round (cheap, and local); the
//! AI backend and Telegram's getMe every `DEPENDENCY_CHECK_INTERVAL`, so as
//! not to spend a remote service's rate limit on being watched.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actorbot_actors::probe::{Health, Probe, ProbeReport};
use serde::Serialize;

use super::alerts::{Alert, AlertBook, Notice, Observation};
use super::memory::Pressure;
use super::sample::{Reading, Sample};
use super::suggest::{Figures, Suggestion, WINDOW, suggest};
use crate::cache::Cache;
use crate::config::Config;
use crate::http::Observed;
use crate::telegram::{Endpoint, Telegram, text_requests};

/// A dependency's last check.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub health: Health,
    pub latency_ms: Option<f64>,
    /// Unix seconds of the check.
    pub checked_at: u64,
}

/// What `/performance/status` and the admin commands show.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub status: &'static str,
    pub uptime_s: u64,
    pub current: Option<Sample>,
    pub dependencies: BTreeMap<String, Dependency>,
    /// Actors that did not answer their probe in time or report trouble.
    pub troubled_actors: Vec<String>,
    pub alerts: Vec<Alert>,
}

#[derive(Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

#[derive(Message)]
#[rtype(result = "Vec<Sample>")]
pub struct GetHistory;

/// Thresholds of the alert rules.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub errors_per_minute: f64,
    pub p95_latency_ms: f64,
    pub queue_depth: u64,
    pub rss_mb: u64,
}

impl Thresholds {
    pub fn of(config: &Config) -> Thresholds {
        Thresholds {
            errors_per_minute: config.alert_errors_per_minute,
            p95_latency_ms: config.alert_p95_latency_ms,
            queue_depth: config.alert_queue_depth,
            rss_mb: config.alert_rss_mb,
        }
    }
}

/// New alert thresholds and quiet period, from the running configuration:
/// the next round judges by them.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Retune(pub Arc<Config>);

impl Handler<Retune> for HealthChecker {
    type Result = ();

    fn handle(&mut self, Retune(config): Retune, _: &mut Self::Context) {
        self.thresholds = Thresholds::of(&config);
        self.memory_limit_mb = config.memory_limit_mb;
        self.book
            .set_quiet_period(Config::secs(config.alert_quiet_period));
    }
}

/// The suggestions from the last [`WINDOW`] of figures, under `config`.
#[derive(actix::Message)]
#[rtype(result = "Vec<Suggestion>")]
pub struct GetSuggestions(pub Arc<Config>);

impl Handler<GetSuggestions> for HealthChecker {
    type Result = MessageResult<GetSuggestions>;

    fn handle(
        &mut self,
        GetSuggestions(config): GetSuggestions,
        _: &mut Self::Context,
    ) -> Self::Result {
        let now = Figures::read(&self.observed, self.observed.started);
        let before = self.figures.front().copied().unwrap_or(now);
        MessageResult(suggest(&before, &now, &config))
    }
}

/// Where the remote dependencies are.
#[derive(Clone)]
pub struct Remotes {
    pub telegram: Endpoint,
    pub ai_url: String,
    pub ai_key: String,
}

pub struct HealthChecker {
    observed: Observed,
    telegram: Telegram,
    remotes: Remotes,
    admins: Vec<i64>,
    thresholds: Thresholds,
    memory_limit_mb: u64,
    interval: Duration,
    remote_interval: Duration,
    last_remote_check: Option<Instant>,
    reading: Reading,
    history: VecDeque<Sample>,
    history_len: usize,
    /// The figures of the last [`WINDOW`], for the suggestions.
    figures: VecDeque<Figures>,
    dependencies: BTreeMap<String, Dependency>,
    troubled: Vec<String>,
    book: AlertBook,
    checking: bool,
    rounds: u64,
    /// Asked for the status before the first round had its answers: they
    /// get it when it has, rather than a status without dependencies.
    first_round: Vec<tokio::sync::oneshot::Sender<Status>>,
}

impl HealthChecker {
    pub fn new(
        config: &Config,
        observed: Observed,
        telegram: Telegram,
        remotes: Remotes,
    ) -> HealthChecker {
        let interval = Config::secs(config.health_interval);
        let history_len = (3600.0 / config.health_interval).ceil().clamp(1.0, 7200.0) as usize;
        HealthChecker {
            observed,
            telegram,
            remotes,
            admins: config.admin_ids.clone(),
            thresholds: Thresholds::of(config),
            memory_limit_mb: config.memory_limit_mb,
            interval,
            remote_interval: Config::secs(config.dependency_check_interval),
            last_remote_check: None,
            reading: Reading::now(),
            history: VecDeque::with_capacity(history_len),
            history_len,
            figures: VecDeque::new(),
            dependencies: BTreeMap::new(),
            troubled: Vec::new(),
            book: AlertBook::new(Config::secs(config.alert_quiet_period)),
            checking: false,
            rounds: 0,
            first_round: Vec::new(),
        }
    }

    fn status(&self) -> Status {
        let worst = self
            .dependencies
            .values()
            .fold(Health::Healthy, |acc, d| acc.worst(d.health.clone()));
        let worst = if self.troubled.is_empty() {
            worst
        } else {
            worst.worst(Health::Degraded("actors in trouble".into()))
        };
        Status {
            status: match worst {
                Health::Healthy => "ok",
                Health::Degraded(_) => "degraded",
                Health::Unhealthy(_) => "unhealthy",
            },
            uptime_s: self.observed.started.elapsed().as_secs(),
            current: self.history.back().cloned(),
            dependencies: self.dependencies.clone(),
            troubled_actors: self.troubled.clone(),
            alerts: self.book.list(),
        }
    }

    /// One round: probes and checks off the actor, then the figures here.
    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            return;
        }
        actorbot_actors::fault::hit("health");
        self.checking = true;
        let remote_due = self
            .last_remote_check
            .is_none_or(|at| at.elapsed() >= self.remote_interval);
        if remote_due {
            self.last_remote_check = Some(Instant::now());
        }
        let observed = self.observed.clone();
        let remotes = self.remotes.clone();
        ctx.spawn(
            async move {
                let (reports, (db_health, db), redis) = tokio::join!(
                    observed.probe(),
                    observed.database(),
                    ping_cache(&observed.cache)
                );
                let remote = if remote_due {
                    Some(tokio::join!(check_telegram(&remotes), check_ai(&remotes)))
                } else {
                    None
                };
                (reports, (db_health, db), redis, remote)
            }
            .into_actor(self)
            .map(|(reports, (db_health, db), redis, remote), this, _| {
                this.checking = false;
                this.rounds += 1;
                let now = unix_now();
                let latency = db["latency_ms"].as_f64();
                this.dependencies.insert(
                    "database".into(),
                    Dependency {
                        health: db_health,
                        latency_ms: latency,
                        checked_at: now,
                    },
                );
                if let Some((health, latency_ms)) = redis {
                    this.dependencies.insert(
                        "redis".into(),
                        Dependency {
                            health,
                            latency_ms,
                            checked_at: now,
                        },
                    );
                }
                if let Some(((tg, tg_ms), (ai, ai_ms))) = remote {
                    for (name, health, latency_ms) in
                        [("telegram", tg, tg_ms), ("ai_backend", ai, ai_ms)]
                    {
                        this.dependencies.insert(
                            name.into(),
                            Dependency {
                                health,
                                latency_ms,
                                checked_at: now,
                            },
                        );
                    }
                }
                this.record(&reports, now);
                for waiter in std::mem::take(&mut this.first_round) {
                    let _ = waiter.send(this.status());
                }
            }),
        );
    }

    fn record(&mut self, reports: &[ProbeReport], now: u64) {
        let reading = Reading::now();
        let mut sample = reading.since(&self.reading, now);
        self.reading = reading;
        let mut troubled = Vec::new();
        walk(reports, &mut |report| {
            if let Some(mailbox) = &report.mailbox {
                sample.queue_depth += mailbox.depth as u64;
            }
            sample.restarts += report.restarts;
            if !report.health.is_healthy() {
                troubled.push(report.name.clone());
            }
        });
        sample.user_actors = crate::metrics::USER_ACTORS.get();
        self.troubled = troubled;
        let notices = self
            .book
            .evaluate(self.observe(&sample), now, Instant::now());
        if self.history.len() == self.history_len {
            self.history.pop_front();
        }
        self.history.push_back(sample);
        let figures = Figures::read(&self.observed, self.observed.started);
        while self
            .figures
            .front()
            .is_some_and(|f| figures.at_s - f.at_s > WINDOW.as_secs_f64())
        {
            self.figures.pop_front();
        }
        self.figures.push_back(figures);
        for notice in notices {
            self.announce(&notice);
        }
    }

    /// The alert rules applied to a sample and the dependencies.
    fn observe(&self, sample: &Sample) -> Vec<Observation> {
        let t = &self.thresholds;
        let minutes = self.interval.as_secs_f64() / 60.0;
        let errors_per_minute = if minutes > 0.0 {
            sample.errors as f64 / minutes
        } else {
            0.0
        };
        let rss_mb = sample.rss_bytes / (1024 * 1024);
        let mut observations = vec![
            Observation {
                rule: "error_rate".into(),
                value: errors_per_minute,
                threshold: t.errors_per_minute,
                breached: errors_per_minute > t.errors_per_minute,
                message: format!(
                    "{errors_per_minute:.0} errors a minute, over {} ({:?})",
                    t.errors_per_minute, sample.errors_by_kind
                ),
            },
            Observation {
                rule: "p95_latency".into(),
                value: sample.latency_p95_ms,
                threshold: t.p95_latency_ms,
                breached: sample.latency_p95_ms > t.p95_latency_ms,
                message: format!(
                    "p95 update-to-reply latency {:.0} ms, over {} ms",
                    sample.latency_p95_ms, t.p95_latency_ms
                ),
            },
            Observation {
                rule: "queue_depth".into(),
                value: sample.queue_depth as f64,
                threshold: t.queue_depth as f64,
                breached: sample.queue_depth > t.queue_depth,
                message: format!(
                    "{} messages waiting in queues, over {}",
                    sample.queue_depth, t.queue_depth
                ),
            },
            Observation {
                rule: "memory".into(),
                value: rss_mb as f64,
                threshold: t.rss_mb as f64,
                breached: rss_mb > t.rss_mb,
                message: format!("resident memory {rss_mb} MB, over {} MB", t.rss_mb),
            },
        ];
        let limit = self.memory_limit_mb;
        if limit > 0 {
            let pressure = self.observed.memory.pressure();
            observations.push(Observation {
                rule: "memory_limit".into(),
                value: self.observed.memory.rss_mb().round(),
                threshold: limit as f64,
                breached: pressure >= Pressure::Soft,
                message: format!(
                    "resident memory {:.0} MB near MEMORY_LIMIT_MB={limit}: {}",
                    self.observed.memory.rss_mb(),
                    if pressure == Pressure::Hard {
                        "intake holds"
                    } else {
                        "shedding sessions and caches"
                    }
                ),
            });
        }
        for (name, dependency) in &self.dependencies {
            // Degraded counts: a Redis away leaves the bot answering from
            // the in-process cache, but someone should bring it back.
            let down = !matches!(dependency.health, Health::Healthy);
            let why = match &dependency.health {
                Health::Unhealthy(why) | Health::Degraded(why) => why.clone(),
                Health::Healthy => String::new(),
            };
            observations.push(Observation {
                rule: format!("{name}_down"),
                value: if down { 1.0 } else { 0.0 },
                threshold: 1.0,
                breached: down,
                message: format!("{name} is down: {why}"),
            });
        }
        observations
    }

    fn announce(&self, notice: &Notice) {
        let text = notice.text();
        match notice {
            Notice::Firing(_) => log::warn!("{text}"),
            Notice::Resolved(_) => log::info!("{text}"),
        }
        for admin in &self.admins {
            let (telegram, admin, requests) =
                (self.telegram.clone(), *admin, text_requests(*admin, &text));
            actix_rt::spawn(async move {
                if let Err(err) = telegram.post(admin, requests).await {
                    log::warn!("could not send an alert to admin {admin}: {err}");
                }
            });
        }
    }
}

impl Actor for HealthChecker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.check(ctx);
        ctx.run_interval(self.interval, |this, ctx| this.check(ctx));
    }
}

/// A restart keeps the history, the alerts and who waits for the first
/// round; the round under way is dropped and `started` begins another.
impl Supervised for HealthChecker {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.checking = false;
    }
}

impl Handler<GetStatus> for HealthChecker {
    type Result = ResponseFuture<Status>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let now = self.status();
        if self.rounds > 0 {
            return Box::pin(std::future::ready(now));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.first_round.push(tx);
        Box::pin(async move { rx.await.unwrap_or(now) })
    }
}

impl Handler<GetHistory> for HealthChecker {
    type Result = MessageResult<GetHistory>;

    fn handle(&mut self, _: GetHistory, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.history.iter().cloned().collect())
    }
}

impl Handler<Probe> for HealthChecker {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let mut report = ProbeReport::new("health", Health::Healthy)
            .detail("rounds", self.rounds)
            .detail("samples", self.history.len())
            .detail("alerts_firing", self.book.firing());
        report.handled = self.rounds;
        MessageResult(report)
    }
}

fn walk<'a>(reports: &'a [ProbeReport], f: &mut impl FnMut(&'a ProbeReport)) {
    for report in reports {
        f(report);
        walk(&report.children, f);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const REMOTE_DEADLINE: Duration = Duration::from_secs(5);

async fn ping_cache(cache: &Arc<Cache>) -> Option<(Health, Option<f64>)> {
    Some(match cache.ping().await? {
        Ok(latency) => (Health::Healthy, Some(latency.as_secs_f64() * 1000.0)),
        // The bot keeps answering from the in-process cache: degraded.
        Err(why) => (
            Health::Degraded(format!("{why}; answering from the in-process cache")),
            None,
        ),
    })
}

async fn check_telegram(remotes: &Remotes) -> (Health, Option<f64>) {
    let api = remotes.telegram.client();
    let started = Instant::now();
    match tokio::time::timeout(REMOTE_DEADLINE, api.get_me()).await {
        Ok(Ok(_)) => (
            Health::Healthy,
            Some(started.elapsed().as_secs_f64() * 1000.0),
        ),
        Ok(Err(err)) => (Health::Unhealthy(format!("getMe failed: {err}")), None),
        Err(_) => (
            Health::Unhealthy(format!("getMe: no answer within {REMOTE_DEADLINE:?}")),
            None,
        ),
    }
}

/// Reachability of the AI backend: `GET {AI_API_URL}/models`. Any HTTP
/// answer but a 5xx counts as up (a backend without that route still
/// answers 404); a refused connection or a timeout as down.
async fn check_ai(remotes: &Remotes) -> (Health, Option<f64>) {
    let client = awc::Client::builder()
        .timeout(REMOTE_DEADLINE)
        .connector(
            awc::Connector::new().rustls_0_23(Arc::new(crate::telegram::tls::client_config())),
        )
        .finish();
    let url = format!("{}/models", remotes.ai_url.trim_end_matches('/'));
    let mut request = client.get(&url);
    if !remotes.ai_key.is_empty() {
        request = request.bearer_auth(&remotes.ai_key);
    }
    let started = Instant::now();
    match request.send().await {
        Ok(response) if !response.status().is_server_error() => (
            Health::Healthy,
            Some(started.elapsed().as_secs_f64() * 1000.0),
        ),
        Ok(response) => (
            Health::Unhealthy(format!("the AI backend answers {}", response.status())),
            None,
        ),
        Err(err) => (
            Health::Unhealthy(format!("the AI backend is unreachable: {err}")),
            None,
        ),
    }
}
