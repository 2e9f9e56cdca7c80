//! The per-peer publish queue: a bounded multi-producer, single-consumer ring whose push
//! position is the message's sequence number minus one.

use std::fmt;
use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_utils::CachePadded;

use crate::route::confirm::ConfirmSlot;
use crate::sync::{AtomicU64, Ordering, UnsafeCell, fence, spin_loop};

/// A message on its way from `publish` to the shard.
///
/// `pub` (not `pub(crate)`) only so that the `internals` feature can hand it to the benches.
#[derive(Debug)]
pub struct Outgoing {
    pub(crate) payload: Bytes,
    pub(crate) confirm: Option<Arc<ConfirmSlot>>,
}

/// A bounded multi-producer, single-consumer ring (after Vyukov's bounded queue) whose push
/// position is the message's sequence number minus one.
///
/// Each slot carries a stamp: `position` when free for the producer of that position,
/// `position + 1` once written, `position + capacity` once consumed (free for the next lap).
///
/// # Memory ordering
///
/// The stamps carry the values: a producer's Release store of `position + 1` publishes its
/// write of the value to the consumer's Acquire load, and the consumer's Release store of
/// `position + capacity` publishes its read of the old value to the next lap's producer, whose
/// Acquire load of the stamp comes before its write. The tail CAS only elects the producer of
/// a position, so it is Relaxed; `head` is stored with Release so that a producer that sees it
/// move (Acquire) also sees the stamp the consumer freed before it. No access is SeqCst: the
/// one SeqCst fence, on the empty path of [`PeerQueue::pop`], belongs to the handshake in
/// `PeerShared::notify`. `route/loom_tests.rs` models all of this.
///
/// `pub` (not `pub(crate)`) only so that the `internals` feature can hand it to the benches;
/// `pop` stays crate-private because a second consumer would read a slot twice.
pub struct PeerQueue {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    slots: Box<[Slot]>,
    mask: u64,
    /// The first position (see [`PeerQueue::starting_at`]).
    start: u64,
}

struct Slot {
    stamp: Stamp,
    value: UnsafeCell<MaybeUninit<Outgoing>>,
}

/// A slot's stamp, stored relative to the first position that uses the slot, so that a fresh
/// queue is all zeroes: its memory comes from the allocator zeroed and untouched, and a peer
/// that publishes little keeps only the pages it used resident, not the whole ring.
struct Stamp(AtomicU64);

impl Stamp {
    /// The stamp, given `base`, the first position that uses this slot.
    fn load(&self, base: u64, order: Ordering) -> u64 {
        self.0.load(order).wrapping_add(base)
    }

    fn store(&self, base: u64, stamp: u64, order: Ordering) {
        self.0.store(stamp.wrapping_sub(base), order);
    }
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
        let capacity = len.max(2).next_power_of_two();
        PeerQueue {
            head: CachePadded::new(AtomicU64::new(start)),
            tail: CachePadded::new(AtomicU64::new(start)),
            slots: zeroed_slots(capacity),
            mask: capacity as u64 - 1,
            start,
        }
    }

    /// Appends `value` when the caller is the only producer (every producer of this queue
    /// holds one lock) and has checked [`PeerQueue::has_room_exclusive`]: no CAS on the tail.
    pub(crate) fn push_exclusive(&self, value: Outgoing) -> u64 {
        let tail = self.tail.load(Ordering::Relaxed);
        let slot = &self.slots[(tail & self.mask) as usize];
        assert_eq!(
            slot.stamp.load(self.base(tail), Ordering::Acquire),
            tail,
            "push_exclusive on a full queue or with another producer"
        );
        // Relaxed: the caller's lock orders this store before the next producer's load, and
        // the other readers of `tail` use it for stats; the consumer reads the stamp instead.
        self.tail.store(tail + 1, Ordering::Relaxed);
        // SAFETY: the slot is free for position `tail` (its stamp says so) and no other
        // producer runs, so this thread owns it until it publishes the stamp below.
        slot.value.with_mut(|v| unsafe { (*v).write(value) });
        slot.stamp
            .store(self.base(tail), tail + 1, Ordering::Release);
        tail
    }

    /// Whether [`PeerQueue::push_exclusive`] has room now. Exact only for the sole producer; it
    /// reads the next slot's stamp, not the consumer's `head`, whose cache line the consumer
    /// writes on every pop.
    pub(crate) fn has_room_exclusive(&self) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        // Relaxed: only a check. `push_exclusive` loads the same stamp again with Acquire
        // before it writes, and a later load cannot see an older stamp.
        self.slots[(tail & self.mask) as usize]
            .stamp
            .load(self.base(tail), Ordering::Relaxed)
            == tail
    }

    /// Appends `value`, returning its position; hands it back if the queue is full.
    pub fn push(&self, value: Outgoing) -> Result<u64, Outgoing> {
        let capacity = self.mask + 1;
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(tail & self.mask) as usize];
            let stamp = slot.stamp.load(self.base(tail), Ordering::Acquire);
            if stamp == tail {
                // Relaxed: the CAS only elects this position's producer. The stamp load above
                // (Acquire) already ordered the consumer's read of the old value before the
                // write below.
                match self.tail.compare_exchange_weak(
                    tail,
                    tail + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for `tail` gives this thread the slot until it
                        // publishes the stamp below; the consumer reads only after that.
                        slot.value.with_mut(|v| unsafe { (*v).write(value) });
                        slot.stamp
                            .store(self.base(tail), tail + 1, Ordering::Release);
                        return Ok(tail);
                    }
                    Err(current) => tail = current,
                }
            } else if stamp + capacity == tail + 1 {
                // The slot still holds the previous lap's value: full, unless the consumer just
                // freed it. Acquire pairs with `pop`'s Release store of `head`: if `head` moved,
                // the retry's stamp load sees the slot freed and does not spin on a stale one.
                if self.head.load(Ordering::Acquire) + capacity == tail {
                    return Err(value);
                }
                // A `head` older than the stamp (the consumer freed the slot, or claimed the
                // position, after this load) comes back fresh only after a pause: without it a
                // loom model spins on the stale view forever.
                spin_loop();
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                spin_loop();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Appends every payload of `payloads` (leaving it empty) at consecutive positions with one
    /// reservation, returning the first position; leaves `payloads` untouched and returns
    /// `None` if the queue lacks room for all of them.
    pub(crate) fn push_batch(&self, payloads: &mut Vec<Bytes>) -> Option<u64> {
        let count = payloads.len() as u64;
        let capacity = self.mask + 1;
        if count == 0 || count > capacity {
            return None;
        }
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            let last = tail + count - 1;
            let stamp = self.slots[(last & self.mask) as usize]
                .stamp
                .load(self.base(last), Ordering::Acquire);
            if stamp == last {
                // The consumer frees slots in position order, so the last slot being free for
                // this lap means every slot from `tail` on is; the CAS makes them ours unless
                // another producer claimed `tail` first. Relaxed for the reason in `push`: the
                // Acquire above ordered the consumer's reads of the old values before our
                // writes.
                match self.tail.compare_exchange_weak(
                    tail,
                    tail + count,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        for (position, payload) in (tail..).zip(payloads.drain(..)) {
                            let slot = &self.slots[(position & self.mask) as usize];
                            let value = Outgoing {
                                payload,
                                confirm: None,
                            };
                            // SAFETY: winning the CAS for `tail..tail + count` gives this
                            // thread these slots until it publishes each stamp; the consumer
                            // reads a slot only after its stamp.
                            slot.value.with_mut(|v| unsafe { (*v).write(value) });
                            slot.stamp
                                .store(self.base(position), position + 1, Ordering::Release);
                        }
                        return Some(tail);
                    }
                    Err(current) => tail = current,
                }
            } else if stamp + capacity == last + 1 {
                // The last slot holds the previous lap's value: not enough room, unless the
                // consumer just freed it (see `push`).
                if self.head.load(Ordering::Acquire) + capacity <= last {
                    return None;
                }
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                spin_loop();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the next `count` positions for messages the consumer handles itself, as if they
    /// had been pushed and popped at once, provided every value pushed so far was popped;
    /// returns the first. `None` if a producer holds the next position (pop first, to keep the
    /// order). One CAS for the run: a shard publishing a batch pays it once, not per message.
    ///
    /// Only the owning shard may call this, with `1 <= count <= capacity`.
    pub(crate) fn claim_consumed(&self, count: u64) -> Option<u64> {
        debug_assert!((1..=self.mask + 1).contains(&count), "claim of {count}");
        let head = self.head.load(Ordering::Relaxed);
        // Relaxed: the CAS only elects the owner of positions `head..head + count`, as a
        // producer's does; no value is written, so there is nothing for the consumer (us) to
        // acquire.
        self.tail
            .compare_exchange(head, head + count, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        // Free the slots for the next lap, as `pop` does after taking a value. A producer that
        // reads the new tail waits for its slot's stamp, stored here (Release) before `head`.
        for position in head..head + count {
            let slot = &self.slots[(position & self.mask) as usize];
            slot.stamp.store(
                self.base(position),
                position + self.mask + 1,
                Ordering::Release,
            );
        }
        self.head.store(head + count, Ordering::Release);
        Some(head)
    }

    /// Takes the next value in position order. `None` if empty or if the next position's
    /// producer has not finished writing (a later position is never returned before it).
    ///
    /// Only the owning shard may call this.
    pub(crate) fn pop(&self) -> Option<(u64, Outgoing)> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[(head & self.mask) as usize];
        if slot.stamp.load(self.base(head), Ordering::Acquire) != head + 1 {
            // The shard's half of the handshake in `PeerShared::notify`: the shard stored
            // `notified = false` before this pop, and must not report the queue empty on a
            // stamp load that was hoisted above that store. Only the empty case needs it, so
            // a drain pays for one fence, not one per message.
            fence(Ordering::SeqCst);
            if slot.stamp.load(self.base(head), Ordering::Acquire) != head + 1 {
                return None;
            }
        }
        // SAFETY: the stamp says the producer of `head` finished writing, and the single
        // consumer is the only reader; the value is moved out exactly once before the stamp
        // frees the slot for the next lap.
        let value = slot.value.with_mut(|v| unsafe { (*v).assume_init_read() });
        slot.stamp
            .store(self.base(head), head + self.mask + 1, Ordering::Release);
        // Release: see the full case in `push`.
        self.head.store(head + 1, Ordering::Release);
        Some((head, value))
    }

    /// The first position that uses the slot of `position`, against which its stamp is stored.
    fn base(&self, position: u64) -> u64 {
        self.start + (position.wrapping_sub(self.start) & self.mask)
    }

    /// How many values the queue holds at most.
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Whether a value may be waiting (racy; for scheduling only).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed) == self.tail.load(Ordering::Relaxed)
    }

    /// Number of values ever pushed: the last assigned sequence number. Exact for a caller
    /// that holds the lock every producer holds (`push_exclusive`); racy otherwise.
    pub(crate) fn pushed(&self) -> u64 {
        self.tail.load(Ordering::Relaxed)
    }

    /// Number of queued values (racy; for stats only).
    pub(crate) fn len(&self) -> u64 {
        self.tail
            .load(Ordering::Relaxed)
            .saturating_sub(self.head.load(Ordering::Relaxed))
    }
}

/// `capacity` empty slots, every stamp zero (free for its first position).
#[cfg(not(loom))]
fn zeroed_slots(capacity: usize) -> Box<[Slot]> {
    // SAFETY: an all-zero `Slot` is valid: its stamp is an `AtomicU64` of 0, and its value is
    // `MaybeUninit`, valid for any bytes. The zeroed allocation is what keeps a large, barely
    // used ring from being resident: the allocator hands out fresh zero pages untouched.
    unsafe { Box::new_zeroed_slice(capacity).assume_init() }
}

/// Loom's atomics are not plain memory; build the slots one by one.
#[cfg(loom)]
fn zeroed_slots(capacity: usize) -> Box<[Slot]> {
    (0..capacity)
        .map(|_| Slot {
            stamp: Stamp(AtomicU64::new(0)),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect()
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
