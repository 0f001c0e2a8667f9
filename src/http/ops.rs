//! The operator endpoints built on the health checker: readiness, the
//! performance figures and history, the effective configuration, the
//! dashboard page, and the bearer-token guard in front of them.

use std::sync::Arc;

use actix::Addr;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use actorbot_actors::probe::Health;
use serde_json::json;

use super::Observed;
use crate::cleanup::Cleanup;
use crate::config::live::Live;
use crate::config::{Config, Secret};
use crate::health::{GetHistory, GetStatus, HealthChecker};
use crate::journal::{Journal, Stall};

/// What these endpoints read from, besides [`Observed`].
#[derive(Clone)]
pub struct Ops {
    pub health: Addr<HealthChecker>,
    /// The running configuration, changed by the endpoints in
    /// [`super::config`].
    pub live: Arc<Live>,
    pub cleanup: Cleanup,
    /// The run-time values an optimization replaced, for its undo.
    pub undo: Arc<std::sync::Mutex<Option<toml::Table>>>,
    /// Present when `DEBUG_ENDPOINTS` is on.
    pub stallable: Option<Addr<Journal>>,
}

/// The page served at `/dashboard`: self-contained, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Who may call what.
pub struct Guard {
    pub token: Secret,
    /// Paths open without the token: `/health` and `/ready` (orchestrators
    /// probe them without credentials), `/dashboard` (the page holds no
    /// data; its requests carry the token), and the webhook (Telegram
    /// proves itself with the webhook secret instead).
    pub open_paths: Vec<String>,
}

impl Guard {
    pub fn new(config: &Config) -> Guard {
        let mut open_paths: Vec<String> = ["/health", "/ready", "/dashboard"]
            .map(String::from)
            .to_vec();
        if config.webhook_enabled() {
            open_paths.push(config.webhook_path.clone());
        }
        Guard {
            token: config.admin_http_token.clone(),
            open_paths,
        }
    }
}

/// Requires `Authorization: Bearer ADMIN_HTTP_TOKEN` when a token is set.
pub async fn guard(
    guard: web::Data<Guard>,
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = request.path();
    let token = &guard.token;
    let open = token.is_empty() || guard.open_paths.iter().any(|p| p == path);
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if open || presented.is_some_and(|p| token.matches(p.as_bytes())) {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    log::warn!(
        "refused {} {}: missing or wrong bearer token",
        request.method(),
        path
    );
    let response = HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Bearer"))
        .json(json!({"error": "this endpoint requires Authorization: Bearer <ADMIN_HTTP_TOKEN>"}));
    Ok(request.into_response(response))
}

/// Readiness: 503 while the database cannot be reached or intake is not
/// running; a degraded dependency (Redis) is reported but keeps it ready.
pub async fn ready(observed: web::Data<Observed>) -> HttpResponse {
    let (db_health, db) = observed.database().await;
    let intake = observed.intake_state().await;
    let cache = observed.cache_state();
    let mut problems = Vec::new();
    if !matches!(db_health, Health::Healthy) {
        problems.push("database");
    }
    if let Health::Unhealthy(_) = intake.0 {
        problems.push("intake");
    }
    let degraded = !matches!(cache.0, Health::Healthy);
    let status = if !problems.is_empty() {
        "unready"
    } else if degraded {
        "degraded"
    } else {
        "ready"
    };
    let body = json!({
        "status": status,
        "problems": problems,
        "intake": intake.1,
        "dependencies": {"database": db, "cache": cache.1},
    });
    if problems.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn status(ops: web::Data<Ops>) -> HttpResponse {
    match ops.health.send(GetStatus).await {
        Ok(status) => HttpResponse::Ok().json(status),
        Err(err) => unavailable(err),
    }
}

/// The latest sample with the process's counters, for scripts that want
/// JSON rather than Prometheus text.
pub async fn performance_metrics(ops: web::Data<Ops>) -> HttpResponse {
    match ops.health.send(GetStatus).await {
        Ok(status) => HttpResponse::Ok().json(json!({
            "uptime_s": status.uptime_s,
            "current": status.current,
            "dependencies": status.dependencies,
            "counters": crate::metrics::counters_json(),
        })),
        Err(err) => unavailable(err),
    }
}

pub async fn history(ops: web::Data<Ops>) -> HttpResponse {
    match ops.health.send(GetHistory).await {
        Ok(samples) => HttpResponse::Ok().json(json!({
            "interval_s": ops.live.current().health_interval,
            "samples": samples,
        })),
        Err(err) => unavailable(err),
    }
}

pub async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DASHBOARD)
}

#[derive(serde::Deserialize)]
pub struct StallQuery {
    secs: f64,
}

/// Blocks an actor's thread for a while: how a test makes an actor stop
/// answering its probes. Only with `DEBUG_ENDPOINTS`.
pub async fn stall(
    ops: web::Data<Ops>,
    actor: web::Path<String>,
    query: web::Query<StallQuery>,
) -> HttpResponse {
    let Some(journal) = ops
        .stallable
        .as_ref()
        .filter(|_| actor.as_str() == "journal")
    else {
        return HttpResponse::NotFound().json(json!({"error": "no such stallable actor"}));
    };
    let secs = query.secs.clamp(0.0, 60.0);
    journal.do_send(Stall(std::time::Duration::from_secs_f64(secs)));
    log::warn!("debug: stalling the journal for {secs} s");
    HttpResponse::Accepted().json(json!({"stalled": "journal", "secs": secs}))
}

fn unavailable(err: actix::MailboxError) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({"error": format!("the health checker is unavailable: {err}")}))
}
