//! The local HTTP server: the webhook route and the operator's endpoints.
//!
//! It listens on `HTTP_ADDR`, loopback by default. Signals are left to the
//! daemon, which decides the order of a shutdown.

use actix::{Addr, Recipient};
use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};

use crate::config::Config;
use crate::intake::Incoming;
use crate::intake::webhook::{self, WebhookState};
use crate::telegram::outbox::{GetStats, Outbox};

/// What the operator endpoints read from.
#[derive(Clone)]
pub struct Observed {
    pub outbox: Addr<Outbox>,
}

pub fn server(
    config: &Config,
    sink: Recipient<Incoming>,
    observed: Observed,
) -> std::io::Result<Server> {
    let webhook = config.webhook_enabled().then(|| {
        (
            config.webhook_path.clone(),
            web::Data::new(WebhookState {
                sink,
                secret: config.webhook_secret.clone(),
            }),
        )
    });
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(web::Data::new(observed.clone()))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics));
        if let Some((path, state)) = &webhook {
            app = app
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(webhook::MAX_BODY))
                .route(path, web::post().to(webhook::receive));
        }
        app
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(config.http_addr)?
    .run();
    Ok(server)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(observed: web::Data<Observed>) -> HttpResponse {
    if let Ok(stats) = observed.outbox.send(GetStats).await {
        crate::metrics::QUEUE_DEPTH
            .with_label_values(&["outbox"])
            .set(stats.queued as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}
