//! A peer: the [`Peer`] handle applications publish through, and the state it shares with the
//! shard that owns the peer.

use std::time::Instant;

use crate::security::rate::TokenBucket;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_utils::CachePadded;

use crate::error::Error;
use crate::outbox::store::{AppendError, ShardOutbox, SlotClaim};
use crate::proto::id::{MessageId, NodeId};
use crate::proto::{Seq, SessionId};
use crate::route::ShardId;
use crate::route::confirm::{Confirm, ConfirmSlot};
use crate::route::mailbox::Mailbox;
use crate::route::queue::{Outgoing, PeerQueue};
use crate::route::router::Router;
use crate::route::stage;
use crate::sync::{AtomicBool, AtomicU64, Ordering, fence};

/// A handle to a remote node. Cheap to clone; usable from any thread, including handlers.
#[derive(Clone)]
pub struct Peer {
    pub(crate) shared: Arc<PeerShared>,
    pub(crate) router: Arc<Router>,
}

impl Peer {
    /// The peer's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.node_id
    }

    /// Queues `payload` for the peer. Never blocks and makes no syscall unless the shard is
    /// asleep.
    ///
    /// # Errors
    ///
    /// [`Error::Backpressure`] (with the payload) when the peer's queue is full,
    /// [`Error::PayloadTooLarge`], or [`Error::ShuttingDown`].
    pub fn publish(&self, payload: Bytes) -> Result<MessageId, Error> {
        self.push(payload, None)
    }

    /// Like [`Peer::publish`], returning a future that resolves when the peer acknowledges.
    pub fn publish_confirmed(&self, payload: Bytes) -> Confirm {
        let slot = Arc::new(ConfirmSlot::new());
        match self.push(payload, Some(Arc::clone(&slot))) {
            Ok(id) => Confirm::pending(id, slot),
            Err(err) => Confirm::failed(err),
        }
    }

    fn push(&self, payload: Bytes, confirm: Option<Arc<ConfirmSlot>>) -> Result<MessageId, Error> {
        self.check_accepting(payload.len())?;
        let Some(limit) = &self.shared.outbound_limit else {
            return self.push_admitted(payload, confirm);
        };
        if let Err(retry_after) = lock(limit).try_take(1, Instant::now()) {
            return Err(Error::RateLimited {
                payload,
                retry_after,
            });
        }
        // A message refused further on did not use its token.
        self.push_admitted(payload, confirm)
            .inspect_err(|_| lock(limit).refund(1))
    }

    fn push_admitted(
        &self,
        payload: Bytes,
        confirm: Option<Arc<ConfirmSlot>>,
    ) -> Result<MessageId, Error> {
        // From a `Handler` callback on the peer's own shard: staged, no queue (route/stage.rs),
        // while the peer holds fewer unacknowledged messages than its flow limit; beyond it the
        // queue takes over, and pushes back when it is full.
        let payload = if confirm.is_none() {
            let unacked_max = self.router.config.unacked_count_max;
            match stage::try_stage(&self.shared, payload, unacked_max) {
                Ok(seq) => return Ok(self.shared.message_id(seq)),
                Err(payload) => payload,
            }
        } else {
            payload
        };
        let seq = match &self.shared.durable {
            Some(durable) => self.shared.push_durable(durable, payload, confirm)?,
            None => self
                .shared
                .push(Outgoing { payload, confirm })
                .map_err(|back| Error::Backpressure(back.payload))?,
        };
        Ok(self.shared.message_id(seq))
    }

    /// Queues every payload in `payloads`, in order, as consecutive messages: one reservation
    /// of queue positions and at most one wake-up of the shard for the whole batch, the cheap
    /// way to publish many messages from one thread. Returns the first message's id; the
    /// others follow it in sequence (for an empty batch, the id the next message will get).
    /// On success `payloads` is left empty, its capacity kept for the next batch.
    ///
    /// # Errors
    ///
    /// [`Error::PayloadTooLarge`] if any payload is (nothing is queued),
    /// [`Error::BatchTooLarge`] if the batch holds more messages than the peer's queue
    /// (`Config::peer_queue_len`), and
    /// [`Error::ShuttingDown`]. Without an outbox the batch is all or nothing:
    /// [`Error::Backpressure`] (carrying an empty payload) when the queue lacks room for all of
    /// it, with `payloads` untouched. With an outbox, messages are accepted in order until one
    /// is refused: the accepted ones are removed from the front of `payloads`, and the error
    /// is the refusal of the first one left, as [`Peer::publish`] would report it.
    pub fn publish_batch(&self, payloads: &mut Vec<Bytes>) -> Result<MessageId, Error> {
        let len_max = self.router.config.payload_len_max();
        let large = payloads.iter().find(|p| p.len() > len_max);
        self.check_accepting(large.map_or(0, Bytes::len))?;
        if payloads.is_empty() {
            return Ok(self.shared.next_id());
        }
        let Some(limit) = &self.shared.outbound_limit else {
            return self.publish_batch_admitted(payloads);
        };
        let count = payloads.len() as u64;
        if let Err(retry_after) = lock(limit).try_take(count, Instant::now()) {
            return Err(Error::RateLimited {
                payload: Bytes::new(),
                retry_after,
            });
        }
        // Messages refused further on (with an outbox, the tail of the batch) did not use
        // their tokens.
        self.publish_batch_admitted(payloads).inspect_err(|_| {
            lock(limit).refund(payloads.len() as u64);
        })
    }

    fn publish_batch_admitted(&self, payloads: &mut Vec<Bytes>) -> Result<MessageId, Error> {
        let len_max = self.shared.queue.capacity();
        if payloads.len() as u64 > len_max {
            // It could never fit: not backpressure, which a retry would wait out forever.
            return Err(Error::BatchTooLarge {
                len: payloads.len(),
                len_max: len_max as usize,
            });
        }
        let first = match &self.shared.durable {
            Some(durable) => self.shared.push_durable_batch(durable, payloads)?,
            None => {
                let position = self
                    .shared
                    .queue
                    .push_batch(payloads)
                    .ok_or(Error::Backpressure(Bytes::new()))?;
                self.shared.notify();
                position + 1
            }
        };
        Ok(self.shared.message_id(first))
    }

    /// Refuses a publish while the engine shuts down or the peer's shard has failed, and a
    /// payload of `payload_len` bytes that no frame can carry.
    fn check_accepting(&self, payload_len: usize) -> Result<(), Error> {
        if self
            .router
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::ShuttingDown);
        }
        self.router.failures[self.shared.shard.0].check(self.shared.shard)?;
        let len_max = self
            .router
            .config
            .payload_len_max()
            .min(self.shared.peer_payload_len_max());
        if payload_len > len_max {
            return Err(Error::PayloadTooLarge {
                len: payload_len,
                len_max,
            });
        }
        Ok(())
    }

    /// This node's outbound session to the peer: with an outbox, the same across restarts.
    pub fn session(&self) -> SessionId {
        self.shared.tx_session
    }

    /// The sequence number the next accepted message will get. With an outbox it continues
    /// across restarts: a sender that numbers its messages can resume from it.
    pub fn seq_next(&self) -> u64 {
        self.shared.queue.pushed() + 1
    }

    /// The highest sequence number the peer has acknowledged (as last published by the shard).
    pub fn seq_acked(&self) -> u64 {
        self.shared
            .published
            .seq_acked
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A peer's link to its shard's outbox.
#[derive(Debug)]
pub(crate) struct Durable {
    pub outbox: Arc<ShardOutbox>,
    /// The peer's hold on a slot of the outbox's session table; a publish claims one if the
    /// peer has none (the table was full, or the slot was taken back while the peer was idle).
    pub claim: Arc<SlotClaim>,
    /// The acknowledged seq the session table held at start.
    pub acked_at_start: Seq,
}

/// State of one peer shared between the API threads and its owning shard.
pub(crate) struct PeerShared {
    /// Engine-wide numeric key, used by the shard to find its local state.
    pub key: u32,
    pub node_id: NodeId,
    pub shard: ShardId,
    /// This node's outbound session to the peer; it names every message id.
    pub tx_session: SessionId,
    pub queue: PeerQueue,
    /// The outbox, if the engine has one.
    pub durable: Option<Durable>,
    /// Set while the peer sits on its shard's ready list.
    pub notified: AtomicBool,
    pub mailbox: Arc<Mailbox>,
    /// Published by the shard for `stats()` after every receive; on a cache line of its own
    /// so that those stores do not evict what every `publish` reads.
    pub published: CachePadded<Published>,
    /// The largest payload the peer accepts, from the `body_len_max` of its latest HELLO
    /// (`u64::MAX` until one arrived): `publish` refuses larger ones at once.
    pub payload_len_max: AtomicU64,
    /// `Config::outbound_rate_limit`'s bucket for this peer, if there is one.
    pub outbound_limit: Option<std::sync::Mutex<TokenBucket>>,
}

/// A peer's state as its shard last published it: relaxed, read-only outside the shard.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub connected: AtomicBool,
    pub srtt_ns: AtomicU64,
    pub seq_acked: AtomicU64,
    pub seq_delivered: AtomicU64,
}

impl PeerShared {
    /// The largest payload the peer is known to accept.
    pub(crate) fn peer_payload_len_max(&self) -> usize {
        usize::try_from(self.payload_len_max.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// The id of message `seq` of this peer's outbound session.
    pub(crate) fn message_id(&self, seq: u64) -> MessageId {
        MessageId {
            session: self.tx_session,
            seq,
        }
    }

    /// The id the next message published to this peer will get.
    pub(crate) fn next_id(&self) -> MessageId {
        self.message_id(self.queue.pushed() + 1)
    }

    /// Queues a message and makes sure the shard will look at this peer. Returns the message's
    /// sequence number.
    pub(crate) fn push(self: &Arc<Self>, outgoing: Outgoing) -> Result<u64, Outgoing> {
        let position = self.queue.push(outgoing)?;
        self.notify();
        Ok(position + 1)
    }

    /// Writes the message's outbox record, then queues it: the record is in the map before
    /// this returns, so a crash afterwards cannot lose an accepted message.
    pub(crate) fn push_durable(
        self: &Arc<Self>,
        durable: &Durable,
        payload: Bytes,
        confirm: Option<Arc<ConfirmSlot>>,
    ) -> Result<u64, Error> {
        let mut appender = durable.outbox.appender();
        // Every producer of this queue holds the append lock, so it cannot fill up between
        // this check and the push below, and the next position is ours.
        if !self.queue.has_room_exclusive() {
            return Err(Error::Backpressure(payload));
        }
        let seq = Seq(self.queue.pushed() + 1);
        let Some(slot) = appender.slot(&durable.claim, self.node_id.as_str(), self.tx_session, seq)
        else {
            return Err(Error::OutboxFull {
                payload,
                disk_full: false,
            });
        };
        if let Err(e) = appender.append(slot, self.tx_session, seq, &payload) {
            return Err(append_error(e, payload));
        }
        appender.set_next(slot, seq.next());
        let position = self.queue.push_exclusive(Outgoing { payload, confirm });
        drop(appender);
        debug_assert_eq!(position + 1, seq.0);
        self.notify();
        Ok(seq.0)
    }

    /// Writes the outbox records of `payloads` and queues them, in order, under one hold of
    /// the append lock and with one wake-up, until one is refused; removes the accepted ones
    /// from the front of `payloads`. Returns the first one's sequence number, or the refusal
    /// of the first one left.
    pub(crate) fn push_durable_batch(
        self: &Arc<Self>,
        durable: &Durable,
        payloads: &mut Vec<Bytes>,
    ) -> Result<u64, Error> {
        let mut accepted = 0;
        let mut refused = None;
        let first = Seq(self.queue.pushed() + 1);
        {
            let mut appender = durable.outbox.appender();
            let Some(slot) = appender.slot(
                &durable.claim,
                self.node_id.as_str(),
                self.tx_session,
                first,
            ) else {
                return Err(Error::OutboxFull {
                    payload: payloads[0].clone(),
                    disk_full: false,
                });
            };
            for payload in payloads.iter() {
                // Every producer holds the append lock: the room and the position stay ours.
                if !self.queue.has_room_exclusive() {
                    refused = Some(Error::Backpressure(payload.clone()));
                    break;
                }
                let seq = Seq(self.queue.pushed() + 1);
                let result = appender.append(slot, self.tx_session, seq, payload);
                if let Err(e) = result {
                    refused = Some(append_error(e, payload.clone()));
                    break;
                }
                appender.set_next(slot, seq.next());
                self.queue.push_exclusive(Outgoing {
                    payload: payload.clone(),
                    confirm: None,
                });
                accepted += 1;
            }
        }
        payloads.drain(..accepted);
        if accepted > 0 {
            self.notify();
        }
        match refused {
            Some(err) => Err(err),
            None => Ok(first.0),
        }
    }

    fn notify(self: &Arc<Self>) {
        // A store-load handshake with the shard: this thread stored the slot's stamp and now
        // loads `notified`; the shard stores `notified = false` (`drain_peers`) and then loads
        // the stamp (`PeerQueue::pop`). Neither load may be hoisted above its store, which only
        // a SeqCst fence on each side guarantees: this one, and the one `pop` runs before it
        // reports the queue empty. The two fences are ordered one way or the other, so either
        // the shard's pop sees this message, or this load sees `false` and schedules the peer.
        //
        // It is the one fence a publish pays for; with it, the flag's own accesses need no
        // ordering. The CAS is Acquire only so that the shard's removal of the peer from the
        // ready list (before its Release store of `false`) happens before this push: the peer
        // is on the list at most once. The load first keeps the line shared under load, when
        // `notified` stays true. A CAS rather than a swap: a losing swap stores `true` again
        // for nothing, and loom orders such a store wrongly against the shard's `false`
        // (tokio-rs/loom#254), reporting a lost wake-up that the memory model rules out.
        fence(Ordering::SeqCst);
        if !self.notified.load(Ordering::Relaxed)
            && self
                .notified
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            self.mailbox.ready.push(Arc::clone(self));
            self.mailbox.wake();
        }
    }
}

impl fmt::Debug for PeerShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerShared")
            .field("node_id", &self.node_id)
            .field("shard", &self.shard)
            .finish()
    }
}

/// What `publish` reports when the outbox refuses `payload`'s record.
fn append_error(e: AppendError, payload: Bytes) -> Error {
    match e {
        AppendError::Full { disk } => Error::OutboxFull {
            payload,
            disk_full: disk,
        },
        AppendError::PeerFull => Error::Backpressure(payload),
        AppendError::Failed => Error::OutboxFailed,
        AppendError::Io(e) => Error::io("creating an outbox segment", e),
    }
}

/// Locks a rate limit's bucket; one poisoned by a panic elsewhere is still a valid bucket.
fn lock(limit: &std::sync::Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
    limit.lock().unwrap_or_else(|e| e.into_inner())
}
