//! Publishing from the shard thread (a `Source`) and in batches (`Peer::publish_batch`),
//! interleaved with plain `publish` from other threads on the same peer: every message arrives
//! exactly once, each publisher's messages in its order, with contiguous sequence numbers; and
//! across a cut of the connection too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringwire::{Error, Handler, MessageId, Peer, PeerConfig, ShardCtx, Source, SourcePoll};
use ringwire_tests::cut::{connection_ends, is_connected, shut_down};
use ringwire_tests::{PATIENCE, builder, publish_patiently, wait_until};

/// Payload: publisher tag (1 byte), then its own message number (u64).
fn tagged(tag: u8, n: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = tag;
    p[1..].copy_from_slice(&n.to_le_bytes());
    p
}

/// Checks that sequence numbers are contiguous and each publisher's numbers arrive in order,
/// once each.
#[derive(Default)]
struct Check {
    state: Mutex<CheckState>,
    total: AtomicU64,
}

#[derive(Default)]
struct CheckState {
    seq_last: u64,
    next_by_tag: HashMap<u8, u64>,
    errors: Vec<String>,
}

impl Handler for Check {
    fn on_message(&self, _: &Peer, id: MessageId, payload: &[u8]) {
        let mut st = self.state.lock().unwrap();
        if id.seq != st.seq_last + 1 {
            let msg = format!("seq {} after {}", id.seq, st.seq_last);
            st.errors.push(msg);
        }
        st.seq_last = id.seq;
        let tag = payload[0];
        let n = u64::from_le_bytes(payload[1..9].try_into().unwrap());
        let next = st.next_by_tag.get(&tag).copied().unwrap_or(0);
        if n != next {
            let msg = format!("publisher {tag}: got {n}, expected {next}");
            st.errors.push(msg);
        }
        st.next_by_tag.insert(tag, n + 1);
        drop(st);
        self.total.fetch_add(1, Ordering::Relaxed);
    }
}

impl Check {
    fn assert_clean(&self, per_tag: &[(u8, u64)]) {
        let st = self.state.lock().unwrap();
        assert!(
            st.errors.is_empty(),
            "{:?}",
            &st.errors[..st.errors.len().min(10)]
        );
        for (tag, count) in per_tag {
            assert_eq!(
                st.next_by_tag.get(tag).copied().unwrap_or(0),
                *count,
                "publisher {tag}"
            );
        }
    }
}

/// Publishes `count` messages tagged `tag` from the shard thread, as fast as the session takes
/// them: one at a time with `ShardCtx::publish` when `batch` is 1, else up to `batch` at a time
/// with `ShardCtx::publish_batch`.
struct Counter {
    peer: Peer,
    tag: u8,
    batch: u64,
    next: u64,
    count: u64,
    /// Publishes only below this number (the test releases the stream in chunks).
    allowed: Arc<AtomicU64>,
    backpressured: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Counter {
    fn new(peer: &Peer, tag: u8, batch: u64, count: u64, done: &Arc<AtomicBool>) -> Counter {
        Counter {
            peer: peer.clone(),
            tag,
            batch,
            next: 0,
            count,
            allowed: Arc::new(AtomicU64::new(u64::MAX)),
            backpressured: Arc::new(AtomicU64::new(0)),
            done: Arc::clone(done),
        }
    }

    /// Publishes the next messages, up to `limit` of them; how many were taken.
    fn publish(&mut self, ctx: &mut ShardCtx<'_>, limit: u64) -> Result<u64, Error> {
        if self.batch == 1 {
            return ctx
                .publish(&self.peer, &tagged(self.tag, self.next))
                .map(|_| 1);
        }
        let payloads: Vec<[u8; 9]> = (self.next..self.next + limit.min(self.batch))
            .map(|n| tagged(self.tag, n))
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let published = ctx.publish_batch(&self.peer, &refs)?;
        assert!(published.count >= 1 && published.count <= refs.len());
        Ok(published.count as u64)
    }
}

impl Source for Counter {
    fn poll(&mut self, ctx: &mut ShardCtx<'_>) -> SourcePoll {
        for _ in 0..256 {
            if self.next == self.count {
                self.done.store(true, Ordering::Release);
                return SourcePoll::Done;
            }
            let allowed = self.allowed.load(Ordering::Relaxed).min(self.count);
            if self.next >= allowed {
                break;
            }
            match self.publish(ctx, allowed - self.next) {
                Ok(taken) => self.next += taken,
                Err(Error::Backpressure(_)) => {
                    self.backpressured.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => panic!("source publish failed: {e}"),
            }
        }
        SourcePoll::Ready
    }
}

#[test]
fn sources_batches_and_threads_interleave_exactly_once_in_order() {
    const SOURCE: u64 = 200_000;
    const SOURCE_BATCHED: u64 = 150_000;
    const THREAD: u64 = 50_000;
    const BATCHES: u64 = 1_000;
    const BATCH: u64 = 64;
    let check = Arc::new(Check::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&check))
        .start()
        .unwrap();
    let a = builder("node-a", 1).start().unwrap();
    let peer = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let done_batched = Arc::new(AtomicBool::new(false));
    let counter = Counter::new(&peer, 0, 1, SOURCE, &done);
    let backpressured = Arc::clone(&counter.backpressured);
    a.add_source(&peer, counter).unwrap();
    a.add_source(
        &peer,
        Counter::new(&peer, 3, 50, SOURCE_BATCHED, &done_batched),
    )
    .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..THREAD {
                publish_patiently(&peer, Bytes::copy_from_slice(&tagged(1, n)));
            }
        });
        s.spawn(|| {
            let mut batch = Vec::new();
            for k in 0..BATCHES {
                batch.extend((0..BATCH).map(|i| Bytes::copy_from_slice(&tagged(2, k * BATCH + i))));
                loop {
                    match peer.publish_batch(&mut batch) {
                        Ok(first) => {
                            assert!(batch.is_empty());
                            assert!(first.seq >= 1);
                            break;
                        }
                        Err(Error::Backpressure(_)) => {
                            assert_eq!(batch.len() as u64, BATCH, "all or nothing");
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("publish_batch failed: {e}"),
                    }
                }
            }
        });
    });
    let total = SOURCE + SOURCE_BATCHED + THREAD + BATCHES * BATCH;
    wait_until("every message delivered", || {
        check.total.load(Ordering::Relaxed) == total
    });
    assert!(done.load(Ordering::Acquire) && done_batched.load(Ordering::Acquire));
    check.assert_clean(&[
        (0, SOURCE),
        (1, THREAD),
        (2, BATCHES * BATCH),
        (3, SOURCE_BATCHED),
    ]);
    assert_eq!(peer.seq_next(), total + 1);
    wait_until("everything acknowledged", || peer.seq_acked() == total);
    eprintln!(
        "source saw backpressure {} times",
        backpressured.load(Ordering::Relaxed)
    );
    a.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn a_source_stream_survives_cuts_exactly_once() {
    const COUNT: u64 = 300_000;
    const CUTS: usize = 5;
    let check = Arc::new(Check::default());
    let quick_redial = |c: &mut ringwire::Config| c.backoff.initial = Duration::from_millis(10);
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(quick_redial)
        .handler(Arc::clone(&check))
        .start()
        .unwrap();
    let port = b.local_addr().unwrap().port();
    let a = builder("node-a", 1)
        .configure(quick_redial)
        .start()
        .unwrap();
    let peer = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    wait_until("connected", || is_connected(&a, "node-b"));
    let done = Arc::new(AtomicBool::new(false));
    let chunk = COUNT / (CUTS as u64 + 1);
    // In batches of 37: the cuts fall inside MSG_BATCH frames and inside source batches.
    let counter = Counter::new(&peer, 0, 37, COUNT, &done);
    let allowed = Arc::clone(&counter.allowed);
    allowed.store(chunk, Ordering::Relaxed);
    a.add_source(&peer, counter).unwrap();
    let connects_start = a.stats().connects;
    // The stream is released a chunk at a time; each cut falls after part of the newest chunk
    // arrived, with the rest in flight, and the next chunk is released only after the redial.
    for cut in 1..=CUTS as u64 {
        wait_until("part of the chunk delivered", || {
            check.total.load(Ordering::Relaxed) >= (cut - 1) * chunk + chunk / 4
        });
        let connects = a.stats().connects;
        let ends = connection_ends(port);
        allowed.store((cut + 1) * chunk, Ordering::Relaxed);
        assert!(shut_down(&ends) > 0, "cut {cut}: no socket to shut down");
        wait_until("redialed", || {
            a.stats().connects > connects && is_connected(&a, "node-b")
        });
    }
    allowed.store(u64::MAX, Ordering::Relaxed);
    wait_until("every message delivered", || {
        check.total.load(Ordering::Relaxed) == COUNT
    });
    wait_until("everything acknowledged", || peer.seq_acked() == COUNT);
    assert!(done.load(Ordering::Acquire));
    check.assert_clean(&[(0, COUNT)]);
    assert!(a.stats().connects >= connects_start + CUTS as u64);
    a.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn a_batch_larger_than_the_queue_is_refused_as_such() {
    let a = builder("node-a", 1)
        .configure(|c| c.peer_queue_len = 4)
        .start()
        .unwrap();
    let peer = a.peer("node-b");
    let mut batch: Vec<Bytes> = (0..5)
        .map(|n| Bytes::copy_from_slice(&tagged(0, n)))
        .collect();
    match peer.publish_batch(&mut batch) {
        Err(Error::BatchTooLarge { len: 5, len_max: 4 }) => {}
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert_eq!(batch.len(), 5, "nothing taken");
    batch.truncate(4);
    assert!(peer.publish_batch(&mut batch).is_ok());
    assert!(batch.is_empty());
}

/// A node with `batch_frames` off speaks MSG frames only: its peer sends it no MSG_BATCH, not
/// even for the messages it had encoded as batches before the node's HELLO told it so, and both
/// directions stay exactly once.
#[test]
fn a_node_without_batch_frames_gets_msg_frames_only() {
    const COUNT: u64 = 20_000;
    let at_a = Arc::new(Check::default());
    let at_b = Arc::new(Check::default());
    let a = builder("node-a", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&at_a))
        .start()
        .unwrap();
    // Published while node-b is unknown: encoded into the session (as batches) before any HELLO.
    let to_b = a.peer("node-b");
    for n in 0..COUNT / 2 {
        publish_patiently(&to_b, Bytes::copy_from_slice(&tagged(0, n)));
    }
    let b = builder("node-b", 1)
        .configure(|c| c.batch_frames = false)
        .handler(Arc::clone(&at_b))
        .start()
        .unwrap();
    let to_a = b
        .connect(PeerConfig::new("node-a", [a.local_addr().unwrap()]))
        .unwrap();
    for n in COUNT / 2..COUNT {
        publish_patiently(&to_b, Bytes::copy_from_slice(&tagged(0, n)));
    }
    for n in 0..COUNT {
        publish_patiently(&to_a, Bytes::copy_from_slice(&tagged(1, n)));
    }
    wait_until("both directions delivered", || {
        at_a.total.load(Ordering::Relaxed) == COUNT && at_b.total.load(Ordering::Relaxed) == COUNT
    });
    at_b.assert_clean(&[(0, COUNT)]);
    at_a.assert_clean(&[(1, COUNT)]);
    assert_eq!(a.stats().protocol_errors + b.stats().protocol_errors, 0);
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// Echoes every message back to its sender from the handler, tagged 5 and numbered in arrival
/// order: a publish from a callback on the peer's own shard, staged without the queue.
struct Echo {
    next: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Handler for Echo {
    fn on_message(&self, peer: &Peer, _: MessageId, _: &[u8]) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = peer.publish(Bytes::copy_from_slice(&tagged(5, n))) {
            self.errors.lock().unwrap().push(format!("echo {n}: {e}"));
        }
    }
}

/// A handler's publishes to its peer and a thread's publishes to the same peer share one
/// sequence: everything arrives exactly once, each publisher's messages in order, with
/// contiguous sequence numbers.
#[test]
fn handler_publishes_and_threads_interleave_exactly_once_in_order() {
    const COUNT: u64 = 20_000;
    let at_a = Arc::new(Check::default());
    let echo = Arc::new(Echo {
        next: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let a = builder("node-a", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&at_a))
        .start()
        .unwrap();
    // A queue that holds everything node-b sends, so that no echo meets a full queue (a
    // handler cannot wait for room: its shard drains the queue only after it returns).
    let b = builder("node-b", 1)
        .configure(|c| c.peer_queue_len = 1 << 16)
        .handler(Arc::clone(&echo))
        .start()
        .unwrap();
    let b_to_a = b
        .connect(PeerConfig::new("node-a", [a.local_addr().unwrap()]))
        .unwrap();
    wait_until("connected", || is_connected(&b, "node-a"));
    let a_to_b = a.peer("node-b");
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..COUNT {
                publish_patiently(&a_to_b, Bytes::copy_from_slice(&tagged(1, n)));
            }
        });
        s.spawn(|| {
            for n in 0..COUNT {
                publish_patiently(&b_to_a, Bytes::copy_from_slice(&tagged(6, n)));
            }
        });
    });
    wait_until("echoes and thread messages delivered", || {
        at_a.total.load(Ordering::Relaxed) == 2 * COUNT
    });
    assert!(echo.errors.lock().unwrap().is_empty(), "{:?}", echo.errors);
    at_a.assert_clean(&[(5, COUNT), (6, COUNT)]);
    wait_until("everything acknowledged", || {
        b_to_a.seq_acked() == 2 * COUNT
    });
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}
