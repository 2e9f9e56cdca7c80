//! The shard's side of the durable outbox: restoring a peer's sessions from what recovery
//! found, the sync policy, and handing acknowledgements to the outbox once per turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::SyncPolicy;
use crate::outbox::recovered::RecoveredMessages;
use crate::outbox::store::ShardOutbox;
use crate::outbox::watermarks::Watermarks;
use crate::proto::frame::{Seq, SessionId};
use crate::proto::session::{RxSession, Sessions, TxSession};
use crate::route::PeerShared;

use super::State;

/// The shard's side of the outbox and its watermark table.
pub(super) struct DurableState {
    pub(super) outbox: Arc<ShardOutbox>,
    /// Unacknowledged messages found at start, by session-table slot, taken when the peer is
    /// first seen.
    pub(super) recovered: HashMap<usize, RecoveredMessages>,
    pub(super) received: Watermarks,
    /// Per peer slot whose acknowledged seq moved this turn: the seq and the record space
    /// released; handed to the outbox once per turn.
    pub(super) acked: Vec<(usize, Seq, u64)>,
    pub(super) last_sync: Instant,
    /// Watermarks stored since the last sync.
    pub(super) received_dirty: bool,
}

/// Gives a peer's new sessions what the durable state holds: the outbound session continues
/// after its acknowledged seq, and the inbound session resumes from the stored watermark.
/// Returns the messages recovered for the peer, which the session takes as the drain allows.
pub(super) fn restore_sessions(
    durable: &mut DurableState,
    shared: &PeerShared,
    sessions: &mut Sessions,
    rx_slot: &mut Option<(usize, SessionId)>,
) -> RecoveredMessages {
    let mut recovered = RecoveredMessages::default();
    if let Some(d) = &shared.durable {
        sessions.tx = TxSession::resuming(shared.tx_session, d.acked_at_start);
        // A peer without a slot has nothing recovered: a slot with unacknowledged records is
        // never taken back.
        if let Some(slot) = d.claim.get() {
            recovered = durable.recovered.remove(&slot).unwrap_or_default();
        }
    }
    match durable.received.find_or_claim(shared.node_id.as_str()) {
        Ok(slot) => {
            let entry = durable.received.get(slot);
            if entry.session != SessionId::NIL {
                sessions.rx = RxSession::restore(entry.session, entry.a);
            }
            *rx_slot = Some((slot, entry.session));
        }
        Err(e) => {
            tracing::error!(peer = %shared.node_id, error = %e, "no watermark slot: deduplication of this peer will not survive a restart");
        }
    }
    recovered
}

impl State {
    /// Applies the sync policy. Under `Always` this runs after the queues were drained and
    /// before anything is sent, so every record that goes out is on disk first.
    pub(super) fn sync_outbox(&mut self) {
        let Some(durable) = &mut self.durable else {
            return;
        };
        let due = match self.config.outbox_sync {
            SyncPolicy::None => false,
            SyncPolicy::Always => true,
            SyncPolicy::Interval(every) => self.now >= durable.last_sync + every,
        };
        if !due {
            return;
        }
        durable.last_sync = self.now;
        if durable.received_dirty {
            // Watermarks go to disk before this turn's ACKs go out, so a sender never trims a
            // message whose delivery a power loss could make this node forget.
            durable.received_dirty = false;
            if let Err(e) = durable.received.sync() {
                self.counters.outbox_sync_failures += 1;
                tracing::error!(error = %e, "syncing the delivered watermarks failed");
            }
        }
        if durable.outbox.has_failed() || !durable.outbox.is_dirty() {
            return;
        }
        self.counters.outbox_syncs += 1;
        if durable.outbox.sync().is_err() {
            self.counters.outbox_sync_failures += 1;
            // Nothing written since the last good sync may be confirmed: fail every pending
            // confirmation (the messages are still sent; only the promise is withdrawn).
            for (_, ps) in self.peers.iter_mut() {
                for (_, confirm) in ps.confirms.drain(..) {
                    confirm.fail_sync();
                }
            }
        }
    }

    /// Hands this turn's acknowledgements to the outbox, which trims and recycles.
    pub(super) fn release_acked(&mut self) {
        if let Some(durable) = &mut self.durable
            && !durable.acked.is_empty()
        {
            durable.outbox.release(&durable.acked);
            durable.acked.clear();
        }
    }
}
