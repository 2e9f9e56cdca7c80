//! Flow control of one throughput connection in the acknowledged baselines (tokio,
//! tokio-uring), shaped like ringwire's: at most [`WINDOW`] messages unacknowledged, cumulative
//! ACKs from the server, and publish-to-ack latency sampled on every [`SAMPLE_EVERY`]-th
//! message.
//!
//! The sending task and the ACK-reading task of a connection share one [`Flow`]. Both run on
//! the same runtime thread; the atomics and the mutex are uncontended and keep the type `Sync`
//! so tokio's `spawn` takes it.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use loadgen::LatencyLog;
use tokio::sync::Notify;

use crate::run::invalid;

#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// Messages handed to the socket on this connection.
    sent: AtomicU64,
    /// The highest cumulative ACK received.
    acked: AtomicU64,
    /// Signalled on every ACK, for a sender waiting on a full window.
    acked_more: Notify,
    /// (message number, time sent) of the sampled messages not acknowledged yet, oldest first.
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

impl Flow {
    /// Waits until fewer than [`WINDOW`] messages are unacknowledged; returns how many more may
    /// be sent now.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub(crate) async fn room(&self) -> u64 {
        loop {
            let in_flight = self.sent.load(Ordering::Relaxed) - self.acked.load(Ordering::Relaxed);
            if in_flight < WINDOW {
                return WINDOW - in_flight;
            }
            // notify_one stores a permit when nobody waits, so an ACK between the check
            // above and this await still wakes it.
            self.acked_more.notified().await;
        }
    }

    /// Accounts for `count` messages about to be written, sampling the send time of those
    /// whose number is a multiple of [`SAMPLE_EVERY`].
    pub(crate) fn on_send(&self, count: u64) {
        let before = self.sent.fetch_add(count, Ordering::Relaxed);
        let after = before + count;
        let first = (before / SAMPLE_EVERY + 1) * SAMPLE_EVERY;
        if first <= after {
            let now = Instant::now();
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            samples.extend(
                (first..=after)
                    .step_by(SAMPLE_EVERY as usize)
                    .map(|n| (n, now)),
            );
        }
    }

    /// Takes a cumulative ACK for `total` messages: records the latency of the samples it
    /// covers into `log` and returns how many messages it newly acknowledges.
    ///
    /// # Errors
    ///
    /// `InvalidData` when the ACK goes backwards or covers messages never sent.
    pub(crate) fn on_ack(&self, total: u64, log: &LatencyLog) -> io::Result<u64> {
        let acked = self.acked.load(Ordering::Relaxed);
        if total < acked || total > self.sent.load(Ordering::Relaxed) {
            return Err(invalid("ack outside the messages in flight"));
        }
        self.acked.store(total, Ordering::Relaxed);
        self.acked_more.notify_one();
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(n, sent)) = samples.front()
            && n <= total
        {
            log.record(now, now.saturating_duration_since(sent));
            samples.pop_front();
        }
        Ok(total - acked)
    }
}

/// Unacknowledged messages allowed per connection: ringwire's default window.
pub(crate) const WINDOW: u64 = 65_536;
/// The server acknowledges at the latest after this many messages (ringwire's coalescing).
pub(crate) const ACK_EVERY: u64 = 1024;
/// One message in this many has its publish-to-ack latency recorded.
const SAMPLE_EVERY: u64 = 1024;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn window_and_samples_follow_acks() {
        let flow = Flow::default();
        let log = LatencyLog::new(
            Instant::now() - Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let room = futures_util::FutureExt::now_or_never(flow.room());
        assert_eq!(room, Some(WINDOW));
        flow.on_send(WINDOW);
        assert_eq!(futures_util::FutureExt::now_or_never(flow.room()), None);
        assert_eq!(
            flow.samples.lock().unwrap().len(),
            (WINDOW / SAMPLE_EVERY) as usize
        );
        assert_eq!(flow.on_ack(2047, &log).unwrap(), 2047);
        assert_eq!(flow.samples.lock().unwrap().front().unwrap().0, 2048);
        assert_eq!(
            futures_util::FutureExt::now_or_never(flow.room()),
            Some(2047)
        );
        assert_eq!(log.total(Instant::now() + Duration::from_secs(1)).len(), 1);
        assert!(flow.on_ack(2000, &log).is_err());
        assert!(flow.on_ack(WINDOW + 1, &log).is_err());
    }
}
