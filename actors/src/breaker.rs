//! A circuit breaker: after repeated failures of a dependency, callers are
//! answered at once instead of waiting on it, and one probe at a time tests
//! whether it is back.
//!
//! Closed: calls pass; `threshold` failures in a row open it. Open: calls
//! are refused until `cooldown` has passed. Half-open: one call (the probe)
//! passes; its success closes the breaker, its failure opens it again.
//!
//! Not an actor: it lives inside the actor that owns the dependency, which
//! asks it before each call and tells it each outcome.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The state, for probes and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe call is allowed through.
    HalfOpen,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Pass,
    /// The one call that tests a recovering dependency.
    Probe,
    /// Refused: try again after this long.
    Refused(Duration),
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    opened: u64,
}

impl CircuitBreaker {
    /// Opens after `threshold` failures in a row, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            probing: false,
            opened: 0,
        }
    }

    /// New thresholds, from the next failure on; an open breaker stays
    /// open for the cooldown it was opened with.
    pub fn retune(&mut self, threshold: u32, cooldown: Duration) {
        self.threshold = threshold.max(1);
        self.cooldown = cooldown;
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How many times it has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Asks whether a call may start now.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Pass,
            BreakerState::Open => {
                Admission::Refused(self.open_until.map_or(Duration::ZERO, |u| u - now))
            }
            BreakerState::HalfOpen if self.probing => Admission::Refused(self.cooldown),
            BreakerState::HalfOpen => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// Records a call's success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
    }

    /// Records a call's failure.
    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let was_probe = self.probing;
        self.probing = false;
        if was_probe || self.failures >= self.threshold {
            if self.open_until.is_none_or(|until| until <= now) {
                self.opened += 1;
            }
            self.open_until = Some(now + self.cooldown);
        }
    }

    /// Forgets a call that neither succeeded nor failed (it was cancelled):
    /// a probe slot it held is freed.
    pub fn abandoned(&mut self) {
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut breaker = CircuitBreaker::new(3, cooldown);
        for _ in 0..2 {
            assert_eq!(breaker.admit(t0), Admission::Pass);
            breaker.failed(t0);
        }
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        breaker.failed(t0);
        assert_eq!(breaker.state(t0), BreakerState::Open);
        assert_eq!(breaker.times_opened(), 1);
        assert_eq!(
            breaker.admit(t0 + Duration::from_secs(4)),
            Admission::Refused(Duration::from_secs(6))
        );

        let later = t0 + cooldown;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert!(
            matches!(breaker.admit(later), Admission::Refused(_)),
            "one probe at a time"
        );
        breaker.failed(later);
        assert_eq!(
            breaker.state(later),
            BreakerState::Open,
            "a failed probe reopens"
        );
        assert_eq!(breaker.times_opened(), 2);

        let again = later + cooldown;
        assert_eq!(breaker.admit(again), Admission::Probe);
        breaker.succeeded();
        assert_eq!(breaker.state(again), BreakerState::Closed);
        assert_eq!(breaker.admit(again), Admission::Pass);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(2, Duration::from_secs(1));
        breaker.failed(t0);
        breaker.succeeded();
        breaker.failed(t0);
        assert_eq!(breaker.state(t0), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(1, Duration::from_secs(1));
        breaker.failed(t0);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(breaker.admit(later), Admission::Probe);
        breaker.abandoned();
        assert_eq!(breaker.admit(later), Admission::Probe);
    }
}
