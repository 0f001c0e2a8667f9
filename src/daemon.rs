//! The daemon: builds the actor system, runs it, and shuts it down in order.
//!
//! Start: authorize with getMe (retrying while Telegram is unreachable, but
//! giving up at once on a refused token), register the command list, start
//! the outbox, the router, the HTTP server and then intake. Stop (SIGTERM or
//! SIGINT): intake first, so nothing new comes in; then the router; then the
//! outbox drains what is queued; then the HTTP server; all within
//! `shutdown_timeout`.

use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{Context as _, bail};

use crate::bot::commands;
use crate::config::Config;
use crate::http;
use crate::intake::polling::{Poller, StopPolling};
use crate::router::{Router, StopIntake};
use crate::telegram::outbox::{GetStats, Limits, Outbox};
use crate::telegram::params::{DeleteWebhookParams, SetMyCommandsParams, SetWebhookParams};
use crate::telegram::{BotApi, Endpoint, Telegram, TelegramError};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let endpoint = Endpoint::new(&config);
    let api = endpoint.client();
    let me = authorize(&api).await?;
    let username = me.username.clone().unwrap_or_default();
    log::info!(
        "authorized as @{username} (id {}) at {}",
        me.id,
        endpoint.display_url()
    );

    let commands = SetMyCommandsParams::builder()
        .commands(commands::bot_commands())
        .build();
    if let Err(err) = api.set_my_commands(&commands).await {
        log::warn!("could not register the command list: {err}");
    }

    let outbox = Outbox::new(endpoint.clone(), Limits::from_config(&config)).start();
    let telegram = Telegram::new(outbox.clone());
    let router = Router::new(telegram, username).start();

    let observed = http::Observed {
        outbox: outbox.clone(),
    };
    let server = http::server(&config, router.clone().recipient(), observed)
        .with_context(|| format!("cannot listen on HTTP_ADDR {}", config.http_addr))?;
    let server_handle = server.handle();
    let server_task = actix_rt::spawn(server);
    log::info!("HTTP endpoint on http://{}", config.http_addr);

    let poller = if config.webhook_enabled() {
        let params = SetWebhookParams::builder()
            .url(config.webhook_url.clone())
            .secret_token(config.webhook_secret.expose().to_string())
            .max_connections(config.webhook_max_connections)
            .allowed_updates(crate::intake::allowed_updates())
            .build();
        api.set_webhook(&params)
            .await
            .context("setWebhook failed")?;
        log::info!(
            "webhook set: {} (path {})",
            config.webhook_url,
            config.webhook_path
        );
        None
    } else {
        let params = DeleteWebhookParams::builder()
            .drop_pending_updates(false)
            .build();
        if let Err(err) = api.delete_webhook(&params).await {
            log::warn!("deleteWebhook failed, polling may conflict with a webhook: {err}");
        }
        Some(
            Poller::new(
                endpoint.clone(),
                router.clone().recipient(),
                config.polling_timeout,
                config.polling_limit,
            )
            .start(),
        )
    };

    let signal = wait_for_signal().await;
    let deadline = Instant::now() + config.shutdown_timeout();
    log::info!("{signal} received, shutting down");

    if let Some(poller) = poller {
        let _ = tokio::time::timeout_at(deadline.into(), poller.send(StopPolling)).await;
    }
    let _ = router.send(StopIntake).await;
    drain_outbox(&outbox, deadline).await;
    server_handle.stop(true).await;
    let _ = server_task.await;
    log::info!("shutdown complete");
    Ok(())
}

/// getMe until it answers. A refused token ends the start; anything else
/// (no network, Telegram down) is waited out.
async fn authorize(api: &BotApi) -> anyhow::Result<crate::telegram::types::User> {
    let mut delay = Duration::from_millis(500);
    loop {
        match api.get_me().await {
            Ok(me) => return Ok(me),
            Err(TelegramError::Api {
                error_code: code @ (401 | 404),
                description,
                ..
            }) => bail!("BOT_TOKEN: the Bot API refused the token ({code} {description})"),
            Err(err) => {
                log::warn!("getMe failed, retrying in {}ms: {err}", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Waits until the outbox has sent everything or the deadline passes.
async fn drain_outbox(outbox: &Addr<Outbox>, deadline: Instant) {
    loop {
        match outbox.send(GetStats).await {
            Ok(stats) if stats.queued == 0 && stats.in_flight == 0 => return,
            Ok(stats) if Instant::now() >= deadline => {
                log::warn!(
                    "shutdown deadline reached with {} sends queued and {} in flight",
                    stats.queued,
                    stats.in_flight
                );
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return,
        }
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}
