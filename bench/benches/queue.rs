//! The per-peer publish queue (`PeerQueue`, reached through `ringwire::internals`): the
//! bounded multi-producer ring that every `publish` pushes into and the owning shard drains.
//!
//! `publish` can be called from any thread, so this queue is the one cross-thread step on the
//! send path; its cost and how it degrades under contention bound publish throughput per peer.
//! Measured here:
//!
//! * `single_thread`: one thread pushes and pops, alternately and in batches of 64: the
//!   uncontended cost of the atomics, with the queue's cache lines hot in one core.
//! * `cross_thread`: 1 or 2 producer threads push while the bench thread pops, as a shard
//!   does; the time runs from a common start until the consumer has every message.
//!
//! The reference machine has only two cores, so two producers plus the consumer oversubscribe
//! it: producers yield when the queue is full and the consumer yields when it is empty, and the
//! 2-producer numbers include scheduler hand-offs. Read them as "modest contention", not as a
//! scaling curve.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringwire::internals::{self, Outgoing, PeerQueue, QueueConsumer};

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/single_thread");

    let (queue, mut consumer) = internals::peer_queue(QUEUE_LEN);
    // One message circulates between push and pop, so no payload is built or dropped.
    let mut circulating = Some(message());
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_pop", |b| {
        b.iter(|| {
            let outgoing = circulating
                .take()
                .expect("the message is back after each pop");
            push_or_panic(&queue, outgoing);
            let (position, outgoing) = consumer.pop().expect("just pushed");
            black_box(position);
            circulating = Some(outgoing);
        });
    });

    let mut batch: Vec<Outgoing> = (0..BATCH_LEN).map(|_| message()).collect();
    group.throughput(Throughput::Elements(BATCH_LEN as u64));
    group.bench_function(BenchmarkId::new("push_then_pop", BATCH_LEN), |b| {
        b.iter(|| {
            for outgoing in batch.drain(..) {
                push_or_panic(&queue, outgoing);
            }
            while let Some((position, outgoing)) = consumer.pop() {
                black_box(position);
                batch.push(outgoing);
            }
        });
    });
    group.finish();
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue/cross_thread");
    for producer_count in [1_u64, 2] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("producers", producer_count), |b| {
            b.iter_custom(|iters| run_contended(producer_count, iters));
        });
    }
    group.finish();
}

/// Moves `count` messages from `producer_count` threads through a fresh queue to this thread
/// and returns the time from the common start until the last one was popped. Spawning the
/// threads happens before the start and is not measured.
fn run_contended(producer_count: u64, count: u64) -> Duration {
    let (queue, mut consumer) = internals::peer_queue(QUEUE_LEN);
    let start = Arc::new(Barrier::new(producer_count as usize + 1));
    let producers: Vec<_> = (0..producer_count)
        .map(|index| {
            // Spread the remainder so the producers push `count` messages between them.
            let share = count / producer_count + u64::from(index < count % producer_count);
            let queue = Arc::clone(&queue);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                for _ in 0..share {
                    push_retrying(&queue, message());
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    drain(&mut consumer, count);
    let elapsed = began.elapsed();
    for producer in producers {
        producer.join().expect("producer thread panicked");
    }
    elapsed
}

/// Pops `count` messages, yielding while the queue is empty (see the module comment).
fn drain(consumer: &mut QueueConsumer, count: u64) {
    let mut popped = 0;
    while popped < count {
        match consumer.pop() {
            Some((position, outgoing)) => {
                black_box(position);
                drop(black_box(outgoing));
                popped += 1;
            }
            None => thread::yield_now(),
        }
    }
}

fn push_retrying(queue: &PeerQueue, mut outgoing: Outgoing) {
    loop {
        match queue.push(outgoing) {
            Ok(position) => {
                black_box(position);
                return;
            }
            Err(back) => {
                outgoing = back;
                thread::yield_now();
            }
        }
    }
}

fn push_or_panic(queue: &PeerQueue, outgoing: Outgoing) {
    let position = queue
        .push(outgoing)
        .expect("the single-thread benches never fill the queue");
    black_box(position);
}

/// A 64-byte payload that costs nothing to build or drop, so the numbers are the queue's own.
fn message() -> Outgoing {
    internals::outgoing(Bytes::from_static(&PAYLOAD))
}

static PAYLOAD: [u8; 64] = [0x42; 64];

/// The engine's default `peer_queue_len`.
const QUEUE_LEN: usize = 8192;
const BATCH_LEN: usize = 64;

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = single_thread, cross_thread
}
criterion_main!(benches);
