//! Carries a configuration changed while running ([`crate::config::live`])
//! to the actors that hold its settings, each as a message in its mailbox.
//!
//! Sessions are the exception by number: thousands of them share one
//! policy, published here on a watch channel, and each takes up the latest
//! at its next update instead of being sent a message apiece.

use std::sync::Arc;

use actix::{Addr, Message};
use actorbot_actors::scheduler::{Reschedule, Scheduler};
use tokio::sync::watch;

use crate::ai::pool::Retune as RetuneAi;
use crate::ai::reply::Pace;
use crate::ai::{AiPool, Backend, PoolLimits};
use crate::bot::ratelimit::RateLimits;
use crate::cache::Cache;
use crate::config::Config;
use crate::health::HealthChecker;
use crate::health::checker::Retune as RetuneHealth;
use crate::images::ImagePool;
use crate::pdf::jobs::PdfJobs;
use crate::router::Sessions;
use crate::session::Policy;
use crate::telegram::outbox::{GlobalLimit, Limits, Outbox, SetLimits};

/// The sessions' policy under `config`.
pub fn policy_of(config: &Config, bot_username: &str) -> Policy {
    Policy {
        limits: RateLimits::from_config(config),
        bot_username: bot_username.to_string(),
        stats_ttl: config.stats_cache_ttl(),
        user_queue: config.ai_user_queue,
        history_turns: config.ai_history_turns,
        max_photos: config.max_photos_per_pdf,
        notice_ahead: config.queue_notice_ahead,
        pace: Pace {
            draft: Config::secs(config.draft_interval),
            edit: Config::secs(config.edit_interval),
            typing: Config::secs(config.typing_interval),
        },
    }
}

/// The AI backend's and the pool's settings under `config`.
pub fn ai_settings(config: &Config) -> (Backend, PoolLimits) {
    let backend = Backend {
        url: config.ai_api_url.clone(),
        api_key: config.ai_api_key.expose().to_string(),
        model: config.ai_model.clone(),
        max_tokens: config.ai_max_tokens,
        stream: config.ai_stream,
        timeout: config.http_timeout(),
        first_token_timeout: Config::secs(config.ai_first_token_timeout),
        idle_timeout: Config::secs(config.ai_stream_idle_timeout),
    };
    let limits = PoolLimits {
        in_flight: config.ai_semaphore_limit,
        queue: config.ai_queue_size,
        per_user: config.ai_per_user_inflight,
        attempts: config.ai_max_attempts,
        breaker_failures: config.ai_breaker_failures,
        breaker_cooldown: Config::secs(config.ai_breaker_cooldown),
        max_connections: config.ai_semaphore_limit,
    };
    (backend, limits)
}

/// A document pool's new size: its workers and how many jobs may wait.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Resize {
    pub workers: usize,
    pub queue_capacity: usize,
}

/// Who holds which settings.
pub struct Targets {
    pub bot_username: String,
    pub policy: watch::Sender<Arc<Policy>>,
    pub shards: Vec<Addr<Outbox>>,
    pub global: Arc<GlobalLimit>,
    pub ai: Addr<AiPool>,
    pub ai_cache: Arc<Cache>,
    pub images: Addr<ImagePool>,
    pub pdf: Addr<PdfJobs>,
    pub sessions: Sessions,
    pub health: Addr<HealthChecker>,
    pub scheduler: Addr<Scheduler>,
}

/// Applies each new configuration until the sender goes.
pub async fn follow(mut changes: watch::Receiver<Arc<Config>>, targets: Targets) {
    let mut applied = changes.borrow_and_update().clone();
    while changes.changed().await.is_ok() {
        let config = changes.borrow_and_update().clone();
        apply(&applied, &config, &targets);
        applied = config;
    }
}

fn apply(old: &Config, new: &Arc<Config>, targets: &Targets) {
    if new.log_level != old.log_level && !crate::logging::set_filter(&new.log_level) {
        log::warn!("LOG_LEVEL changed but logging was not set up by the daemon");
    }
    targets
        .policy
        .send_replace(Arc::new(policy_of(new, &targets.bot_username)));
    let limits = Limits::from_config(new);
    targets.global.retune(&limits);
    let shard_limits = limits.per_shard(targets.shards.len());
    for shard in &targets.shards {
        shard.do_send(SetLimits(shard_limits.clone()));
    }
    let (backend, pool) = ai_settings(new);
    targets.ai.do_send(RetuneAi {
        backend,
        limits: pool,
    });
    targets.ai_cache.set_ttl(Config::secs(new.ai_cache_ttl));
    if (new.worker_threads(), new.image_queue_size) != (old.worker_threads(), old.image_queue_size)
    {
        targets.images.do_send(Resize {
            workers: new.worker_threads(),
            queue_capacity: new.image_queue_size,
        });
    }
    if (new.pdf_semaphore_limit, new.pdf_queue_size)
        != (old.pdf_semaphore_limit, old.pdf_queue_size)
    {
        targets.pdf.do_send(Resize {
            workers: new.pdf_semaphore_limit,
            queue_capacity: new.pdf_queue_size,
        });
    }
    if new.user_state_timeout != old.user_state_timeout
        || new.max_user_states != old.max_user_states
    {
        let retired = targets
            .sessions
            .set_limits(new.user_state_timeout(), new.max_user_states);
        if retired > 0 {
            log::info!(
                "retired {retired} sessions to meet MAX_USER_STATES={}",
                new.max_user_states
            );
        }
    }
    targets.health.do_send(RetuneHealth(new.clone()));
    if new.cleanup_interval != old.cleanup_interval {
        targets.scheduler.do_send(Reschedule {
            name: "cleanup".into(),
            interval: new.cleanup_interval(),
        });
    }
}
