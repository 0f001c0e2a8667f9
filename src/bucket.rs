//! A token bucket: `rate` tokens a second, holding at most `burst`.
//!
//! Written here rather than taken from a rate-limiting crate because the
//! outbox must ask "when could this chat send?" without spending a token, and
//! then spend from two buckets (the chat's and the global one) together; the
//! per-user rate limit uses the same few bytes of state per user.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// When one token will be there (now, if it already is).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Spends one token; the caller has checked `ready_at`.
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// A new rate and burst from `now` on, keeping the tokens there are
    /// (at most the new burst): a change neither grants a burst nor takes
    /// one away.
    pub fn retune(&mut self, rate_per_sec: f64, burst: u32, now: Instant) {
        self.refill(now);
        self.rate = rate_per_sec;
        self.burst = f64::from(burst.max(1));
        self.tokens = self.tokens.min(self.burst);
    }

    /// Spends every token there is: from `now` on tokens come at the rate
    /// alone, with no burst until they have built up again.
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    /// The tokens there are at `now`.
    pub fn tokens_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Sets the tokens there are at `now` (at most the burst): a bucket
    /// carried over from a saved state.
    pub fn set_tokens(&mut self, tokens: f64, now: Instant) {
        self.updated = now;
        self.tokens = tokens.min(self.burst);
    }

    /// Whether the bucket is full again, so forgetting it loses nothing.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_drained_bucket_gives_tokens_at_the_rate_with_no_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, 5, t0);
        bucket.drain(t0);
        assert_eq!(bucket.ready_at(t0), t0 + Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(bucket.ready_at(t1), t1);
        bucket.take(t1);
        assert!(bucket.ready_at(t1) > t1, "no burst after a drain");
    }

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(2.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.ready_at(t0), t0);
            bucket.take(t0);
        }
        let next = bucket.ready_at(t0);
        assert_eq!(next - t0, Duration::from_millis(500));
        bucket.take(next);
        assert!(bucket.ready_at(next) > next);
        assert!(!bucket.is_full(next));
        assert!(bucket.is_full(next + Duration::from_secs(2)));
    }

    #[test]
    fn a_new_rate_keeps_the_tokens_within_the_new_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(1.0, 10, t0);
        for _ in 0..4 {
            bucket.take(t0);
        }
        bucket.retune(100.0, 3, t0);
        // Six tokens were left; the new burst holds three.
        for _ in 0..3 {
            assert_eq!(bucket.ready_at(t0), t0);
            bucket.take(t0);
        }
        assert_eq!(bucket.ready_at(t0), t0 + Duration::from_millis(10));
    }
}
