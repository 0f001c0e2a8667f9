//! The load test's decisions, as plain code: the mix of interactions, the
//! percentiles, the report, the verdict of an SLO and the tuning hints.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub use crate::health::suggest::Suggestion as DaemonSuggestion;

/// One kind of interaction a simulated user has with the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Start,
    Ask,
    Stats,
    Photo,
    Report,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Start,
        Kind::Ask,
        Kind::Stats,
        Kind::Photo,
        Kind::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Ask => "ask",
            Kind::Stats => "stats",
            Kind::Photo => "photo",
            Kind::Report => "report",
        }
    }
}

/// Weights of the interactions, as `--mix start=10,ask=60,...` gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(Vec<(Kind, f64)>);

impl Default for Mix {
    fn default() -> Self {
        Mix(vec![
            (Kind::Start, 10.0),
            (Kind::Ask, 60.0),
            (Kind::Stats, 10.0),
            (Kind::Photo, 10.0),
            (Kind::Report, 10.0),
        ])
    }
}

impl Mix {
    /// Parses `start=10,ask=60`; kinds left out have weight 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix {part:?}: expected KIND=WEIGHT"))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    format!(
                        "--mix: unknown kind {name:?}, expected start, ask, stats, photo or report"
                    )
                })?;
            let weight: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| format!("--mix {part:?}: the weight must be a number ≥ 0"))?;
            weights.push((kind, weight));
        }
        if weights.iter().all(|(_, w)| *w == 0.0) {
            return Err("--mix: at least one weight must be above 0".into());
        }
        Ok(Mix(weights))
    }

    /// The kind at `u` (in 0..1) of the weights' running total.
    pub fn pick(&self, u: f64) -> Kind {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let mut at = u.clamp(0.0, 1.0) * total;
        for (kind, weight) in &self.0 {
            if at < *weight {
                return *kind;
            }
            at -= weight;
        }
        self.0
            .iter()
            .rev()
            .find(|(_, w)| *w > 0.0)
            .map_or(Kind::Start, |(k, _)| *k)
    }
}

/// How one interaction went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub kind: Kind,
    /// Update to the bot's first reply: a message, or the first draft of a
    /// streamed answer.
    pub first: Option<Duration>,
    /// Update to the complete answer.
    pub complete: Option<Duration>,
    /// Messages the bot sent for it.
    pub replies: usize,
    pub error: Option<String>,
}

impl Outcome {
    /// Taken and never answered.
    pub fn lost(kind: Kind) -> Outcome {
        Outcome {
            kind,
            first: None,
            complete: None,
            replies: 0,
            error: Some("no reply".into()),
        }
    }
}

/// Thresholds that a run must keep: `--slo p95=2s,errors=0.1%,lost=0`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Slo {
    /// The 95th percentile of update to first reply, over every kind.
    pub p95: Option<Duration>,
    pub p99: Option<Duration>,
    /// Errors (lost interactions included), as a fraction of all.
    pub errors: Option<f64>,
    pub lost: Option<u64>,
}

fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * scale))
}

impl Slo {
    pub fn parse(text: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--slo {part:?}: expected NAME=VALUE"))?;
            let bad = || format!("--slo {part:?}: cannot read the value");
            match name.trim() {
                "p95" => slo.p95 = Some(duration(value).ok_or_else(bad)?),
                "p99" => slo.p99 = Some(duration(value).ok_or_else(bad)?),
                "errors" => {
                    let value = value.trim();
                    let fraction = match value.strip_suffix('%') {
                        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
                        None => value.parse::<f64>(),
                    }
                    .map_err(|_| bad())?;
                    slo.errors = Some(fraction);
                }
                "lost" => slo.lost = Some(value.trim().parse().map_err(|_| bad())?),
                other => {
                    return Err(format!(
                        "--slo: unknown threshold {other:?}, expected p95, p99, errors or lost"
                    ));
                }
            }
        }
        Ok(slo)
    }
}

/// The `q` quantile (0..1) of `values`, sorting them; `None` when empty.
pub fn percentile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// What a run measured, before it is summed up.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub elapsed: Duration,
    pub users: usize,
    pub outcomes: Vec<Outcome>,
    pub rejected_429: usize,
    pub unconfirmed: usize,
    /// The daemon's peak resident memory and CPU time over the run: `None`
    /// when the tool has no process to read them from (a daemon it did not
    /// start, no `--pid`).
    pub peak_rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// The daemon's `/metrics`, by full name (labels included).
    pub metrics: HashMap<String, f64>,
    /// The daemon's tuning suggestions after the run.
    pub suggestions: Vec<DaemonSuggestion>,
}

/// Milliseconds, rounded to a tenth.
fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindFigures {
    pub kind: Kind,
    pub count: usize,
    pub errors: usize,
    pub first_p50_ms: Option<f64>,
    pub first_p95_ms: Option<f64>,
    pub first_p99_ms: Option<f64>,
    pub complete_p50_ms: Option<f64>,
    pub complete_p95_ms: Option<f64>,
    pub complete_p99_ms: Option<f64>,
}

/// The end of a run: what `--output` writes and what is printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub seconds: f64,
    pub users: usize,
    pub interactions: usize,
    pub interactions_per_second: f64,
    pub kinds: Vec<KindFigures>,
    pub first_p95_ms: Option<f64>,
    pub first_p99_ms: Option<f64>,
    pub errors: usize,
    pub error_rate: f64,
    pub errors_by_kind: HashMap<String, usize>,
    /// Interactions taken and never answered.
    pub lost: usize,
    /// Messages the bot sent per interaction.
    pub replies_per_interaction: f64,
    pub rejected_429: usize,
    pub unconfirmed_updates: usize,
    /// `null` when not measured (see [`Figures::peak_rss_bytes`]), as are
    /// the two CPU figures.
    pub peak_rss_mb: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub hints: Vec<String>,
    /// The daemon's tuning suggestions after the run (as
    /// `GET /performance/suggestions` answers).
    pub suggestions: Vec<DaemonSuggestion>,
    /// The thresholds missed; empty when all held (or none were set).
    pub slo_missed: Vec<String>,
}

impl Report {
    pub fn from_figures(figures: &Figures, slo: Option<&Slo>) -> Report {
        let outcomes = &figures.outcomes;
        let mut kinds = Vec::new();
        let mut errors_by_kind: HashMap<String, usize> = HashMap::new();
        for kind in Kind::ALL {
            let of_kind: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let mut firsts: Vec<Duration> = of_kind.iter().filter_map(|o| o.first).collect();
            let mut completes: Vec<Duration> = of_kind.iter().filter_map(|o| o.complete).collect();
            let errors = of_kind.iter().filter(|o| o.error.is_some()).count();
            if errors > 0 {
                errors_by_kind.insert(kind.name().to_string(), errors);
            }
            kinds.push(KindFigures {
                kind,
                count: of_kind.len(),
                errors,
                first_p50_ms: ms(percentile(&mut firsts, 0.50)),
                first_p95_ms: ms(percentile(&mut firsts, 0.95)),
                first_p99_ms: ms(percentile(&mut firsts, 0.99)),
                complete_p50_ms: ms(percentile(&mut completes, 0.50)),
                complete_p95_ms: ms(percentile(&mut completes, 0.95)),
                complete_p99_ms: ms(percentile(&mut completes, 0.99)),
            });
        }
        let mut firsts: Vec<Duration> = outcomes.iter().filter_map(|o| o.first).collect();
        let first_p95 = percentile(&mut firsts, 0.95);
        let first_p99 = percentile(&mut firsts, 0.99);
        let errors = outcomes.iter().filter(|o| o.error.is_some()).count();
        let lost = outcomes.iter().filter(|o| o.first.is_none()).count();
        let interactions = outcomes.len();
        let seconds = figures.elapsed.as_secs_f64().max(1e-9);
        let error_rate = errors as f64 / interactions.max(1) as f64;
        let replies: usize = outcomes.iter().map(|o| o.replies).sum();
        let mut report = Report {
            seconds: (seconds * 10.0).round() / 10.0,
            users: figures.users,
            interactions,
            interactions_per_second: (interactions as f64 / seconds * 10.0).round() / 10.0,
            kinds,
            first_p95_ms: ms(first_p95),
            first_p99_ms: ms(first_p99),
            errors,
            error_rate,
            errors_by_kind,
            lost,
            replies_per_interaction: replies as f64 / interactions.max(1) as f64,
            rejected_429: figures.rejected_429,
            unconfirmed_updates: figures.unconfirmed,
            peak_rss_mb: figures
                .peak_rss_bytes
                .map(|b| (b as f64 / 1_048_576.0 * 10.0).round() / 10.0),
            cpu_seconds: figures.cpu_seconds.map(|c| (c * 10.0).round() / 10.0),
            cpu_percent: figures
                .cpu_seconds
                .map(|c| (c / seconds * 1000.0).round() / 10.0),
            hints: hints(figures),
            suggestions: figures.suggestions.clone(),
            slo_missed: Vec::new(),
        };
        if let Some(slo) = slo {
            report.slo_missed = missed(slo, first_p95, first_p99, error_rate, lost as u64);
        }
        report
    }

    /// The report as a person reads it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} interactions of {} users in {:.0} s ({:.1}/s); errors {} ({:.2} %), lost {}, 429s {}",
            self.interactions,
            self.users,
            self.seconds,
            self.interactions_per_second,
            self.errors,
            self.error_rate * 100.0,
            self.lost,
            self.rejected_429
        );
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>7}  {:>26}  {:>26}",
            "kind", "count", "errors", "first reply p50/p95/p99 ms", "complete p50/p95/p99 ms"
        );
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        for k in &self.kinds {
            let _ = writeln!(
                out,
                "{:<8} {:>7} {:>7}  {:>26}  {:>26}",
                k.kind.name(),
                k.count,
                k.errors,
                format!(
                    "{}/{}/{}",
                    f(k.first_p50_ms),
                    f(k.first_p95_ms),
                    f(k.first_p99_ms)
                ),
                format!(
                    "{}/{}/{}",
                    f(k.complete_p50_ms),
                    f(k.complete_p95_ms),
                    f(k.complete_p99_ms)
                ),
            );
        }
        let rss = self
            .peak_rss_mb
            .map_or_else(|| "not measured".to_string(), |mb| format!("{mb:.1} MB"));
        let cpu = match (self.cpu_seconds, self.cpu_percent) {
            (Some(seconds), Some(percent)) => {
                format!("{seconds:.1} s ({percent:.0} % of one core)")
            }
            _ => "not measured".to_string(),
        };
        let _ = writeln!(
            out,
            "daemon: peak RSS {rss}, CPU {cpu}; {:.2} messages per interaction",
            self.replies_per_interaction
        );
        for hint in &self.hints {
            let _ = writeln!(out, "hint: {hint}");
        }
        for s in &self.suggestions {
            let _ = writeln!(
                out,
                "suggestion: {} {} -> {} ({} = {}): {}",
                s.setting, s.current, s.proposed, s.figure, s.value, s.why
            );
        }
        if self.slo_missed.is_empty() {
            let _ = writeln!(out, "SLO: held (or none set)");
        } else {
            for missed in &self.slo_missed {
                let _ = writeln!(out, "SLO missed: {missed}");
            }
        }
        out
    }
}

fn missed(
    slo: &Slo,
    p95: Option<Duration>,
    p99: Option<Duration>,
    error_rate: f64,
    lost: u64,
) -> Vec<String> {
    let mut missed = Vec::new();
    let over = |what: &str, got: Option<Duration>, limit: Duration| match got {
        Some(got) if got <= limit => None,
        Some(got) => Some(format!(
            "{what} {:.0} ms > {:.0} ms",
            got.as_secs_f64() * 1000.0,
            limit.as_secs_f64() * 1000.0
        )),
        None => Some(format!("{what}: nothing was answered")),
    };
    if let Some(limit) = slo.p95 {
        missed.extend(over("p95", p95, limit));
    }
    if let Some(limit) = slo.p99 {
        missed.extend(over("p99", p99, limit));
    }
    if let Some(limit) = slo.errors
        && error_rate > limit
    {
        missed.push(format!(
            "errors {:.3} % > {:.3} %",
            error_rate * 100.0,
            limit * 100.0
        ));
    }
    if let Some(limit) = slo.lost
        && lost > limit
    {
        missed.push(format!("lost {lost} > {limit}"));
    }
    missed
}

/// A metric's value summed over its label sets.
fn metric(figures: &Figures, name: &str) -> f64 {
    figures
        .metrics
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// Suggestions from what the run measured, each naming its figure.
pub fn hints(figures: &Figures) -> Vec<String> {
    let mut hints = Vec::new();
    let held = metric(figures, "actorbot_replies_held_total");
    if held > 0.0 {
        hints.push(format!(
            "{held:.0} replies waited for room in the outbox (actorbot_replies_held_total): raise OUTBOX_CAPACITY, or, if sends go at Telegram's 30 messages/s, that is the ceiling (paid broadcasts lift it)"
        ));
    }
    if figures.rejected_429 > 0 {
        hints.push(format!(
            "{} sends were refused with 429: the outbox's limits (TELEGRAM_GLOBAL_RATE, TELEGRAM_PRIVATE_RATE) are above what the Bot API server allows",
            figures.rejected_429
        ));
    }
    let waits = metric(figures, "actorbot_ai_queue_wait_seconds_sum");
    let waited = metric(figures, "actorbot_ai_queue_wait_seconds_count");
    if waited > 0.0 && waits / waited > 0.5 {
        hints.push(format!(
            "questions waited {:.1} s on average for the AI pool (actorbot_ai_queue_wait_seconds): raise AI_SEMAPHORE_LIMIT if the backend can take more",
            waits / waited
        ));
    }
    let busy: f64 = figures
        .metrics
        .iter()
        .filter(|(k, _)| k.starts_with("actorbot_replies_total{") && k.contains("busy"))
        .map(|(_, v)| v)
        .sum();
    if busy > 0.0 {
        hints.push(format!(
            "{busy:.0} replies said a queue was full (actorbot_replies_total, kind *busy*): raise AI_QUEUE_SIZE, PDF_QUEUE_SIZE or THREAD_POOL_SIZE"
        ));
    }
    let lost = figures
        .outcomes
        .iter()
        .filter(|o| o.first.is_none())
        .count();
    if lost > 0 {
        hints.push(format!(
            "{lost} interactions had no reply within the drain: look at /health and the log for the actor that held them"
        ));
    }
    hints
}

/// Reads Prometheus text: each sample's full name (labels included) and
/// value.
pub fn metric_values(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A small JPEG for the photo interactions, made once.
pub fn sample_jpeg() -> &'static [u8] {
    static SAMPLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let pixels = image::RgbImage::from_fn(800, 600, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut bytes = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80);
        let _ = pixels.write_with_encoder(encoder);
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: Kind, first_ms: Option<u64>) -> Outcome {
        let first = first_ms.map(Duration::from_millis);
        Outcome {
            kind,
            first,
            complete: first,
            replies: usize::from(first.is_some()),
            error: first.is_none().then(|| "no reply".into()),
        }
    }

    #[test]
    fn a_mix_is_read_and_picked_by_weight() {
        let mix = Mix::parse("start=1, ask=3").unwrap();
        let picks: Vec<Kind> = (0..400).map(|i| mix.pick(i as f64 / 400.0)).collect();
        let asks = picks.iter().filter(|k| **k == Kind::Ask).count();
        assert_eq!(asks, 300);
        assert!(!picks.contains(&Kind::Photo));
        assert!(Mix::parse("dance=1").is_err());
        assert!(Mix::parse("start=-1").is_err());
        assert!(Mix::parse("start=0").is_err());
        assert_eq!(Mix::default().pick(0.999), Kind::Report);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            percentile(&mut values, 0.95),
            Some(Duration::from_millis(95))
        );
        assert_eq!(
            percentile(&mut values, 0.5),
            Some(Duration::from_millis(50))
        );
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn an_slo_holds_or_names_what_it_missed() {
        let slo = Slo::parse("p95=50ms,errors=0.1%,lost=0").unwrap();
        assert_eq!(slo.p95, Some(Duration::from_millis(50)));
        assert_eq!(slo.errors, Some(0.001));
        let mut figures = Figures {
            elapsed: Duration::from_secs(10),
            users: 2,
            outcomes: (1..=100)
                .map(|n| outcome(Kind::Start, Some(n / 4)))
                .collect(),
            ..Figures::default()
        };
        let held = Report::from_figures(&figures, Some(&slo));
        assert!(held.slo_missed.is_empty(), "{:?}", held.slo_missed);
        assert_eq!(held.peak_rss_mb, None, "no process, no figure");
        assert!(
            held.text()
                .contains("peak RSS not measured, CPU not measured")
        );
        figures.peak_rss_bytes = Some(50 << 20);
        figures.cpu_seconds = Some(2.5);
        let measured = Report::from_figures(&figures, Some(&slo));
        assert_eq!(measured.peak_rss_mb, Some(50.0));
        assert_eq!(measured.cpu_percent, Some(25.0));
        assert!(
            measured
                .text()
                .contains("peak RSS 50.0 MB, CPU 2.5 s (25 % of one core)")
        );
        figures.outcomes.push(outcome(Kind::Ask, None));
        let missed = Report::from_figures(&figures, Some(&slo));
        assert_eq!(missed.lost, 1);
        assert_eq!(missed.slo_missed.len(), 2, "{:?}", missed.slo_missed);
        assert!(Slo::parse("p95=soon").is_err());
        assert!(Slo::parse("latency=1s").is_err());
        let impossible = Slo::parse("p95=0ms").unwrap();
        assert!(
            !Report::from_figures(&figures, Some(&impossible))
                .slo_missed
                .is_empty()
        );
    }

    #[test]
    fn hints_name_the_figure_that_raised_them() {
        let mut figures = Figures::default();
        assert!(hints(&figures).is_empty());
        figures.metrics = metric_values(
            "# HELP x\nactorbot_replies_held_total 12\nactorbot_ai_queue_wait_seconds_sum 30\nactorbot_ai_queue_wait_seconds_count 10\n",
        );
        let hints = hints(&figures);
        assert_eq!(hints.len(), 2, "{hints:?}");
        assert!(hints[0].contains("actorbot_replies_held_total"));
        assert!(hints[1].contains("AI_SEMAPHORE_LIMIT"));
    }
}
