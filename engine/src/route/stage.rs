//! Publishes made on a shard thread while it runs the application's `Handler` callbacks for
//! received bytes: staged here instead of crossing the peer's queue, and encoded into the
//! peer's session as soon as the callbacks return.
//!
//! A `Handler` gets the same `Peer` handles as any thread, so `Peer::publish` called from a
//! callback looks here first: if this thread is the shard that owns the peer, has a stage
//! open, and the peer has no outbox, the message takes the next position of the peer's
//! queue as consumed (`PeerQueue::claim_consumed`, legal because this thread is the queue's
//! consumer) and waits in the stage. The shard closes the stage right after the callbacks and
//! pushes what it holds, in order, before it drains any queue, so positions and session
//! sequence numbers stay the same sequence. No queue slot, no wake-up, no extra loop turn.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;

use crate::route::ShardId;
use crate::route::peer::PeerShared;
use crate::sync::Ordering;

/// A staged message: its peer, its sequence number and its payload.
pub(crate) struct Staged {
    pub shared: Arc<PeerShared>,
    pub seq: u64,
    pub payload: Bytes,
}

struct Stage {
    shard: ShardId,
    staged: Vec<Staged>,
}

/// Messages a stage takes before further publishes go through the queue (which pushes back
/// when full): a handler that publishes on every message cannot grow it without bound.
const STAGED_MAX: usize = 4096;

thread_local! {
    static STAGE: RefCell<Option<Stage>> = const { RefCell::new(None) };
}

/// Opens the stage of `shard` on this thread, reusing `staged`'s allocation.
pub(crate) fn open(shard: ShardId, staged: Vec<Staged>) {
    debug_assert!(staged.is_empty());
    STAGE.with(|s| *s.borrow_mut() = Some(Stage { shard, staged }));
}

/// Closes this thread's stage and returns what it holds, in publish order.
pub(crate) fn close() -> Vec<Staged> {
    STAGE.with(|s| s.borrow_mut().take().map(|s| s.staged).unwrap_or_default())
}

/// Stages `payload` for `shared` if this thread holds the stage of the peer's shard, the peer
/// has no outbox, and it holds fewer than `unacked_max` unacknowledged messages (its flow
/// limit; beyond it the queue takes over and pushes back when full); returns its sequence
/// number, or hands the payload back to go through the queue.
pub(crate) fn try_stage(
    shared: &Arc<PeerShared>,
    payload: Bytes,
    unacked_max: usize,
) -> Result<u64, Bytes> {
    if shared.durable.is_some() {
        return Err(payload);
    }
    STAGE.with(|s| {
        let Ok(mut guard) = s.try_borrow_mut() else {
            return Err(payload);
        };
        let Some(stage) = guard.as_mut() else {
            return Err(payload);
        };
        if stage.shard != shared.shard || stage.staged.len() >= STAGED_MAX {
            return Err(payload);
        }
        let acked = shared.published.seq_acked.load(Ordering::Relaxed);
        let unacked = shared.queue.pushed().saturating_sub(acked);
        if unacked >= u64::try_from(unacked_max).unwrap_or(u64::MAX) {
            return Err(payload);
        }
        // The position is ours only if every message published from other threads was taken
        // into the session already (as for a source's publish).
        let Some(position) = shared.queue.claim_consumed(1) else {
            return Err(payload);
        };
        let seq = position + 1;
        stage.staged.push(Staged {
            shared: Arc::clone(shared),
            seq,
            payload,
        });
        Ok(seq)
    })
}
