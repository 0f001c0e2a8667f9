//! The performance summary written to the log every `SUMMARY_INTERVAL`:
//! one info line an operator can grep, with what the interval did.
//!
//! Its figures are the differences between two readings of the counters
//! in [`crate::metrics`], as the health checker's samples are.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::sample::{Reading, Sample, counter_sum};
use crate::metrics;

/// The counters the summary adds to a sample's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub updates: f64,
    pub replies: f64,
    pub ai_calls: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub pdf_jobs: f64,
    pub images: f64,
    pub floods: f64,
}

impl Counts {
    pub fn now() -> Counts {
        let ai_cache = |result: &'static str| {
            counter_sum(&*metrics::AI_CACHE, |labels| {
                labels.get("result").map(String::as_str) == Some(result)
            })
        };
        Counts {
            updates: counter_sum(&*metrics::UPDATES_IN, |_| true),
            replies: counter_sum(&*metrics::REPLIES, |_| true),
            ai_calls: counter_sum(&*metrics::AI_REQUESTS, |_| true),
            cache_hits: ai_cache("hit"),
            cache_misses: ai_cache("miss"),
            pdf_jobs: counter_sum(&*metrics::DOCUMENT_JOBS, |_| true),
            images: counter_sum(&*metrics::IMAGES, |_| true),
            floods: metrics::FLOOD_WAITS.get() as f64,
        }
    }

    fn minus(&self, earlier: &Counts) -> Counts {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        Counts {
            updates: d(self.updates, earlier.updates),
            replies: d(self.replies, earlier.replies),
            ai_calls: d(self.ai_calls, earlier.ai_calls),
            cache_hits: d(self.cache_hits, earlier.cache_hits),
            cache_misses: d(self.cache_misses, earlier.cache_misses),
            pdf_jobs: d(self.pdf_jobs, earlier.pdf_jobs),
            images: d(self.images, earlier.images),
            floods: d(self.floods, earlier.floods),
        }
    }
}

/// The readings at the start of the interval being summed up.
pub struct Summary {
    reading: Reading,
    counts: Counts,
    since: Instant,
}

impl Default for Summary {
    fn default() -> Self {
        Summary::new()
    }
}

impl Summary {
    pub fn new() -> Summary {
        Summary {
            reading: Reading::now(),
            counts: Counts::now(),
            since: Instant::now(),
        }
    }

    /// The line for the interval since the last one, and starts the next.
    pub fn take(&mut self) -> String {
        let (reading, counts) = (Reading::now(), Counts::now());
        let sample = reading.since(&self.reading, 0);
        let line = line(
            self.since.elapsed(),
            &sample,
            &counts.minus(&self.counts),
            metrics::USER_ACTORS.get(),
        );
        *self = Summary {
            reading,
            counts,
            since: Instant::now(),
        };
        line
    }
}

/// The summary line, from the interval's figures.
pub fn line(interval: Duration, sample: &Sample, counts: &Counts, sessions: i64) -> String {
    let lookups = counts.cache_hits + counts.cache_misses;
    let hit_rate = if lookups > 0.0 {
        format!("{:.0}%", 100.0 * counts.cache_hits / lookups)
    } else {
        "-".to_string()
    };
    let errors: BTreeMap<&str, u64> = sample
        .errors_by_kind
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| (kind.as_str(), *n))
        .collect();
    let errors = if errors.is_empty() {
        "none".to_string()
    } else {
        errors
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "performance over the last {}s: {} updates, {} replies, update to reply p50 {:.0} ms p95 {:.0} ms; \
         AI calls {}, cache hit rate {hit_rate}; PDF jobs {}, photos {}; errors: {errors}; \
         live sessions {sessions}; RSS {:.1} MB; Telegram 429s {}",
        interval.as_secs(),
        counts.updates,
        counts.replies,
        sample.latency_p50_ms,
        sample.latency_p95_ms,
        counts.ai_calls,
        counts.pdf_jobs,
        counts.images,
        sample.rss_bytes as f64 / (1024.0 * 1024.0),
        counts.floods,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_each_figure() {
        let mut sample = Sample {
            latency_p50_ms: 12.4,
            latency_p95_ms: 180.0,
            rss_bytes: 64 << 20,
            ..Sample::default()
        };
        sample.errors_by_kind.insert("ai".into(), 2);
        sample.errors_by_kind.insert("pdf".into(), 0);
        let counts = Counts {
            updates: 1200.0,
            replies: 1190.0,
            ai_calls: 300.0,
            cache_hits: 100.0,
            cache_misses: 300.0,
            pdf_jobs: 4.0,
            images: 9.0,
            floods: 1.0,
        };
        let text = line(Duration::from_secs(3600), &sample, &counts, 42);
        assert_eq!(
            text,
            "performance over the last 3600s: 1200 updates, 1190 replies, update to reply p50 12 ms p95 180 ms; \
             AI calls 300, cache hit rate 25%; PDF jobs 4, photos 9; errors: ai 2; \
             live sessions 42; RSS 64.0 MB; Telegram 429s 1"
        );
    }
}
