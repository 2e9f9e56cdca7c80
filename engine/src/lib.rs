//! ringwire: a thread-per-core io_uring transport engine that services link into their own
//! process to exchange messages with named peers over TCP, exactly once and in order.
//!
//! ```text
//!             any thread                         shard k (one per core, pinned)
//!  publish(peer, bytes) ──► route: owner(peer) ──► peer queue ──► eventfd wake (if parked)
//!                                                     │
//!                                 ┌───────────────────▼──────────────────────┐
//!                                 │ event loop on its own io_uring            │
//!                                 │  multishot accept (SO_REUSEPORT listener) │
//!                                 │  multishot recv + provided buffer ring    │
//!                                 │  batched sends (one per conn per turn)    │
//!                                 │  timers: heartbeat, handshake, backoff    │
//!                                 │  slab of connections · sessions by peer   │
//!                                 └───────────────────┬──────────────────────┘
//!                                                     ▼
//!                                         Handler::on_message (shard thread)
//! ```
//!
//! * A peer is owned by one shard (a stable hash of its node id). `publish` from any thread
//!   pushes into the peer's bounded lock-free queue, whose slot position is the message's
//!   sequence number, and wakes the shard only if it is parked.
//! * Each direction of a peer pair is a *session* with a UUID; a message's id is
//!   (session, sequence number). Receivers keep a delivered watermark and drop replays, so
//!   delivery into the [`Handler`] is exactly once; senders keep every message until the peer
//!   acknowledges it and replay the rest after a reconnect.
//! * The protocol itself ([`proto`]) is a set of pure state machines: the shards only move
//!   bytes and timer ticks in and out of it. See `docs/architecture.md` and
//!   `docs/protocol.md`.
//!
//! * With [`Config::outbox_dir`], every accepted message is written to a memory-mapped segment
//!   file before `publish` returns and kept until acknowledged; sessions and delivered
//!   watermarks persist too, so delivery stays exactly once (one documented exception per
//!   receiver crash) across crashes of either process. [`SyncPolicy`] says what survives a
//!   machine crash. Without it, unacknowledged messages live in memory: they survive dropped
//!   links and peer restarts, not a crash of this process. See `docs/durability.md`.
//!
//! # Example
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use ringwire::{Engine, Handler, MessageId, Peer, PeerConfig};
//!
//! struct Forward(mpsc::SyncSender<Vec<u8>>);
//!
//! impl Handler for Forward {
//!     fn on_message(&self, _peer: &Peer, _id: MessageId, payload: &[u8]) {
//!         let _ = self.0.try_send(payload.to_vec());
//!     }
//! }
//!
//! # fn main() -> Result<(), ringwire::Error> {
//! let (tx, rx) = mpsc::sync_channel(16);
//! let b = Engine::builder().node_id("node-b").listen("127.0.0.1:0").shards(1).handler(Forward(tx)).start()?;
//! let a = Engine::builder().node_id("node-a").shards(1).start()?;
//!
//! let peer = a.connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))?;
//! a.publish(&peer, Bytes::from_static(b"hi"))?;
//! assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"hi");
//! a.shutdown_graceful(Duration::from_secs(5))?;
//! # Ok(()) }
//! ```

pub mod proto;

mod config;
mod error;
mod metrics;
mod outbox;
mod route;
mod shard;
mod sync;
mod sys;

use std::fmt;
use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_utils::CachePadded;

pub use crate::config::{Backoff, Config, PeerConfig, SyncPolicy};
pub use crate::error::Error;
use crate::metrics::SharedCounters;
pub use crate::metrics::{PeerStats, Stats};
pub use crate::outbox::store::RecoveryReport;
use crate::outbox::store::ShardOutbox;
pub use crate::proto::SessionId;
pub use crate::proto::ack::AckPolicy;
pub use crate::proto::heartbeat::HeartbeatConfig;
pub use crate::route::confirm::Confirm;
use crate::route::confirm::ConfirmSlot;
use crate::route::{Command, Mailbox, Outgoing, PeerShared, Registry};

/// A node's identity: 1 to 255 bytes of UTF-8, unique among the nodes that talk to each other.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> NodeId {
        NodeId(s.into())
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's identity: its sender's session and its sequence number in that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub session: SessionId,
    pub seq: u64,
}

/// Receives messages. Runs on the shard thread that owns the peer: it must not block.
pub trait Handler: Send + Sync + 'static {
    /// A message from `peer`, delivered exactly once and in order per peer.
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]);

    /// A connection to `peer` completed its handshake.
    fn on_connected(&self, _peer: &Peer) {}

    /// The connection to `peer` closed; unacknowledged messages wait for the next one.
    fn on_disconnected(&self, _peer: &Peer) {}

    /// `peer` accepted message `id` but lost it (its outbox record was damaged): it will never
    /// be delivered. Counted in `msgs_lost_by_peer`; the peer reports it as `outbox_lost`.
    fn on_lost(&self, _peer: &Peer, _id: MessageId) {}

    /// `count` messages to `peer`, starting at `first`, have waited for its acknowledgement
    /// longer than [`Config::session_buffer_window`]. They are kept and still delivered when the
    /// peer returns; this says the peer has been away that long. Reported once per message,
    /// also counted in `msgs_window_exceeded`.
    fn on_window_exceeded(&self, _peer: &Peer, _first: MessageId, _count: u64) {}
}

/// A shared handler: keep an `Arc` to read what it collected.
impl<H: Handler> Handler for Arc<H> {
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]) {
        (**self).on_message(peer, id, payload);
    }

    fn on_connected(&self, peer: &Peer) {
        (**self).on_connected(peer);
    }

    fn on_disconnected(&self, peer: &Peer) {
        (**self).on_disconnected(peer);
    }

    fn on_lost(&self, peer: &Peer, id: MessageId) {
        (**self).on_lost(peer, id);
    }

    fn on_window_exceeded(&self, peer: &Peer, first: MessageId, count: u64) {
        (**self).on_window_exceeded(peer, first, count);
    }
}

/// The handler of an engine that only sends: drops what it receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Handler for Discard {
    fn on_message(&self, _: &Peer, _: MessageId, _: &[u8]) {}
}

/// A handle to a remote node. Cheap to clone; usable from any thread, including handlers.
#[derive(Clone)]
pub struct Peer {
    shared: Arc<PeerShared>,
    engine: Arc<EngineShared>,
}

impl Peer {
    /// The peer's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.node_id
    }

    /// Queues `payload` for the peer. Never blocks and makes no syscall unless the shard is
    /// asleep.
    ///
    /// # Errors
    ///
    /// [`Error::Backpressure`] (with the payload) when the peer's queue is full,
    /// [`Error::PayloadTooLarge`], or [`Error::ShuttingDown`].
    pub fn publish(&self, payload: Bytes) -> Result<MessageId, Error> {
        self.push(payload, None)
    }

    /// Like [`Peer::publish`], returning a future that resolves when the peer acknowledges.
    pub fn publish_confirmed(&self, payload: Bytes) -> Confirm {
        let slot = Arc::new(ConfirmSlot::new());
        match self.push(payload, Some(Arc::clone(&slot))) {
            Ok(id) => Confirm::pending(id, slot),
            Err(err) => Confirm::failed(err),
        }
    }

    fn push(&self, payload: Bytes, confirm: Option<Arc<ConfirmSlot>>) -> Result<MessageId, Error> {
        if self
            .engine
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        let len_max = self.engine.config.payload_len_max();
        if payload.len() > len_max {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                len_max,
            });
        }
        let seq = match &self.shared.durable {
            Some(durable) => self.shared.push_durable(durable, payload, confirm)?,
            None => self
                .shared
                .push(Outgoing { payload, confirm })
                .map_err(|back| Error::Backpressure(back.payload))?,
        };
        Ok(MessageId {
            session: self.shared.tx_session,
            seq,
        })
    }

    /// This node's outbound session to the peer: with an outbox, the same across restarts.
    pub fn session(&self) -> SessionId {
        self.shared.tx_session
    }

    /// The sequence number the next accepted message will get. With an outbox it continues
    /// across restarts: a sender that numbers its messages can resume from it.
    pub fn seq_next(&self) -> u64 {
        self.shared.queue.pushed() + 1
    }

    /// The highest sequence number the peer has acknowledged (as last published by the shard).
    pub fn seq_acked(&self) -> u64 {
        self.shared
            .published
            .seq_acked
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// What every shard and handle of one engine share.
pub(crate) struct EngineShared {
    config: Arc<Config>,
    mailboxes: Vec<Arc<Mailbox>>,
    registry: Registry,
    counters: Vec<CachePadded<SharedCounters>>,
    closing: AtomicBool,
    /// One per shard when the engine has an outbox, else empty.
    outboxes: Vec<Arc<ShardOutbox>>,
    recovery: RecoveryReport,
}

impl EngineShared {
    fn peer(self: &Arc<Self>, node_id: &str) -> Peer {
        Peer {
            shared: self.peer_shared(node_id),
            engine: Arc::clone(self),
        }
    }

    fn peer_shared(&self, node_id: &str) -> Arc<route::PeerShared> {
        self.registry.get_or_create(
            node_id,
            &self.mailboxes,
            self.config.peer_queue_len,
            &self.outboxes,
        )
    }
}

/// A running node: its shards, listener and peers. Dropping it stops the shards at once;
/// [`Engine::shutdown_graceful`] drains first.
pub struct Engine {
    shared: Arc<EngineShared>,
    threads: Vec<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
    /// Held while the engine runs, so only one engine at a time uses an outbox directory.
    /// Released when the shards have stopped, even if `Peer` handles outlive the engine (they
    /// refuse to publish once it stops).
    outbox_lock: Option<std::fs::File>,
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            config: Config::new(""),
            handler: None,
            listen: None,
        }
    }

    /// Starts an engine from a full [`Config`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::Unsupported`] if the kernel lacks io_uring features,
    /// or [`Error::Io`] if the listener cannot bind.
    pub fn start(config: Config, handler: impl Handler) -> Result<Engine, Error> {
        Engine::start_shared(config, Arc::new(handler))
    }

    fn start_shared(config: Config, handler: Arc<dyn Handler>) -> Result<Engine, Error> {
        config.validate()?;
        let config = Arc::new(config);
        let mailboxes = (0..config.shards)
            .map(|_| Mailbox::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::io("creating shard eventfd", e))?;
        let (listeners, local_addr) = match config.listen {
            Some(addr) => {
                let (fds, bound) = sys::socket::bind_reuseport(addr, config.shards)
                    .map_err(|e| Error::io(format!("binding listener on {addr}"), e))?;
                (fds.into_iter().map(Some).collect(), Some(bound))
            }
            None => ((0..config.shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        let opened = match &config.outbox_dir {
            Some(dir) => Some(outbox::directory::open(dir, &config)?),
            None => None,
        };
        let (outbox_lock, mut stores, recovery) = match opened {
            Some(o) => (Some(o.lock), o.shards, o.report),
            None => (None, Vec::new(), RecoveryReport::default()),
        };
        let shared = Arc::new(EngineShared {
            counters: (0..config.shards)
                .map(|_| CachePadded::new(SharedCounters::default()))
                .collect(),
            config,
            mailboxes,
            registry: Registry::default(),
            closing: AtomicBool::new(false),
            outboxes: stores.iter().map(|s| Arc::clone(&s.outbox)).collect(),
            recovery,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        stores.reverse();
        for (index, listener) in listeners.into_iter().enumerate() {
            let init = shard::Init {
                id: route::ShardId(index),
                engine: Arc::clone(&shared),
                handler: Arc::clone(&handler),
                listener,
                ready: ready_tx.clone(),
                durable: stores.pop(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringwire-{}-{index}", shared.config.node_id))
                .spawn(move || shard::run(init))
                .map_err(|e| Error::io("spawning shard thread", e))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut engine = Engine {
            shared,
            threads,
            local_addr,
            outbox_lock,
        };
        for _ in 0..engine.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    engine.stop(None);
                    return Err(err);
                }
                Err(_) => {
                    engine.stop(None);
                    return Err(Error::Unsupported(
                        "a shard thread died while starting".into(),
                    ));
                }
            }
        }
        Ok(engine)
    }

    /// Declares a peer and keeps a connection to it: dials its endpoints in order, redials
    /// with backoff whenever the connection drops, and resumes its sessions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad node id or an endpoint that did not resolve, and
    /// [`Error::ShuttingDown`].
    pub fn connect(&self, config: PeerConfig) -> Result<Peer, Error> {
        if !config.unresolved.is_empty() || config.endpoints.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "peer {:?} has no resolvable endpoint (unresolved: {:?})",
                config.node_id, config.unresolved
            )));
        }
        if config.node_id.is_empty() || config.node_id.len() > proto::frame::NODE_ID_LEN_MAX {
            return Err(Error::InvalidConfig(
                "peer node_id must be 1 to 255 bytes".into(),
            ));
        }
        if config.node_id == self.shared.config.node_id {
            return Err(Error::InvalidConfig(
                "a node cannot connect to itself".into(),
            ));
        }
        if self
            .shared
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        let peer = self.shared.peer(&config.node_id);
        peer.shared.mailbox.send(Command::Connect {
            peer: Arc::clone(&peer.shared),
            config,
        });
        Ok(peer)
    }

    /// A handle to `node_id`, whether or not it is connected; messages published to a peer
    /// that has not connected yet wait for it.
    pub fn peer(&self, node_id: &str) -> Peer {
        self.shared.peer(node_id)
    }

    /// Queues `payload` for `peer`; see [`Peer::publish`].
    ///
    /// # Errors
    ///
    /// As [`Peer::publish`].
    pub fn publish(&self, peer: &Peer, payload: Bytes) -> Result<MessageId, Error> {
        peer.publish(payload)
    }

    /// Queues `payload` and returns a future that resolves once `peer` acknowledges it; see
    /// [`Confirm`] for cancel safety.
    pub fn publish_confirmed(&self, peer: &Peer, payload: Bytes) -> Confirm {
        peer.publish_confirmed(payload)
    }

    /// A snapshot of the counters, summed over the shards, and of every peer.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for counters in &self.shared.counters {
            counters.add_to(&mut stats);
        }
        use std::sync::atomic::Ordering::Relaxed;
        let mut peers: Vec<PeerStats> = self
            .shared
            .registry
            .all()
            .iter()
            .map(|p| PeerStats {
                node_id: p.node_id.to_string(),
                connected: p.published.connected.load(Relaxed),
                rtt: match p.published.srtt_ns.load(Relaxed) {
                    0 => None,
                    ns => Some(Duration::from_nanos(ns)),
                },
                seq_acked: p.published.seq_acked.load(Relaxed),
                seq_delivered: p.published.seq_delivered.load(Relaxed),
                queued: p.queue.len(),
            })
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        stats.peers = peers;
        stats
    }

    /// What the outbox recovery found at start (all zero without an outbox). Damaged records
    /// are counted in `lost`, also published as the `outbox_lost` counter.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// The address the listener is bound to (with the real port when `listen` used port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    /// Stops accepting messages, waits up to `timeout` for every peer to acknowledge what it
    /// was sent, then closes every connection with CLOSE and stops the shards.
    ///
    /// # Errors
    ///
    /// [`Error::DrainTimeout`] with the number of messages still unacknowledged; the engine is
    /// stopped either way.
    pub fn shutdown_graceful(mut self, timeout: Duration) -> Result<(), Error> {
        self.stop(Some(Instant::now() + timeout));
        let unacked: u64 = self
            .shared
            .registry
            .all()
            .iter()
            .map(|p| {
                p.queue.pushed().saturating_sub(
                    p.published
                        .seq_acked
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .sum();
        if unacked > 0 {
            Err(Error::DrainTimeout { unacked })
        } else {
            Ok(())
        }
    }

    fn stop(&mut self, drain_until: Option<Instant>) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for mailbox in &self.shared.mailboxes {
            mailbox.send(Command::Shutdown { drain_until });
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.outbox_lock = None;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(None);
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .field("shards", &self.shared.config.shards)
            .finish()
    }
}

/// Builds an [`Engine`]: the node id is required, everything else has a default (see
/// [`Config`]).
pub struct EngineBuilder {
    config: Config,
    handler: Option<Arc<dyn Handler>>,
    listen: Option<Result<SocketAddr, String>>,
}

impl EngineBuilder {
    /// This node's id (required).
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.config.node_id = node_id.into();
        self
    }

    /// Accept peers on `addr` (port 0 picks a free port; see [`Engine::local_addr`]).
    pub fn listen(mut self, addr: impl ToSocketAddrs) -> Self {
        self.listen = Some(match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) => Err("listen address resolved to nothing".to_owned()),
            Err(e) => Err(format!("listen address: {e}")),
        });
        self
    }

    /// Number of shards (default: available cores).
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.shards = shards;
        self
    }

    /// The message handler (default: [`Discard`]).
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Starts the engine.
    ///
    /// # Errors
    ///
    /// As [`Engine::start`], plus [`Error::InvalidConfig`] for a listen address that did not
    /// resolve.
    pub fn start(mut self) -> Result<Engine, Error> {
        match self.listen.take() {
            Some(Ok(addr)) => self.config.listen = Some(addr),
            Some(Err(msg)) => return Err(Error::InvalidConfig(msg)),
            None => {}
        }
        let handler = self.handler.take().unwrap_or_else(|| Arc::new(Discard));
        Engine::start_shared(self.config, handler)
    }
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("config", &self.config)
            .finish()
    }
}

/// Internal types for the criterion benches in `bench/`, behind the `internals` feature.
///
/// Not supported API: hidden from the docs, outside semver, and free to change or vanish with
/// any commit. Applications must not enable `internals`.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    use std::fmt;
    use std::sync::Arc;

    use bytes::Bytes;

    pub use crate::route::queue::{Outgoing, PeerQueue};

    /// A message without a confirmation, as [`Peer::publish`](crate::Peer::publish) queues it.
    pub fn outgoing(payload: Bytes) -> Outgoing {
        Outgoing {
            payload,
            confirm: None,
        }
    }

    /// A fresh [`PeerQueue`] with room for `len` messages (rounded up to a power of two): the
    /// shared producer side, for any number of threads, and its one consumer.
    pub fn peer_queue(len: usize) -> (Arc<PeerQueue>, QueueConsumer) {
        let queue = Arc::new(PeerQueue::new(len));
        (Arc::clone(&queue), QueueConsumer(queue))
    }

    /// The single consumer of a [`PeerQueue`], standing in for the shard that owns the peer.
    ///
    /// `pop` takes `&mut self` and the type is not `Clone`, so only one thread pops at a time:
    /// the invariant the queue's `unsafe` code relies on.
    pub struct QueueConsumer(Arc<PeerQueue>);

    impl QueueConsumer {
        /// Takes the next value and its position, as the shard does when it drains the peer.
        pub fn pop(&mut self) -> Option<(u64, Outgoing)> {
            self.0.pop()
        }
    }

    impl fmt::Debug for QueueConsumer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_tuple("QueueConsumer").field(&*self.0).finish()
        }
    }
}
