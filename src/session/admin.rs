//! The admin commands (/health, /performance, /admin_stats,
//! /admin_cleanup): answered from the health checker, the storage and the
//! cleanup. [`super::state`] lets only admins
//! reach them; before the health checker runs they are told to try again.

use actix::prelude::*;

use super::Session;
use crate::bot::commands;
use crate::health::{self, GetHistory, GetStatus};
use crate::telegram::update::RawUpdate;

impl Session {
    pub(super) fn admin_command(
        &mut self,
        update: &RawUpdate,
        name: &str,
        ctx: &mut Context<Self>,
    ) {
        let Some(admin) = self.deps.admin.get() else {
            return self.reply(update, "admin", commands::TRY_AGAIN, ctx);
        };
        let (checker, cache, started, cleanup) = (
            admin.health.clone(),
            admin.ai_cache.clone(),
            admin.started,
            admin.cleanup.clone(),
        );
        let storage = self.deps.storage.clone();
        let name = name.to_string();
        let update = update.clone();
        let text = async move {
            match name.as_str() {
                "health" => match checker.send(GetStatus).await {
                    Ok(status) => health::health_text(&status),
                    Err(_) => commands::TRY_AGAIN.to_string(),
                },
                "performance" => {
                    match tokio::join!(checker.send(GetStatus), checker.send(GetHistory)) {
                        (Ok(status), Ok(history)) => health::performance_text(&status, &history),
                        _ => commands::TRY_AGAIN.to_string(),
                    }
                }
                "admin_cleanup" => match cleanup.on_demand().await {
                    Ok(freed) => {
                        log::info!("cleanup (/admin_cleanup): {freed}");
                        format!("Cleanup done: {freed}.")
                    }
                    Err(err) => format!("The cleanup failed: {err:#}"),
                },
                _ => health::admin_stats_text(&storage, &cache, started.elapsed().as_secs()).await,
            }
        };
        ctx.wait(text.into_actor(self).map(move |text, this, ctx| {
            this.reply(&update, "admin", &text, ctx);
        }));
    }
}
