//! Sources: the application's [`Source`]s, polled once per loop turn, publishing straight into
//! the sessions of the peers this shard owns.

use std::time::Instant;

use bytes::Bytes;

use crate::error::Error;
use crate::proto::frame::Seq;
use crate::proto::id::MessageId;
use crate::route::ShardId;
use crate::route::peer::Peer;
use crate::route::source::{LocalPublish, ShardCtx, Source, SourcePoll};
use crate::sync::Ordering;

use super::State;
use super::peer::flow_limits;
use super::slots::PeerIndex;
use super::window::window_grain;

/// A registered source and when it wants to be polled.
pub(super) struct SourceSlot {
    source: Box<dyn Source>,
    poll: SourcePoll,
}

impl SourceSlot {
    pub(super) fn new(source: Box<dyn Source>) -> SourceSlot {
        SourceSlot {
            source,
            poll: SourcePoll::Ready,
        }
    }

    fn is_due(&self, now: Instant) -> bool {
        match self.poll {
            SourcePoll::Ready => true,
            SourcePoll::At(at) => now >= at,
            // Polled whenever the shard runs a turn: it woke for something.
            SourcePoll::Idle => true,
            SourcePoll::Done => false,
        }
    }
}

impl State {
    /// Polls every due source, then hands what they published to the connections.
    pub(super) fn poll_sources(&mut self) {
        if self.sources.is_empty() {
            return;
        }
        let mut sources = std::mem::take(&mut self.sources);
        let now = self.now;
        for slot in &mut sources {
            if slot.is_due(now) {
                let mut local = LocalCtx {
                    st: self,
                    last_peer: None,
                };
                slot.poll = slot.source.poll(&mut ShardCtx::new(&mut local));
            }
        }
        sources.retain(|slot| slot.poll != SourcePoll::Done);
        // Sources registered while these ran (none can be: commands run before) go after them.
        sources.append(&mut self.sources);
        self.sources = sources;
        self.finish_local_publishes();
    }

    /// Whether a source asked to be polled at the next turn.
    pub(super) fn has_ready_source(&self) -> bool {
        self.sources.iter().any(|s| s.poll == SourcePoll::Ready)
    }

    /// The earliest time a source asked to be polled at.
    pub(super) fn next_source_poll(&self) -> Option<Instant> {
        self.sources
            .iter()
            .filter_map(|s| match s.poll {
                SourcePoll::At(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Marks the sessions that sources published to and queues their connections for a send.
    fn finish_local_publishes(&mut self) {
        let grain = window_grain(self.config.session_buffer_window);
        let touched = std::mem::take(&mut self.touched);
        for &index in &touched {
            let ps = &mut self.peers[index];
            ps.touched = false;
            ps.sessions.tx.handle_pushed(self.now, grain);
            if let Some(conn) = ps.conn.filter(|_| ps.established) {
                self.mark_dirty(conn);
            }
        }
        if !touched.is_empty() {
            self.arm_window(self.now);
        }
        let mut touched = touched;
        touched.clear();
        self.touched = touched;
    }
}

/// The shard behind a source's [`ShardCtx`].
struct LocalCtx<'a> {
    st: &'a mut State,
    /// The peer published to last (its engine-wide key and slot): a source usually publishes
    /// many messages to one peer, and this skips the table lookup for all but the first.
    last_peer: Option<(u32, PeerIndex)>,
}

impl LocalPublish for LocalCtx<'_> {
    fn publish(&mut self, peer: &Peer, payload: &[u8]) -> Result<MessageId, Error> {
        let st = &mut *self.st;
        let shared = &peer.shared;
        // The fast path needs the peer's session (this shard) and no outbox record to write
        // first; anything else goes through the queue, as from any thread.
        if shared.shard != st.id || shared.durable.is_some() {
            return peer.publish(Bytes::copy_from_slice(payload));
        }
        if peer.router.closing.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        let len_max = st.config.payload_len_max();
        if payload.len() > len_max {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                len_max,
            });
        }
        let index = match self.last_peer {
            Some((key, index)) if key == shared.key => index,
            _ => {
                let index = st.ensure_peer(shared);
                self.last_peer = Some((shared.key, index));
                index
            }
        };
        let ps = &mut st.peers[index];
        if ps.recovered.len() > 0 {
            // Recovered messages precede every new one; the drain keeps that order.
            return peer.publish(Bytes::copy_from_slice(payload));
        }
        if !ps
            .sessions
            .tx
            .has_room(&flow_limits(&st.config, ps.established))
        {
            // The payload stays the caller's (it was borrowed): no copy, no allocation.
            return Err(Error::Backpressure(Bytes::new()));
        }
        // The next position is ours only if every message published from other threads was
        // taken into the session already; otherwise join them in the queue.
        let Some(position) = shared.queue.claim_consumed() else {
            return peer.publish(Bytes::copy_from_slice(payload));
        };
        let seq = Seq(position + 1);
        ps.sessions.tx.push(seq, payload, 0);
        if !ps.touched {
            ps.touched = true;
            st.touched.push(index);
        }
        Ok(MessageId {
            session: shared.tx_session,
            seq: seq.0,
        })
    }

    fn now(&self) -> Instant {
        self.st.now
    }

    fn shard(&self) -> ShardId {
        self.st.id
    }
}
