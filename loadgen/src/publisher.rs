//! How the load side of the throughput and latency workloads publishes (`--publisher`): from a
//! thread with [`Peer::publish`] per message (the default), from a thread with
//! [`Peer::publish_batch`] of [`BATCH_LEN`], or from a [`Source`] on the client engine's shard
//! that publishes straight into the peer's session. Also how each samples publish-to-ack
//! latency: by sequence number ([`AckSamples`]), settled by the publisher itself.
//!
//! The shard's sources keep per-message work out of loadgen: no allocation and no atomic per
//! message; what they published is added to the shared [`Tally`] once per poll.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use loadgen::{LatencyLog, workload};
use ringwire::{Error, Peer, ShardCtx, Source, SourcePoll};

/// How the client engines publish (`--publisher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Publisher {
    /// A `Source` on the client engine's shard publishes into the session (throughput and
    /// latency).
    Shard,
    /// A thread hands `Peer::publish_batch` 64 messages at a time (throughput).
    Batch,
    /// A thread calls `Peer::publish` for every message.
    Thread,
}

impl Publisher {
    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Publisher::Shard => "shard",
            Publisher::Batch => "batch",
            Publisher::Thread => "thread",
        }
    }
}

/// What the publishers of one run share with the thread that measures it.
#[derive(Debug, Default)]
pub struct Tally {
    /// Set when the run is over: publishers stop, sources return [`SourcePoll::Done`].
    pub stop: AtomicBool,
    /// Messages the engine accepted.
    pub sent: AtomicU64,
    /// Publishes refused with `Backpressure`: retried by the throughput publishers, dropped
    /// (not sent) by the paced ones.
    pub refused: AtomicU64,
    /// Sources their shard dropped. Once all have been, `sent` is final.
    pub sources_done: AtomicUsize,
}

/// Publishes as fast as the engine takes messages, one `publish` each; the sequence number of
/// every [`SAMPLE_EVERY`]th is noted in `samples`, which this thread settles every
/// [`SETTLE_EVERY`] publishes (no thread of its own to wake per sample: the wake-ups would
/// land on the cores being measured).
pub(crate) fn publish_flat_out(
    peer: &Peer,
    payload: &Bytes,
    tally: &Tally,
    samples: &mut AckSamples,
) {
    let mut n: u64 = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        let mut accepted = 0;
        for _ in 0..BATCH {
            let t = n.is_multiple_of(SAMPLE_EVERY).then(Instant::now);
            match peer.publish(payload.clone()) {
                Ok(id) => {
                    if let Some(t) = t {
                        samples.note(id.seq, t);
                    }
                }
                Err(Error::Backpressure(_)) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    samples.settle(peer);
                    thread::yield_now();
                    continue;
                }
                Err(_) => {
                    // Shutting down, or the shard failed: count what was taken, then stop.
                    tally.sent.fetch_add(accepted, Ordering::Relaxed);
                    return;
                }
            }
            n += 1;
            accepted += 1;
            if n.is_multiple_of(SETTLE_EVERY) {
                samples.settle(peer);
            }
        }
        tally.sent.fetch_add(accepted, Ordering::Relaxed);
    }
}

/// Publishes as fast as the engine takes messages, [`BATCH_LEN`] at a time through
/// [`Peer::publish_batch`], from one reused `Vec` of clones of the static `payload` (cloning
/// a static `Bytes` touches no counter). Refused batches are retried as [`publish_flat_out`]
/// retries: yield, then try again. With an outbox a batch can be taken in part; the rest is
/// retried. The first message of one batch in `SAMPLE_EVERY / BATCH_LEN` is sampled.
pub(crate) fn publish_batches(
    peer: &Peer,
    payload: &Bytes,
    tally: &Tally,
    samples: &mut AckSamples,
) {
    let mut batch = Vec::with_capacity(BATCH_LEN);
    let mut batches: u64 = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        if batch.is_empty() {
            batch.extend(std::iter::repeat_n(payload, BATCH_LEN).cloned());
        }
        let len = batch.len();
        let sampled = len == BATCH_LEN && batches.is_multiple_of(SAMPLE_EVERY / BATCH_LEN as u64);
        let t = sampled.then(Instant::now);
        let result = peer.publish_batch(&mut batch);
        let accepted = len - batch.len();
        if accepted > 0 {
            tally.sent.fetch_add(accepted as u64, Ordering::Relaxed);
        }
        match result {
            Ok(first) => {
                if let Some(t) = t {
                    samples.note(first.seq, t);
                }
                batches += 1;
            }
            Err(Error::Backpressure(_)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                thread::yield_now();
            }
            Err(_) => return,
        }
        samples.settle(peer);
    }
}

/// The throughput workload on the shard: publishes the static payload as fast as the session
/// takes it, [`BATCH_LEN`] at a time through [`ShardCtx::publish_batch`], up to
/// [`POLL_MESSAGES_MAX`] per poll, and asks to be polled again at once (also
/// after `Backpressure`: the next turn may have reaped the ACKs that make room). One message
/// in `SAMPLE_EVERY` is sampled for publish-to-ack latency.
pub(crate) struct StreamSource {
    peer: Peer,
    payload: &'static [u8],
    tally: Arc<Tally>,
    samples: AckSamples,
    /// Messages this source published so far.
    published: u64,
}

impl StreamSource {
    pub(crate) fn new(
        peer: Peer,
        payload: &'static [u8],
        tally: Arc<Tally>,
        log: Arc<LatencyLog>,
    ) -> StreamSource {
        StreamSource {
            peer,
            payload,
            tally,
            samples: AckSamples::new(log),
            published: 0,
        }
    }
}

impl Source for StreamSource {
    fn poll(&mut self, ctx: &mut ShardCtx<'_>) -> SourcePoll {
        if self.tally.stop.load(Ordering::Relaxed) {
            return SourcePoll::Done;
        }
        self.samples.settle(&self.peer);
        let mut next = SourcePoll::Ready;
        let mut sent: u64 = 0;
        let batch = [self.payload; BATCH_LEN];
        while sent < POLL_MESSAGES_MAX {
            match ctx.publish_batch(&self.peer, &batch) {
                Ok(published) => {
                    // Sample the messages whose run-wide number is a multiple of SAMPLE_EVERY.
                    let from = self.published + sent;
                    let to = from + published.count as u64;
                    let sample = from.next_multiple_of(SAMPLE_EVERY);
                    if sample < to {
                        self.samples
                            .note(published.first.seq + (sample - from), Instant::now());
                    }
                    sent += published.count as u64;
                    if published.count < BATCH_LEN {
                        // The flow limits took a prefix: the rest would be refused.
                        break;
                    }
                }
                Err(Error::Backpressure(_)) => {
                    self.tally.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Shutting down, or the shard failed: nothing more will be taken.
                Err(_) => {
                    next = SourcePoll::Done;
                    break;
                }
            }
        }
        self.published += sent;
        if sent > 0 {
            self.tally.sent.fetch_add(sent, Ordering::Relaxed);
        }
        next
    }
}

impl Drop for StreamSource {
    fn drop(&mut self) {
        self.tally.sources_done.fetch_add(1, Ordering::Release);
    }
}

/// The latency workload on the shard: source `index` of `count` sends messages `index`,
/// `index + count`, … of the run, message *k* due at `start + k / rate` (the schedule of
/// [`workload::Pacer`], spread round-robin over the connections as the pacing thread does),
/// each stamped with its due time. It publishes what is due, up to [`POLL_MESSAGES_MAX`] per
/// poll, and asks to be polled at the next due time. A refused message is dropped and counted,
/// as the pacing thread does.
///
/// Under `--busy-poll` it asks to be polled at every turn instead: a spinning shard does not
/// watch the clock for a source's `SourcePoll::At` (its idle spin ends on I/O, messages and
/// commands only), so a due time would wait for the spin to end.
pub(crate) struct PacedSource {
    peer: Peer,
    start: Instant,
    interval_ns: f64,
    /// The run-wide number of the next message this source sends.
    next: u64,
    /// How many sources share the run's schedule.
    step: u64,
    /// The payload, re-stamped for every message (the engine copies it).
    payload: Vec<u8>,
    busy_poll: bool,
    tally: Arc<Tally>,
}

impl PacedSource {
    /// Source `index` of `count` for a run of `rate` msgs/s from `start`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        peer: Peer,
        index: usize,
        count: usize,
        rate: u64,
        start: Instant,
        size: usize,
        busy_poll: bool,
        tally: Arc<Tally>,
    ) -> PacedSource {
        PacedSource {
            peer,
            start,
            interval_ns: 1e9 / rate as f64,
            next: index as u64,
            step: count as u64,
            payload: vec![0; size],
            busy_poll,
            tally,
        }
    }

    fn due(&self) -> Instant {
        self.start + Duration::from_nanos((self.next as f64 * self.interval_ns) as u64)
    }
}

impl Source for PacedSource {
    fn poll(&mut self, ctx: &mut ShardCtx<'_>) -> SourcePoll {
        if self.tally.stop.load(Ordering::Relaxed) {
            return SourcePoll::Done;
        }
        let now = ctx.now();
        let (mut sent, mut refused) = (0, 0);
        let mut due = self.due();
        for _ in 0..POLL_MESSAGES_MAX {
            if due > now {
                break;
            }
            workload::stamp(&mut self.payload, due);
            match ctx.publish(&self.peer, &self.payload) {
                Ok(_) => sent += 1,
                Err(_) => refused += 1,
            }
            self.next += self.step;
            due = self.due();
        }
        if sent > 0 {
            self.tally.sent.fetch_add(sent, Ordering::Relaxed);
        }
        if refused > 0 {
            self.tally.refused.fetch_add(refused, Ordering::Relaxed);
        }
        if due <= now || self.busy_poll {
            SourcePoll::Ready
        } else {
            SourcePoll::At(due)
        }
    }
}

impl Drop for PacedSource {
    fn drop(&mut self) {
        self.tally.sources_done.fetch_add(1, Ordering::Release);
    }
}

/// Publish-to-ack latency sampled by sequence number, for publishers that get no [`Confirm`]:
/// [`note`](AckSamples::note) when a message was published, and once [`Peer::seq_acked`]
/// (cumulative) reaches it, [`settle`](AckSamples::settle) records how long that took. The
/// time of the ACK is when the publisher next looks, which for both users is within one loop
/// turn or one `publish_batch` call of its arrival. Up to [`SAMPLES_QUEUED`] wait at a time;
/// the queue is allocated once.
pub(crate) struct AckSamples {
    pending: VecDeque<(u64, Instant)>,
    log: Arc<LatencyLog>,
}

impl AckSamples {
    pub(crate) fn new(log: Arc<LatencyLog>) -> AckSamples {
        AckSamples {
            pending: VecDeque::with_capacity(SAMPLES_QUEUED),
            log,
        }
    }

    /// Message `seq` was handed to the engine at `published`.
    pub(crate) fn note(&mut self, seq: u64, published: Instant) {
        if self.pending.len() < SAMPLES_QUEUED {
            self.pending.push_back((seq, published));
        }
    }

    /// Records every noted message `peer` has acknowledged.
    pub(crate) fn settle(&mut self, peer: &Peer) {
        let Some(&(oldest, _)) = self.pending.front() else {
            return;
        };
        let acked = peer.seq_acked();
        if oldest > acked {
            return;
        }
        let now = Instant::now();
        while let Some(&(seq, published)) = self.pending.front()
            && seq <= acked
        {
            self.log.record(now, now - published);
            self.pending.pop_front();
        }
    }
}

/// Messages published between checks of the stop flag.
const BATCH: u64 = 1024;
/// Plain publishes between two looks at the acknowledged sequence number for the samples:
/// as often as the batch publisher looks (once per `publish_batch`).
const SETTLE_EVERY: u64 = BATCH_LEN as u64;
/// Messages per `publish_batch` call.
pub(crate) const BATCH_LEN: usize = 64;
/// Messages a source publishes per poll, at most: a bounded share of the shard's loop turn.
const POLL_MESSAGES_MAX: u64 = 4096;
/// One publish in this many is sampled for publish-to-ack latency.
const SAMPLE_EVERY: u64 = 1024;
/// Sampled publishes waiting for their ACK, at most.
pub(crate) const SAMPLES_QUEUED: usize = 4096;
