//! The engine-wide routing state every `Peer` handle and shard reaches: the shards' mailboxes,
//! the peer registry, the closing flag and the per-shard outboxes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::outbox::store::ShardOutbox;
use crate::route::mailbox::Mailbox;
use crate::route::peer::{Peer, PeerShared};
use crate::route::registry::Registry;

/// What every shard and handle of one engine share.
pub(crate) struct Router {
    pub config: Arc<Config>,
    pub mailboxes: Vec<Arc<Mailbox>>,
    pub registry: Registry,
    pub closing: AtomicBool,
    /// One per shard when the engine has an outbox, else empty.
    pub outboxes: Vec<Arc<ShardOutbox>>,
}

impl Router {
    pub(crate) fn peer(self: &Arc<Self>, node_id: &str) -> Peer {
        Peer {
            shared: self.peer_shared(node_id),
            router: Arc::clone(self),
        }
    }

    pub(crate) fn peer_shared(&self, node_id: &str) -> Arc<PeerShared> {
        self.registry.get_or_create(
            node_id,
            &self.mailboxes,
            self.config.peer_queue_len,
            &self.outboxes,
        )
    }
}
