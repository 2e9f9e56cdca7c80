//! Per-peer rate limits: a token bucket of messages (seed 002's presets), sans-IO.
//!
//! Inbound, the shard takes a token per message it delivers from a peer, lets the bucket go
//! into debt (a receive buffer is processed whole: nothing is dropped), and stops reading from
//! the peer until the debt is paid back, so TCP pushes back on the sender. Outbound, `publish`
//! takes a token before queueing and hands the payload back when there is none.

use std::time::{Duration, Instant};

/// A token bucket's shape: `burst` messages at once, `per_second` on average (seed 002's
/// `bucket_size` and `refill_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens the bucket holds when full: the burst a peer may send at once.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: f64,
}

impl RateLimit {
    /// Seed 002's `Default`: bursts of 100, 50 messages per second.
    pub const DEFAULT: RateLimit = RateLimit::new(100, 50.0);
    /// Seed 002's `Aggressive`: bursts of 50, 25 per second.
    pub const AGGRESSIVE: RateLimit = RateLimit::new(50, 25.0);
    /// Seed 002's `Permissive`: bursts of 200, 100 per second.
    pub const PERMISSIVE: RateLimit = RateLimit::new(200, 100.0);

    /// A bucket of `burst` tokens refilled at `per_second`.
    pub const fn new(burst: u32, per_second: f64) -> RateLimit {
        RateLimit { burst, per_second }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.burst == 0 || !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(format!(
                "a rate limit needs a positive burst and a positive, finite rate (got {} and {})",
                self.burst, self.per_second
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `default`, `aggressive`, `permissive`, or `BURST/PER_SECOND` (e.g. `1000/500`).
    fn from_str(s: &str) -> Result<RateLimit, String> {
        let limit = match s.to_ascii_lowercase().as_str() {
            "default" => RateLimit::DEFAULT,
            "aggressive" => RateLimit::AGGRESSIVE,
            "permissive" => RateLimit::PERMISSIVE,
            custom => {
                let bad = || {
                    format!(
                        "{s:?}: expected default, aggressive, permissive or BURST/PER_SECOND \
                         (such as 1000/500)"
                    )
                };
                let (burst, rate) = custom.split_once('/').ok_or_else(bad)?;
                RateLimit::new(
                    burst.trim().parse().map_err(|_| bad())?,
                    rate.trim().parse().map_err(|_| bad())?,
                )
            }
        };
        limit.validate()?;
        Ok(limit)
    }
}

/// A token bucket: full at the start, refilled continuously, able to go into debt.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> TokenBucket {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
    }

    /// Takes `count` tokens whether or not there are that many (the bucket may go into debt).
    /// Returns how long until the bucket is out of debt, if it is in debt.
    pub(crate) fn charge(&mut self, count: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= count as f64;
        self.debt_wait()
    }

    /// Takes `count` tokens if there are that many. Otherwise takes none and returns how long
    /// until there will be.
    pub(crate) fn try_take(&mut self, count: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let count = count as f64;
        if self.tokens >= count {
            self.tokens -= count;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (count - self.tokens) / self.limit.per_second,
        ))
    }

    /// Gives back `count` tokens taken for something that did not happen after all.
    pub(crate) fn refund(&mut self, count: u64) {
        self.tokens = (self.tokens + count as f64).min(f64::from(self.limit.burst));
    }

    fn debt_wait(&self) -> Option<Duration> {
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.limit.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::DEFAULT, t0);
        for _ in 0..100 {
            bucket.try_take(1, t0).unwrap();
        }
        let wait = bucket.try_take(1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(20));
        // 50 per second: one more every 20 ms, never more than the burst.
        assert!(bucket.try_take(1, t0 + Duration::from_millis(20)).is_ok());
        assert!(bucket.try_take(1, t0 + Duration::from_millis(21)).is_err());
        bucket.refund(1);
        assert!(bucket.try_take(1, t0 + Duration::from_millis(21)).is_ok());
        let later = t0 + Duration::from_secs(3600);
        assert!(bucket.try_take(100, later).is_ok());
        assert!(bucket.try_take(1, later).is_err());
    }

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(100, 1000.0), t0);
        assert_eq!(bucket.charge(100, t0), None);
        // 600 messages in one receive: 500 ms of debt at 1000 per second.
        let wait = bucket.charge(500, t0).unwrap();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.charge(0, t0 + Duration::from_millis(499)).is_some());
        assert_eq!(bucket.charge(0, t0 + Duration::from_millis(500)), None);
    }

    #[test]
    fn presets_and_custom_values_parse() {
        assert_eq!("default".parse::<RateLimit>(), Ok(RateLimit::DEFAULT));
        assert_eq!("Aggressive".parse::<RateLimit>(), Ok(RateLimit::AGGRESSIVE));
        assert_eq!("permissive".parse::<RateLimit>(), Ok(RateLimit::PERMISSIVE));
        assert_eq!(
            "1000/500".parse::<RateLimit>(),
            Ok(RateLimit::new(1000, 500.0))
        );
        for bad in ["", "fast", "0/10", "10/0", "10/-1", "10/inf", "x/1"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}
