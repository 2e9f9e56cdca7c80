//! The serving side: a ringwire node that counts what it receives and echoes messages back to
//! the peers that ask for it, used both embedded in `loadgen run` and as `loadgen serve`.
//!
//! A peer asks for echoes by its node id: ids starting with [`ECHO_PREFIX`] get every message
//! sent back unchanged (latency, fanin and pingpong workloads); others only have their messages
//! acknowledged (throughput). So one `serve` process handles every workload. The engine counts
//! what arrives; the handler adds nothing to the path of a message it does not echo but a
//! five-byte prefix check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringwire::{Engine, Error, Handler, MessageId, Peer};

/// Start of a client's node id that asks the node to echo its messages.
pub const ECHO_PREFIX: &str = "echo-";
/// The node id `serve` and the embedded node use unless told otherwise.
pub const SERVER_ID: &str = "loadgen-server";

/// What the node echoed (the engine's counters say what it received).
#[derive(Debug, Default)]
pub struct Sink {
    pub echoed: AtomicU64,
    /// Echoes refused because the peer's queue was full (the echo is then lost: a load
    /// generator that does not read its echoes is the only way to get here).
    pub echo_refused: AtomicU64,
}

impl Handler for Sink {
    fn on_message(&self, peer: &Peer, _: MessageId, payload: &[u8]) {
        if peer.node_id().as_str().starts_with(ECHO_PREFIX) {
            match publish_from_handler(peer, Bytes::copy_from_slice(payload)) {
                Ok(_) => self.echoed.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.echo_refused.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Publishes to `peer` from inside a [`Handler`] callback, on the shard thread that owns the
/// peer: the node's echoes, and the pingpong client's next message.
///
/// Today this is [`Peer::publish`], which goes through the peer's cross-thread queue even when
/// called on the owning shard. Every handler-side publish in loadgen goes through here so that
/// a shard-local publish path, once the engine has one, is a change to this one function.
///
/// # Errors
///
/// As [`Peer::publish`]: `Backpressure` when the peer's queue is full, `ShuttingDown`.
pub fn publish_from_handler(peer: &Peer, payload: Bytes) -> Result<MessageId, Error> {
    peer.publish(payload)
}

/// How the serving node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: String,
    pub listen: SocketAddr,
    pub shards: usize,
    pub busy_poll: bool,
    /// Directory for the node's durable state (its outbox and delivered watermarks).
    pub state: Option<PathBuf>,
    /// TLS and the security mode.
    pub security: crate::tls::Security,
}

/// Starts the node; its shards take cores 0 to `shards - 1`.
pub fn start(options: &NodeOptions, handler: impl Handler) -> Result<Engine, Error> {
    let busy = options.busy_poll;
    let state = options.state.clone();
    let security = options.security.clone();
    Engine::builder()
        .node_id(options.node_id.clone())
        .listen(options.listen)
        .shards(options.shards)
        .handler(handler)
        .configure(|c| {
            c.first_core = 0;
            c.idle_spin = idle_spin(busy);
            c.outbox_dir = state;
            security.apply(c);
        })
        .start()
}

/// The idle strategy: park at once, or spin long enough never to park between messages.
pub fn idle_spin(busy_poll: bool) -> Duration {
    if busy_poll { BUSY_SPIN } else { Duration::ZERO }
}

/// How long a busy-polling shard spins before it parks anyway.
const BUSY_SPIN: Duration = Duration::from_secs(1);
