//! Heartbeats and round-trip time (docs/protocol.md, "PING and PONG").
//!
//! Each side sends a PING every `interval` carrying its own clock reading (nanoseconds since a
//! caller-chosen epoch); the peer echoes it in a PONG, which yields an RTT sample without the
//! clocks having to agree. Any received frame proves liveness; silence for `timeout` ends the
//! connection. The smoothed RTT follows RFC 6298.

use std::time::{Duration, Instant};

/// Heartbeat cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often to PING (default 30 s).
    pub interval: Duration,
    /// How long the peer may stay silent before the connection is declared dead (default 90 s).
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> HeartbeatConfig {
        HeartbeatConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(90),
        }
    }
}

/// Heartbeat state of one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    config: HeartbeatConfig,
    epoch: Instant,
    ping_next: Instant,
    rx_last: Instant,
    pong_due: Option<u64>,
    srtt: Option<Duration>,
}

impl Heartbeat {
    /// Starts the clocks at `now`; `epoch` anchors the timestamps this side puts in PINGs.
    pub fn new(config: HeartbeatConfig, epoch: Instant, now: Instant) -> Heartbeat {
        Heartbeat {
            config,
            epoch,
            ping_next: now + config.interval,
            rx_last: now,
            pong_due: None,
            srtt: None,
        }
    }

    /// Any frame arrived.
    pub fn handle_rx(&mut self, now: Instant) {
        self.rx_last = now;
    }

    /// The peer pinged; the echo goes out with the next transmit.
    pub fn handle_ping(&mut self, timestamp: u64) {
        self.pong_due = Some(timestamp);
    }

    /// The peer echoed one of our PINGs. Returns the RTT sample, or `None` for an echo of a
    /// time this side never sent (which is ignored, not trusted).
    pub fn handle_pong(&mut self, timestamp: u64, now: Instant) -> Option<Duration> {
        let sent = self.epoch.checked_add(Duration::from_nanos(timestamp))?;
        let rtt = now.checked_duration_since(sent)?;
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(srtt) => (srtt * 7 + rtt) / 8,
        });
        Some(rtt)
    }

    /// A PONG to write, if one is due.
    pub fn poll_pong(&mut self) -> Option<u64> {
        self.pong_due.take()
    }

    /// A PING timestamp to write, if the interval has passed.
    pub fn poll_ping(&mut self, now: Instant) -> Option<u64> {
        if now < self.ping_next {
            return None;
        }
        self.ping_next = now + self.config.interval;
        Some(now.saturating_duration_since(self.epoch).as_nanos() as u64)
    }

    /// Whether the peer has been silent past the timeout.
    pub fn is_dead(&self, now: Instant) -> bool {
        now >= self.rx_last + self.config.timeout
    }

    /// The next instant at which a PING is due or the peer would be declared dead.
    pub fn poll_timeout(&self) -> Instant {
        self.ping_next.min(self.rx_last + self.config.timeout)
    }

    /// The smoothed round-trip time, once a PONG has arrived.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_measures_rtt_and_silence_kills() {
        let t0 = Instant::now();
        let config = HeartbeatConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        };
        let mut hb = Heartbeat::new(config, t0, t0);
        assert_eq!(hb.poll_ping(t0), None);
        let t1 = t0 + Duration::from_secs(1);
        let ts = hb.poll_ping(t1).unwrap();
        assert_eq!(hb.poll_ping(t1), None, "one ping per interval");
        let rtt = hb.handle_pong(ts, t1 + Duration::from_millis(2)).unwrap();
        assert_eq!(rtt, Duration::from_millis(2));
        assert_eq!(hb.srtt(), Some(rtt));
        assert_eq!(
            hb.handle_pong(u64::MAX, t1),
            None,
            "echo from the future is ignored"
        );
        assert!(!hb.is_dead(t0 + Duration::from_millis(2999)));
        assert!(hb.is_dead(t0 + Duration::from_secs(3)));
        hb.handle_rx(t0 + Duration::from_secs(2));
        assert!(!hb.is_dead(t0 + Duration::from_secs(3)));
        hb.handle_ping(77);
        assert_eq!(hb.poll_pong(), Some(77));
        assert_eq!(hb.poll_pong(), None);
    }
}
