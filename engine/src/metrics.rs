//! Counters: each shard counts in plain integers and publishes them once per loop turn into
//! its own cache-padded atomics; `Engine::stats` sums the shards on read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters, owned by its thread.
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct Counters { $(pub $name: u64,)* }

        /// The published copy of a shard's counters.
        #[derive(Debug, Default)]
        pub(crate) struct SharedCounters { $($name: AtomicU64,)* }

        impl SharedCounters {
            pub(crate) fn publish(&self, c: &Counters) {
                $(self.$name.store(c.$name, Ordering::Relaxed);)*
            }

            pub(crate) fn add_to(&self, stats: &mut Stats) {
                $(stats.$name += self.$name.load(Ordering::Relaxed);)*
            }
        }

        /// A snapshot of the engine's counters, summed over its shards.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
            /// Shards that stopped on a failure (a panic in a handler or source, or the ring
            /// failing): their peers' publishes fail with `Error::ShardFailed`.
            pub shards_failed: u64,
            /// Per-peer state.
            pub peers: Vec<PeerStats>,
        }

        impl Stats {
            /// Every counter by name, in declaration order (for reports and exporters).
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)* ("shards_failed", self.shards_failed)]
            }
        }
    };
}

counters! {
    /// MSG frames written to sockets (replays included).
    msgs_sent,
    /// Bytes written to sockets, all frames.
    bytes_sent,
    /// Messages delivered to the handler (exactly once each).
    msgs_received,
    /// Payload bytes delivered to the handler.
    bytes_received,
    /// Messages the peers acknowledged.
    msgs_acked,
    /// Open TCP connections (a gauge).
    connections,
    /// Peers with an established connection (a gauge).
    peers_connected,
    /// Connections established since start.
    connects,
    /// Connections closed because a peer broke the protocol.
    protocol_errors,
    /// Dialers refused because the engine already knows `peers_max` peers.
    peers_refused,
    /// Accepted connections refused at once because the shard had `connections_max` open or
    /// `handshakes_max` still in their handshake.
    connections_refused,
    /// Messages that will never be delivered because they are larger than the peer accepts
    /// (reported through `Handler::on_undeliverable`).
    msgs_undeliverable,
    /// TLS connections closed on a TLS failure (a handshake that failed, a certificate that
    /// does not name the node id, a corrupt record).
    tls_failures,
    /// Times reading from a peer was paused because it went over `inbound_rate_limit`.
    rate_limit_pauses,
    /// Calls into the kernel to submit or wait (`io_uring_enter`).
    ring_enters,
    /// Event-loop turns.
    loop_turns,
    /// Accepted messages the outbox recovery found damaged or missing (never delivered; the
    /// peers were told).
    outbox_lost,
    /// Outbox syncs (fdatasync rounds) under the `Interval` and `Always` policies.
    outbox_syncs,
    /// Outbox syncs that failed; after the first, the outbox confirms nothing more.
    outbox_sync_failures,
    /// Messages peers reported lost from their outboxes (LOST frames received).
    msgs_lost_by_peer,
    /// Messages that stayed unacknowledged longer than the session buffer window (reported
    /// once each through `Handler::on_window_exceeded`; still kept and delivered).
    msgs_window_exceeded,
}

/// One peer's state, as last published by its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    pub node_id: String,
    pub connected: bool,
    /// Smoothed heartbeat round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Highest sequence number of this node's session the peer acknowledged.
    pub seq_acked: u64,
    /// Highest sequence number of the peer's session delivered to the handler.
    pub seq_delivered: u64,
    /// Messages accepted by `publish` and not yet taken by the shard.
    pub queued: u64,
}
