//! Shards: one thread per core, each with its own io_uring, connections, peers and timers.
//!
//! A shard owns everything it touches, so the hot path takes no lock. It is glue: it reaps
//! completions, feeds bytes and time to the `proto` state machines, and submits what they ask
//! for. One loop turn reads the clock once and is bounded: at most `CQE_BUDGET` completions,
//! `COMMAND_BUDGET` commands and `DRAIN_BUDGET` messages per peer, and one send per connection.
//!
//! Invariants: a connection slot is freed only once no operation references it; a receive
//! buffer is handed back to the kernel in the same turn it was reaped; a connection is bound to
//! at most one peer and a peer to at most one connection.
//!
//! This module never decides protocol policy (when to ack, ping or give up): `proto` does.
//!
//! Files: `mod.rs` the thread, the shard's state and one loop turn; `ring`, `bufring` the
//! io_uring and its provided receive buffers; `completion`, `service`, `teardown` reaping,
//! submitting and quiescing operations; `conn` a connection slot; `handshake`, `recv`, `close`
//! a connection from accept or connect to its end; `peer`, `dial` a peer's shard-local state
//! and its redials; `events` protocol events into the handler; `timer`, `command`,
//! `shutdown`, `durable`, `window` the rest of a turn.

mod bufring;
mod close;
mod command;
mod completion;
mod conn;
mod dial;
mod durable;
mod events;
mod handshake;
mod link;
mod op;
mod peer;
mod recv;
mod ring;
mod service;
mod shutdown;
mod slots;
mod source;
mod teardown;
mod timer;
mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::{Counters, SharedCounters};
use crate::outbox::directory::ShardDurable;
use crate::proto::connection::ConnectionConfig;
use crate::route::handler::Handler;
use crate::route::router::Router;
use crate::route::{Mailbox, ShardId};
use crate::security::tls::TlsContext;
use crate::sys::affinity;

use bufring::BufRing;
use conn::Conn;
use durable::DurableState;
use op::{AcceptOp, WakeOp};
use peer::PeerState;
use ring::Ring;
use shutdown::Shutdown;
use slots::{ConnId, PeerIndex, Slots};
use source::SourceSlot;
use timer::Timer;

/// What a shard thread starts from.
pub(crate) struct Init {
    pub id: ShardId,
    pub router: Arc<Router>,
    /// Where this shard publishes its counters for `Engine::stats`.
    pub counters: Arc<CachePadded<SharedCounters>>,
    pub handler: Arc<dyn Handler>,
    pub listener: Option<OwnedFd>,
    pub ready: mpsc::Sender<Result<(), Error>>,
    pub durable: Option<ShardDurable>,
    /// The engine's TLS settings, if its connections are encrypted.
    pub tls: Option<Arc<TlsContext>>,
}

/// The shard thread's body: sets up the ring, reports readiness, runs the loop, tears down.
pub(crate) fn run(init: Init) {
    let config = Arc::clone(&init.router.config);
    if config.pin_shards {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Err(e) = affinity::pin_to_core((config.first_core + init.id.0) % cores) {
            tracing::warn!(shard = init.id.0, error = %e, "could not pin shard thread");
        }
    }
    let ring = match Ring::new(config.ring_entries) {
        Ok(ring) => ring,
        Err(e) => {
            let _ = init.ready.send(Err(Error::Unsupported(format!(
                "io_uring setup failed: {e}"
            ))));
            return;
        }
    };
    let bufs = match BufRing::new(&ring, config.recv_buf_count, config.recv_buf_len, 0) {
        Ok(bufs) => bufs,
        Err(e) => {
            let _ = init.ready.send(Err(Error::Unsupported(format!(
                "provided buffer ring registration failed (needs Linux 5.19+): {e}"
            ))));
            return;
        }
    };
    let mut shard = Shard::new(init, ring, bufs, config);
    // Counters set at start (what recovery found) are visible as soon as `start` returns.
    shard.st.shared_counters.publish(&shard.st.counters);
    let _ = shard.ready.send(Ok(()));
    // A panic in a handler or a source, or a ring that stops working, ends this shard but not
    // silently: its peers' publishes fail with the reason and `stats()` counts it. Teardown
    // still runs, so buffers the kernel may use are not freed under it.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| shard.run_loop()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("io_uring_enter failed: {e}")),
        Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
    };
    if let Some(reason) = failure {
        tracing::error!(shard = shard.st.id.0, reason, "shard stopped on a failure");
        shard.st.router.failures[shard.st.id.0].set(reason);
        shard.st.fail_all();
    }
    if !shard.teardown() {
        // Some operation never completed: the kernel may still write into the receive buffers
        // or read the send buffers, so they must never be freed.
        tracing::error!(
            shard = shard.st.id.0,
            "operations still in flight at exit; leaking buffers"
        );
        std::mem::forget(shard);
    }
}

const CQE_BUDGET: usize = 4096;
/// How long an idle shard with `idle_spin` spins without yielding before it starts yielding
/// between checks: long enough for a round trip on a local link (tens of microseconds), short
/// enough not to starve a thread sharing the core for long.
const HOT_SPIN: Duration = Duration::from_micros(50);
const COMMAND_BUDGET: usize = 64;
const DRAIN_BUDGET: usize = 16 * 1024;
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);
const CLOSE_GRACE: Duration = Duration::from_secs(1);

struct Shard {
    ring: Ring,
    /// Declared after `ring` so it is unmapped after the ring is closed.
    bufs: BufRing,
    st: State,
    ready: mpsc::Sender<Result<(), Error>>,
    listener: Option<OwnedFd>,
    accept: AcceptOp,
    wake: WakeOp,
    /// Reaped completions: (user_data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
}

/// Everything but the ring: what completions and timers act on.
struct State {
    id: ShardId,
    /// Accepted connections still in their handshake (phase `Accepting`): held against
    /// `Config::handshakes_max`.
    accepting: usize,
    /// The engine's TLS settings: every connection gets a TLS link.
    tls: Option<Arc<TlsContext>>,
    router: Arc<Router>,
    shared_counters: Arc<CachePadded<SharedCounters>>,
    config: Arc<Config>,
    proto_config: Arc<ConnectionConfig>,
    handler: Arc<dyn Handler>,
    mailbox: Arc<Mailbox>,
    conns: Slots<ConnId, Conn>,
    generation_next: u32,
    peers: Slots<PeerIndex, PeerState>,
    peer_by_key: HashMap<u32, PeerIndex>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Connections to service at the end of the turn.
    dirty: Vec<ConnId>,
    /// Peers whose publish queue may hold more than one turn drained.
    drain_again: Vec<PeerIndex>,
    /// The stage's vector between turns (see `route/stage.rs`), kept for its allocation.
    staged: Vec<crate::route::stage::Staged>,
    counters: Counters,
    rng: u64,
    shutdown: Option<Shutdown>,
    now: Instant,
    durable: Option<DurableState>,
    /// When the `Window` timer is due, if armed.
    window_timer: Option<Instant>,
    /// The application's sources on this shard.
    sources: Vec<SourceSlot>,
    /// Peers that sources published to this turn.
    touched: Vec<PeerIndex>,
}

impl Shard {
    fn new(init: Init, ring: Ring, bufs: BufRing, config: Arc<Config>) -> Shard {
        let now = Instant::now();
        let outbox_lost = init.durable.as_ref().map_or(0, |d| d.recovered.report.lost);
        let proto_config = Arc::new(ConnectionConfig {
            node_id: config.node_id.as_str().into(),
            body_len_max: config.body_len_max,
            batch: config.batch_frames,
            crc: config.crc_enabled(),
            lz4_min_size: config
                .compression
                .enabled
                .then_some(config.compression.min_size),
            auth: config.auth_token.as_ref().map(|token| {
                Arc::new(crate::security::auth::HmacAuth::new(token))
                    as Arc<dyn crate::proto::auth::Authenticator>
            }),
            handshake_timeout: config.handshake_timeout,
            heartbeat: config.heartbeat,
            ack: config.ack,
            epoch: now,
        });
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        Shard {
            ring,
            bufs,
            ready: init.ready,
            listener: init.listener,
            accept: AcceptOp::default(),
            wake: WakeOp::default(),
            cqes: Vec::with_capacity(CQE_BUDGET),
            st: State {
                counters: Counters {
                    outbox_lost,
                    ..Counters::default()
                },
                id: init.id,
                accepting: 0,
                tls: init.tls,
                mailbox: Arc::clone(&init.router.mailboxes[init.id.0]),
                router: init.router,
                shared_counters: init.counters,
                config,
                proto_config,
                handler: init.handler,
                conns: Slots::new(),
                generation_next: 1,
                peers: Slots::new(),
                peer_by_key: HashMap::new(),
                timers: BinaryHeap::new(),
                dirty: Vec::new(),
                drain_again: Vec::new(),
                staged: Vec::new(),
                rng: seed,
                shutdown: None,
                now,
                window_timer: None,
                sources: Vec::new(),
                touched: Vec::new(),
                durable: init.durable.map(|d| DurableState {
                    outbox: d.outbox,
                    recovered: d.recovered.messages,
                    received: d.received,
                    acked: Vec::new(),
                    last_sync: now,
                    received_dirty: false,
                }),
            },
        }
    }

    /// Runs loop turns until shutdown completes; fails if the ring does.
    fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            self.st.now = Instant::now();
            self.st.counters.loop_turns += 1;
            self.reap();
            self.st.run_commands();
            self.st.drain_peers();
            self.st.poll_sources();
            self.st.sync_outbox();
            self.st.fire_timers();
            if self.st.advance_shutdown() {
                return Ok(());
            }
            self.service_all();
            if self.st.is_closed() {
                return Ok(());
            }
            self.arm_reserved();
            self.st.release_acked();
            self.st.counters.ring_enters = self.ring.enters;
            self.st.shared_counters.publish(&self.st.counters);
            self.wait()?;
        }
    }

    /// Submits what was queued and, if there is nothing to do, parks until a completion, a
    /// wake-up or the next timer.
    fn wait(&mut self) -> std::io::Result<()> {
        let busy = !self.ring.uring.completion().is_empty()
            || !self.st.drain_again.is_empty()
            || !self.st.dirty.is_empty()
            || !self.st.mailbox.commands.is_empty()
            || !self.st.mailbox.ready.is_empty()
            || self.st.has_ready_source();
        if busy {
            return self.ring.submit(false, None);
        }
        let spin = self.st.config.idle_spin;
        if !spin.is_zero() {
            self.ring.submit(false, None)?;
            // Spin no longer than until the next timer or source poll is due: that turn must
            // run on time, not at the end of the spin.
            let until = match self.st.next_timer() {
                Some(at) => at.min(self.st.now + spin),
                None => self.st.now + spin,
            };
            // First a hot spin, with no system call unless the kernel flagged deferred
            // completions to post: a reply that comes within it is seen at once. Then yield
            // between checks, so that a thread sharing this core (the application's publisher,
            // say) runs as soon as it wakes instead of at the end of this thread's time slice.
            let hot_until = until.min(self.st.now + HOT_SPIN);
            loop {
                if !self.ring.uring.completion().is_empty()
                    || !self.st.mailbox.ready.is_empty()
                    || !self.st.mailbox.commands.is_empty()
                {
                    return Ok(());
                }
                self.ring.submit(false, None)?;
                let now = Instant::now();
                if now >= until {
                    break;
                }
                if now < hot_until {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        if !self.st.mailbox.park() {
            return self.ring.submit(false, None);
        }
        let timeout = self
            .st
            .next_timer()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let result = self.ring.submit(true, timeout);
        self.st.mailbox.unpark();
        if self.st.mailbox.woken_from_this_cpu() {
            // A thread on this shard's own core woke it: a publisher that was running until
            // then, most likely in the middle of a burst. Give the core back so it finishes
            // the burst, and drain it in one turn, rather than preempt it after every wake-up
            // (on a shared core that cost `publish_batch` more than half its throughput). If
            // nothing else is runnable here, the yield returns at once.
            std::thread::yield_now();
        }
        result
    }
}

/// The text of a panic payload (a `&str` or `String` message), or a placeholder.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
