//! Protocol events into the handler, the counters and the outbox.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::metrics::Counters;
use crate::outbox::watermarks::Entry;
use crate::proto::connection::Events;
use crate::proto::frame::{Seq, SessionId};
use crate::proto::id::MessageId;
use crate::proto::session::Acked;
use crate::route::confirm::ConfirmSlot;
use crate::route::handler::Handler;
use crate::route::peer::Peer;

use super::durable::DurableState;

/// Feeds protocol events to the handler, the counters and the outbox.
pub(super) struct ShardEvents<'a> {
    handler: &'a dyn Handler,
    peer: &'a Peer,
    counters: &'a mut Counters,
    durable: Option<&'a mut DurableState>,
    rx_slot: &'a mut Option<(usize, SessionId)>,
    confirms: &'a mut VecDeque<(Seq, Arc<ConfirmSlot>)>,
    /// The highest seq acknowledged during this call, if any, and the outbox record space of
    /// the messages it acknowledged.
    acked: Option<Seq>,
    acked_bytes: u64,
}

impl<'a> ShardEvents<'a> {
    pub(super) fn new(
        handler: &'a dyn Handler,
        peer: &'a Peer,
        rx_slot: &'a mut Option<(usize, SessionId)>,
        confirms: &'a mut VecDeque<(Seq, Arc<ConfirmSlot>)>,
        counters: &'a mut Counters,
        durable: Option<&'a mut DurableState>,
    ) -> ShardEvents<'a> {
        ShardEvents {
            handler,
            peer,
            counters,
            durable,
            rx_slot,
            confirms,
            acked: None,
            acked_bytes: 0,
        }
    }

    /// Hands what these events acknowledged (the peer's new acknowledged seq and the record
    /// space freed) to the outbox's once-per-turn release.
    /// Messages delivered on this shard so far (the `msgs_received` counter).
    pub(super) fn received(&self) -> u64 {
        self.counters.msgs_received
    }

    pub(super) fn finish(self) {
        if let (Some(seq), Some(durable), Some(d)) =
            (self.acked, self.durable, &self.peer.shared.durable)
            && let Some(slot) = d.claim.get()
        {
            durable.acked.push((slot, seq, self.acked_bytes));
        }
    }

    /// Stores the delivered watermark, after the handler ran: a crash between the two
    /// redelivers that one message after the restart, and nothing else.
    fn store_delivered(&mut self, session: SessionId, seq: Seq) {
        let (Some(durable), Some((slot, stored))) =
            (self.durable.as_deref_mut(), self.rx_slot.as_mut())
        else {
            return;
        };
        durable.received_dirty = true;
        if *stored == session {
            durable.received.set_a(*slot, seq);
        } else {
            durable.received.set(
                *slot,
                Entry {
                    session,
                    a: seq,
                    b: Seq::ZERO,
                },
            );
            *stored = session;
        }
    }
}

impl Events for ShardEvents<'_> {
    fn on_message(&mut self, session: SessionId, seq: Seq, payload: &[u8]) {
        self.counters.msgs_received += 1;
        self.counters.bytes_received += payload.len() as u64;
        self.handler.on_message(
            self.peer,
            MessageId {
                session,
                seq: seq.0,
            },
            payload,
        );
        self.store_delivered(session, seq);
    }

    fn on_lost(&mut self, session: SessionId, seq: Seq) {
        self.counters.msgs_lost_by_peer += 1;
        tracing::error!(peer = %self.peer.node_id(), %session, seq = seq.0, "peer lost an accepted message");
        self.handler.on_lost(
            self.peer,
            MessageId {
                session,
                seq: seq.0,
            },
        );
        self.store_delivered(session, seq);
    }

    fn on_acked(&mut self, acked: Acked) {
        self.counters.msgs_acked += acked.count;
        self.acked = Some(acked.through);
        self.acked_bytes += acked.weight;
        while let Some((seq, _)) = self.confirms.front()
            && *seq <= acked.through
        {
            let (_, confirm) = self.confirms.pop_front().expect("front exists");
            confirm.complete();
        }
    }
}
