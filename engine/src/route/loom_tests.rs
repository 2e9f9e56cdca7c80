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
use crate::sync::{AtomicBool, Ordering};

/// Two producers race for the slots of a two-slot queue while the consumer pops: three
/// messages for two slots, so a push may find the queue full.
#[test]
fn loom_queue_two_producers_one_consumer() {
    check(Some(3), || {
        let queue = Arc::new(PeerQueue::new(2));
        let producers: Vec<_> = [vec![0, 1], vec![2]]
            .into_iter()
            .map(|tags| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || {
                    tags.into_iter()
                        .map(|tag| (tag, queue.push(message(tag))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let consumer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || (0..2).filter_map(|_| queue.pop()).collect::<Vec<_>>())
        };
        let pushes = producers.into_iter().map(join).collect();
        let popped = join(consumer);
        check_queue(&queue, 2, pushes, popped);
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
                                return (tag, Err(message(tag)));
                            }
                            // As `push_durable`: the position is read before the push.
                            let position = queue.pushed();
                            assert_eq!(queue.push_exclusive(message(tag)), position);
                            (tag, Ok(position))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let consumer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || (0..2).filter_map(|_| queue.pop()).collect::<Vec<_>>())
        };
        let pushes = producers.into_iter().map(join).collect();
        let popped = join(consumer);
        check_queue(&queue, 2, pushes, popped);
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

/// Checks a queue model's outcome: every accepted message is taken once, at the position its
/// push returned and in position order; a refused one is handed back intact, and only when
/// `capacity` messages were accepted (the queue was really full).
fn check_queue(
    queue: &PeerQueue,
    capacity: usize,
    pushes: Vec<Vec<(u8, Result<u64, Outgoing>)>>,
    mut popped: Vec<(u64, Outgoing)>,
) {
    popped.extend(std::iter::from_fn(|| queue.pop()));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for thread in pushes {
        let mut last = None;
        for (tag, result) in thread {
            match result {
                Ok(position) => {
                    assert!(
                        last < Some(position),
                        "one producer's positions go backwards"
                    );
                    last = Some(position);
                    accepted.push((position, tag));
                }
                Err(back) => {
                    assert_eq!(
                        tag_of(&back),
                        tag,
                        "a refused push handed back another value"
                    );
                    refused += 1;
                }
            }
        }
    }
    accepted.sort_unstable();
    let taken: Vec<(u64, u8)> = popped
        .iter()
        .map(|(position, outgoing)| (*position, tag_of(outgoing)))
        .collect();
    assert_eq!(
        taken, accepted,
        "taken once each, at its position, in order"
    );
    assert!(
        refused == 0 || accepted.len() >= capacity,
        "a push was refused with room in the queue"
    );
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

/// How the shard thread of a model ended.
#[derive(Debug, Clone, Copy)]
enum Sleep {
    /// `park` said there was no work: the shard sleeps until its eventfd is written.
    Parked,
    /// Work kept arriving; the shard runs another turn.
    Awake,
}

static TAGS: [u8; 4] = [0, 1, 2, 3];

/// Turns (drain, then try to park) the shard thread runs within a model.
const SHARD_TURNS: usize = 2;
