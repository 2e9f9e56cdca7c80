//! How the load side publishes: the publishing thread of the throughput workload, and the
//! thread that samples its publish-to-ack latency.

use std::future::Future as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loadgen::LatencyLog;
use ringwire::{Confirm, Error, Peer};

/// Publishes as fast as the engine takes messages; every [`SAMPLE_EVERY`]th one is published
/// with a confirmation, to sample publish-to-ack latency.
pub(crate) fn publish_flat_out(
    peer: &Peer,
    payload: &Bytes,
    stop: &AtomicBool,
    sent: &AtomicU64,
    refused: &AtomicU64,
    samples: &mpsc::SyncSender<(Instant, Confirm)>,
) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut accepted = 0;
        for _ in 0..BATCH {
            if n.is_multiple_of(SAMPLE_EVERY) {
                let t = Instant::now();
                let confirm = peer.publish_confirmed(payload.clone());
                if confirm.id().is_none() {
                    // Refused (queue full): the confirm already holds the error.
                    refused.fetch_add(1, Ordering::Relaxed);
                    thread::yield_now();
                    continue;
                }
                let _ = samples.try_send((t, confirm));
            } else {
                match peer.publish(payload.clone()) {
                    Ok(_) => {}
                    Err(Error::Backpressure(_)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        thread::yield_now();
                        continue;
                    }
                    Err(_) => return,
                }
            }
            n += 1;
            accepted += 1;
        }
        sent.fetch_add(accepted, Ordering::Relaxed);
    }
}

/// Waits for each sampled confirmation in turn (acks arrive in order) and records how long
/// it took from publish.
pub(crate) fn sample_acks(samples: mpsc::Receiver<(Instant, Confirm)>, log: &LatencyLog) {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    for (published, mut confirm) in samples {
        loop {
            match std::pin::Pin::new(&mut confirm).poll(&mut cx) {
                Poll::Ready(Ok(_)) => {
                    let now = Instant::now();
                    log.record(now, now - published);
                    break;
                }
                Poll::Ready(Err(_)) => break,
                Poll::Pending => thread::park_timeout(Duration::from_millis(100)),
            }
        }
    }
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Messages published between checks of the stop flag.
const BATCH: u64 = 1024;
/// One publish in this many is sampled for publish-to-ack latency.
const SAMPLE_EVERY: u64 = 1024;
