//! The engine-wide peer registry: node id to the peer's shared state.

use std::sync::Mutex;
use std::time::Instant;

use crate::security::RateLimit;
use crate::security::rate::TokenBucket;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crossbeam_utils::CachePadded;

use crate::NodeId;
use crate::outbox::store::ShardOutbox;
use crate::proto::{Seq, SessionId};
use crate::route::mailbox::Mailbox;
use crate::route::owner;
use crate::route::peer::{Durable, PeerShared};
use crate::route::queue::PeerQueue;
use crate::sync::{AtomicBool, AtomicU64};

/// The engine-wide peer registry: node id to shared peer state. Locked only when a peer is
/// looked up by name or first seen, never on the publish path.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    peers: std::sync::RwLock<HashMap<NodeId, Arc<PeerShared>>>,
    key_next: AtomicU32,
}

impl Registry {
    pub(crate) fn get(&self, node_id: &str) -> Option<Arc<PeerShared>> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    /// Returns the peer's shared state, creating it if it is new: with the session its
    /// shard's outbox holds for it, if there is an outbox, otherwise with a fresh session.
    ///
    /// With `count_max`, a new peer is created only while the registry holds fewer peers;
    /// `None` means it was full.
    pub(crate) fn get_or_create(
        &self,
        node_id: &str,
        mailboxes: &[Arc<Mailbox>],
        queue_len: usize,
        outbound_limit: Option<RateLimit>,
        outboxes: &[Arc<ShardOutbox>],
        count_max: Option<usize>,
    ) -> Option<Arc<PeerShared>> {
        if let Some(peer) = self.get(node_id) {
            return Some(peer);
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(max) = count_max
            && peers.len() >= max
            && !peers.contains_key(node_id)
        {
            return None;
        }
        let node_id = NodeId::from(node_id);
        Some(Arc::clone(peers.entry(node_id.clone()).or_insert_with(
            || {
                let shard = owner(node_id.as_str(), mailboxes.len());
                let mut tx_session = SessionId(uuid::Uuid::new_v4());
                let mut seq_next = Seq(1);
                let durable = outboxes.get(shard.0).map(|outbox| {
                    let state = outbox.session(node_id.as_str());
                    tx_session = state.session;
                    seq_next = state.next;
                    Durable {
                        outbox: Arc::clone(outbox),
                        acked_at_start: state.acked,
                        claim: state.claim,
                    }
                });
                Arc::new(PeerShared {
                    key: self
                        .key_next
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    shard,
                    tx_session,
                    queue: PeerQueue::starting_at(queue_len, seq_next.0 - 1),
                    durable,
                    notified: AtomicBool::new(false),
                    mailbox: Arc::clone(&mailboxes[shard.0]),
                    published: CachePadded::default(),
                    payload_len_max: AtomicU64::new(u64::MAX),
                    outbound_limit: outbound_limit
                        .map(|limit| Mutex::new(TokenBucket::new(limit, Instant::now()))),
                    node_id,
                })
            },
        )))
    }

    pub(crate) fn all(&self) -> Vec<Arc<PeerShared>> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
