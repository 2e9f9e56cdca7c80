//! Routing: which shard owns a peer, and the lock-free paths from any thread into a shard.
//!
//! A peer belongs to exactly one shard, chosen by a stable hash of its node id. Publishing
//! pushes into that peer's [`PeerQueue`], a bounded multi-producer ring whose slot position *is*
//! the message's sequence number, so `publish` can return the message id without a lock and
//! the shard sees messages in sequence order. The first publish after the shard last drained
//! the peer puts the peer on the shard's ready list and, only if the shard is parked, writes
//! its eventfd: under load there is no syscall per message.
//!
//! Invariants: only the owning shard pops a peer's queue; a peer is on the ready list at most
//! once (guarded by `notified`); `Mailbox::wake` writes the eventfd at most once per park.

pub(crate) mod confirm;
pub(crate) mod handler;
#[cfg(all(test, loom))]
mod loom_tests;
pub(crate) mod mailbox;
pub(crate) mod peer;
pub(crate) mod queue;
pub(crate) mod registry;
pub(crate) mod router;
pub(crate) mod source;
pub(crate) mod stage;

pub(crate) use mailbox::{Command, Mailbox};
pub(crate) use peer::PeerShared;
pub(crate) use registry::Registry;

/// Index of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardId(pub usize);

/// The shard that owns `node_id` among `shard_count`: FNV-1a, stable across runs and builds.
pub(crate) fn owner(node_id: &str, shard_count: usize) -> ShardId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId((hash % shard_count as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        assert_eq!(owner("node-a", 4), owner("node-a", 4));
        for n in 0..100 {
            assert!(owner(&format!("n{n}"), 3).0 < 3);
        }
    }
}
