//! Acknowledgement coalescing (docs/protocol.md, "ACK").
//!
//! ACKs are cumulative, so one frame can stand for any number of messages. An ACK is due once
//! `count_max` messages wait for one, or once the oldest of them has waited `delay`. With the
//! default delay of zero the ACK goes out at the end of the loop turn that delivered the
//! messages, which coalesces a whole receive batch into one frame without adding latency.

use std::time::{Duration, Instant};

/// When to acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// Acknowledge at once when this many messages are unacknowledged.
    pub count_max: u32,
    /// Acknowledge at the latest this long after the oldest unacknowledged delivery.
    pub delay: Duration,
}

impl Default for AckPolicy {
    fn default() -> AckPolicy {
        AckPolicy {
            count_max: 1024,
            delay: Duration::ZERO,
        }
    }
}

/// Pending acknowledgement state of one connection.
#[derive(Debug, Clone)]
pub struct AckState {
    policy: AckPolicy,
    pending: u32,
    since: Option<Instant>,
}

impl AckState {
    /// Nothing pending.
    pub fn new(policy: AckPolicy) -> AckState {
        AckState {
            policy,
            pending: 0,
            since: None,
        }
    }

    /// `count` messages were delivered (or replays dropped, which the sender also needs to hear
    /// of).
    pub fn handle_received(&mut self, now: Instant, count: u64) {
        self.pending = self
            .pending
            .saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
        self.since.get_or_insert(now);
    }

    /// An ACK covering everything pending was written.
    pub fn handle_sent(&mut self) {
        self.pending = 0;
        self.since = None;
    }

    /// Whether an ACK should be written now.
    pub fn is_due(&self, now: Instant) -> bool {
        match self.since {
            None => false,
            Some(since) => {
                self.pending >= self.policy.count_max || now >= since + self.policy.delay
            }
        }
    }

    /// When an ACK becomes due if nothing else arrives.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.since.map(|since| since + self.policy.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_by_count_or_delay() {
        let t0 = Instant::now();
        let mut ack = AckState::new(AckPolicy {
            count_max: 3,
            delay: Duration::from_millis(5),
        });
        assert!(!ack.is_due(t0));
        ack.handle_received(t0, 1);
        ack.handle_received(t0, 1);
        assert!(!ack.is_due(t0));
        assert_eq!(ack.poll_timeout(), Some(t0 + Duration::from_millis(5)));
        assert!(ack.is_due(t0 + Duration::from_millis(5)));
        ack.handle_received(t0, 1);
        assert!(ack.is_due(t0), "count reached");
        ack.handle_sent();
        assert!(!ack.is_due(t0 + Duration::from_secs(1)));
        assert_eq!(ack.poll_timeout(), None);
    }
}
