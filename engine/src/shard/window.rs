//! The session buffer window: reporting, once each, messages unacknowledged for longer than
//! the window.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use crate::proto::id::MessageId;

use super::State;
use super::timer::Timer;

/// How coarsely the session buffer window is tracked: a message may be reported up to this
/// much after it crossed the window.
pub(super) fn window_grain(window: Duration) -> Duration {
    (window / 100).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl State {
    /// Arms the window check for the earliest moment a message taken now could cross it.
    pub(super) fn arm_window(&mut self, taken: Instant) {
        if self.window_timer.is_none() {
            let at = taken + self.config.session_buffer_window;
            self.window_timer = Some(at);
            self.timers.push(Reverse((at, Timer::Window)));
        }
    }

    /// Reports, once each, unacknowledged messages taken longer than the session buffer window
    /// ago. They are kept and still delivered: the window only tells the application.
    pub(super) fn check_window(&mut self) {
        let window = self.config.session_buffer_window;
        let now = self.now;
        let mut next: Option<Instant> = None;
        for (_, ps) in self.peers.iter_mut() {
            let tx = &mut ps.sessions.tx;
            if let Some((first, count)) = tx.poll_window_exceeded(now, window) {
                self.counters.msgs_window_exceeded += count;
                tracing::warn!(peer = %ps.shared.node_id, first = first.0, count, ?window, "messages unacknowledged for longer than the session buffer window");
                self.handler.on_window_exceeded(
                    &ps.handle,
                    MessageId {
                        session: tx.id(),
                        seq: first.0,
                    },
                    count,
                );
            }
            if let Some(at) = tx.window_deadline(window) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if let Some(at) = next {
            self.arm_window(at - window);
        }
    }
}
