//! The way back across the boundary: the application's [`Handler`], called on the shard thread
//! that owns a peer.

use std::sync::Arc;

use crate::error::Error;
use crate::proto::id::MessageId;
use crate::route::peer::Peer;

/// Receives messages. Runs on the shard thread that owns the peer: it must not block.
///
/// # Panics
///
/// A panic in a callback stops the shard it runs on (not the process): the engine reports it in
/// `Stats::shards_failed`, and publishing to that shard's peers fails with
/// [`Error::ShardFailed`](crate::Error::ShardFailed). Catch what must not stop the shard.
pub trait Handler: Send + Sync + 'static {
    /// A message from `peer`, delivered exactly once and in order per peer.
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]);

    /// A connection to `peer` completed its handshake.
    fn on_connected(&self, _peer: &Peer) {}

    /// The connection to `peer` closed; unacknowledged messages wait for the next one.
    fn on_disconnected(&self, _peer: &Peer) {}

    /// `peer` accepted message `id` but will never deliver it: its outbox record was damaged
    /// (the peer reports it as `outbox_lost`), or it is larger than this node accepts (the peer
    /// reports it through [`Handler::on_undeliverable`]). Counted in `msgs_lost_by_peer`.
    fn on_lost(&self, _peer: &Peer, _id: MessageId) {}

    /// Message `id`, accepted by `publish` before `peer` announced its limits, will never be
    /// delivered, for `reason` (today always [`Error::PayloadTooLarge`]: larger than the
    /// `body_len_max` the peer's HELLO announced). The peer is told it is lost, so it does not
    /// hold up the messages behind it; a `publish_confirmed` for it fails with the same error.
    /// Counted in `msgs_undeliverable`.
    fn on_undeliverable(&self, _peer: &Peer, _id: MessageId, _reason: &Error) {}

    /// `count` messages to `peer`, starting at `first`, have waited for its acknowledgement
    /// longer than [`Config::session_buffer_window`](crate::Config::session_buffer_window). They are kept and still delivered when the
    /// peer returns; this says the peer has been away that long. Reported once per message,
    /// also counted in `msgs_window_exceeded`.
    fn on_window_exceeded(&self, _peer: &Peer, _first: MessageId, _count: u64) {}

    /// A connection to `peer` (one this node dialed) failed before it could carry messages:
    /// `error` is [`Error::HandshakeFailed`] saying why, [`Error::TlsRequired`] if the peer
    /// accepts only TLS and this node is plaintext, or [`Error::MtlsRequired`] if the peer
    /// wants a client certificate this node did not present. Unacknowledged messages wait, and the
    /// engine dials again with backoff. A dialer refused by this node is not reported here (it
    /// has no peer state); it is logged and counted in `tls_failures`.
    fn on_handshake_failed(&self, _peer: &Peer, _error: &Error) {}
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

    fn on_undeliverable(&self, peer: &Peer, id: MessageId, reason: &Error) {
        (**self).on_undeliverable(peer, id, reason);
    }

    fn on_handshake_failed(&self, peer: &Peer, error: &Error) {
        (**self).on_handshake_failed(peer, error);
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
