//! Internal types for the criterion benches in `bench/`, behind the `internals` feature.
//!
//! Not supported API: hidden from the docs, outside semver, and free to change or vanish with
//! any commit. Applications must not enable `internals`.

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
