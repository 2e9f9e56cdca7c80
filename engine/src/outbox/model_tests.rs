//! A property test of the durable path against a model: random sequences of publish, transmit,
//! deliver, ack, disconnect, reconnect, and crashes of either side (memory lost, files kept)
//! never lose a message or deliver one twice, except the one redelivery a receiver crash
//! between its handler and its watermark store is documented to cost.
//!
//! The real pieces run: the shard outbox (segments, session table, recovery), the protocol's
//! sessions, and the receiver's watermark table, over real files. What the shard does between
//! them (restore a session from recovery, release on ACK, store the watermark after the
//! handler) is restated here in a few lines, and the wire is a queue that a disconnect empties.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::outbox::record;
use crate::outbox::store::{PEERS_MAX, Recovered, ShardOutbox};
use crate::outbox::watermarks::{Entry, Watermarks};
use crate::proto::frame::{Decoder, Frame as WireFrame};
use crate::proto::session::{Delivery, RxSession, TxSession};
use crate::proto::{Seq, SessionId};

const PEER: &str = "node-b";
const SEGMENT_LEN: usize = 4096;
const BYTES_MAX: usize = 8 * SEGMENT_LEN;

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Transmit(u8),
    Deliver(u8),
    Ack,
    Disconnect,
    Connect,
    CrashSender,
    CrashReceiver,
    /// The receiver's handler ran for the next message, then the process died before the
    /// watermark store.
    CrashReceiverAfterHandler,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Publish),
        3 => (1u8..60).prop_map(Op::Transmit),
        3 => (1u8..60).prop_map(Op::Deliver),
        2 => Just(Op::Ack),
        1 => Just(Op::Disconnect),
        2 => Just(Op::Connect),
        1 => Just(Op::CrashSender),
        1 => Just(Op::CrashReceiver),
        1 => Just(Op::CrashReceiverAfterHandler),
    ]
}

/// A frame on the wire: a message's seq and number, or a LOST stand-in.
type Frame = (Seq, Option<u64>);

struct Sender {
    outbox: ShardOutbox,
    slot: usize,
    tx: TxSession,
}

struct Receiver {
    table: Watermarks,
    slot: usize,
    stored: SessionId,
    rx: RxSession,
}

struct World {
    dir: PathBuf,
    sender: Sender,
    receiver: Receiver,
    wire: VecDeque<Frame>,
    connected: bool,
    /// Numbers `publish` accepted, in order.
    accepted: Vec<u64>,
    /// Numbers the receiver's handler saw, in order (its effects outlive receiver crashes).
    handled: Vec<u64>,
    next_number: u64,
    handler_crashes: usize,
}

fn payload(number: u64) -> Vec<u8> {
    let mut v = number.to_le_bytes().to_vec();
    v.resize(8 + (number % 50) as usize, number as u8);
    v
}

fn number(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

fn open_sender(dir: &Path) -> Sender {
    let (
        outbox,
        Recovered {
            mut messages,
            report,
        },
    ) = ShardOutbox::open(&dir.join("tx"), SEGMENT_LEN, BYTES_MAX, BYTES_MAX / 2).unwrap();
    assert_eq!(report.lost, 0, "nothing was damaged");
    let state = outbox.session(PEER);
    let slot = state.claim.get().expect("the table has room");
    let mut tx = TxSession::resuming(state.session, state.acked);
    for m in messages.remove(&slot).unwrap_or_default() {
        let payload = m.payload.expect("no record is damaged");
        tx.push(m.seq, &payload, record::space(payload.len()) as u64);
    }
    assert_eq!(
        tx.seq_next(),
        state.next,
        "recovery rebuilds up to the next seq"
    );
    Sender { outbox, slot, tx }
}

fn open_receiver(dir: &Path) -> Receiver {
    let mut table = Watermarks::open(&dir.join("received"), PEERS_MAX).unwrap();
    let slot = table.find_or_claim(PEER).unwrap();
    let entry = table.get(slot);
    let rx = if entry.session == SessionId::NIL {
        RxSession::new()
    } else {
        RxSession::restore(entry.session, entry.a)
    };
    Receiver {
        table,
        slot,
        stored: entry.session,
        rx,
    }
}

impl World {
    fn new(dir: PathBuf) -> World {
        World {
            sender: open_sender(&dir),
            receiver: open_receiver(&dir),
            dir,
            wire: VecDeque::new(),
            connected: false,
            accepted: Vec::new(),
            handled: Vec::new(),
            next_number: 0,
            handler_crashes: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish(n) => {
                for _ in 0..n {
                    self.publish();
                }
            }
            Op::Transmit(n) if self.connected => {
                // A budget of about n small frames: whole segments go out, so a transmit may
                // carry more than n messages, or fewer if nothing more was published.
                let mut slices = Vec::new();
                self.sender
                    .tx
                    .poll_transmit(usize::from(n) * 32, &mut slices);
                let mut decoder = Decoder::new(1 << 20);
                for slice in &slices {
                    decoder
                        .decode(slice, |frame| {
                            match frame {
                                WireFrame::Msg { seq, payload } => {
                                    self.wire.push_back((seq, Some(number(payload))));
                                }
                                // Each message on its own: the model may cut inside a batch,
                                // which is more than a real receiver can see.
                                WireFrame::MsgBatch { seq_first, entries } => self.wire.extend(
                                    (seq_first.0..)
                                        .map(Seq)
                                        .zip(entries.iter().map(|p| Some(number(p)))),
                                ),
                                WireFrame::Lost { seq } => self.wire.push_back((seq, None)),
                                other => panic!("unexpected frame {other:?}"),
                            }
                            Ok(())
                        })
                        .unwrap();
                }
            }
            Op::Deliver(n) => {
                for _ in 0..n {
                    let Some(frame) = self.wire.pop_front() else {
                        break;
                    };
                    self.receive(frame, true);
                }
            }
            Op::Ack if self.connected => self.ack(),
            Op::Disconnect => self.disconnect(),
            Op::Connect if !self.connected => self.connect(),
            Op::CrashSender => {
                self.disconnect();
                self.sender = open_sender(&self.dir);
            }
            Op::CrashReceiver => {
                self.disconnect();
                self.receiver = open_receiver(&self.dir);
            }
            Op::CrashReceiverAfterHandler => {
                if let Some(frame) = self.wire.pop_front() {
                    if self.receive(frame, false) {
                        self.handler_crashes += 1;
                    }
                    self.disconnect();
                    self.receiver = open_receiver(&self.dir);
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self) {
        let number = self.next_number;
        let seq = self.sender.tx.seq_next();
        let mut appender = self.sender.outbox.appender();
        let slot = self.sender.slot;
        let Ok(()) = appender.append(slot, self.sender.tx.id(), seq, &payload(number)) else {
            return; // refused (outbox full): not accepted, so nothing is owed
        };
        appender.set_next(self.sender.slot, seq.next());
        drop(appender);
        let payload = payload(number);
        self.sender
            .tx
            .push(seq, &payload, record::space(payload.len()) as u64);
        self.accepted.push(number);
        self.next_number += 1;
    }

    /// Runs the receiver on one frame; returns whether the handler ran. `store` false models
    /// a crash between the handler and the watermark store.
    fn receive(&mut self, (seq, number): Frame, store: bool) -> bool {
        let r = &mut self.receiver;
        let delivery = r.rx.handle_msg(seq).expect("TCP order: no gaps");
        if delivery == Delivery::Duplicate {
            return false;
        }
        let number = number.expect("nothing is lost in this model");
        self.handled.push(number);
        if store {
            let session = r.rx.id();
            if session == r.stored {
                r.table.set_a(r.slot, seq);
            } else {
                let entry = Entry {
                    session,
                    a: seq,
                    b: Seq::ZERO,
                };
                r.table.set(r.slot, entry);
                r.stored = session;
            }
        }
        true
    }

    fn ack(&mut self) {
        // The receiver acknowledges its watermark, which covers only what reached it.
        let mut bytes = 0;
        let acked = self.receiver.rx.seq_delivered();
        bytes += self.sender.tx.handle_ack(acked).unwrap().weight;
        let seq = self.sender.tx.seq_acked();
        self.sender
            .outbox
            .release(&[(self.sender.slot, seq, bytes)]);
    }

    fn disconnect(&mut self) {
        self.wire.clear();
        self.sender.tx.handle_disconnect();
        self.connected = false;
    }

    fn connect(&mut self) {
        // HELLO both ways: the sender resumes after the receiver's watermark of its session,
        // the receiver learns the sender's session and first held seq.
        let mut bytes = 0;
        let (rx_id, delivered) = (self.receiver.rx.id(), self.receiver.rx.seq_delivered());
        bytes += self.sender.tx.resume(rx_id, delivered).unwrap().weight;
        let seq = self.sender.tx.seq_acked();
        self.sender
            .outbox
            .release(&[(self.sender.slot, seq, bytes)]);
        let (tx_id, first) = (self.sender.tx.id(), self.sender.tx.seq_first());
        let lost = self.receiver.rx.resume(tx_id, first);
        assert_eq!(
            lost, 0,
            "the receiver never falls behind what the sender dropped"
        );
        self.connected = true;
    }

    /// Reconnects and runs the exchange until everything is acknowledged.
    fn settle(&mut self) {
        self.disconnect();
        self.connect();
        for _ in 0..10_000 {
            self.apply(&Op::Transmit(255));
            self.apply(&Op::Deliver(255));
            self.ack();
            if self.sender.tx.unacked_count() == 0 {
                return;
            }
        }
        panic!("the exchange never settled");
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_crashes_loses_or_duplicates(ops in prop::collection::vec(op(), 1..100)) {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "ringwire-model-{}-{:x}",
            std::process::id(),
            uuid::Uuid::new_v4().as_u128() as u64
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut world = World::new(dir.0.clone());
        for op in &ops {
            world.apply(op);
        }
        world.settle();
        // Every accepted message was handled, in order; the only repeats are the messages a
        // crash after the handler cost, each handled twice in a row.
        let mut deduped = world.handled.clone();
        deduped.dedup();
        prop_assert_eq!(&deduped, &world.accepted);
        let repeats = world.handled.len() - deduped.len();
        prop_assert!(repeats <= world.handler_crashes, "{} repeats, {} crashes", repeats, world.handler_crashes);
        // A sender restarted now resumes after the last accepted message with nothing owed.
        drop(world.sender);
        let sender = open_sender(&dir.0);
        prop_assert_eq!(sender.tx.unacked_count(), 0);
        prop_assert_eq!(sender.tx.seq_next().0, world.accepted.len() as u64 + 1);
    }
}
