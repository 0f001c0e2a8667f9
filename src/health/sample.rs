//! One sample of the daemon's figures, taken every few seconds by the
//! health checker, and the arithmetic that turns counters into rates.
//!
//! Rates and latency percentiles come from the Prometheus instruments in
//! [`crate::metrics`]: the difference between two readings, so a sample
//! describes its own interval, not the process's whole life. Process
//! figures come from `/proc/self` (Linux; zero elsewhere).

use std::collections::BTreeMap;
use std::time::Instant;

use actorbot_actors::process::Process;
use prometheus::core::Collector;
use serde::Serialize;

use crate::metrics;

/// The figures of one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds at the end of the interval.
    pub t: u64,
    pub updates_per_s: f64,
    pub replies_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    /// Messages waiting in every mailbox and queue.
    pub queue_depth: u64,
    pub user_actors: i64,
    /// Restarts since start, over all actors and pools.
    pub restarts: u64,
    /// Errors in the interval, and by kind.
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub rss_bytes: u64,
    pub cpu_percent: f64,
}

/// Counter readings at one instant.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    at: Option<Instant>,
    updates: f64,
    replies: f64,
    /// Cumulative bucket counts of the reply latency, by upper bound.
    latency: Vec<(f64, f64)>,
    errors: BTreeMap<String, f64>,
    cpu_seconds: f64,
}

impl Reading {
    /// Reads the counters now.
    pub fn now() -> Reading {
        let mut errors = BTreeMap::new();
        errors.insert(
            "telegram_send".into(),
            counter_sum(&*metrics::SEND_FAILURES, |_| true),
        );
        errors.insert(
            "ai".into(),
            counter_sum(&*metrics::AI_REQUESTS, |labels| {
                !matches!(
                    labels.get("outcome").map(String::as_str),
                    Some("ok" | "cancelled")
                )
            }),
        );
        errors.insert(
            "pdf".into(),
            counter_sum(&*metrics::DOCUMENT_JOBS, |labels| {
                labels.get("outcome").map(String::as_str) == Some("failed")
            }),
        );
        errors.insert(
            "malformed_update".into(),
            counter_sum(&*metrics::UPDATES_SKIPPED, |labels| {
                labels.get("reason").map(String::as_str) == Some("malformed")
            }),
        );
        Reading {
            at: Some(Instant::now()),
            updates: counter_sum(&*metrics::UPDATES_IN, |_| true),
            replies: counter_sum(&*metrics::REPLIES, |_| true),
            latency: histogram_buckets(&*metrics::REPLY_LATENCY),
            errors,
            cpu_seconds: Process::Current.cpu_seconds(),
        }
    }

    /// The sample of the interval from `earlier` to this reading.
    pub fn since(&self, earlier: &Reading, unix_now: u64) -> Sample {
        let seconds = match (self.at, earlier.at) {
            (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
            _ => 0.0,
        };
        let rate = |now: f64, then: f64| {
            if seconds > 0.0 {
                ((now - then) / seconds).max(0.0)
            } else {
                0.0
            }
        };
        let buckets: Vec<(f64, f64)> = self
            .latency
            .iter()
            .map(|(bound, count)| {
                let before = earlier
                    .latency
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (*bound, (count - before).max(0.0))
            })
            .collect();
        let errors_by_kind: BTreeMap<String, u64> = self
            .errors
            .iter()
            .map(|(kind, now)| {
                let then = earlier.errors.get(kind).copied().unwrap_or(0.0);
                (kind.clone(), (now - then).max(0.0) as u64)
            })
            .collect();
        Sample {
            t: unix_now,
            updates_per_s: rate(self.updates, earlier.updates),
            replies_per_s: rate(self.replies, earlier.replies),
            latency_p50_ms: percentile(&buckets, 0.50) * 1000.0,
            latency_p95_ms: percentile(&buckets, 0.95) * 1000.0,
            latency_p99_ms: percentile(&buckets, 0.99) * 1000.0,
            errors: errors_by_kind.values().sum(),
            errors_by_kind,
            rss_bytes: process_rss_bytes(),
            cpu_percent: rate(self.cpu_seconds, earlier.cpu_seconds) * 100.0,
            ..Sample::default()
        }
    }
}

fn labels_of(metric: &prometheus::proto::Metric) -> BTreeMap<String, String> {
    metric
        .get_label()
        .iter()
        .map(|l| (l.name().to_string(), l.value().to_string()))
        .collect()
}

/// The sum of a counter family's values whose labels pass `keep`.
pub(crate) fn counter_sum(
    collector: &dyn Collector,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> f64 {
    collector
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| keep(&labels_of(m)))
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// A histogram family's cumulative bucket counts, summed over its labels.
fn histogram_buckets(collector: &dyn Collector) -> Vec<(f64, f64)> {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for family in collector.collect() {
        for metric in family.get_metric() {
            let histogram = metric.get_histogram();
            for bucket in histogram.get_bucket() {
                let bound = bucket.upper_bound();
                let entry = buckets.entry(bound.to_bits()).or_insert((bound, 0.0));
                entry.1 += bucket.cumulative_count() as f64;
            }
            // The +Inf bucket is implicit: the count of every observation,
            // so that replies slower than the last bound still count.
            let entry = buckets
                .entry(f64::INFINITY.to_bits())
                .or_insert((f64::INFINITY, 0.0));
            entry.1 += histogram.get_sample_count() as f64;
        }
    }
    let mut list: Vec<(f64, f64)> = buckets.into_values().collect();
    list.sort_by(|a, b| a.0.total_cmp(&b.0));
    list
}

/// The `q` quantile from cumulative bucket counts, interpolating linearly
/// within the bucket it falls in (as Prometheus' `histogram_quantile`
/// does). Zero when there were no observations.
pub fn percentile(cumulative: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = cumulative.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in cumulative {
        if count >= rank {
            if bound.is_infinite() {
                // Slower than the last bound: that bound is all we know.
                return lower_bound;
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return bound;
            }
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket;
        }
        lower_bound = bound;
        lower_count = count;
    }
    // Past the last finite bucket: its bound is the best estimate.
    lower_bound
}

/// Resident memory of this process.
pub fn process_rss_bytes() -> u64 {
    Process::Current.rss_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        // 100 observations: 50 under 10 ms, 40 more under 20 ms, 10 under 100 ms.
        let buckets = [
            (0.01, 50.0),
            (0.02, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((percentile(&buckets, 0.5) - 0.01).abs() < 1e-9);
        assert!((percentile(&buckets, 0.7) - 0.015).abs() < 1e-9);
        assert!((percentile(&buckets, 0.95) - 0.06).abs() < 1e-9);
        assert_eq!(percentile(&[], 0.5), 0.0);
        // Half the observations past the last bound.
        let slow = [(0.01, 50.0), (30.0, 50.0), (f64::INFINITY, 100.0)];
        assert_eq!(percentile(&slow, 0.95), 30.0);
        assert_eq!(percentile(&[(0.01, 0.0), (f64::INFINITY, 0.0)], 0.99), 0.0);
    }

    #[test]
    fn a_sample_describes_its_own_interval() {
        let before = Reading::now();
        metrics::UPDATES_IN
            .with_label_values(&["polling"])
            .inc_by(10);
        metrics::REPLY_LATENCY
            .with_label_values(&["command"])
            .observe(0.004);
        metrics::SEND_FAILURES.with_label_values(&["network"]).inc();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = Reading::now();
        let sample = after.since(&before, 1);
        assert!(sample.updates_per_s > 0.0, "{sample:?}");
        assert!(
            sample.latency_p50_ms > 0.0 && sample.latency_p50_ms <= 5.0,
            "{sample:?}"
        );
        assert!(sample.errors_by_kind["telegram_send"] >= 1, "{sample:?}");
        assert!(sample.rss_bytes > 0);
    }
}
