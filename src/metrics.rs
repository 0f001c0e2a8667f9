//! Process-wide metrics in Prometheus form, served by `GET /metrics`.
//!
//! One registry for the process, as Prometheus expects: the instruments are
//! statics that any part of the bot updates without passing handles around.
//! Gauges whose value lives in an actor (queue depths, live actors) are set
//! when `/metrics` is scraped, from the actors' own figures.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("actorbot".into()), None).unwrap_or_default();
    #[cfg(target_os = "linux")]
    {
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
});

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    let _ = REGISTRY.register(Box::new(collector.clone()));
    collector
}

/// Updates received, by intake source (`polling`, `webhook`).
pub static UPDATES_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("updates_received_total", "Updates received from Telegram"),
            &["source"],
        )
        .expect("valid metric"),
    )
});

/// Updates skipped, by reason (`malformed`, `unhandled`).
pub static UPDATES_SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("updates_skipped_total", "Updates logged and skipped"),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

/// Requests delivered to Telegram, by method.
pub static SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("telegram_sent_total", "Requests delivered to chats"),
            &["method"],
        )
        .expect("valid metric"),
    )
});

/// Sends that failed for good, by error kind.
pub static SEND_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("telegram_send_failures_total", "Sends that failed for good"),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// 429 answers received from Telegram.
pub static FLOOD_WAITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("telegram_flood_waits_total", "429 answers from Telegram")
            .expect("valid metric"),
    )
});

/// Time from an update's arrival to the bot's reply being delivered.
pub static REPLY_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "update_to_reply_seconds",
                "From receiving an update to delivering its reply",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// Depth of an actor's queue, by actor (set at scrape time).
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("queue_depth", "Work waiting in an actor's queue"),
            &["actor"],
        )
        .expect("valid metric"),
    )
});

/// Replies delivered, by kind (`command`, `text`, `rate_limit`, ...).
pub static REPLIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("replies_total", "Replies delivered to users"),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// Replies that had to wait for room in the outbox, holding their session.
pub static REPLIES_HELD: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "replies_held_total",
            "Replies that waited for room in the outbox before they were queued",
        )
        .expect("valid metric"),
    )
});

/// Per-user actors alive now.
pub static USER_ACTORS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("user_actors", "Per-user actors alive").expect("valid metric"))
});

/// Per-user actors retired, by reason (`idle`, `evicted`), set at scrape time.
pub static USER_ACTORS_RETIRED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("user_actors_retired", "Per-user actors saved and stopped"),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

/// Restarts of supervised actors and workers, by actor (set at scrape time).
pub static RESTARTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("actor_restarts", "Restarts of supervised actors"),
            &["actor"],
        )
        .expect("valid metric"),
    )
});

/// Database pool connections, by state (`open`, `idle`, `max`).
pub static DB_POOL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections"),
            &["state"],
        )
        .expect("valid metric"),
    )
});

/// AI requests finished, by outcome (`ok`, `cancelled`, or the error kind).
pub static AI_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("ai_requests_total", "AI requests finished"),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// Duration of each attempt against the AI backend.
pub static AI_REQUEST_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new("ai_request_seconds", "One attempt against the AI backend")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("valid metric"),
    )
});

/// Time an AI request waited in the pool's queue.
pub static AI_QUEUE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "ai_queue_wait_seconds",
                "Time waiting for a slot in the AI pool",
            )
            .buckets(vec![0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0]),
        )
        .expect("valid metric"),
    )
});

/// AI requests in flight.
pub static AI_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("ai_in_flight", "AI requests in flight").expect("valid metric"))
});

/// The AI circuit breaker: 0 closed, 1 half-open, 2 open.
pub static AI_BREAKER: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "ai_breaker_state",
            "AI circuit breaker: 0 closed, 1 half-open, 2 open",
        )
        .expect("valid metric"),
    )
});

/// AI answer cache lookups, by result (`hit`, `miss`).
pub static AI_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("ai_cache_total", "AI answer cache lookups"),
            &["result"],
        )
        .expect("valid metric"),
    )
});

/// What the memory limit shed, by what (`sessions`, `cache_entries`).
pub static MEMORY_SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("memory_shed_total", "What the memory limit shed"),
            &["what"],
        )
        .expect("valid metric"),
    )
});

/// Polls intake held back because memory was at `MEMORY_LIMIT_MB`.
pub static INTAKE_HELD_MEMORY: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "intake_held_for_memory_total",
            "Times intake waited because memory was at the limit",
        )
        .expect("valid metric"),
    )
});

/// Photos handled by the image pool, by outcome (`processed`, `cached`,
/// `refused`, `failed`).
pub static IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("images_total", "Photos made ready for a PDF"),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// PDF jobs finished, by kind (`report`, `album`) and outcome (`delivered`,
/// `failed`, `busy`).
pub static DOCUMENT_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("pdf_jobs_total", "PDF jobs finished"),
            &["kind", "outcome"],
        )
        .expect("valid metric"),
    )
});

/// Document jobs claimed from a cluster's shared table, by the worker that
/// claimed them (an `actorbot worker`, or a leader's own pools).
pub static JOBS_CLAIMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("jobs_claimed_total", "document jobs claimed, by worker"),
            &["worker"],
        )
        .expect("valid metric"),
    )
});

/// Time from a PDF job's acceptance to its delivery.
pub static DOCUMENT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new("pdf_job_seconds", "PDF job, accepted to delivered")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0]),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// Every counter's value by its name and labels, as JSON: the figures of
/// `/performance/metrics` for scripts that do not speak Prometheus.
pub fn counters_json() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for family in REGISTRY.gather() {
        if family.get_field_type() != prometheus::proto::MetricType::COUNTER {
            continue;
        }
        for metric in family.get_metric() {
            let labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                family.name().to_string()
            } else {
                format!("{}{{{}}}", family.name(), labels.join(","))
            };
            out.insert(name, serde_json::json!(metric.get_counter().get_value()));
        }
    }
    serde_json::Value::Object(out)
}

/// This instance's role in a cluster: 1 while it leads, 0 otherwise.
pub static CLUSTER_ROLE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "cluster_role",
            "1 while this instance holds the cluster's leader lease, 0 otherwise",
        )
        .expect("valid metric"),
    )
});

/// Times this instance took the lease over from another (or after one).
pub static CLUSTER_FAILOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "cluster_failovers_total",
            "Times this instance took the leader lease after another instance had held it",
        )
        .expect("valid metric"),
    )
});

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(err) = encoder.encode(&REGISTRY.gather(), &mut buffer) {
        return format!("# cannot encode metrics: {err}\n");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        UPDATES_IN.with_label_values(&["polling"]).inc();
        REPLY_LATENCY.with_label_values(&["command"]).observe(0.004);
        let text = render();
        assert!(
            text.contains("actorbot_updates_received_total{source=\"polling\"}"),
            "{text}"
        );
        assert!(
            text.contains("actorbot_update_to_reply_seconds_bucket"),
            "{text}"
        );
    }
}
