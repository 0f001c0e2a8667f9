//! Tuning suggestions from the live figures of the last minutes: each names
//! the figure that triggered it, the setting, its current and proposed
//! value, and why. `GET /performance/suggestions` answers them,
//! `POST /performance/optimize` applies those that can change while
//! running, and the load-test tool prints them at the end of a run.
//!
//! The figures are cumulative counters read at each round of the health
//! checker ([`Figures::read`]); [`suggest`] compares two readings and is
//! plain code.

use std::time::Instant;

use actorbot_actors::process::Process;
use serde::{Deserialize, Serialize};

use super::sample::counter_sum;
use crate::config::Config;
use crate::config::live::TUNABLE;
use crate::http::Observed;
use crate::metrics;

/// How far back the suggestions look.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Counters and gauges at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub at_s: f64,
    /// Questions that waited for a free AI slot, and their total wait.
    pub ai_waits: f64,
    pub ai_wait_seconds: f64,
    pub ai_in_flight: i64,
    /// Photos and PDF jobs refused because their pool was full.
    pub images_busy: f64,
    pub pdf_busy: f64,
    /// Sessions retired to make room under `MAX_USER_STATES`.
    pub sessions_evicted: u64,
    pub sessions_live: usize,
    pub rss_mb: f64,
    /// Database connections idle and the pool's size.
    pub db_idle: u32,
    pub db_max: u32,
    /// Sends Telegram accepted.
    pub sent: f64,
}

impl Figures {
    pub fn read(observed: &Observed, started: Instant) -> Figures {
        let wait = metrics::AI_QUEUE_WAIT.get_sample_count() as f64;
        let busy = |collector: &dyn prometheus::core::Collector| {
            counter_sum(collector, |labels| {
                labels.get("outcome").map(String::as_str) == Some("busy")
            })
        };
        let sessions = observed.sessions.stats();
        let pool = observed.storage.pool_state();
        Figures {
            at_s: started.elapsed().as_secs_f64(),
            ai_waits: wait,
            ai_wait_seconds: metrics::AI_QUEUE_WAIT.get_sample_sum(),
            ai_in_flight: metrics::AI_IN_FLIGHT.get(),
            images_busy: busy(&*metrics::IMAGES),
            pdf_busy: busy(&*metrics::DOCUMENT_JOBS),
            sessions_evicted: sessions.evicted,
            sessions_live: sessions.live,
            rss_mb: Process::Current.rss_bytes() as f64 / (1024.0 * 1024.0),
            db_idle: pool.idle,
            db_max: pool.max,
            sent: counter_sum(&*metrics::SENT, |_| true),
        }
    }
}

/// One suggestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The figure that triggered it, and its value.
    pub figure: String,
    pub value: f64,
    /// The setting, as its environment variable.
    pub setting: String,
    pub current: serde_json::Value,
    pub proposed: serde_json::Value,
    pub why: String,
    /// Whether `POST /performance/optimize` can apply it while running.
    pub live: bool,
}

fn suggestion(
    figure: &str,
    value: f64,
    setting: &str,
    current: impl Serialize,
    proposed: impl Serialize,
    why: String,
) -> Suggestion {
    Suggestion {
        figure: figure.to_string(),
        value: (value * 1000.0).round() / 1000.0,
        setting: setting.to_uppercase(),
        current: serde_json::to_value(current).unwrap_or_default(),
        proposed: serde_json::to_value(proposed).unwrap_or_default(),
        why,
        live: TUNABLE.contains(&setting),
    }
}

/// The suggestions for the interval from `before` to `now` under `config`.
pub fn suggest(before: &Figures, now: &Figures, config: &Config) -> Vec<Suggestion> {
    let mut out = Vec::new();
    let seconds = (now.at_s - before.at_s).max(1.0);

    let waits = now.ai_waits - before.ai_waits;
    let mean_wait = if waits > 0.0 {
        (now.ai_wait_seconds - before.ai_wait_seconds) / waits
    } else {
        0.0
    };
    if waits >= 5.0 && mean_wait >= 0.5 {
        let current = config.ai_semaphore_limit;
        out.push(suggestion(
            "ai_queue_wait_mean_seconds",
            mean_wait,
            "ai_semaphore_limit",
            current,
            (current * 2).clamp(2, 512),
            format!(
                "questions waited {mean_wait:.1} s on average for one of the {current} AI slots; \
                 more slots answer sooner if the backend keeps up"
            ),
        ));
    }

    let images = now.images_busy - before.images_busy;
    if images > 0.0 {
        let current = config.worker_threads();
        out.push(suggestion(
            "images_refused_busy",
            images,
            "thread_pool_size",
            config.thread_pool_size,
            current * 2,
            format!(
                "{images:.0} photos were refused with the image queue full; more worker threads \
                 (now {current}) take more at once"
            ),
        ));
    }
    let pdfs = now.pdf_busy - before.pdf_busy;
    if pdfs > 0.0 {
        let current = config.pdf_semaphore_limit;
        out.push(suggestion(
            "pdf_jobs_refused_busy",
            pdfs,
            "pdf_semaphore_limit",
            current,
            current * 2,
            format!(
                "{pdfs:.0} PDF jobs were refused with the queue full; more PDF workers \
                 (now {current}) take more at once"
            ),
        ));
    }

    let evicted = now.sessions_evicted.saturating_sub(before.sessions_evicted);
    let room = match (config.memory_limit_mb, config.alert_rss_mb) {
        (0, alert) => alert as f64,
        (limit, _) => limit as f64,
    };
    if evicted > 0 && now.rss_mb < 0.5 * room {
        let current = config.max_user_states;
        out.push(suggestion(
            "sessions_evicted",
            evicted as f64,
            "max_user_states",
            current,
            current.saturating_mul(2),
            format!(
                "{evicted} sessions were retired early to stay under {current} while memory is at \
                 {:.0} MB of {room:.0}: a higher cap keeps conversations loaded",
                now.rss_mb
            ),
        ));
    }

    let send_rate = (now.sent - before.sent) / seconds;
    if send_rate >= 0.9 * config.telegram_global_rate && config.telegram_global_rate > 0.0 {
        out.push(suggestion(
            "sends_per_second",
            send_rate,
            "telegram_global_rate",
            config.telegram_global_rate,
            config.telegram_global_rate,
            format!(
                "sends run at {send_rate:.1}/s, at the global limit of {}/s, which is Telegram's own \
                 ceiling for a bot: beyond it, Telegram's paid broadcasts (allow_paid_broadcast) \
                 are the way, not a higher setting",
                config.telegram_global_rate
            ),
        ));
    }

    if now.db_max > 0 && now.db_idle == 0 && before.db_idle == 0 {
        let current = config.db_pool_max_size;
        out.push(suggestion(
            "db_pool_idle_connections",
            0.0,
            "db_pool_max_size",
            current,
            (current * 2).min(256),
            format!(
                "every one of the {current} database connections was busy at both ends of the \
                 interval; a larger pool queues less (needs a restart)"
            ),
        ));
    }
    out
}

/// The settings `POST /performance/optimize` would apply: the live
/// suggestions that change something, as `PUT /config` takes them.
pub fn to_apply(suggestions: &[Suggestion]) -> serde_json::Map<String, serde_json::Value> {
    suggestions
        .iter()
        .filter(|s| s.live && s.current != s.proposed)
        .map(|s| (s.setting.to_ascii_lowercase(), s.proposed.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut env = std::collections::HashMap::new();
        env.insert(
            "CONFIG_DIR".to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/config").to_string(),
        );
        Config::load(&env).unwrap()
    }

    #[test]
    fn long_ai_waits_suggest_more_slots_and_quiet_figures_nothing() {
        let config = config();
        let before = Figures {
            db_idle: 2,
            db_max: 8,
            rss_mb: 40.0,
            ..Figures::default()
        };
        assert!(suggest(&before, &before, &config).is_empty());
        let now = Figures {
            at_s: 60.0,
            ai_waits: 20.0,
            ai_wait_seconds: 30.0,
            ..before
        };
        let found = suggest(&before, &now, &config);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].setting, "AI_SEMAPHORE_LIMIT");
        assert_eq!(found[0].value, 1.5);
        assert_eq!(
            found[0].proposed,
            serde_json::json!(config.ai_semaphore_limit * 2)
        );
        assert!(found[0].live);
        let apply = to_apply(&found);
        assert_eq!(
            apply.get("ai_semaphore_limit"),
            Some(&serde_json::json!(config.ai_semaphore_limit * 2))
        );
    }

    #[test]
    fn only_the_settings_that_change_while_running_are_applied() {
        let config = config();
        let before = Figures {
            db_max: 8,
            db_idle: 0,
            ..Figures::default()
        };
        let now = Figures {
            at_s: 60.0,
            images_busy: 3.0,
            sent: 60.0 * config.telegram_global_rate,
            ..before
        };
        let found = suggest(&before, &now, &config);
        let settings: Vec<&str> = found.iter().map(|s| s.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "THREAD_POOL_SIZE",
                "TELEGRAM_GLOBAL_RATE",
                "DB_POOL_MAX_SIZE"
            ]
        );
        // The image pool resizes while running; the database pool does not.
        assert!(found[0].live);
        assert!(!found[2].live);
        // At Telegram's ceiling there is nothing to raise.
        assert_eq!(found[1].current, found[1].proposed);
        let apply = to_apply(&found);
        assert_eq!(apply.keys().collect::<Vec<_>>(), ["thread_pool_size"]);
    }
}
