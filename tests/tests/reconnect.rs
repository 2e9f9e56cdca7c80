//! A connection cut from outside in the middle of a stream, twenty times: both engines'
//! sockets are shut down under them while messages flow both ways, and after each redial
//! everything is still delivered exactly once and in order.
//!
//! The cut finds this process's TCP sockets on the listener's port in `/proc/self/net/tcp`
//! (and `tcp6`), maps their inodes to descriptors through `/proc/self/fd`, and calls
//! `shutdown(2)` on both ends: to each engine, its socket simply dies under it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringwire::PeerConfig;
use ringwire_tests::cut::{connection_ends, is_connected, shut_down};
use ringwire_tests::{PATIENCE, Recorder, builder, payload, publish_patiently, wait_until};

const COUNT: u64 = 200_000;
const CUTS: u64 = 20;
/// Publishing is released a chunk at a time, one chunk per cut and the rest after the last, so
/// that every cut falls inside a chunk that is still streaming.
const CHUNK: u64 = COUNT / (CUTS + 1);
/// Messages each direction must deliver from its newly released chunk before the cut.
const FLOW_BEFORE_CUT: u64 = CHUNK / 4;

#[test]
fn twenty_cuts_mid_stream_deliver_exactly_once() {
    let at_b = Arc::new(Recorder::default());
    let at_a = Arc::new(Recorder::default());
    let quick_redial = |c: &mut ringwire::Config| c.backoff.initial = Duration::from_millis(10);
    let b = builder("node-b", 2)
        .listen("127.0.0.1:0")
        .configure(quick_redial)
        .handler(Arc::clone(&at_b))
        .start()
        .unwrap();
    let a = builder("node-a", 2)
        .configure(quick_redial)
        .handler(Arc::clone(&at_a))
        .start()
        .unwrap();
    let port = b.local_addr().unwrap().port();
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    let to_a = b.peer("node-a");
    wait_until("the first connection", || {
        is_connected(&a, "node-b") && is_connected(&b, "node-a")
    });
    let connects_start = a.stats().connects;

    let chunks_released = AtomicU64::new(0);
    let publish_gated = |peer: &ringwire::Peer| {
        for n in 0..COUNT {
            while n >= allowed(chunks_released.load(Ordering::Relaxed)) {
                std::thread::sleep(Duration::from_millis(1));
            }
            publish_patiently(peer, payload(n, 64));
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| publish_gated(&to_b));
        s.spawn(|| publish_gated(&to_a));
        // Lets the publishers finish even if an assertion below fails.
        let open_gate = OpenGateOnDrop(&chunks_released);
        for cut in 1..=CUTS {
            let mut ends = Vec::new();
            wait_until("both ends of the connection in /proc", || {
                ends = connection_ends(port);
                ends.len() == 2
            });
            let before = (at_b.total(), at_a.total());
            chunks_released.store(cut, Ordering::Relaxed);
            // Cut as soon as some of the new chunk arrived, with the rest still on its way.
            poll_until("messages flowing both ways before the cut", || {
                at_b.total() >= before.0 + FLOW_BEFORE_CUT
                    && at_a.total() >= before.1 + FLOW_BEFORE_CUT
            });
            let connects_before = (a.stats().connects, b.stats().connects);
            let delivered = (at_b.total(), at_a.total());
            let started = Instant::now();
            let shut = shut_down(&ends);
            assert!(
                shut > 0,
                "cut {cut}: no socket of {ends:?} could be shut down"
            );
            wait_until("both engines reconnected", || {
                a.stats().connects > connects_before.0
                    && b.stats().connects > connects_before.1
                    && is_connected(&a, "node-b")
                    && is_connected(&b, "node-a")
            });
            eprintln!(
                "cut {cut:2}: shut down {shut} of {} sockets at {} / {} delivered (published up \
                 to {}); reconnected after {:?}",
                ends.len(),
                delivered.0,
                delivered.1,
                allowed(cut),
                started.elapsed()
            );
        }
        drop(open_gate);
    });

    wait_until("both directions delivered", || {
        at_b.total() >= COUNT && at_a.total() >= COUNT
    });
    let (stats_a, stats_b) = (a.stats(), b.stats());
    eprintln!(
        "node-a: {} connects, {} msgs sent, {} protocol errors; node-b: {} connects, {} msgs \
         sent, {} protocol errors",
        stats_a.connects,
        stats_a.msgs_sent,
        stats_a.protocol_errors,
        stats_b.connects,
        stats_b.msgs_sent,
        stats_b.protocol_errors
    );
    for (recorder, from) in [(&at_b, "node-a"), (&at_a, "node-b")] {
        recorder.tally(from).assert_complete(COUNT, from);
    }
    assert!(
        stats_a.connects >= connects_start + CUTS,
        "node-a connected {} times after the first, for {CUTS} cuts",
        stats_a.connects - connects_start
    );
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// How many messages may be published each way once `chunks` chunks were released.
fn allowed(chunks: u64) -> u64 {
    if chunks > CUTS { COUNT } else { chunks * CHUNK }
}

/// Polls `condition` at a short interval until it holds, so the caller acts close to the
/// moment it became true.
///
/// # Panics
///
/// If it does not hold within `PATIENCE`; the message names `what`.
fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Releases everything left to publish when dropped: after the last cut, or during a panic.
struct OpenGateOnDrop<'a>(&'a AtomicU64);

impl Drop for OpenGateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(CUTS + 1, Ordering::Relaxed);
    }
}
