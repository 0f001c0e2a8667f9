//! Alert rules: thresholds on the sampled figures and on the dependencies,
//! and the bookkeeping that tells the admins once, not every sample.
//!
//! A rule that starts failing is announced at once unless it was announced
//! less than a quiet period ago (a flapping rule stays quiet); a rule that
//! was announced gets one "resolved" notice when it clears.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One rule's verdict on the latest sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub rule: String,
    pub value: f64,
    pub threshold: f64,
    pub breached: bool,
    /// What an admin reads, e.g. "p95 latency 812 ms over 500 ms".
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// An alert as the endpoints show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub rule: String,
    pub state: AlertState,
    /// Unix seconds it started.
    pub since: u64,
    pub resolved_at: Option<u64>,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

/// What the admins are to be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Firing(Alert),
    Resolved(Alert),
}

impl Notice {
    pub fn text(&self) -> String {
        match self {
            Notice::Firing(alert) => format!("⚠️ actorbot alert: {}", alert.message),
            Notice::Resolved(alert) => {
                format!(
                    "✅ actorbot: resolved: {} (was: {})",
                    alert.rule, alert.message
                )
            }
        }
    }
}

struct Active {
    alert: Alert,
    announced: bool,
}

/// The alerts' state across samples.
pub struct AlertBook {
    quiet_period: Duration,
    active: BTreeMap<String, Active>,
    last_announced: BTreeMap<String, Instant>,
    resolved: VecDeque<Alert>,
}

/// Resolved alerts kept for the endpoints and the dashboard.
const RESOLVED_KEPT: usize = 20;

impl AlertBook {
    /// How long an alert stays quiet after it was announced, from now on.
    pub fn set_quiet_period(&mut self, quiet_period: Duration) {
        self.quiet_period = quiet_period;
    }

    pub fn new(quiet_period: Duration) -> AlertBook {
        AlertBook {
            quiet_period,
            active: BTreeMap::new(),
            last_announced: BTreeMap::new(),
            resolved: VecDeque::new(),
        }
    }

    /// Applies a round of observations; answers what to tell the admins.
    pub fn evaluate(
        &mut self,
        observations: Vec<Observation>,
        unix_now: u64,
        now: Instant,
    ) -> Vec<Notice> {
        let mut notices = Vec::new();
        for obs in observations {
            let quiet = self
                .last_announced
                .get(&obs.rule)
                .is_some_and(|at| now.duration_since(*at) < self.quiet_period);
            match (obs.breached, self.active.get_mut(&obs.rule)) {
                (true, Some(active)) => {
                    active.alert.value = obs.value;
                    active.alert.message = obs.message;
                    if !active.announced && !quiet {
                        active.announced = true;
                        self.last_announced.insert(obs.rule.clone(), now);
                        notices.push(Notice::Firing(active.alert.clone()));
                    }
                }
                (true, None) => {
                    let alert = Alert {
                        rule: obs.rule.clone(),
                        state: AlertState::Firing,
                        since: unix_now,
                        resolved_at: None,
                        value: obs.value,
                        threshold: obs.threshold,
                        message: obs.message,
                    };
                    if !quiet {
                        self.last_announced.insert(obs.rule.clone(), now);
                        notices.push(Notice::Firing(alert.clone()));
                    }
                    self.active.insert(
                        obs.rule,
                        Active {
                            alert,
                            announced: !quiet,
                        },
                    );
                }
                (false, Some(_)) => {
                    let Some(active) = self.active.remove(&obs.rule) else {
                        continue;
                    };
                    let mut alert = active.alert;
                    alert.state = AlertState::Resolved;
                    alert.resolved_at = Some(unix_now);
                    if active.announced {
                        notices.push(Notice::Resolved(alert.clone()));
                    }
                    self.resolved.push_front(alert);
                    self.resolved.truncate(RESOLVED_KEPT);
                }
                (false, None) => {}
            }
        }
        notices
    }

    /// Firing alerts first, then the recently resolved ones, newest first.
    pub fn list(&self) -> Vec<Alert> {
        self.active
            .values()
            .map(|a| a.alert.clone())
            .chain(self.resolved.iter().cloned())
            .collect()
    }

    pub fn firing(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(rule: &str, breached: bool) -> Observation {
        Observation {
            rule: rule.into(),
            value: if breached { 900.0 } else { 10.0 },
            threshold: 500.0,
            breached,
            message: format!("{rule} at {}", if breached { 900 } else { 10 }),
        }
    }

    #[test]
    fn announces_once_and_resolves_once() {
        let mut book = AlertBook::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let n = book.evaluate(vec![obs("p95", true)], 1, t0);
        assert!(matches!(n.as_slice(), [Notice::Firing(a)] if a.rule == "p95"));
        for i in 1..5 {
            let n = book.evaluate(vec![obs("p95", true)], 1 + i, t0 + Duration::from_secs(i));
            assert!(n.is_empty(), "still firing: no new notice");
        }
        assert_eq!(book.firing(), 1);
        let n = book.evaluate(vec![obs("p95", false)], 10, t0 + Duration::from_secs(10));
        assert!(matches!(n.as_slice(), [Notice::Resolved(a)] if a.resolved_at == Some(10)));
        assert_eq!(book.firing(), 0);
        assert_eq!(book.list()[0].state, AlertState::Resolved);
        assert!(
            book.evaluate(vec![obs("p95", false)], 11, t0 + Duration::from_secs(11))
                .is_empty()
        );
    }

    #[test]
    fn a_flapping_rule_stays_quiet_within_the_quiet_period() {
        let mut book = AlertBook::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert_eq!(book.evaluate(vec![obs("q", true)], 0, t0).len(), 1);
        assert_eq!(
            book.evaluate(vec![obs("q", false)], 1, t0 + Duration::from_secs(1))
                .len(),
            1
        );
        // Fires again within the quiet period: not announced, so no
        // resolution either.
        let again = t0 + Duration::from_secs(2);
        assert!(book.evaluate(vec![obs("q", true)], 2, again).is_empty());
        assert!(
            book.evaluate(vec![obs("q", false)], 3, again + Duration::from_secs(1))
                .is_empty()
        );
        // Past the quiet period it is announced again, also while it keeps firing.
        let later = t0 + Duration::from_secs(600);
        assert!(
            book.evaluate(vec![obs("q", true)], 4, t0 + Duration::from_secs(599))
                .is_empty()
        );
        assert_eq!(book.evaluate(vec![obs("q", true)], 5, later).len(), 1);
    }

    #[test]
    fn rules_are_independent() {
        let mut book = AlertBook::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let n = book.evaluate(vec![obs("a", true), obs("b", true)], 0, t0);
        assert_eq!(n.len(), 2);
        let n = book.evaluate(vec![obs("a", false), obs("b", true)], 1, t0);
        assert!(matches!(n.as_slice(), [Notice::Resolved(a)] if a.rule == "a"));
    }
}
