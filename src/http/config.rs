//! The configuration over HTTP, read and changed while running, and the
//! cleanup on demand.
//!
//! Reading (`GET /config`, `GET /config/profiles`,
//! `GET /performance/suggestions`) is guarded like every other endpoint.
//! Changing (`PUT /config`, `POST /config/profile/{name}`, `POST /cleanup`,
//! `POST /performance/optimize`) needs `ADMIN_HTTP_TOKEN` set and presented as a bearer
//! token: with none configured these answer 403 saying how to enable them,
//! so that a daemon is never reconfigurable by whoever reaches its port.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ops::Ops;
use crate::config::Config;
use crate::config::live::{Applied, Origin, Refused};
use crate::health::checker::GetSuggestions;
use crate::health::suggest::{WINDOW, to_apply};

/// 403 while no admin token is configured.
fn refuse_without_token(ops: &Ops) -> Option<HttpResponse> {
    ops.live.current().admin_http_token.is_empty().then(|| {
        HttpResponse::Forbidden().json(json!({
            "error": "changes over HTTP are off: set ADMIN_HTTP_TOKEN and send it as Authorization: Bearer <token>"
        }))
    })
}

fn answer(result: Result<Applied, Refused>) -> HttpResponse {
    match result {
        Ok(applied) => HttpResponse::Ok().json(json!({
            "changed": applied.changes,
            "needs_restart": applied.needs_restart,
        })),
        Err(err) => HttpResponse::BadRequest().json(json!({"error": err.to_string()})),
    }
}

/// The running configuration, secrets as `<redacted>`, with where each
/// value came from under `sources`.
pub async fn show(ops: web::Data<Ops>) -> HttpResponse {
    let config = ops.live.current();
    let mut body = serde_json::to_value(&*config).unwrap_or_else(|_| json!({}));
    if let Some(object) = body.as_object_mut() {
        object.insert("sources".into(), json!(ops.live.sources()));
    }
    HttpResponse::Ok().json(body)
}

/// Sets the settings in the JSON body; a bad value or a fixed setting
/// among them changes nothing.
pub async fn set(ops: web::Data<Ops>, body: web::Bytes) -> HttpResponse {
    if let Some(refused) = refuse_without_token(&ops) {
        return refused;
    }
    let values: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(values) => values,
        Err(err) => {
            return HttpResponse::BadRequest()
                .json(json!({"error": format!("the body is not JSON: {err}")}));
        }
    };
    answer(ops.live.set(&values, Origin::Endpoint("PUT /config")))
}

/// The profiles and what each sets.
pub async fn profiles(ops: web::Data<Ops>) -> HttpResponse {
    let profiles: Vec<_> = Config::profiles()
        .map(|name| {
            let settings = ops
                .live
                .profile_table(name)
                .map(|table| serde_json::to_value(table).unwrap_or_default())
                .unwrap_or_else(|err| json!({"error": err.to_string()}));
            json!({"name": name, "settings": settings})
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "current": ops.live.current().profile,
        "profiles": profiles,
    }))
}

/// Applies a profile on top of the running configuration (environment and
/// run-time values still win).
pub async fn use_profile(ops: web::Data<Ops>, name: web::Path<String>) -> HttpResponse {
    if let Some(refused) = refuse_without_token(&ops) {
        return refused;
    }
    answer(
        ops.live
            .use_profile(&name, Origin::Endpoint("POST /config/profile")),
    )
}

/// Runs the cleanup now and answers what it freed.
pub async fn cleanup(ops: web::Data<Ops>) -> HttpResponse {
    if let Some(refused) = refuse_without_token(&ops) {
        return refused;
    }
    match ops.cleanup.on_demand().await {
        Ok(freed) => {
            log::info!("cleanup (POST /cleanup): {freed}");
            HttpResponse::Ok().json(freed)
        }
        Err(err) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": format!("the cleanup failed: {err:#}")})),
    }
}

/// The tuning suggestions from the last minutes' figures.
pub async fn suggestions(ops: web::Data<Ops>) -> HttpResponse {
    match ops.health.send(GetSuggestions(ops.live.current())).await {
        Ok(found) => HttpResponse::Ok().json(json!({
            "window_s": WINDOW.as_secs(),
            "suggestions": found,
        })),
        Err(err) => HttpResponse::ServiceUnavailable()
            .json(json!({"error": format!("the health checker did not answer: {err}")})),
    }
}

#[derive(serde::Deserialize)]
pub struct OptimizeQuery {
    undo: Option<String>,
}

/// Applies the suggestions that can change while running, remembering the
/// values they replace; `?undo` puts those back.
pub async fn optimize(ops: web::Data<Ops>, query: web::Query<OptimizeQuery>) -> HttpResponse {
    if let Some(refused) = refuse_without_token(&ops) {
        return refused;
    }
    let origin = Origin::Endpoint("POST /performance/optimize");
    if query.undo.is_some() {
        let saved = ops.undo.lock().unwrap_or_else(|e| e.into_inner()).take();
        return match saved {
            Some(runtime) => answer(ops.live.restore_runtime(runtime, origin)),
            None => HttpResponse::Conflict()
                .json(json!({"error": "nothing to undo: no optimization was applied since the last undo"})),
        };
    }
    let found = match ops.health.send(GetSuggestions(ops.live.current())).await {
        Ok(found) => found,
        Err(err) => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"error": format!("the health checker did not answer: {err}")}));
        }
    };
    let values = to_apply(&found);
    if values.is_empty() {
        return HttpResponse::Ok()
            .json(json!({"changed": [], "needs_restart": [], "suggestions": found}));
    }
    let before = ops.live.runtime_values();
    match ops.live.set(&serde_json::Value::Object(values), origin) {
        Ok(applied) => {
            let mut undo = ops.undo.lock().unwrap_or_else(|e| e.into_inner());
            // A second optimization is undone to the state before the first.
            undo.get_or_insert(before);
            HttpResponse::Ok().json(json!({
                "changed": applied.changes,
                "needs_restart": applied.needs_restart,
                "suggestions": found,
            }))
        }
        Err(err) => HttpResponse::BadRequest().json(json!({"error": err.to_string()})),
    }
}
