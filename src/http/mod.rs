//! The local HTTP server: the webhook route and the operator's endpoints.
//!
//! It listens on `HTTP_ADDR`, loopback by default. Signals are left to the
//! daemon, which decides the order of a shutdown.
//!
//! - `GET /health`: every actor probed under a deadline and the database
//!   pinged; 200 when all answer and none is unhealthy, else 503. JSON.
//! - `GET /actors`: the supervision tree with each actor's probe figures;
//!   the per-user actors appear as one node with their count and totals.
//! - `GET /metrics`: Prometheus text.
//! - `GET /ready`, `/performance/*`, `/dashboard`: see [`ops`].
//! - `GET`/`PUT /config`, `/config/profiles`, `POST /config/profile/{name}`,
//!   `POST /cleanup`, `GET /performance/suggestions`,
//!   `POST /performance/optimize`: see [`config`].
//!
//! With `ADMIN_HTTP_TOKEN` set, every endpoint but `/health` and `/ready`
//! requires it as a bearer token.

pub mod config;
pub mod dead_letters;
pub mod ops;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Addr, Recipient};
use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};
use actorbot_actors::probe::{Health, MailboxFigures, Probe, ProbeReport, probe_all};
use actorbot_actors::supervisor::{NodeReport, Tree};
use serde_json::json;
use tokio::sync::watch;

use crate::cache::Cache;
use crate::cluster::Role;
use crate::cluster::elector::{Elector, GetCluster};
use crate::config::Config;
use crate::health::memory::MemoryGauge;
use crate::intake::Incoming;
use crate::intake::webhook::{self, WebhookState};
use crate::metrics;
use crate::router::Sessions;
use crate::storage::Storage;
use crate::telegram::Telegram;

/// How long a probed actor may take to answer before it counts as unhealthy.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);
const DB_DEADLINE: Duration = Duration::from_secs(2);
/// A client has this long to send its request head.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle kept-alive connection is closed after this long.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Connections each of the server's two workers serves at once.
const MAX_CONNECTIONS_PER_WORKER: usize = 512;

/// What the operator endpoints read from.
#[derive(Clone)]
pub struct Observed {
    /// The outbox's shards, probed as one node with a child each.
    pub telegram: Telegram,
    /// Top-level actors by name, in the order they are shown.
    pub actors: Vec<(&'static str, Recipient<Probe>)>,
    /// The intake actor, once it runs (the webhook has none).
    pub intake: Arc<Mutex<Option<Recipient<Probe>>>>,
    pub sessions: Sessions,
    pub storage: Storage,
    pub cache: Arc<Cache>,
    pub started: Instant,
    /// Intake by webhook: there is no intake actor to probe, and intake
    /// runs once setWebhook has succeeded (the flag). `None` when polling.
    pub webhook: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The supervision tree the actors run in.
    pub tree: Tree,
    /// Memory against `MEMORY_LIMIT_MB`.
    pub memory: MemoryGauge,
    /// In a cluster, the elector and the role it has reached.
    pub cluster: Option<(Addr<Elector>, watch::Receiver<Role>)>,
}

impl Observed {
    /// Probes every actor; the sessions' registry answers for its children.
    pub async fn probe(&self) -> Vec<ProbeReport> {
        let mut targets: Vec<(String, Recipient<Probe>)> = Vec::new();
        if let Some(intake) = self.intake.lock().ok().and_then(|i| i.clone()) {
            targets.push(("intake".into(), intake));
        }
        targets.extend(self.actors.iter().map(|(n, r)| (n.to_string(), r.clone())));
        let mut reports = probe_all(targets, PROBE_DEADLINE).await;
        let shards: Vec<(String, Recipient<Probe>)> = self
            .telegram
            .shards()
            .enumerate()
            .map(|(i, shard)| (format!("outbox shard {i}"), shard.clone().recipient()))
            .collect();
        let outbox = outbox_node(probe_all(shards, PROBE_DEADLINE).await);
        // Shown where the outbox stands in the pipeline: after the journal.
        let at = reports
            .iter()
            .position(|r| r.name == "journal")
            .map_or(reports.len(), |i| i + 1);
        reports.insert(at, outbox);
        reports.push(self.sessions.report("sessions"));
        supervised(reports, &self.tree.report())
    }

    /// The cache's state: degraded while Redis fails (the bot then answers
    /// from the in-process cache).
    pub fn cache_state(&self) -> (Health, serde_json::Value) {
        let health = match self.cache.redis_down_since() {
            Some(since) => Health::Degraded(format!(
                "Redis failing for {}s; answering from the in-process cache",
                since.elapsed().as_secs()
            )),
            None => Health::Healthy,
        };
        let figures = json!({
            "backend": self.cache.backend(),
            "health": health,
            "figures": self.cache.stats(),
        });
        (health, figures)
    }

    /// Whether intake runs: the poller answers its probe (the webhook has
    /// no actor; the HTTP server answering is its liveness).
    pub async fn intake_state(&self) -> (Health, serde_json::Value) {
        let poller = self.intake.lock().ok().and_then(|i| i.clone());
        if let Some((_, roles)) = &self.cluster {
            let role = *roles.borrow();
            if poller.is_none() && role == Role::Standby {
                let (mode, health) = if self.webhook.is_some() {
                    (
                        "webhook",
                        "standby: deliveries go to the shared inbox, the leader routes them",
                    )
                } else {
                    ("polling", "standby: the leader polls")
                };
                return (
                    Health::Healthy,
                    json!({"mode": mode, "role": "standby", "health": health}),
                );
            }
        }
        let Some(poller) = poller else {
            return if let Some(set) = &self.webhook {
                let health = if set.load(std::sync::atomic::Ordering::Acquire) {
                    Health::Healthy
                } else {
                    Health::Unhealthy("setWebhook has not succeeded yet".into())
                };
                (health.clone(), json!({"mode": "webhook", "health": health}))
            } else {
                let health = Health::Unhealthy("intake has not started".into());
                (health.clone(), json!({"mode": "polling", "health": health}))
            };
        };
        let reports = probe_all(vec![("intake".to_string(), poller)], PROBE_DEADLINE).await;
        let health = reports
            .first()
            .map_or(Health::Unhealthy("no answer".into()), |r| r.health.clone());
        (health.clone(), json!({"mode": "polling", "health": health}))
    }

    /// The database's state: a ping under a deadline.
    pub async fn database(&self) -> (Health, serde_json::Value) {
        let pool = self.storage.pool_state();
        let ping = tokio::time::timeout(DB_DEADLINE, self.storage.ping()).await;
        let failing = self.storage.failing_writes();
        let (health, latency) = match ping {
            Ok(Ok(latency)) => match &failing {
                Some(failure) => (
                    Health::Unhealthy(format!(
                        "reads work but writes have failed for {} s: {}",
                        failure.since.elapsed().as_secs(),
                        failure.error
                    )),
                    Some(latency.as_secs_f64() * 1000.0),
                ),
                None => (Health::Healthy, Some(latency.as_secs_f64() * 1000.0)),
            },
            Ok(Err(err)) => (Health::Unhealthy(err.to_string()), None),
            Err(_) => (
                Health::Unhealthy(format!("no answer within {DB_DEADLINE:?}")),
                None,
            ),
        };
        let figures = json!({
            "backend": self.storage.backend(),
            "health": health,
            "latency_ms": latency,
            "pool": {"open": pool.connections, "idle": pool.idle, "max": pool.max},
        });
        (health, figures)
    }
}

/// More routes for the server: the sandbox's web chat.
pub type Extra = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// The server, listening, and the address it listens on.
pub fn server(
    config: &Config,
    sink: Recipient<Incoming>,
    retry: dead_letters::Retry,
    observed: Observed,
    ops: ops::Ops,
    extra: Option<Extra>,
) -> std::io::Result<(Server, std::net::SocketAddr)> {
    let retry = web::Data::new(retry);
    let guard = web::Data::new(ops::Guard::new(config));
    let debug = config.debug_endpoints;
    let webhook = config.webhook_enabled().then(|| {
        (
            config.webhook_path.clone(),
            web::Data::new(WebhookState {
                sink,
                secret: config.webhook_secret.clone(),
                memory: observed.memory.clone(),
                relay: observed.cluster.is_some().then(|| observed.storage.clone()),
            }),
        )
    });
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(web::Data::new(observed.clone()))
            .app_data(web::Data::new(ops.clone()))
            .app_data(guard.clone())
            .app_data(retry.clone())
            .service(endpoint("/health", web::get().to(health)))
            .service(endpoint("/ready", web::get().to(ops::ready)))
            .service(endpoint("/actors", web::get().to(actors)))
            .service(endpoint("/metrics", web::get().to(metrics_text)))
            .service(endpoint("/performance/status", web::get().to(ops::status)))
            .service(endpoint(
                "/performance/metrics",
                web::get().to(ops::performance_metrics),
            ))
            .service(endpoint(
                "/performance/history",
                web::get().to(ops::history),
            ))
            .service(
                endpoint("/config", web::get().to(config::show)).route(web::put().to(config::set)),
            )
            .service(endpoint(
                "/config/profiles",
                web::get().to(config::profiles),
            ))
            .service(endpoint(
                "/config/profile/{name}",
                web::post().to(config::use_profile),
            ))
            .service(endpoint("/cleanup", web::post().to(config::cleanup)))
            .service(endpoint(
                "/performance/suggestions",
                web::get().to(config::suggestions),
            ))
            .service(endpoint(
                "/performance/optimize",
                web::post().to(config::optimize),
            ))
            .service(endpoint("/dashboard", web::get().to(ops::dashboard)))
            .service(endpoint("/dead-letters", web::get().to(dead_letters::list)))
            .service(endpoint(
                "/dead-letters/{update_id}/retry",
                web::post().to(dead_letters::retry),
            ))
            .service(endpoint(
                "/dead-letters/{update_id}",
                web::delete().to(dead_letters::drop),
            ));
        if debug {
            app = app.service(endpoint("/debug/stall/{actor}", web::post().to(ops::stall)));
        }
        if let Some(extra) = &extra {
            app = app.configure(|cfg| extra(cfg));
        }
        if let Some((path, state)) = &webhook {
            app = app
                .app_data(state.clone())
                .service(endpoint(path, web::post().to(webhook::receive)));
        }
        app.wrap(actix_web::middleware::from_fn(ops::guard))
    })
    .workers(2)
    // A hostile or broken client cannot hold the server: headers must come
    // within the request timeout, idle connections close, and each worker
    // takes at most so many connections at once (the rest wait in the
    // kernel's backlog).
    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(KEEP_ALIVE)
    .max_connections(MAX_CONNECTIONS_PER_WORKER)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(config.http_addr)?;
    // With port 0 the system chose one.
    let bound = server.addrs().first().copied().unwrap_or(config.http_addr);
    Ok((server.run(), bound))
}

/// Lays the probe reports out as the supervision tree: each node of the
/// tree with its actor's figures, its supervision (supervisor, strategy,
/// intensity, restarts, last crash) and its restarts counted in. Reports of
/// actors outside the tree stay at the top.
fn supervised(reports: Vec<ProbeReport>, tree: &NodeReport) -> Vec<ProbeReport> {
    let in_tree: std::collections::HashSet<&str> = tree
        .walk()
        .into_iter()
        .map(|(node, _)| node.name.as_str())
        .collect();
    let mut by_name = std::collections::HashMap::new();
    let mut order = Vec::new();
    let mut pending = reports;
    while let Some(mut report) = pending.pop() {
        // Children the tree names are placed by the tree; others (a pool's
        // threads) stay with their report.
        let (placed, kept) = std::mem::take(&mut report.children)
            .into_iter()
            .partition(|child| in_tree.contains(child.name.as_str()));
        report.children = kept;
        pending.extend::<Vec<ProbeReport>>(placed);
        order.push(report.name.clone());
        by_name.insert(report.name.clone(), report);
    }
    let mut top: Vec<ProbeReport> = tree
        .children
        .iter()
        .map(|child| supervised_node(child, &tree.name, &mut by_name))
        .collect();
    order.reverse();
    top.extend(order.into_iter().filter_map(|name| by_name.remove(&name)));
    top
}

fn supervised_node(
    node: &NodeReport,
    supervisor: &str,
    reports: &mut std::collections::HashMap<String, ProbeReport>,
) -> ProbeReport {
    let mut report = reports
        .remove(&node.name)
        .unwrap_or_else(|| ProbeReport::new(node.name.clone(), Health::Healthy));
    if !node.children.is_empty() {
        report.children = node
            .children
            .iter()
            .map(|child| supervised_node(child, &node.name, reports))
            .collect();
    }
    report.restarts += node.restarts;
    if node.kind == "supervisor" {
        report.restarts += report.children.iter().map(|c| c.restarts).sum::<u64>();
    }
    if node.given_up {
        report.health = Health::Unhealthy(format!(
            "left down: restarted past its intensity ({} in {}s)",
            node.intensity.max_restarts,
            node.intensity.period.as_secs_f64()
        ));
    }
    report
        .details
        .insert("supervision".into(), supervision(node, Some(supervisor)));
    report
}

/// How a node of the tree is supervised, as `/actors` shows it.
fn supervision(node: &NodeReport, supervisor: Option<&str>) -> serde_json::Value {
    let mut shown = json!({
        "kind": node.kind,
        "strategy": node.strategy,
        "intensity": node.intensity,
        "restarts": node.restarts,
        "last_crash": node.last_crash,
        "given_up": node.given_up,
    });
    if let Some(supervisor) = supervisor {
        shown["supervisor"] = json!(supervisor);
    }
    shown
}

/// A path that answers one method, and every other one with 405.
fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(HttpResponse::MethodNotAllowed))
}

/// One node for the outbox, its shards as children: figures summed, health
/// the worst of them.
fn outbox_node(shards: Vec<ProbeReport>) -> ProbeReport {
    let mut node = ProbeReport::new("outbox", worst(&shards)).detail("shards", shards.len());
    for shard in &shards {
        node.handled += shard.handled;
        node.restarts += shard.restarts;
        node.idle_ms = match (node.idle_ms, shard.idle_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(mailbox) = shard.mailbox {
            let total = node.mailbox.get_or_insert(MailboxFigures {
                depth: 0,
                capacity: 0,
            });
            total.depth += mailbox.depth;
            total.capacity += mailbox.capacity;
        }
    }
    node.children = shards;
    node
}

fn worst<'a>(reports: impl IntoIterator<Item = &'a ProbeReport>) -> Health {
    reports.into_iter().fold(Health::Healthy, |acc, report| {
        let children = worst(&report.children);
        acc.worst(report.health.clone()).worst(children)
    })
}

fn status_word(health: &Health) -> &'static str {
    match health {
        Health::Healthy => "ok",
        Health::Degraded(_) => "degraded",
        Health::Unhealthy(_) => "unhealthy",
    }
}

async fn health(observed: web::Data<Observed>) -> HttpResponse {
    let cluster = async {
        let (elector, _) = observed.cluster.as_ref()?;
        tokio::time::timeout(DB_DEADLINE, elector.send(GetCluster))
            .await
            .ok()?
            .ok()
    };
    let (reports, (db_health, db), dead_letters, cluster) = tokio::join!(
        observed.probe(),
        observed.database(),
        tokio::time::timeout(DB_DEADLINE, observed.storage.dead_letters_count()),
        cluster
    );
    let dead_letters = dead_letters.ok().and_then(Result::ok);
    let (cache_health, cache) = observed.cache_state();
    let gave_up = observed.tree.given_up();
    let supervision = match &gave_up {
        Some(gave_up) => Health::Unhealthy(format!(
            "supervision gave up on {} ({}); the daemon is shutting down",
            gave_up.actor, gave_up.reason
        )),
        None => Health::Healthy,
    };
    let overall = worst(&reports)
        .worst(db_health)
        .worst(cache_health)
        .worst(supervision.clone());
    let actors: Vec<_> = flatten(&reports)
        .into_iter()
        .map(|r| json!({"name": r.name, "health": r.health}))
        .collect();
    let body = json!({
        "status": status_word(&overall),
        "uptime_s": observed.started.elapsed().as_secs(),
        "actors": actors,
        "supervision": {
            "health": supervision,
            "given_up": gave_up.map(|g| json!({"actor": g.actor, "reason": g.reason})),
        },
        "dependencies": {"database": db, "cache": cache},
        "dead_letters": dead_letters,
        "cluster": cluster,
    });
    let mut response = match overall {
        Health::Unhealthy(_) => HttpResponse::ServiceUnavailable(),
        _ => HttpResponse::Ok(),
    };
    response.json(body)
}

fn flatten(reports: &[ProbeReport]) -> Vec<&ProbeReport> {
    let mut all = Vec::new();
    for report in reports {
        all.push(report);
        all.extend(flatten(&report.children));
    }
    all
}

async fn actors(observed: web::Data<Observed>) -> HttpResponse {
    let reports = observed.probe().await;
    let health = worst(&reports);
    let tree = observed.tree.report();
    let mut root = ProbeReport::new(tree.name.clone(), health)
        .detail("uptime_s", observed.started.elapsed().as_secs())
        .detail("supervision", supervision(&tree, None));
    root.restarts = tree.restarts;
    root.children = reports;
    HttpResponse::Ok().json(root)
}

async fn metrics_text(observed: web::Data<Observed>) -> HttpResponse {
    let stats = observed.telegram.stats().await;
    metrics::QUEUE_DEPTH
        .with_label_values(&["outbox"])
        .set(stats.queued as i64);
    let sessions = observed.sessions.stats();
    metrics::QUEUE_DEPTH
        .with_label_values(&["sessions"])
        .set(sessions.queued as i64);
    metrics::USER_ACTORS_RETIRED
        .with_label_values(&["idle"])
        .set(sessions.expired as i64);
    metrics::USER_ACTORS_RETIRED
        .with_label_values(&["evicted"])
        .set(sessions.evicted as i64);
    for report in observed.probe().await {
        metrics::RESTARTS
            .with_label_values(&[report.name.as_str()])
            .set(report.restarts as i64);
        if let Some(mailbox) = report.mailbox {
            metrics::QUEUE_DEPTH
                .with_label_values(&[report.name.as_str()])
                .set(mailbox.depth as i64);
        }
    }
    let pool = observed.storage.pool_state();
    metrics::DB_POOL
        .with_label_values(&["open"])
        .set(i64::from(pool.connections));
    metrics::DB_POOL
        .with_label_values(&["idle"])
        .set(i64::from(pool.idle));
    metrics::DB_POOL
        .with_label_values(&["max"])
        .set(i64::from(pool.max));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics::render())
}
