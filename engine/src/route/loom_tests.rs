//! Loom models of the cross-thread code in `route/`: the peer queue, and the `notified` and
//! `parked` flags that put a peer on its shard's ready list and wake a parked shard.
//!
//! Run them with (a separate target directory, since the cfg rebuilds every crate):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p ringwire --lib --release loom
//! ```
//!
//! Each model explores every interleaving, and every value a load may return under the C11
//! memory model, exhaustively or up to a bound on preemptions chosen so that the whole set runs
//! in well under a minute on two cores (`LOOM_MAX_PREEMPTIONS` overrides the bounds; each model
//! also passes with 5). loom treats a SeqCst load or store as AcqRel and models only
//! `fence(SeqCst)` exactly, so a store-then-load handshake between two threads passes here only
//! if it is carried by a fence: that is why the code under test has its fences, and is why these
//! models prove the orderings it uses rather than stronger ones.
//!
//! The shard side is written out here as the shard runs it (`shard/peer.rs` `drain_peers` and
//! `drain_peer`, `shard/mod.rs` `wait`); keep the two in step. After the model's threads end,
//! the test thread plays the shard's next turns: if the shard is awake, or asleep with a
//! wake-up in its eventfd, it drains once more. Every accepted message must then have been
//! taken, in sequence order: a message left behind is a lost wake-up.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use loom::sync::Mutex;
use loom::thread;

use crate::proto::SessionId;
use crate::proto::id::NodeId;
use crate::route::ShardId;
use crate::route::mailbox::{Command, Mailbox};
use crate::route::peer::PeerShared;
use crate::route::queue::{Outgoing, PeerQueue};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// Two producers race for the slots of a two-slot queue while the consumer pops: three
/// messages for two slots, so a push may find the queue full.
#[test]
fn loom_queue_two_producers_one_consumer() {
    check(Some(3), || {
        queue_model(
            2,
            &[&[Produce::Push(0), Produce::Push(1)], &[Produce::Push(2)]],
            &[Consume::Pop, Consume::Pop],
        );
    });
}

/// A batch of two races a single push for the two slots while the consumer pops: the batch
/// fits only into an empty queue, so either producer may be refused; an accepted batch takes
/// both slots with one reservation, so a full-queue check on the wrong slot overwrites the
/// single push's value.
#[test]
fn loom_queue_batch_and_push_two_slots() {
    check(Some(3), || {
        queue_model(
            2,
            &[&[Produce::Batch(&[0, 1])], &[Produce::Push(2)]],
            &[Consume::Pop, Consume::Pop],
        );
    });
}

/// Two batches of two and a single push race for four slots while the consumer pops: five
/// messages, so the second batch may find one slot free but not two and must then be refused
/// whole, and a batch that wraps (positions 3 and 4) relies on the consumer having freed the
/// first slot of the ring.
#[test]
fn loom_queue_batches_and_push_four_slots() {
    check(Some(2), || {
        queue_model(
            4,
            &[
                &[Produce::Batch(&[0, 1]), Produce::Batch(&[2, 3])],
                &[Produce::Push(4)],
            ],
            &[Consume::Pop, Consume::Pop],
        );
    });
}

/// The shard takes positions for messages it publishes itself (`claim_consumed`, as
/// `shard/source.rs` does) around its pops while a producer pushes into two slots: claims and
/// pushes share one sequence, a claim never overtakes a pushed message the shard has not popped
/// (not even one whose producer has not finished writing it), and the producer's second lap
/// lands in slots that claims freed.
///
/// The shard never claims, pops and claims again here: a push after that can read the tail
/// the second claim advanced with the head and stamp from before the pop, a stale view that
/// `push` retries without a spin hint, so loom, which has no eventual visibility, spins on it
/// forever (three producers reach the same view without claims). The next model covers that
/// order with a batch, whose full-queue check refuses on such a view instead.
#[test]
fn loom_queue_claims_between_pops() {
    check(Some(5), || {
        queue_model(
            2,
            &[&[Produce::Push(0), Produce::Push(1)]],
            &[
                Consume::Pop,
                Consume::Claim(1),
                Consume::Claim(1),
                Consume::Pop,
                Consume::Pop,
            ],
        );
    });
}

/// A producer pushes, then reserves two positions for a batch, while the shard claims and pops
/// in turn in a two-slot queue: the batch fits only into an empty queue, races the claims for
/// the tail, and wraps into slots that a claim and a pop freed, trusting the claim's stamp
/// (the last slot's) to publish the pop before it.
#[test]
fn loom_queue_claims_and_batch() {
    check(Some(5), || {
        queue_model(
            2,
            &[&[Produce::Push(0), Produce::Batch(&[1, 2])]],
            &[
                Consume::Claim(1),
                Consume::Pop,
                Consume::Claim(1),
                Consume::Pop,
            ],
        );
    });
}

/// The shard claims two positions at once (a source's batch) between pops while a producer
/// pushes three messages into a two-slot queue: the run is taken only when every pushed
/// message was popped, and the producer's later laps land in the slots the run freed.
#[test]
fn loom_queue_claim_run_between_pops() {
    check(Some(5), || {
        queue_model(
            2,
            &[&[Produce::Push(0), Produce::Push(1), Produce::Push(2)]],
            &[Consume::Pop, Consume::Claim(2), Consume::Pop, Consume::Pop],
        );
    });
}

/// The durable path: every producer holds one lock (the outbox appender's), checks for room
/// and pushes without a CAS, while the consumer pops.
#[test]
fn loom_queue_exclusive_producers_one_consumer() {
    check(Some(4), || {
        let queue = Arc::new(PeerQueue::new(2));
        let lock = Arc::new(Mutex::new(()));
        let producers: Vec<_> = [vec![0, 1], vec![2]]
            .into_iter()
            .map(|tags| {
                let queue = Arc::clone(&queue);
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    tags.into_iter()
                        .map(|tag| {
                            let _appender = lock.lock().expect("no model thread panics");
                            if !queue.has_room_exclusive() {
                                return Offer::refused(vec![tag], vec![tag]);
                            }
                            // As `push_durable`: the position is read before the push.
                            let position = queue.pushed();
                            assert_eq!(queue.push_exclusive(message(tag)), position);
                            Offer::accepted(vec![tag], position)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let consumer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || consume(&queue, &[Consume::Pop, Consume::Pop]))
        };
        let offers = producers.into_iter().map(join).collect();
        let taken = join(consumer);
        check_queue(&queue, 2, offers, taken);
    });
}

/// One publisher sends two messages while the shard drains, clears `notified` and parks: the
/// second publish races with the drain of the first.
#[test]
fn loom_notify_one_publisher_two_messages() {
    check(None, || notify_model(&[&[0, 1]]));
}

/// Two publishers race to be the one that puts the peer on the ready list and wakes the shard.
#[test]
fn loom_notify_two_publishers() {
    check(Some(4), || notify_model(&[&[0], &[1]]));
}

/// A control command sent while the shard parks: the shard runs it or is woken.
#[test]
fn loom_command_wakes_parking_shard() {
    check(None, || {
        let mailbox = Arc::new(Mailbox::new().expect("the model's eventfd cannot fail"));
        let sender = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || mailbox.send(Command::Shutdown { drain_until: None }))
        };
        let shard = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || {
                let mut commands = 0;
                for _ in 0..SHARD_TURNS {
                    while mailbox.commands.pop().is_some() {
                        commands += 1;
                    }
                    if mailbox.park() {
                        return (commands, Sleep::Parked);
                    }
                }
                (commands, Sleep::Awake)
            })
        };
        join(sender);
        let (mut commands, sleep) = join(shard);
        if wakes_up(&mailbox, sleep) {
            while mailbox.commands.pop().is_some() {
                commands += 1;
            }
        }
        assert_eq!(
            commands, 1,
            "the command was neither run nor woke the shard"
        );
    });
}

/// Publishers push through `PeerShared::push` (queue, then `notify`) while a shard thread runs
/// its turns: drain the ready peers, then park. `publishers` lists each thread's messages.
fn notify_model(publishers: &[&[u8]]) {
    let mailbox = Arc::new(Mailbox::new().expect("the model's eventfd cannot fail"));
    let peer = Arc::new(PeerShared {
        key: 0,
        node_id: NodeId::from("peer"),
        shard: ShardId(0),
        tx_session: SessionId::default(),
        queue: PeerQueue::new(4),
        durable: None,
        notified: AtomicBool::new(false),
        mailbox: Arc::clone(&mailbox),
        published: CachePadded::default(),
        payload_len_max: AtomicU64::new(u64::MAX),
        outbound_limit: None,
    });
    let threads: Vec<_> = publishers
        .iter()
        .map(|tags| {
            let peer = Arc::clone(&peer);
            let tags = tags.to_vec();
            thread::spawn(move || {
                for tag in tags {
                    assert!(peer.push(message(tag)).is_ok(), "the model never fills it");
                }
            })
        })
        .collect();
    let shard = {
        let mailbox = Arc::clone(&mailbox);
        thread::spawn(move || {
            let mut taken = Vec::new();
            for _ in 0..SHARD_TURNS {
                drain(&mailbox, &mut taken);
                if mailbox.park() {
                    return (taken, Sleep::Parked);
                }
            }
            (taken, Sleep::Awake)
        })
    };
    threads.into_iter().for_each(join);
    let (mut taken, sleep) = join(shard);
    if wakes_up(&mailbox, sleep) {
        drain(&mailbox, &mut taken);
    }
    let positions: Vec<u64> = taken.iter().map(|(position, _)| *position).collect();
    let published = publishers.iter().map(|tags| tags.len() as u64).sum();
    assert_eq!(
        positions,
        (0..published).collect::<Vec<_>>(),
        "a published message was left in the queue with the shard asleep (lost wake-up), or \
         taken out of order"
    );
    for tags in publishers {
        let order: Vec<u8> = taken
            .iter()
            .map(|(_, tag)| *tag)
            .filter(|tag| tags.contains(tag))
            .collect();
        assert_eq!(order, *tags, "one publisher's messages out of order");
    }
}

/// The shard's `drain_peers` and `drain_peer`, without the budgets (the model never hits one).
fn drain(mailbox: &Mailbox, taken: &mut Vec<(u64, u8)>) {
    while let Some(peer) = mailbox.ready.pop() {
        // As `drain_peers`: cleared before popping, with the shard's ordering.
        peer.notified.store(false, Ordering::SeqCst);
        while let Some((position, outgoing)) = peer.queue.pop() {
            taken.push((position, tag_of(&outgoing)));
        }
    }
}

/// What the shard does after its last modelled turn: a parked shard that finds a wake-up in
/// its eventfd unparks; an awake one goes on. Returns whether it runs another turn.
fn wakes_up(mailbox: &Mailbox, sleep: Sleep) -> bool {
    match sleep {
        Sleep::Awake => true,
        Sleep::Parked => {
            let woken = mailbox.take_wakes() > 0;
            if woken {
                mailbox.unpark();
            }
            woken
        }
    }
}

/// A queue model: each of `producers` runs its calls in its own thread while the consumer
/// runs `turns`, then [`check_queue`] judges the outcome.
fn queue_model(capacity: usize, producers: &[&[Produce]], turns: &'static [Consume]) {
    let queue = Arc::new(PeerQueue::new(capacity));
    let producers: Vec<_> = producers
        .iter()
        .map(|calls| {
            let queue = Arc::clone(&queue);
            let calls = calls.to_vec();
            thread::spawn(move || {
                calls
                    .into_iter()
                    .map(|call| produce(&queue, call))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let consumer = {
        let queue = Arc::clone(&queue);
        thread::spawn(move || consume(&queue, turns))
    };
    let offers = producers.into_iter().map(join).collect();
    let taken = join(consumer);
    check_queue(&queue, capacity, offers, taken);
}

/// Makes one producer call, and checks what an accepted or refused batch leaves in its `Vec`.
fn produce(queue: &PeerQueue, call: Produce) -> Offer {
    match call {
        Produce::Push(tag) => match queue.push(message(tag)) {
            Ok(position) => Offer::accepted(vec![tag], position),
            Err(back) => Offer::refused(vec![tag], vec![tag_of(&back)]),
        },
        Produce::Batch(tags) => {
            let mut payloads = tags.iter().map(|&tag| message(tag).payload).collect();
            let first = queue.push_batch(&mut payloads);
            let left: Vec<u8> = payloads.iter().map(|payload| payload[0]).collect();
            match first {
                Some(first) => {
                    assert!(left.is_empty(), "an accepted batch left payloads behind");
                    Offer::accepted(tags.to_vec(), first)
                }
                None => Offer::refused(tags.to_vec(), left),
            }
        }
    }
}

/// Runs the consumer's `turns`, returning what each successful one took: a popped message's
/// position and tag, or a claimed position with no tag.
fn consume(queue: &PeerQueue, turns: &[Consume]) -> Vec<(u64, Option<u8>)> {
    let mut taken = Vec::new();
    for turn in turns {
        match *turn {
            Consume::Pop => taken.extend(
                queue
                    .pop()
                    .map(|(position, outgoing)| (position, Some(tag_of(&outgoing)))),
            ),
            Consume::Claim(count) => {
                if let Some(first) = queue.claim_consumed(count) {
                    taken.extend((first..first + count).map(|position| (position, None)));
                }
            }
        }
    }
    taken
}

/// Checks a queue model's outcome, after the consumer pops what is left:
///
/// - Every position handed out (`pushed()` of them, by producers and by claims) is taken once
///   and in order, so a claim never comes before a pushed message below it.
/// - Each accepted message is popped at its position: a batch's at consecutive positions from
///   the one it returned. Nothing else is popped.
/// - A refused call hands back exactly what it offered, and only when the queue had no room:
///   the refusing producer saw a tail at least `capacity - len + 1` above a head, so at least
///   that many positions went to others or to this producer's earlier calls. (A weak memory
///   model lets the producer see a stale head, so positions, not messages still queued in
///   real time, are what a refusal can be held to.)
/// - The ring is not left wedged: once drained it takes `capacity` more pushes, the next lap.
fn check_queue(
    queue: &PeerQueue,
    capacity: usize,
    offers: Vec<Vec<Offer>>,
    mut taken: Vec<(u64, Option<u8>)>,
) {
    taken.extend(
        std::iter::from_fn(|| queue.pop())
            .map(|(position, outgoing)| (position, Some(tag_of(&outgoing)))),
    );
    let handed_out = queue.pushed();
    assert_eq!(
        taken
            .iter()
            .map(|(position, _)| *position)
            .collect::<Vec<_>>(),
        (0..handed_out).collect::<Vec<_>>(),
        "every position taken once, in order"
    );
    let mut expected: Vec<(u64, Option<u8>)> = taken
        .iter()
        .filter(|(_, tag)| tag.is_none())
        .copied()
        .collect();
    for (thread, calls) in offers.iter().enumerate() {
        let mut last = None;
        for (index, offer) in calls.iter().enumerate() {
            match &offer.result {
                Ok(first) => {
                    assert!(last < Some(*first), "one producer's positions go backwards");
                    last = Some(*first);
                    expected.extend(
                        (*first..)
                            .zip(&offer.tags)
                            .map(|(position, tag)| (position, Some(*tag))),
                    );
                }
                Err(back) => {
                    assert_eq!(
                        *back, offer.tags,
                        "a refused call handed back another value"
                    );
                    let later: usize = calls[index + 1..]
                        .iter()
                        .filter(|later| later.result.is_ok())
                        .map(|later| later.tags.len())
                        .sum();
                    let before = handed_out as usize - later;
                    assert!(
                        before + offer.tags.len() > capacity,
                        "thread {thread}'s call {index} was refused with room in the queue"
                    );
                }
            }
        }
    }
    expected.sort_unstable();
    assert_eq!(
        taken, expected,
        "each accepted message popped once, at its position"
    );
    for tag in 0..capacity as u8 {
        assert_eq!(
            queue.push(message(tag)).ok(),
            Some(handed_out + u64::from(tag)),
            "the drained queue refused the next lap"
        );
    }
    for tag in 0..capacity as u8 {
        assert_eq!(
            queue
                .pop()
                .map(|(position, outgoing)| (position, tag_of(&outgoing))),
            Some((handed_out + u64::from(tag), tag)),
            "the next lap popped out of order"
        );
    }
}

/// Runs the model `f` with at most `preemption_bound` preemptions per execution (`None`: no
/// bound), unless `LOOM_MAX_PREEMPTIONS` says otherwise.
fn check(preemption_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(f);
}

fn join<T: 'static>(handle: thread::JoinHandle<T>) -> T {
    handle.join().expect("a model thread panicked")
}

fn message(tag: u8) -> Outgoing {
    Outgoing {
        payload: Bytes::from_static(&TAGS[tag as usize..=tag as usize]),
        confirm: None,
    }
}

fn tag_of(outgoing: &Outgoing) -> u8 {
    outgoing.payload[0]
}

/// A producer call in a queue model.
#[derive(Debug, Clone, Copy)]
enum Produce {
    /// `push` one message with this tag.
    Push(u8),
    /// `push_batch` messages with these tags.
    Batch(&'static [u8]),
}

/// A consumer turn in a queue model.
#[derive(Debug, Clone, Copy)]
enum Consume {
    /// `pop` the next message.
    Pop,
    /// `claim_consumed` the next positions for messages the shard publishes itself.
    Claim(u64),
}

/// What one producer call offered (its messages' tags) and got: the first position, or the
/// tags of what it handed back.
#[derive(Debug)]
struct Offer {
    tags: Vec<u8>,
    result: Result<u64, Vec<u8>>,
}

impl Offer {
    fn accepted(tags: Vec<u8>, first: u64) -> Offer {
        Offer {
            tags,
            result: Ok(first),
        }
    }

    fn refused(tags: Vec<u8>, back: Vec<u8>) -> Offer {
        Offer {
            tags,
            result: Err(back),
        }
    }
}

/// How the shard thread of a model ended.
#[derive(Debug, Clone, Copy)]
enum Sleep {
    /// `park` said there was no work: the shard sleeps until its eventfd is written.
    Parked,
    /// Work kept arriving; the shard runs another turn.
    Awake,
}

static TAGS: [u8; 5] = [0, 1, 2, 3, 4];

/// Turns (drain, then try to park) the shard thread runs within a model.
const SHARD_TURNS: usize = 2;
