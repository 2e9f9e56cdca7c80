//! Exactly-once bookkeeping per message (`ringwire::proto::session` and `proto::ack`).
//!
//! Every message is pushed into a `TxSession`, written out, and later released by a cumulative
//! ACK; every received MSG passes the `RxSession` watermark check (deliver or drop a replay) and
//! is counted by `AckState`. This work runs on the shard thread for each message, so it must
//! stay a small fraction of a frame's encode and decode cost (see the `frame` bench).
//! Measured here, per message:
//!
//! * `session/tx_push_transmit_ack/every/N`: encode into the session, seal for transmission
//!   once per turn of 64 messages (or per ACK, whichever is more often), and one `handle_ack`
//!   per N messages, for N = 1, 64 and 1024 (the default `AckPolicy::count_max`): how well ACK
//!   coalescing amortizes the release of whole segments.
//! * `session/rx_handle_msg`: the in-order delivery path and the duplicate (replay) path.
//! * `session/rx_turn`: what a connection does per received MSG (watermark check plus
//!   `AckState::handle_received`), with one `is_due` and `handle_sent` per loop turn of 64.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringwire::proto::ack::{AckPolicy, AckState};
use ringwire::proto::session::Delivery;
use ringwire::proto::{RxSession, Seq, SessionId, TxSession};
use uuid::Uuid;

fn tx(c: &mut Criterion) {
    let mut group = c.benchmark_group("session/tx_push_transmit_ack");
    group.throughput(Throughput::Elements(MESSAGE_COUNT));
    for ack_every in [1_u64, 64, 1024] {
        let mut session = TxSession::new(session_id());
        let mut slices: Vec<Bytes> = Vec::new();
        group.bench_function(BenchmarkId::new("every", ack_every), |b| {
            b.iter(|| {
                for n in 1..=MESSAGE_COUNT {
                    let seq = session.seq_next();
                    session.push(seq, &PAYLOAD, 0);
                    // One transmit per loop turn of messages, as the shard sends once per turn.
                    if n % TURN_LEN == 0 || n % ack_every == 0 {
                        slices.clear();
                        black_box(session.poll_transmit(usize::MAX, &mut slices));
                    }
                    if n % ack_every == 0 {
                        black_box(
                            session
                                .handle_ack(black_box(seq))
                                .expect("acks only what was sent"),
                        );
                    }
                }
            });
            debug_assert_eq!(session.unacked_count(), 0);
        });
    }
    group.finish();
}

fn rx(c: &mut Criterion) {
    let mut group = c.benchmark_group("session/rx_handle_msg");
    group.throughput(Throughput::Elements(MESSAGE_COUNT));

    let mut session = RxSession::restore(session_id(), Seq::ZERO);
    group.bench_function("in_order", |b| {
        b.iter(|| {
            for _ in 0..MESSAGE_COUNT {
                let seq = black_box(session.seq_delivered().next());
                let delivery = session.handle_msg(seq).expect("in order");
                debug_assert_eq!(delivery, Delivery::Deliver);
                black_box(delivery);
            }
        });
    });

    // A replay after a reconnect: everything arriving is at or below the watermark.
    let mut session = RxSession::restore(session_id(), Seq(MESSAGE_COUNT));
    group.bench_function("duplicate", |b| {
        b.iter(|| {
            for n in 1..=MESSAGE_COUNT {
                let delivery = session.handle_msg(black_box(Seq(n))).expect("a replay");
                debug_assert_eq!(delivery, Delivery::Duplicate);
                black_box(delivery);
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("session/rx_turn");
    group.throughput(Throughput::Elements(MESSAGE_COUNT));
    let mut session = RxSession::restore(session_id(), Seq::ZERO);
    let mut ack = AckState::new(AckPolicy::default());
    group.bench_function(BenchmarkId::new("messages_per_turn", TURN_LEN), |b| {
        b.iter(|| {
            for _ in 0..MESSAGE_COUNT / TURN_LEN {
                // The shard reads the clock once per loop turn.
                let now = Instant::now();
                for _ in 0..TURN_LEN {
                    let seq = black_box(session.seq_delivered().next());
                    black_box(session.handle_msg(seq).expect("in order"));
                    ack.handle_received(now, 1);
                }
                if ack.is_due(now) {
                    ack.handle_sent();
                }
            }
        });
    });
    group.finish();
}

fn session_id() -> SessionId {
    SessionId(Uuid::from_u128(0x5e55_1042))
}

static PAYLOAD: [u8; 64] = [0x42; 64];

/// Messages per iteration: one default ACK window, so every case ends fully acknowledged.
const MESSAGE_COUNT: u64 = 1024;
/// Messages received per loop turn in `rx/turn`.
const TURN_LEN: u64 = 64;

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = tx, rx
}
criterion_main!(benches);
