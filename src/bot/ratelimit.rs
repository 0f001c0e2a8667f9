//! Per-user rate limits: an hourly allowance and a short anti-flood window.
//!
//! Two token buckets per user (a few dozen bytes, kept in the user's actor):
//! the hourly one refills `RATE_LIMIT_PER_USER` tokens an hour, the
//! anti-flood one `ANTI_FLOOD_MESSAGES` per `ANTI_FLOOD_WINDOW`. A user over
//! either is told once when to come back; further messages in the same
//! refusal are dropped quietly, so a flood is not answered with a flood.

use std::time::{Duration, Instant};

use crate::bucket::Bucket;
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub per_hour: u32,
    pub flood_messages: u32,
    pub flood_window: Duration,
}

impl RateLimits {
    pub fn from_config(config: &Config) -> RateLimits {
        RateLimits {
            per_hour: config.rate_limit_per_user,
            flood_messages: config.anti_flood_messages,
            flood_window: Duration::from_secs_f64(config.anti_flood_window),
        }
    }
}

/// The verdict on one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; tell the user to come back after this long.
    Refused {
        retry_after: Duration,
        hourly: bool,
    },
    /// Refused again within a refusal the user was already told about.
    RefusedQuietly,
}

#[derive(Debug, Clone)]
pub struct UserLimiter {
    hourly: Bucket,
    flood: Bucket,
    told_until: Option<Instant>,
}

impl UserLimiter {
    pub fn new(limits: &RateLimits, now: Instant) -> UserLimiter {
        UserLimiter {
            hourly: Bucket::new(f64::from(limits.per_hour) / 3600.0, limits.per_hour, now),
            flood: Bucket::new(
                f64::from(limits.flood_messages) / limits.flood_window.as_secs_f64(),
                limits.flood_messages,
                now,
            ),
            told_until: None,
        }
    }

    /// What is left of the hourly allowance at `now`, for the saved state.
    pub fn hourly_left(&self, now: Instant) -> f64 {
        self.hourly.tokens_at(now)
    }

    /// Carries over the hourly allowance a saved state had `ago`: what was
    /// left then, refilled since. A user whose session was retired (or who
    /// moved to another instance of a cluster) does not get a fresh hour.
    pub fn resume_hourly(&mut self, left: f64, ago: Duration, rate: &RateLimits, now: Instant) {
        let refilled = left + ago.as_secs_f64() * f64::from(rate.per_hour) / 3600.0;
        self.hourly.set_tokens(refilled.max(0.0), now);
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let hourly_at = self.hourly.ready_at(now);
        let flood_at = self.flood.ready_at(now);
        let at = hourly_at.max(flood_at);
        if at <= now {
            self.hourly.take(now);
            self.flood.take(now);
            self.told_until = None;
            return Verdict::Allowed;
        }
        if self.told_until.is_some_and(|until| until > now) {
            return Verdict::RefusedQuietly;
        }
        self.told_until = Some(at);
        Verdict::Refused {
            retry_after: at - now,
            hourly: hourly_at > now,
        }
    }
}

/// The polite refusal.
pub fn refusal_text(retry_after: Duration, hourly: bool) -> String {
    let secs = retry_after.as_secs().max(1);
    let when = if secs >= 120 {
        format!("{} minutes", secs.div_ceil(60))
    } else {
        format!("{secs} seconds")
    };
    if hourly {
        format!("You have reached the hourly limit of messages. Please come back in {when}.")
    } else {
        format!("You are sending messages too fast. Please wait {when} and try again.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits {
            per_hour: 10,
            flood_messages: 3,
            flood_window: Duration::from_secs(3),
        }
    }

    #[test]
    fn flood_is_refused_once_then_quietly() {
        let t0 = Instant::now();
        let mut limiter = UserLimiter::new(&limits(), t0);
        for _ in 0..3 {
            assert_eq!(limiter.check(t0), Verdict::Allowed);
        }
        match limiter.check(t0) {
            Verdict::Refused {
                retry_after,
                hourly: false,
            } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(limiter.check(t0), Verdict::RefusedQuietly);
        assert_eq!(limiter.check(t0 + Duration::from_secs(1)), Verdict::Allowed);
    }

    #[test]
    fn hourly_limit_says_when_to_come_back() {
        let t0 = Instant::now();
        let mut limiter = UserLimiter::new(&limits(), t0);
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(2);
            assert_eq!(limiter.check(now), Verdict::Allowed);
        }
        now += Duration::from_secs(2);
        let Verdict::Refused {
            retry_after,
            hourly,
        } = limiter.check(now)
        else {
            panic!("expected a refusal");
        };
        assert!(hourly);
        assert!(retry_after > Duration::from_secs(300), "{retry_after:?}");
        assert!(refusal_text(retry_after, hourly).contains("minutes"));
    }
}
