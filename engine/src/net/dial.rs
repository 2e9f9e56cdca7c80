//! Which endpoint a peer is dialed at next, and how long to wait before redialing.
//!
//! A [`DialPlan`] is sans-IO: the shard asks it for the next endpoint, tells it how the attempt
//! ended, and arms a timer for the delay it returns. Time and randomness come from the caller.

use std::net::SocketAddr;
use std::time::Duration;

use crate::net::backoff::Backoff;

/// A peer's endpoints and where its dialing stands.
///
/// Endpoints are tried round-robin in the order given, one attempt at a time. Each failure
/// grows the backoff; a completed handshake resets it.
#[derive(Debug, Clone)]
pub(crate) struct DialPlan {
    endpoints: Vec<SocketAddr>,
    /// Index (modulo the endpoint count) of the endpoint the next attempt uses.
    next: usize,
    /// Consecutive attempts since the last completed handshake.
    attempt: u32,
}

impl DialPlan {
    /// A plan over `endpoints`, which must not be empty (`Engine::connect` checks).
    pub(crate) fn new(endpoints: Vec<SocketAddr>) -> DialPlan {
        debug_assert!(!endpoints.is_empty(), "a dial plan needs an endpoint");
        DialPlan {
            endpoints,
            next: 0,
            attempt: 0,
        }
    }

    /// The endpoint to dial now; the following call returns the one after it.
    pub(crate) fn next_endpoint(&mut self) -> SocketAddr {
        let addr = self.endpoints[self.next % self.endpoints.len()];
        self.next = (self.next + 1) % self.endpoints.len();
        addr
    }

    /// The attempt ended without a handshake (or an established connection dropped): the delay
    /// before the next attempt. `retry_after` is a floor the peer asked for (a GOAWAY's
    /// `retry_after_ms`); `unit_random` is uniform in [0, 1), for the jitter.
    pub(crate) fn handle_failure(
        &mut self,
        backoff: &Backoff,
        retry_after: Duration,
        unit_random: f64,
    ) -> Duration {
        let delay = backoff.delay(self.attempt, unit_random).max(retry_after);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// A handshake completed: the next failure starts the backoff from its first step.
    pub(crate) fn handle_established(&mut self) {
        self.attempt = 0;
    }
}

/// Both nodes dialed each other at once ("crossing dials"): whether the local node keeps the
/// connection it dialed and refuses the inbound one. Both sides must reach opposite answers
/// without talking, so the connection dialed by the node with the smaller id wins.
pub(crate) fn crossing_keeps_ours(local: &str, remote: &str) -> bool {
    local < remote
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn endpoints_are_tried_round_robin() {
        let mut plan = DialPlan::new(vec![addr(1), addr(2), addr(3)]);
        let order: Vec<u16> = (0..7).map(|_| plan.next_endpoint().port()).collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn failures_grow_the_delay_and_a_handshake_resets_it() {
        let backoff = Backoff::default();
        let mut plan = DialPlan::new(vec![addr(1)]);
        let delays: Vec<Duration> = (0..4)
            .map(|_| plan.handle_failure(&backoff, Duration::ZERO, 0.5))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(Duration::from_millis).to_vec()
        );
        plan.handle_established();
        assert_eq!(
            plan.handle_failure(&backoff, Duration::ZERO, 0.5),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let backoff = Backoff::default();
        let mut plan = DialPlan::new(vec![addr(1)]);
        let delay = plan.handle_failure(&backoff, Duration::from_secs(7), 0.5);
        assert_eq!(delay, Duration::from_secs(7));
    }

    #[test]
    fn crossing_dials_agree_on_one_connection() {
        assert!(crossing_keeps_ours("a", "b"));
        assert!(!crossing_keeps_ours("b", "a"));
    }
}
