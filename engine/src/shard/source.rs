//! Sources: the application's [`Source`]s, polled once per loop turn, publishing straight into
//! the sessions of the peers this shard owns.

use std::time::Instant;

use bytes::Bytes;

use crate::error::Error;
use crate::proto::frame::Seq;
use crate::proto::id::MessageId;
use crate::route::ShardId;
use crate::route::peer::Peer;
use crate::route::source::{LocalPublish, Published, ShardCtx, Source, SourcePoll};
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

    /// Marks the sessions that sources (or staged handler publishes) went to and queues their
    /// connections for a send.
    pub(super) fn finish_local_publishes(&mut self) {
        let grain = window_grain(self.config.session_buffer_window);
        let touched = std::mem::take(&mut self.touched);
        for &index in &touched {
            self.report_undeliverable(index);
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

impl LocalCtx<'_> {
    /// Checks a publish of payloads up to `len` bytes to `peer`, and finds the peer's slot
    /// when the fast path applies: this shard owns the peer, it has no outbox record to write
    /// first and no recovered message to send first. `None` means "go through the queue, as
    /// from any thread".
    fn fast_path(&mut self, peer: &Peer, len: usize) -> Result<Option<PeerIndex>, Error> {
        let st = &mut *self.st;
        let shared = &peer.shared;
        // A rate-limited peer takes the queue's path, where `Peer::publish` charges its bucket.
        if shared.shard != st.id || shared.durable.is_some() || shared.outbound_limit.is_some() {
            return Ok(None);
        }
        if peer.router.closing.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        let len_max = st
            .config
            .payload_len_max()
            .min(shared.peer_payload_len_max());
        if len > len_max {
            return Err(Error::PayloadTooLarge { len, len_max });
        }
        let index = match self.last_peer {
            Some((key, index)) if key == shared.key => index,
            _ => {
                let index = st.ensure_peer(shared);
                self.last_peer = Some((shared.key, index));
                index
            }
        };
        // Recovered messages precede every new one; the drain keeps that order.
        Ok((st.peers[index].recovered.len() == 0).then_some(index))
    }

    /// A batch off the fast path: one message at a time, in order, until one is refused.
    fn publish_each(&mut self, peer: &Peer, payloads: &[&[u8]]) -> Result<Published, Error> {
        let mut published: Option<Published> = None;
        for payload in payloads {
            match self.publish(peer, payload) {
                Ok(id) => match &mut published {
                    Some(p) => p.count += 1,
                    None => {
                        published = Some(Published {
                            first: id,
                            count: 1,
                        })
                    }
                },
                Err(e) if published.is_none() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(published.unwrap_or(Published {
            first: peer.shared.next_id(),
            count: 0,
        }))
    }

    /// Encodes messages `first..` with `payloads` into the session of the peer in slot `index`,
    /// whose positions were claimed, and queues its connection for a send.
    fn push<'p>(&mut self, index: PeerIndex, first: u64, payloads: impl Iterator<Item = &'p [u8]>) {
        let st = &mut *self.st;
        let ps = &mut st.peers[index];
        ps.sessions.tx.push_many(Seq(first + 1), payloads);
        ps.local_producer = true;
        if !ps.touched {
            ps.touched = true;
            st.touched.push(index);
        }
    }
}

impl LocalPublish for LocalCtx<'_> {
    fn publish(&mut self, peer: &Peer, payload: &[u8]) -> Result<MessageId, Error> {
        let Some(index) = self.fast_path(peer, payload.len())? else {
            return peer.publish(Bytes::copy_from_slice(payload));
        };
        let ps = &self.st.peers[index];
        if !ps
            .sessions
            .tx
            .has_room(&flow_limits(&self.st.config, ps.established, true))
        {
            // The payload stays the caller's (it was borrowed): no copy, no allocation.
            return Err(Error::Backpressure(Bytes::new()));
        }
        // The next position is ours only if every message published from other threads was
        // taken into the session already; otherwise join them in the queue.
        let shared = &peer.shared;
        let Some(position) = shared.queue.claim_consumed(1) else {
            return peer.publish(Bytes::copy_from_slice(payload));
        };
        self.push(index, position, std::iter::once(payload));
        Ok(shared.message_id(position + 1))
    }

    fn publish_batch(&mut self, peer: &Peer, payloads: &[&[u8]]) -> Result<Published, Error> {
        let len = payloads.iter().map(|p| p.len()).max().unwrap_or(0);
        let shared = &peer.shared;
        let Some(index) = self.fast_path(peer, len)? else {
            return self.publish_each(peer, payloads);
        };
        if payloads.is_empty() {
            return Ok(Published {
                first: shared.next_id(),
                count: 0,
            });
        }
        let ps = &self.st.peers[index];
        let limits = flow_limits(&self.st.config, ps.established, true);
        let admitted = ps
            .sessions
            .tx
            .admits(&limits, payloads.iter().map(|p| p.len()))
            .min(usize::try_from(shared.queue.capacity()).unwrap_or(usize::MAX));
        if admitted == 0 {
            return Err(Error::Backpressure(Bytes::new()));
        }
        // As in `publish`: the positions are ours only if the queue is empty; one CAS for all.
        let Some(first) = shared.queue.claim_consumed(admitted as u64) else {
            return self.publish_each(peer, payloads);
        };
        self.push(index, first, payloads[..admitted].iter().copied());
        Ok(Published {
            first: shared.message_id(first + 1),
            count: admitted,
        })
    }

    fn now(&self) -> Instant {
        self.st.now
    }

    fn shard(&self) -> ShardId {
        self.st.id
    }
}
