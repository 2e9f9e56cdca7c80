//! Reconnect backoff: exponential growth with jitter (seed 000's defaults).

use std::time::Duration;

use crate::error::Error;

/// Exponential backoff with jitter:
/// `delay = min(initial * multiplier^attempt, max) * (1 ± jitter)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay (default 100 ms).
    pub initial: Duration,
    /// Cap (default 30 s).
    pub max: Duration,
    /// Growth per attempt (default 2.0).
    pub multiplier: f64,
    /// Relative jitter, 0.0 to 1.0 (default 0.1).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based); `unit_random` is uniform in [0, 1).
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit_random - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.jitter) || self.multiplier < 1.0 || self.initial > self.max {
            return Err(Error::InvalidConfig(
                "backoff needs 0 <= jitter <= 1, multiplier >= 1 and initial <= max".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_seed_table() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(800));
        assert_eq!(b.delay(20, 0.5), Duration::from_secs(30));
        assert!(b.delay(0, 0.0) >= Duration::from_millis(90));
        assert!(b.delay(0, 0.999) <= Duration::from_millis(110));
    }
}
