//! The pingpong workload: one client engine, one connection, exactly one message in flight.
//!
//! The client publishes a message; the node's handler echoes it back, publishing from inside
//! the handler on the node's shard; the client's handler takes the echo, records the round
//! trip and publishes the next message, again from inside the handler, on the client's shard.
//! So after the first message (sent from the run's thread) the loop runs entirely on the two
//! shard threads, and `msgs_per_s` is round trips per second. This is the workload sockperf's
//! ping-pong and a raw-socket ping-pong run (the `std` baseline's `--mode pingpong`).
//!
//! Nothing in the loop allocates on the client: every message is the same static payload (the
//! baselines likewise reuse one frame buffer) and the send time is kept by the handler, not
//! stamped into the payload. The node echoes through its generic echo path ([`Sink`], which
//! copies the payload into a new `Bytes`). Both sides publish from their handlers through
//! [`node::publish_from_handler`], so the loop moves to a shard-local publish path, when the
//! engine has one, by a change to that function alone.
//!
//! With `--busy-poll` both engines spin when idle ([`node::idle_spin`]), so neither shard
//! parks between messages; without it both park, and each message wakes each side once.
//!
//! [`Sink`]: crate::node::Sink

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loadgen::workload::{self, Workload};
use loadgen::{Counts, LatencyLog};
use ringwire::{Engine, Error, Handler, MessageId, Peer, PeerConfig};

use crate::client::{self, DRAIN_TIMEOUT, Outcome, SETTLE, Target};
use crate::node::{self, ECHO_PREFIX};

/// Runs the pingpong workload against the node at `addr`, its client shard on `core`.
pub fn run(
    w: &Workload,
    addr: SocketAddr,
    target: &Target,
    core: usize,
) -> Result<Outcome, String> {
    let server_id = target.node_id.as_str();
    // Started for real when the first message goes out (`reset` below).
    let log = Arc::new(LatencyLog::new(Instant::now(), Duration::from_secs(1)));
    let rally = Arc::new(Rally::new(w.size, Arc::clone(&log)));
    let busy_poll = w.busy_poll;
    let node_id = format!("{ECHO_PREFIX}pingpong-{}", std::process::id());
    let security = client::security_for(target, &node_id)?;
    let client = Engine::builder()
        .node_id(node_id)
        .shards(1)
        .handler(Arc::clone(&rally))
        .configure(|c| {
            security.apply(c);
            c.first_core = core;
            c.idle_spin = node::idle_spin(busy_poll);
        })
        .start()
        .map_err(|e| format!("starting the client engine: {e}"))?;
    let peer = client
        .connect(PeerConfig::new(server_id, [addr]))
        .map_err(|e| format!("connecting to {server_id} at {addr}: {e}"))?;
    client::wait_connected(std::slice::from_ref(&client), server_id, addr)?;
    thread::sleep(SETTLE);

    let t0 = Instant::now();
    log.reset(t0 + w.warmup);
    // The first message is the only one published from outside a handler.
    let first = rally.start_send();
    if let Err(e) = peer.publish(first) {
        rally.fail(&e);
    }
    let window = workload::measure(
        w,
        t0,
        || rally.round_trips.load(Ordering::Relaxed),
        Some(&log),
        || rally.has_failed(),
    );
    rally.stop.store(true, Ordering::SeqCst);
    // The message in flight comes back, and the handler, seeing `stop`, sends no other.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while rally.in_flight.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    if let Some(failure) = rally.failure() {
        return Err(format!("the pingpong client stopped: {failure}"));
    }
    let round_trips = rally.round_trips.load(Ordering::Relaxed);
    let sent = round_trips + u64::from(rally.in_flight.load(Ordering::SeqCst));
    let stats = client::sum_counters(std::iter::once(client.stats()));
    let acked = stats
        .iter()
        .find(|(name, _)| *name == "msgs_acked")
        .map_or(0, |(_, v)| *v);
    // The last echo may still be unacknowledged by the node; that is not an error of the run.
    match client.shutdown_graceful(Duration::from_secs(2)) {
        Ok(()) | Err(Error::DrainTimeout { .. }) => {}
        Err(e) => return Err(format!("stopping the client engine: {e}")),
    }
    Ok(Outcome {
        window,
        counts: Counts {
            sent,
            acked,
            received: round_trips,
        },
        completed: "round_trips",
        latency_kind: "round_trip",
        latency: Some(log),
        client_stats: stats,
        backpressure: 0,
        round_trips: Some(round_trips),
    })
}

/// The client's handler, and the state of the one message in flight.
///
/// Only one thread acts on it at a time (the run's thread for the first message, then the
/// client shard), handing over through the engine, which orders the accesses: the atomics are
/// there for `&self` and for the run's thread reading counts, not for contention.
struct Rally {
    /// Every message's payload: one static buffer, so a send clones a pointer, no refcount.
    payload: Bytes,
    log: Arc<LatencyLog>,
    /// `sent_at_ns` counts from here.
    base: Instant,
    /// When the message in flight was handed to the engine.
    sent_at_ns: AtomicU64,
    round_trips: AtomicU64,
    /// A message is out and its echo not yet handled. Cleared only by a handler that has seen
    /// `stop` (or by a failure), so once the run's thread has set `stop` and then sees this
    /// false, no further message can be sent.
    in_flight: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Rally {
    fn new(size: usize, log: Arc<LatencyLog>) -> Rally {
        Rally {
            payload: Bytes::from_static(Box::leak(vec![0x5a; size].into_boxed_slice())),
            log,
            base: Instant::now(),
            sent_at_ns: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// Marks a message in flight, sent now, and returns the payload to publish.
    fn start_send(&self) -> Bytes {
        self.in_flight.store(true, Ordering::Relaxed);
        let now = Instant::now().saturating_duration_since(self.base);
        self.sent_at_ns
            .store(now.as_nanos() as u64, Ordering::Relaxed);
        self.payload.clone()
    }

    /// Records why the loop stopped (the first reason wins) and ends the run.
    fn fail(&self, error: &Error) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert_with(|| format!("publishing: {error}"));
        self.in_flight.store(false, Ordering::SeqCst);
        self.failed.store(true, Ordering::Relaxed);
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Handler for Rally {
    fn on_message(&self, peer: &Peer, _: MessageId, payload: &[u8]) {
        let now = Instant::now();
        debug_assert_eq!(payload.len(), self.payload.len(), "only echoes arrive");
        let sent_at = self.base + Duration::from_nanos(self.sent_at_ns.load(Ordering::Relaxed));
        self.log.record(now, now.saturating_duration_since(sent_at));
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        if self.stop.load(Ordering::SeqCst) {
            self.in_flight.store(false, Ordering::SeqCst);
            return;
        }
        if let Err(e) = node::publish_from_handler(peer, self.start_send()) {
            self.fail(&e);
        }
    }
}
