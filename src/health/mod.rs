//! The daemon watching itself: the health checker actor, its samples and
//! alert rules, and the texts of the admin commands built from them.

pub mod alerts;
pub mod checker;
pub mod memory;
pub mod sample;
pub mod suggest;
pub mod summary;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use actorbot_actors::probe::Health;
use prometheus::core::Collector;

use crate::cache::Cache;
use crate::metrics;
use crate::storage::{Storage, now_millis};
pub use checker::{GetHistory, GetStatus, HealthChecker, Status};
use sample::Sample;

/// `/health` for admins: overall status, dependencies, troubled actors.
pub fn health_text(status: &Status) -> String {
    let mut text = format!(
        "Status: {} (up {})\n",
        status.status,
        uptime(status.uptime_s)
    );
    for (name, dependency) in &status.dependencies {
        let latency = dependency
            .latency_ms
            .map(|ms| format!(", {ms:.1} ms"))
            .unwrap_or_default();
        let _ = writeln!(text, "{name}: {}{latency}", health_word(&dependency.health));
    }
    if status.troubled_actors.is_empty() {
        text.push_str("Actors: all healthy\n");
    } else {
        let _ = writeln!(
            text,
            "Actors in trouble: {}",
            status.troubled_actors.join(", ")
        );
    }
    let firing: Vec<&str> = status
        .alerts
        .iter()
        .filter(|a| a.resolved_at.is_none())
        .map(|a| a.message.as_str())
        .collect();
    if !firing.is_empty() {
        let _ = writeln!(text, "Alerts: {}", firing.join("; "));
    }
    text
}

/// `/performance` for admins: the latest sample and the hour's peaks.
pub fn performance_text(status: &Status, history: &[Sample]) -> String {
    let Some(now) = &status.current else {
        return "No figures yet: the first sample is taken a few seconds after start.".into();
    };
    let peak = |f: fn(&Sample) -> f64| history.iter().map(f).fold(0.0, f64::max);
    format!(
        "Now: {:.1} updates/s, {:.1} replies/s\n\
         Latency: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms\n\
         Queues: {} waiting; user actors: {}\n\
         Restarts: {}; errors in the last interval: {}\n\
         Memory: {} MB; CPU: {:.0}%\n\
         Last hour's peaks: {:.1} updates/s, p95 {:.0} ms",
        now.updates_per_s,
        now.replies_per_s,
        now.latency_p50_ms,
        now.latency_p95_ms,
        now.latency_p99_ms,
        now.queue_depth,
        now.user_actors,
        now.restarts,
        now.errors,
        now.rss_bytes / (1024 * 1024),
        now.cpu_percent,
        peak(|s| s.updates_per_s),
        peak(|s| s.latency_p95_ms),
    )
}

/// `/admin_stats`: users, today's messages, AI and PDF figures, cache hit
/// rate, uptime.
pub async fn admin_stats_text(storage: &Storage, ai_cache: &Arc<Cache>, uptime_s: u64) -> String {
    let now = now_millis();
    let day = 86_400_000;
    let midnight = now - now.rem_euclid(day);
    let (total, active, today) = tokio::join!(
        storage.users_count(),
        storage.users_active_since(now - day),
        storage.inbox_count_since(midnight),
    );
    let figure = |r: Result<i64, _>| r.map_or("unknown".to_string(), |n| n.to_string());
    let ai = counters(&*metrics::AI_REQUESTS);
    let pdf = counters(&*metrics::DOCUMENT_JOBS);
    let cache = ai_cache.stats();
    let lookups = cache.hits + cache.misses;
    let hit_rate = if lookups > 0 {
        format!(
            "{:.0}% of {lookups}",
            cache.hits as f64 * 100.0 / lookups as f64
        )
    } else {
        "no lookups yet".into()
    };
    format!(
        "Users: {} total, {} active in the last 24 h (as last saved), {} in conversation now\n\
         Messages today (UTC): {}\n\
         AI requests: {}\n\
         PDF jobs: {}\n\
         AI cache hit rate: {hit_rate} ({})\n\
         Uptime: {}",
        figure(total),
        figure(active),
        metrics::USER_ACTORS.get(),
        figure(today),
        describe(&ai),
        describe(&pdf),
        ai_cache.backend(),
        uptime(uptime_s),
    )
}

/// A counter family's values by their label values joined with "/".
fn counters(collector: &dyn Collector) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = collector
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
            (labels.join("/"), m.get_counter().get_value() as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    out.sort();
    out
}

fn describe(counts: &[(String, u64)]) -> String {
    if counts.is_empty() {
        return "none yet".into();
    }
    counts
        .iter()
        .map(|(label, n)| format!("{n} {label}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn health_word(health: &Health) -> String {
    match health {
        Health::Healthy => "healthy".into(),
        Health::Degraded(why) => format!("degraded ({why})"),
        Health::Unhealthy(why) => format!("DOWN ({why})"),
    }
}

fn uptime(seconds: u64) -> String {
    let d = Duration::from_secs(seconds);
    let (h, m, s) = (d.as_secs() / 3600, d.as_secs() / 60 % 60, d.as_secs() % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_naturally() {
        assert_eq!(uptime(5), "5 s");
        assert_eq!(uptime(125), "2 min 5 s");
        assert_eq!(uptime(7322), "2 h 2 min");
    }

    #[test]
    fn performance_needs_a_sample() {
        let status = Status {
            status: "ok",
            uptime_s: 1,
            current: None,
            dependencies: Default::default(),
            troubled_actors: vec![],
            alerts: vec![],
        };
        assert!(performance_text(&status, &[]).contains("No figures yet"));
        let sample = Sample {
            updates_per_s: 12.5,
            latency_p95_ms: 40.0,
            ..Sample::default()
        };
        let status = Status {
            current: Some(sample.clone()),
            ..status
        };
        let text = performance_text(&status, &[sample]);
        assert!(text.contains("12.5 updates/s"), "{text}");
        assert!(text.contains("p95 40 ms"), "{text}");
    }
}
