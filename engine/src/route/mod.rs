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

use std::collections::HashMap;
use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;

use crate::error::Error;
use crate::outbox::store::{AppendError, ShardOutbox};
use crate::proto::handshake::HelloInfo;
use crate::proto::{Seq, SessionId};
use crate::route::confirm::ConfirmSlot;
use crate::sync::{AtomicBool, AtomicU64, Ordering, UnsafeCell};
use crate::{NodeId, PeerConfig};

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

/// A message on its way from `publish` to the shard.
///
/// `pub` (not `pub(crate)`) only so that the `internals` feature can hand it to the benches.
#[derive(Debug)]
pub struct Outgoing {
    pub(crate) payload: Bytes,
    pub(crate) confirm: Option<Arc<ConfirmSlot>>,
}

/// A peer's link to its shard's outbox.
#[derive(Debug)]
pub(crate) struct Durable {
    pub outbox: Arc<ShardOutbox>,
    /// The peer's slot in the outbox's session table, or why it has none (the table is full);
    /// without one, publishing to the peer fails.
    pub slot: Result<usize, String>,
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
        let slot = match &durable.slot {
            Ok(slot) => *slot,
            Err(why) => {
                tracing::warn!(peer = %self.node_id, why, "peer has no outbox session");
                return Err(Error::OutboxFull {
                    payload,
                    disk_full: false,
                });
            }
        };
        let mut appender = durable.outbox.appender();
        // Every producer of this queue holds the append lock, so it cannot fill up between
        // this check and the push below, and the next position is ours.
        if !self.queue.has_room_exclusive() {
            return Err(Error::Backpressure(payload));
        }
        let seq = Seq(self.queue.pushed() + 1);
        match appender.append(slot, self.tx_session, seq, &payload) {
            Ok(()) => {}
            Err(AppendError::Full { disk }) => {
                return Err(Error::OutboxFull {
                    payload,
                    disk_full: disk,
                });
            }
            Err(AppendError::PeerFull) => return Err(Error::Backpressure(payload)),
            Err(AppendError::Failed) => return Err(Error::OutboxFailed),
            Err(AppendError::Io(e)) => return Err(Error::io("creating an outbox segment", e)),
        }
        appender.set_next(slot, seq.next());
        let position = self.queue.push_exclusive(Outgoing { payload, confirm });
        drop(appender);
        debug_assert_eq!(position + 1, seq.0);
        self.notify();
        Ok(seq.0)
    }

    fn notify(self: &Arc<Self>) {
        // The slot's SeqCst stamp store in `push` orders before this load; the shard clears
        // `notified` (SeqCst) before it pops. So either the shard's pop sees this message, or
        // this load sees `false` and schedules the peer again.
        if !self.notified.load(Ordering::SeqCst) && !self.notified.swap(true, Ordering::SeqCst) {
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

/// A control command for a shard.
#[derive(Debug)]
pub(crate) enum Command {
    /// Dial (and keep redialing) this peer.
    Connect {
        peer: Arc<PeerShared>,
        config: PeerConfig,
    },
    /// An inbound connection whose HELLO names a peer this shard owns.
    Adopt {
        fd: OwnedFd,
        hello: HelloInfo,
        peer: Arc<PeerShared>,
    },
    /// Stop: drain unacknowledged messages until the deadline, then close everything.
    Shutdown {
        drain_until: Option<std::time::Instant>,
    },
}

/// The queues into one shard plus the flag and eventfd that wake it.
pub(crate) struct Mailbox {
    pub commands: SegQueue<Command>,
    pub ready: SegQueue<Arc<PeerShared>>,
    parked: CachePadded<AtomicBool>,
    eventfd: OwnedFd,
}

impl Mailbox {
    pub(crate) fn new() -> std::io::Result<Mailbox> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mailbox {
            commands: SegQueue::new(),
            ready: SegQueue::new(),
            parked: CachePadded::new(AtomicBool::new(false)),
            // SAFETY: `fd` is a fresh descriptor owned by nothing else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends a control command and wakes the shard.
    pub(crate) fn send(&self, command: Command) {
        self.commands.push(command);
        self.wake();
    }

    /// Wakes the shard if, and only if, it is parked; at most one waker writes the eventfd.
    pub(crate) fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to an eventfd this mailbox owns. A failure
            // (counter overflow) cannot happen with one write per park and needs no handling.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Called by the shard before it sleeps. Returns `false` (and stays awake) if work arrived.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if !self.commands.is_empty() || !self.ready.is_empty() {
            self.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called by the shard when it wakes.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    pub(crate) fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("commands", &self.commands.len())
            .field("ready", &self.ready.len())
            .finish()
    }
}

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
    pub(crate) fn get_or_create(
        &self,
        node_id: &str,
        mailboxes: &[Arc<Mailbox>],
        queue_len: usize,
        outboxes: &[Arc<ShardOutbox>],
    ) -> Arc<PeerShared> {
        if let Some(peer) = self.get(node_id) {
            return peer;
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let node_id = NodeId::from(node_id);
        Arc::clone(peers.entry(node_id.clone()).or_insert_with(|| {
            let shard = owner(node_id.as_str(), mailboxes.len());
            let mut tx_session = SessionId(uuid::Uuid::new_v4());
            let mut seq_next = Seq(1);
            let durable = outboxes.get(shard.0).map(|outbox| {
                let state = outbox.session(node_id.as_str());
                if let Ok(state) = &state {
                    tx_session = state.session;
                    seq_next = state.next;
                }
                Durable {
                    outbox: Arc::clone(outbox),
                    acked_at_start: state.as_ref().map_or(Seq::ZERO, |s| s.acked),
                    slot: state.map(|s| s.slot).map_err(|e| e.to_string()),
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
                node_id,
            })
        }))
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

/// A bounded multi-producer, single-consumer ring (after Vyukov's bounded queue) whose push
/// position is the message's sequence number minus one.
///
/// Each slot carries a stamp: `position` when free for the producer of that position,
/// `position + 1` once written, `position + capacity` once consumed (free for the next lap).
///
/// `pub` (not `pub(crate)`) only so that the `internals` feature can hand it to the benches;
/// `pop` stays crate-private because a second consumer would read a slot twice.
pub struct PeerQueue {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    slots: Box<[Slot]>,
    mask: u64,
}

struct Slot {
    stamp: AtomicU64,
    value: UnsafeCell<MaybeUninit<Outgoing>>,
}

// SAFETY: a slot's value is written only by the producer that won the CAS for its position and
// read only by the single consumer after it observed the producer's stamp (release/acquire),
// so no two threads touch a value at once. `Outgoing` is `Send`.
unsafe impl Sync for PeerQueue {}
// SAFETY: see `Sync`; the queue owns its values.
unsafe impl Send for PeerQueue {}

impl PeerQueue {
    /// A queue with room for `len` messages, rounded up to a power of two.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn new(len: usize) -> PeerQueue {
        PeerQueue::starting_at(len, 0)
    }

    /// Like [`PeerQueue::new`], with `start` as the first position (a session that continues
    /// after a restart).
    pub(crate) fn starting_at(len: usize, start: u64) -> PeerQueue {
        let capacity = len.max(2).next_power_of_two() as u64;
        let mask = capacity - 1;
        // Slot `i` is first used by the position in `start..start + capacity` congruent to it.
        let slots = (0..capacity)
            .map(|i| Slot {
                stamp: AtomicU64::new(start + (i.wrapping_sub(start) & mask)),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        PeerQueue {
            head: CachePadded::new(AtomicU64::new(start)),
            tail: CachePadded::new(AtomicU64::new(start)),
            slots,
            mask,
        }
    }

    /// Appends `value` when the caller is the only producer (every producer of this queue
    /// holds one lock) and has checked [`PeerQueue::is_full`]: no CAS on the tail.
    pub(crate) fn push_exclusive(&self, value: Outgoing) -> u64 {
        let tail = self.tail.load(Ordering::Relaxed);
        let slot = &self.slots[(tail & self.mask) as usize];
        assert_eq!(
            slot.stamp.load(Ordering::Acquire),
            tail,
            "push_exclusive on a full queue or with another producer"
        );
        // Release suffices: other producers are excluded by the caller's lock (whose release
        // publishes this store to the next holder), and readers of `tail` only use it for
        // scheduling and stats; the consumer synchronizes on the slot's stamp.
        self.tail.store(tail + 1, Ordering::Release);
        // SAFETY: the slot is free for position `tail` (its stamp says so) and no other
        // producer runs, so this thread owns it until it publishes the stamp below.
        slot.value.with_mut(|v| unsafe { (*v).write(value) });
        slot.stamp.store(tail + 1, Ordering::SeqCst);
        tail
    }

    /// Whether [`PeerQueue::push_exclusive`] has room now. Exact only for the sole producer; it
    /// reads the next slot's stamp, not the consumer's `head`, whose cache line the consumer
    /// writes on every pop.
    pub(crate) fn has_room_exclusive(&self) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        self.slots[(tail & self.mask) as usize]
            .stamp
            .load(Ordering::Acquire)
            == tail
    }

    /// Appends `value`, returning its position; hands it back if the queue is full.
    pub fn push(&self, value: Outgoing) -> Result<u64, Outgoing> {
        let capacity = self.mask + 1;
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(tail & self.mask) as usize];
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == tail {
                match self.tail.compare_exchange_weak(
                    tail,
                    tail + 1,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `tail` gives this thread the slot until it
                        // publishes the stamp below; the consumer reads only after that.
                        slot.value.with_mut(|v| unsafe { (*v).write(value) });
                        slot.stamp.store(tail + 1, Ordering::SeqCst);
                        return Ok(tail);
                    }
                    Err(current) => tail = current,
                }
            } else if stamp + capacity == tail + 1 {
                // The slot still holds the previous lap's value: full, unless the consumer just
                // freed it.
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                if self.head.load(Ordering::SeqCst) + capacity == tail {
                    return Err(value);
                }
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                std::hint::spin_loop();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the next value in position order. `None` if empty or if the next position's
    /// producer has not finished writing (a later position is never returned before it).
    ///
    /// Only the owning shard may call this.
    pub(crate) fn pop(&self) -> Option<(u64, Outgoing)> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[(head & self.mask) as usize];
        if slot.stamp.load(Ordering::SeqCst) != head + 1 {
            return None;
        }
        // SAFETY: the stamp says the producer of `head` finished writing, and the single
        // consumer is the only reader; the value is moved out exactly once before the stamp
        // frees the slot for the next lap.
        let value = slot.value.with_mut(|v| unsafe { (*v).assume_init_read() });
        slot.stamp.store(head + self.mask + 1, Ordering::Release);
        self.head.store(head + 1, Ordering::SeqCst);
        Some((head, value))
    }

    /// Whether a value may be waiting (racy; for scheduling only).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::SeqCst) == self.tail.load(Ordering::SeqCst)
    }

    /// Number of values ever pushed: the last assigned sequence number.
    pub(crate) fn pushed(&self) -> u64 {
        self.tail.load(Ordering::SeqCst)
    }

    /// Number of queued values (racy; for stats only).
    pub(crate) fn len(&self) -> u64 {
        self.tail
            .load(Ordering::Relaxed)
            .saturating_sub(self.head.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for PeerQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerQueue")
            .field("capacity", &(self.mask + 1))
            .field("len", &self.len())
            .finish()
    }
}

impl Drop for PeerQueue {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u64) -> Outgoing {
        Outgoing {
            payload: Bytes::copy_from_slice(&n.to_le_bytes()),
            confirm: None,
        }
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        assert_eq!(owner("node-a", 4), owner("node-a", 4));
        for n in 0..100 {
            assert!(owner(&format!("n{n}"), 3).0 < 3);
        }
    }

    #[test]
    fn queue_fills_refuses_and_drains_in_order() {
        let q = PeerQueue::new(4);
        for i in 0..4 {
            assert_eq!(q.push(msg(i)).ok(), Some(i));
        }
        let back = q.push(msg(99)).expect_err("full");
        assert_eq!(back.payload, Bytes::copy_from_slice(&99u64.to_le_bytes()));
        assert_eq!(q.pop().map(|(p, _)| p), Some(0));
        assert_eq!(q.push(msg(4)).ok(), Some(4));
        let rest: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(p, _)| p)).collect();
        assert_eq!(rest, [1, 2, 3, 4]);
    }

    #[test]
    fn a_queue_can_start_at_any_position() {
        let q = PeerQueue::starting_at(4, 1001);
        for i in 0..4 {
            assert_eq!(q.push(msg(i)).ok(), Some(1001 + i));
        }
        assert!(!q.has_room_exclusive());
        assert!(q.push(msg(9)).is_err());
        assert_eq!(q.pop().map(|(p, _)| p), Some(1001));
        assert!(q.has_room_exclusive());
        assert_eq!(q.push(msg(4)).ok(), Some(1005));
        assert_eq!(q.pushed(), 1006);
    }

    #[test]
    fn concurrent_producers_never_lose_or_reorder_positions() {
        let q = Arc::new(PeerQueue::new(64));
        let per_thread = 20_000u64;
        let producers: Vec<_> = (0..3)
            .map(|t| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let mut m = msg(t * per_thread + i);
                        loop {
                            match q.push(m) {
                                Ok(_) => break,
                                Err(back) => {
                                    m = back;
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut next = 0;
        let mut seen = std::collections::HashSet::new();
        while next < 3 * per_thread {
            if let Some((position, m)) = q.pop() {
                assert_eq!(position, next);
                assert!(seen.insert(u64::from_le_bytes(m.payload[..].try_into().unwrap())));
                next += 1;
            }
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        assert!(q.pop().is_none());
    }
}
