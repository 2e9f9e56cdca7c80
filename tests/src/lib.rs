//! Shared helpers for the integration tests: engines sized for a test machine, a handler that
//! checks exactly-once, in-order delivery, a patient publisher, and skipping a test whose
//! prerequisite (root, a kernel feature, an installed package) this machine lacks.

pub mod certs;
pub mod cut;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringwire::{Engine, EngineBuilder, Error, Handler, MessageId, Peer};

/// How long any test waits for a condition before it fails. Generous: tests must pass on a
/// slow, noisy machine; it bounds a hang, it does not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A builder with small receive buffers, so that many engines fit in one test process, and a
/// handshake deadline of [`PATIENCE`]: on a loaded machine a hundred engines starting at once
/// can take longer than the default 5 s to exchange HELLOs, and a test that does not test the
/// deadline must not fail on it (tests that do set their own).
pub fn builder(node_id: &str, shards: usize) -> EngineBuilder {
    Engine::builder()
        .node_id(node_id)
        .shards(shards)
        .configure(|c| {
            c.recv_buf_count = 32;
            c.recv_buf_len = 64 * 1024;
            c.pin_shards = false;
            c.handshake_timeout = PATIENCE;
            c.connect_timeout = PATIENCE;
        })
}

/// The payload of message `n`: its number, then `len - 8` filler bytes (or a prefix of the
/// number when `len < 8`).
pub fn payload(n: u64, len: usize) -> Bytes {
    let mut v = vec![0xA5u8; len.max(8)];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v.truncate(len);
    Bytes::from(v)
}

/// What one peer delivered to a [`Recorder`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Messages delivered.
    pub count: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// The next message number expected (payloads of 8 bytes or more carry their number).
    pub next: u64,
    /// Deliveries whose number was not the expected one (duplicates, gaps or reordering).
    pub out_of_order: u64,
    /// The last sequence number seen, which must grow by exactly one each delivery.
    pub seq_last: u64,
    pub seq_errors: u64,
}

impl Tally {
    /// Asserts that `total` numbered messages (0 to `total - 1`) arrived from `from`, each
    /// exactly once, in order, with contiguous sequence numbers.
    ///
    /// # Panics
    ///
    /// If any of that does not hold.
    pub fn assert_complete(&self, total: u64, from: &str) {
        assert_eq!(self.count, total, "messages from {from}");
        assert_eq!(self.next, total, "next number expected from {from}");
        assert_eq!(self.out_of_order, 0, "out-of-order deliveries from {from}");
        assert_eq!(self.seq_errors, 0, "sequence gaps from {from}");
    }
}

/// A handler that checks every delivery: numbered payloads must arrive exactly once and in
/// order per peer, and sequence numbers must be contiguous.
#[derive(Debug, Default)]
pub struct Recorder {
    tallies: Mutex<HashMap<String, Tally>>,
    total: AtomicU64,
}

impl Recorder {
    /// The tally for `node_id`.
    pub fn tally(&self, node_id: &str) -> Tally {
        self.tallies
            .lock()
            .unwrap()
            .get(node_id)
            .cloned()
            .unwrap_or_default()
    }

    /// All tallies.
    pub fn tallies(&self) -> HashMap<String, Tally> {
        self.tallies.lock().unwrap().clone()
    }

    /// Messages delivered from every peer.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Handler for Recorder {
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]) {
        let mut tallies = self.tallies.lock().unwrap();
        let tally = tallies.entry(peer.node_id().to_string()).or_default();
        if payload.len() >= 8 {
            let n = u64::from_le_bytes(payload[..8].try_into().unwrap());
            if n != tally.next {
                tally.out_of_order += 1;
            }
            tally.next = n + 1;
        }
        if id.seq != tally.seq_last + 1 {
            tally.seq_errors += 1;
        }
        tally.seq_last = id.seq;
        tally.count += 1;
        tally.bytes += payload.len() as u64;
        self.total.fetch_add(1, Ordering::Relaxed);
    }
}

/// Publishes, retrying on backpressure (yielding, never sleeping long) until `PATIENCE` ends.
///
/// # Panics
///
/// On any error other than backpressure, or if the queue stays full for `PATIENCE`.
pub fn publish_patiently(peer: &Peer, mut payload: Bytes) -> MessageId {
    let start = Instant::now();
    loop {
        match peer.publish(payload) {
            Ok(id) => return id,
            Err(ringwire::Error::Backpressure(back)) => {
                assert!(
                    start.elapsed() < PATIENCE,
                    "peer {:?} stayed full",
                    peer.node_id()
                );
                payload = back;
                std::thread::yield_now();
            }
            Err(e) => panic!("publish to {:?} failed: {e}", peer.node_id()),
        }
    }
}

/// A dialer's HELLO frame as it goes on the wire, for tests that speak to a node through a raw
/// socket: `node_id`, no session yet, the default frame limit.
pub fn hello_frame(node_id: &str) -> Vec<u8> {
    use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
    use ringwire::proto::{Frame, Hello, Seq, SessionId};
    let mut out = Vec::new();
    Frame::Hello(Hello {
        caps: 0,
        body_len_max: BODY_LEN_MAX_DEFAULT,
        tx_session: SessionId::NIL,
        tx_seq_first: Seq(1),
        rx_session: SessionId::NIL,
        rx_delivered: Seq::ZERO,
        node_id,
    })
    .encode(&mut out);
    out
}

/// Runs a future (a `Confirm`, say) to completion on this thread, for at most [`PATIENCE`].
///
/// # Panics
///
/// If it does not resolve in time.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        assert!(Instant::now() < deadline, "a future never resolved");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// A scratch directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory whose name starts with `ringwire-<name>-` and is unique to this
    /// process and moment.
    ///
    /// # Panics
    ///
    /// If it cannot be created.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "ringwire-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `condition` every few milliseconds until it holds.
///
/// # Panics
///
/// If it does not hold within `PATIENCE`; the message names `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Says, as one line on stderr, that `test` is skipped and why: `SKIPPED <test>: <reason>`.
///
/// Rust tests have no skipped status: a test whose prerequisite is missing calls this and
/// returns, so it passes, and this line is the signal. It is written to the process's stderr
/// directly, not through `eprintln!`, which the test harness captures and shows only for a
/// failing test; so it appears in a plain `cargo test`.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process runs as root. When it does not, prints
/// `SKIPPED <test>: needs root to <action> (run as root, as CI does)` (see [`skip`]), and the
/// test should return.
pub fn require_root(test: &str, action: &str) -> bool {
    let root = is_root();
    if !root {
        skip(
            test,
            &format!("needs root to {action} (run as root, as CI does)"),
        );
    }
    root
}

/// A handler that keeps the handshake failures an engine is told of, as `Variant: message`,
/// and panics on any error a handshake failure is never reported as.
#[derive(Debug, Default)]
pub struct HandshakeFailures(Mutex<Vec<String>>);

impl Handler for HandshakeFailures {
    fn on_message(&self, _peer: &Peer, _id: MessageId, _payload: &[u8]) {}

    fn on_handshake_failed(&self, _peer: &Peer, error: &Error) {
        let variant = match error {
            Error::HandshakeFailed { .. } => "HandshakeFailed",
            Error::TlsRequired { .. } => "TlsRequired",
            Error::MtlsRequired { .. } => "MtlsRequired",
            other => panic!("a handshake failure reported as {other:?}"),
        };
        self.0.lock().unwrap().push(format!("{variant}: {error}"));
    }
}

impl HandshakeFailures {
    /// The first failure told, if any.
    pub fn first(&self) -> Option<String> {
        self.0.lock().unwrap().first().cloned()
    }

    /// Every failure told, in order.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The process's resident set size, for the tests that bound what a flood of strangers costs.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}
