//! The engine-wide routing state every `Peer` handle and shard reaches: the shards' mailboxes,
//! the peer registry, the closing flag and the per-shard outboxes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::error::Error;
use crate::outbox::store::ShardOutbox;
use crate::route::ShardId;
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
    /// Why each shard stopped early, if it did (see `Error::ShardFailed`).
    pub failures: Vec<ShardFailure>,
}

/// Whether a shard stopped on a failure, checked by every publish to its peers.
#[derive(Debug, Default)]
pub(crate) struct ShardFailure {
    failed: AtomicBool,
    reason: Mutex<String>,
}

impl ShardFailure {
    /// Records that the shard stopped, and why.
    pub(crate) fn set(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        self.failed.store(true, Ordering::Release);
    }

    /// The error a publish to the shard's peers gets, if it failed.
    pub(crate) fn check(&self, shard: ShardId) -> Result<(), Error> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(Error::ShardFailed {
            shard: shard.0,
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        })
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

impl Router {
    pub(crate) fn peer(self: &Arc<Self>, node_id: &str) -> Peer {
        Peer {
            shared: self.peer_shared(node_id),
            router: Arc::clone(self),
        }
    }

    /// A handle to `node_id` if the engine already knows it, without creating it.
    pub(crate) fn known_peer(self: &Arc<Self>, node_id: &str) -> Option<Peer> {
        self.registry.get(node_id).map(|shared| Peer {
            shared,
            router: Arc::clone(self),
        })
    }

    /// The peer's shared state, created if new: for the application, which may declare as many
    /// peers as it likes.
    pub(crate) fn peer_shared(&self, node_id: &str) -> Arc<PeerShared> {
        self.registry
            .get_or_create(
                node_id,
                &self.mailboxes,
                self.config.peer_queue_len,
                self.config.outbound_rate_limit,
                &self.outboxes,
                None,
            )
            .expect("no limit, so always created")
    }

    /// The peer's shared state for a node that dialed in: created only while the engine knows
    /// fewer than `peers_max` peers, so strangers cannot grow the table without bound.
    pub(crate) fn peer_shared_inbound(&self, node_id: &str) -> Option<Arc<PeerShared>> {
        self.registry.get_or_create(
            node_id,
            &self.mailboxes,
            self.config.peer_queue_len,
            self.config.outbound_rate_limit,
            &self.outboxes,
            Some(self.config.peers_max),
        )
    }
}
