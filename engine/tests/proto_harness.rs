//! A deterministic two-node harness over the sans-IO protocol core (docs/protocol.md,
//! "Handshake", "Sessions" and "ACK").
//!
//! Two nodes keep their [`Sessions`] for the whole run and get new [`Connection`]s every time
//! the simulated link is cut. The link carries what `poll_transmit` produced in random-sized
//! chunks and, when cut, drops whatever is still in flight, exactly as a dead TCP connection
//! would. Both nodes publish throughout. Everything random comes from one seeded generator and
//! time is a simulated clock, so a failing seed replays exactly; every assertion names it.
//!
//! Checked: each message is delivered exactly once and in order, with the payload it was
//! published with; ACKs release each message once and in order; no connection ever sees a
//! protocol error or a lost message; and after a final quiet period everything is acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use ringwire::proto::ack::AckPolicy;
use ringwire::proto::connection::{CloseCause, Events};
use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
use ringwire::proto::handshake::Accepting;
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{Acked, Sessions};
use ringwire::proto::{Connection, ConnectionConfig, GoAwayReason, Seq, SessionId};

const SEED_COUNT: u64 = 200;
/// Steps with publishing, cuts and graceful closes.
const CHAOS_STEP_COUNT: u32 = 1500;
/// Upper bound on the steps of the final quiet period.
const QUIET_STEP_COUNT_MAX: u32 = 5000;
/// Steps the quiet period keeps running after everything was acknowledged.
const QUIET_TAIL_STEP_COUNT: u32 = 50;
const NAMES: [&str; 2] = ["node-a", "node-b"];

#[test]
fn exactly_once_in_order_across_cuts() {
    let mut totals = [0u64; 2];
    let mut cuts = 0;
    let mut closes = 0;
    for seed in 0..SEED_COUNT {
        let mut world = World::new(seed);
        world.run();
        totals[0] += world.nodes[0].published;
        totals[1] += world.nodes[1].published;
        cuts += world.cut_count;
        closes += world.close_count;
    }
    println!(
        "{SEED_COUNT} seeds: {} + {} messages, {cuts} cuts, {closes} of them graceful",
        totals[0], totals[1]
    );
}

/// One run: two nodes, a link, a clock and a generator, all owned by the seed.
struct World {
    seed: u64,
    rng: Rng,
    t0: Instant,
    elapsed: Duration,
    nodes: [Node; 2],
    /// `wires[i]` holds the bytes in flight towards node `i`.
    wires: [VecDeque<u8>; 2],
    link: Link,
    /// Links torn down, and how many of those after a CLOSE or GOAWAY.
    cut_count: u64,
    close_count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection; one is dialed once `step_count` steps have passed.
    Down {
        step_count: u32,
    },
    Up,
}

struct Node {
    config: Arc<ConnectionConfig>,
    sessions: Sessions,
    log: Log,
    endpoint: Endpoint,
    published: u64,
}

enum Endpoint {
    Down,
    Accepting(Accepting),
    Up(Connection),
}

/// What a node saw, checked as it happens.
struct Log {
    seed: u64,
    /// This node's index: it tags the payloads this node publishes.
    index: usize,
    /// The session the peer sends on.
    peer_session: SessionId,
    delivered: u64,
    acked: u64,
    /// Summed weights of what this node pushed, and of what acknowledgements released.
    pushed_weight: u64,
    released_weight: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let t0 = Instant::now();
        let ack = AckPolicy {
            count_max: rng.range(1, 64) as u32,
            delay: Duration::from_millis(rng.range(0, 30)),
        };
        let heartbeat = HeartbeatConfig {
            interval: Duration::from_millis(rng.range(200, 2000)),
            timeout: Duration::from_secs(10),
        };
        let session = |index: u128| SessionId(Uuid::from_u128(((seed as u128) << 8) | index));
        // Each side offers checksums and compression or not, so some runs negotiate them in one
        // direction only, and frames encoded before a HELLO are re-encoded after it.
        let crc = [rng.chance(500), rng.chance(500)];
        let lz4 = [0, 1].map(|_| rng.chance(500).then(|| rng.range(0, 1500) as usize));
        let node = |index: usize| {
            let config = Arc::new(ConnectionConfig {
                node_id: NAMES[index].into(),
                body_len_max: BODY_LEN_MAX_DEFAULT,
                batch: true,
                crc: crc[index],
                lz4_min_size: lz4[index],
                auth: None,
                handshake_timeout: Duration::from_secs(5),
                heartbeat,
                ack,
                epoch: t0,
            });
            let mut sessions = Sessions::new(session(index as u128 + 1));
            sessions.tx.set_encoding(config.encoding());
            Node {
                config,
                sessions,
                log: Log {
                    seed,
                    index,
                    peer_session: session(2 - index as u128),
                    delivered: 0,
                    acked: 0,
                    pushed_weight: 0,
                    released_weight: 0,
                },
                endpoint: Endpoint::Down,
                published: 0,
            }
        };
        World {
            seed,
            rng,
            t0,
            elapsed: Duration::ZERO,
            nodes: [node(0), node(1)],
            wires: [VecDeque::new(), VecDeque::new()],
            link: Link::Down { step_count: 0 },
            cut_count: 0,
            close_count: 0,
        }
    }

    fn run(&mut self) {
        let seed = self.seed;
        for _ in 0..CHAOS_STEP_COUNT {
            self.step(true);
        }
        let mut tail = 0;
        for _ in 0..QUIET_STEP_COUNT_MAX {
            self.step(false);
            if self.is_settled() {
                tail += 1;
                if tail == QUIET_TAIL_STEP_COUNT {
                    break;
                }
            } else {
                tail = 0;
            }
        }
        assert!(self.link == Link::Up, "seed {seed}: connected at the end");
        for (i, node) in self.nodes.iter().enumerate() {
            let peer = &self.nodes[1 - i];
            let name = NAMES[i];
            assert_eq!(
                node.log.delivered, peer.published,
                "seed {seed}: {name} delivered everything its peer published"
            );
            assert_eq!(
                node.sessions.rx.seq_delivered(),
                Seq(peer.published),
                "seed {seed}: {name}'s watermark"
            );
            assert_eq!(
                node.sessions.rx.id(),
                peer.sessions.tx.id(),
                "seed {seed}: {name} receives the peer's session"
            );
            assert_eq!(
                node.log.acked, node.published,
                "seed {seed}: everything {name} published was acknowledged"
            );
            assert_eq!(node.sessions.tx.seq_acked(), Seq(node.published));
            assert_eq!(
                node.sessions.tx.unacked_count(),
                0,
                "seed {seed}: {name} holds nothing unacknowledged"
            );
            assert_eq!(node.sessions.tx.unacked_payload_len(), 0, "seed {seed}");
            assert_eq!(
                node.log.released_weight, node.log.pushed_weight,
                "seed {seed}: {name} got back the weight of everything it pushed"
            );
        }
    }

    fn step(&mut self, chaos: bool) {
        self.elapsed += Duration::from_millis(self.rng.range(0, 20));
        let now = self.t0 + self.elapsed;

        if chaos {
            for i in 0..2 {
                if self.rng.chance(300) {
                    for _ in 0..self.rng.range(1, 5) {
                        self.publish(i);
                    }
                }
            }
        }

        match self.link {
            Link::Down { step_count: 0 } => self.connect(now),
            Link::Down { step_count } => {
                let step_count = if chaos { step_count - 1 } else { 0 };
                self.link = Link::Down { step_count };
            }
            Link::Up if chaos && self.rng.chance(10) => self.cut(),
            Link::Up if chaos && self.rng.chance(2) => self.close_gracefully(),
            Link::Up => {}
        }

        for i in 0..2 {
            self.transmit(i, now);
        }
        for i in 0..2 {
            // Deliver zero to three chunks in each direction.
            for _ in 0..self.rng.range(0, 3) {
                self.deliver(i, now);
            }
        }
        for i in 0..2 {
            self.check_timeouts(i, now);
        }
        self.check_closing();
    }

    fn publish(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let seq = node.sessions.tx.seq_next();
        assert_eq!(seq, Seq(node.published + 1), "seed {}", self.seed);
        let payload = payload(i, seq.0);
        // The weight is the payload's length, so the harness can check that every byte's
        // weight comes back exactly once. Large payloads go by reference sometimes.
        let weight = payload.len() as u64;
        node.log.pushed_weight += weight;
        if payload.len() > 1000 && self.rng.chance(2) {
            node.sessions.tx.push_shared(seq, payload, weight);
        } else {
            node.sessions.tx.push(seq, &payload, weight);
        }
        node.published += 1;
    }

    /// Dials from a random side; the other side's listener accepts at once.
    fn connect(&mut self, now: Instant) {
        let dialer = self.rng.range(0, 1) as usize;
        let acceptor = 1 - dialer;
        let node = &mut self.nodes[dialer];
        node.endpoint = Endpoint::Up(Connection::dial(
            node.config.clone(),
            NAMES[acceptor],
            &node.sessions,
            now,
        ));
        let node = &mut self.nodes[acceptor];
        node.endpoint = Endpoint::Accepting(Accepting::new(now + node.config.handshake_timeout));
        self.link = Link::Up;
    }

    /// The link dies: bytes in flight are lost and both sides forget their connection.
    fn cut(&mut self) {
        for wire in &mut self.wires {
            wire.clear();
        }
        for node in &mut self.nodes {
            node.endpoint = Endpoint::Down;
            node.sessions.tx.handle_disconnect();
        }
        self.link = Link::Down {
            step_count: self.rng.range(0, 30) as u32,
        };
        self.cut_count += 1;
    }

    /// One established side closes; the link is torn down once its CLOSE or GOAWAY arrived.
    fn close_gracefully(&mut self) {
        let established = self
            .nodes
            .iter()
            .all(|n| matches!(&n.endpoint, Endpoint::Up(c) if c.is_established()));
        if !established {
            return;
        }
        let i = self.rng.range(0, 1) as usize;
        let reason = if self.rng.chance(500) {
            GoAwayReason::Normal
        } else {
            GoAwayReason::Replaced
        };
        let node = &mut self.nodes[i];
        if let Endpoint::Up(conn) = &mut node.endpoint {
            conn.close(&node.sessions, reason, "harness");
        }
    }

    fn transmit(&mut self, i: usize, now: Instant) {
        let budget = match self.rng.range(0, 3) {
            0 => usize::MAX,
            _ => self.rng.range(1, 8192) as usize,
        };
        let node = &mut self.nodes[i];
        if let Endpoint::Up(conn) = &mut node.endpoint {
            let mut out = Vec::new();
            let mut data = Vec::new();
            conn.poll_transmit(&mut node.sessions, now, &mut out, &mut data, budget);
            self.wires[1 - i].extend(out);
            for slice in data {
                self.wires[1 - i].extend(slice);
            }
        }
    }

    /// Hands node `i` the next chunk of what is in flight towards it.
    fn deliver(&mut self, i: usize, now: Instant) {
        let seed = self.seed;
        let wire = &mut self.wires[i];
        if wire.is_empty() {
            return;
        }
        let len_max = if self.rng.chance(200) {
            wire.len()
        } else {
            self.rng.range(1, 512) as usize
        };
        let len = self.rng.range(1, len_max.min(wire.len()) as u64) as usize;
        let chunk: Vec<u8> = wire.drain(..len).collect();
        let node = &mut self.nodes[i];
        let name = NAMES[i];
        match &mut node.endpoint {
            Endpoint::Down => panic!("seed {seed}: bytes towards {name} without a connection"),
            Endpoint::Accepting(accepting) => {
                let hello = accepting
                    .handle_bytes(&chunk)
                    .unwrap_or_else(|err| panic!("seed {seed}: {name} accepting: {err}"));
                let Some(hello) = hello else { return };
                assert_eq!(hello.node_id, NAMES[1 - i], "seed {seed}");
                assert!(
                    self.wires[i].is_empty(),
                    "seed {seed}: nothing follows the dialer's hello"
                );
                let conn = Connection::accept(
                    node.config.clone(),
                    &hello,
                    &mut node.sessions,
                    now,
                    &mut node.log,
                )
                .unwrap_or_else(|err| panic!("seed {seed}: {name} accept: {err}"));
                node.endpoint = Endpoint::Up(conn);
            }
            Endpoint::Up(conn) => {
                conn.handle_bytes(&mut node.sessions, &chunk, now, &mut node.log)
                    .unwrap_or_else(|err| panic!("seed {seed}: {name} received: {err}"));
            }
        }
    }

    fn check_timeouts(&mut self, i: usize, now: Instant) {
        let seed = self.seed;
        let name = NAMES[i];
        match &mut self.nodes[i].endpoint {
            Endpoint::Down => {}
            Endpoint::Accepting(accepting) => {
                assert_eq!(accepting.handle_timeout(now), Ok(()), "seed {seed}: {name}");
            }
            Endpoint::Up(conn) => {
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    assert_eq!(conn.handle_timeout(now), Ok(()), "seed {seed}: {name}");
                }
                assert_eq!(
                    conn.lost_on_resume(),
                    0,
                    "seed {seed}: {name} lost messages"
                );
            }
        }
    }

    /// Tears the link down once a closing side's last frame reached its peer.
    fn check_closing(&mut self) {
        let seed = self.seed;
        let now = self.t0 + self.elapsed;
        let mut done = false;
        for (i, node) in self.nodes.iter().enumerate() {
            let Endpoint::Up(conn) = &node.endpoint else {
                continue;
            };
            let Some(cause) = conn.close_cause() else {
                continue;
            };
            let name = NAMES[i];
            match cause {
                CloseCause::Local(_) | CloseCause::CloseReceived => {}
                CloseCause::GoAwayReceived { reason, .. } => {
                    assert_eq!(*reason, GoAwayReason::Replaced, "seed {seed}: {name}");
                }
                other => panic!("seed {seed}: {name} closing: {other:?}"),
            }
            done |= self.wires[1 - i].is_empty() && !conn.wants_transmit(&node.sessions, now);
        }
        if done {
            self.close_count += 1;
            self.cut();
        }
    }

    fn is_settled(&self) -> bool {
        self.link == Link::Up
            && self.wires.iter().all(VecDeque::is_empty)
            && self.nodes.iter().all(|n| {
                n.sessions.tx.unacked_count() == 0
                    && matches!(&n.endpoint, Endpoint::Up(c) if c.is_established())
            })
    }
}

impl Events for Log {
    fn on_message(&mut self, session: SessionId, seq: Seq, bytes: &[u8]) {
        let seed = self.seed;
        let name = NAMES[self.index];
        assert_eq!(session, self.peer_session, "seed {seed}: {name} session");
        assert_eq!(
            seq.0,
            self.delivered + 1,
            "seed {seed}: {name} delivers in order, exactly once"
        );
        assert_eq!(
            bytes,
            &payload(1 - self.index, seq.0)[..],
            "seed {seed}: {name} payload of {seq}"
        );
        self.delivered = seq.0;
    }

    fn on_acked(&mut self, acked: Acked) {
        let seed = self.seed;
        let name = NAMES[self.index];
        assert!(
            acked.through.0 > self.acked,
            "seed {seed}: {name} acks only move forward"
        );
        assert_eq!(
            acked.count,
            acked.through.0 - self.acked,
            "seed {seed}: {name} acks count each message once"
        );
        self.acked = acked.through.0;
        self.released_weight += acked.weight;
        assert!(
            self.released_weight <= self.pushed_weight,
            "seed {seed}: {name} releases no more than it held"
        );
    }
}

/// The payload node `index` publishes as `seq`: mostly small, sometimes several chunks long.
fn payload(index: usize, seq: u64) -> Bytes {
    let mut rng = Rng::new(seq ^ ((index as u64) << 63));
    let len = if rng.chance(20) {
        rng.range(1000, 5000)
    } else {
        rng.range(0, 200)
    };
    let tag = rng.next_u64() as u8;
    (0..len)
        .map(|i| tag.wrapping_add(i as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// splitmix64: small, fast and good enough to drive a simulation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `low..=high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// True with a probability of `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}
