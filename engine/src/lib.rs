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

mod api;
mod config;
mod error;
mod metrics;
mod net;
mod outbox;
pub mod proto;
mod route;
mod security;
mod shard;
mod sync;
mod sys;

pub use crate::api::{Engine, EngineBuilder};
pub use crate::config::{CompressionConfig, Config, PeerConfig, SyncPolicy};
pub use crate::error::Error;
pub use crate::metrics::{PeerStats, Stats};
pub use crate::net::backoff::Backoff;
pub use crate::outbox::store::RecoveryReport;
pub use crate::proto::SessionId;
pub use crate::proto::ack::AckPolicy;
pub use crate::proto::heartbeat::HeartbeatConfig;
pub use crate::proto::id::{MessageId, NodeId};
pub use crate::route::ShardId;
pub use crate::route::confirm::Confirm;
pub use crate::route::handler::{Discard, Handler};
pub use crate::route::peer::Peer;
pub use crate::route::source::{Published, ShardCtx, Source, SourcePoll};
pub use crate::security::{AuthToken, NodeIdVerification, RateLimit, SecurityMode, TlsConfig};

/// Internal types for the criterion benches in `bench/`, behind the `internals` feature; not
/// supported API (see the module's own docs).
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use crate::api::internals;
