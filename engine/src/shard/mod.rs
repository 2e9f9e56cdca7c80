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

mod bufring;
mod conn;
mod ring;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use io_uring::{cqueue, opcode, squeue, types};
use slab::Slab;

use crate::config::{Config, SyncPolicy};
use crate::error::Error;
use crate::metrics::{Counters, SharedCounters};
use crate::outbox::directory::ShardDurable;
use crate::outbox::record;
use crate::outbox::store::{RecoveredMessage, ShardOutbox};
use crate::outbox::watermarks::{Entry, Watermarks};
use crate::proto::connection::{CloseCause, ConnectionConfig, Events};
use crate::proto::frame::{Frame, Seq, SessionId};
use crate::proto::handshake::{Accepting, HelloInfo};
use crate::proto::id::MessageId;
use crate::proto::session::{RxSession, Sessions, TxEntry, TxSession};
use crate::proto::{Connection, GoAwayReason, ProtocolError, Role};
use crate::route::confirm::ConfirmSlot;
use crate::route::handler::Handler;
use crate::route::peer::Peer;
use crate::route::router::Router;
use crate::route::{Command, Mailbox, PeerShared, ShardId};
use crate::sys::socket;
use bufring::BufRing;
use conn::{Conn, Phase};
use ring::{OpKind, OpTag, Ring};

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
}

/// The shard thread's body: sets up the ring, reports readiness, runs the loop, tears down.
pub(crate) fn run(init: Init) {
    let config = Arc::clone(&init.router.config);
    if config.pin_shards {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Err(e) = socket::pin_to_core((config.first_core + init.id.0) % cores) {
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
    shard.run_loop();
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
    accept_armed: bool,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Reaped completions: (user_data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
}

/// Everything but the ring: what completions and timers act on.
struct State {
    id: ShardId,
    router: Arc<Router>,
    shared_counters: Arc<CachePadded<SharedCounters>>,
    config: Arc<Config>,
    proto_config: Arc<ConnectionConfig>,
    handler: Arc<dyn Handler>,
    mailbox: Arc<Mailbox>,
    conns: Slab<Conn>,
    generation_next: u32,
    peers: Slab<PeerState>,
    peer_by_key: HashMap<u32, usize>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Connections to service at the end of the turn.
    dirty: Vec<usize>,
    /// Peers whose publish queue may hold more than one turn drained.
    drain_again: Vec<usize>,
    counters: Counters,
    rng: u64,
    shutdown: Option<Shutdown>,
    now: Instant,
    durable: Option<DurableState>,
    /// When the `Window` timer is due, if armed.
    window_timer: Option<Instant>,
}

/// The shard's side of the outbox and its watermark table.
struct DurableState {
    outbox: Arc<ShardOutbox>,
    /// Unacknowledged messages found at start, by session-table slot, taken when the peer is
    /// first seen.
    recovered: HashMap<usize, Vec<RecoveredMessage>>,
    received: Watermarks,
    /// Per peer slot whose acknowledged seq moved this turn: the seq and the record space
    /// released; handed to the outbox once per turn.
    acked: Vec<(usize, Seq, u64)>,
    last_sync: Instant,
    /// Watermarks stored since the last sync.
    received_dirty: bool,
}

/// What a session keeps with each unacknowledged message: its confirmation, if any.
#[derive(Debug)]
struct Token {
    confirm: Option<Arc<ConfirmSlot>>,
}

struct PeerState {
    shared: Arc<PeerShared>,
    handle: Peer,
    sessions: Sessions<Token>,
    /// The peer's slot in the watermark table and the session stored in it.
    rx_slot: Option<(usize, SessionId)>,
    /// The connection serving this peer (dialing, handshaking or established).
    conn: Option<usize>,
    established: bool,
    dial: Option<Dial>,
    redial_at: Option<Instant>,
    /// Session buffer window bookkeeping: (s, t) means every seq up to `s` was taken from the
    /// queue by `t`. Coarse (see `window_grain`), pruned as ACKs arrive.
    taken_at: VecDeque<(Seq, Instant)>,
    /// Highest seq already reported as older than the window.
    window_reported: Seq,
}

struct Dial {
    endpoints: Vec<SocketAddr>,
    next: usize,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn {
        index: usize,
        generation: u32,
    },
    Redial {
        peer: usize,
    },
    /// Look for unacknowledged messages older than the session buffer window.
    Window,
}

struct Shutdown {
    drain_until: Option<Instant>,
    /// When connections were told to close; the loop ends when they are gone or after
    /// `CLOSE_GRACE`.
    closing_since: Option<Instant>,
}

impl Shard {
    fn new(init: Init, ring: Ring, bufs: BufRing, config: Arc<Config>) -> Shard {
        let now = Instant::now();
        let outbox_lost = init.durable.as_ref().map_or(0, |d| d.recovered.report.lost);
        let proto_config = Arc::new(ConnectionConfig {
            node_id: config.node_id.as_str().into(),
            body_len_max: config.body_len_max,
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
            accept_armed: false,
            wake_buf: Box::new(0),
            wake_armed: false,
            cqes: Vec::with_capacity(CQE_BUDGET),
            st: State {
                counters: Counters {
                    outbox_lost,
                    ..Counters::default()
                },
                id: init.id,
                mailbox: Arc::clone(&init.router.mailboxes[init.id.0]),
                router: init.router,
                shared_counters: init.counters,
                config,
                proto_config,
                handler: init.handler,
                conns: Slab::new(),
                generation_next: 1,
                peers: Slab::new(),
                peer_by_key: HashMap::new(),
                timers: BinaryHeap::new(),
                dirty: Vec::new(),
                drain_again: Vec::new(),
                rng: seed,
                shutdown: None,
                now,
                window_timer: None,
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

    fn run_loop(&mut self) {
        loop {
            self.st.now = Instant::now();
            self.st.counters.loop_turns += 1;
            self.reap();
            self.st.run_commands();
            self.st.drain_peers();
            self.st.sync_outbox();
            self.st.fire_timers();
            if self.st.advance_shutdown() {
                return;
            }
            self.service_all();
            if self.st.is_closed() {
                return;
            }
            self.arm_reserved();
            self.st.release_acked();
            self.st.counters.ring_enters = self.ring.enters;
            self.st.shared_counters.publish(&self.st.counters);
            if let Err(e) = self.wait() {
                tracing::error!(shard = self.st.id.0, error = %e, "io_uring_enter failed; shard stops");
                return;
            }
        }
    }

    /// Submits what was queued and, if there is nothing to do, parks until a completion, a
    /// wake-up or the next timer.
    fn wait(&mut self) -> std::io::Result<()> {
        let busy = !self.ring.uring.completion().is_empty()
            || !self.st.drain_again.is_empty()
            || !self.st.dirty.is_empty()
            || !self.st.mailbox.commands.is_empty()
            || !self.st.mailbox.ready.is_empty();
        if busy {
            return self.ring.submit(false, None);
        }
        let spin = self.st.config.idle_spin;
        if !spin.is_zero() {
            self.ring.submit(false, None)?;
            let until = self.st.now + spin;
            while Instant::now() < until {
                if !self.ring.uring.completion().is_empty()
                    || !self.st.mailbox.ready.is_empty()
                    || !self.st.mailbox.commands.is_empty()
                {
                    return Ok(());
                }
                self.ring.submit(false, None)?;
                // Yield rather than only spin: a thread sharing this core (the application's
                // publisher, say) then runs as soon as it wakes instead of waiting for the
                // end of this thread's time slice.
                std::thread::yield_now();
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
        result
    }

    fn reap(&mut self) {
        self.collect_cqes();
        let mut cqes = std::mem::take(&mut self.cqes);
        for &(user_data, res, flags) in &cqes {
            self.complete(user_data, res, flags);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    /// Copies up to `CQE_BUDGET` completions out of the ring, syncing its head once.
    fn collect_cqes(&mut self) {
        let mut cq = self.ring.uring.completion();
        self.cqes.extend(
            cq.by_ref()
                .take(CQE_BUDGET)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(tag) = OpTag::decode(user_data) else {
            tracing::error!(user_data, "completion with unknown user_data");
            return;
        };
        match tag.kind {
            OpKind::Wake => self.wake_armed = false,
            OpKind::Cancel => {}
            OpKind::Accept => {
                if !cqueue::more(flags) {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.st.on_accept(fd);
                } else if res != -libc::ECANCELED {
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept failed");
                }
            }
            OpKind::Recv => {
                let index = tag.index as usize;
                if !cqueue::more(flags) {
                    self.st.conns[index].recv_armed = false;
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res > 0 {
                        self.st.on_data(index, self.bufs.get(bid, res as usize));
                    }
                    self.bufs.recycle(bid);
                }
                if res == 0 {
                    self.st.on_eof(index);
                } else if res < 0 && res != -libc::ENOBUFS {
                    self.st.on_io_error(index, -res);
                }
                self.st.mark_dirty(index);
            }
            OpKind::Send => {
                let index = tag.index as usize;
                let conn = &mut self.st.conns[index];
                conn.send_in_flight = false;
                if res >= 0 {
                    conn.sent += res as usize;
                    self.st.counters.bytes_sent += res as u64;
                } else {
                    conn.sending.clear();
                    conn.sent = 0;
                    conn.out.clear();
                    self.st.on_io_error(index, -res);
                }
                self.st.mark_dirty(index);
            }
            OpKind::Connect => {
                let index = tag.index as usize;
                self.st.conns[index].connect_in_flight = false;
                if res == 0 {
                    self.st.on_connected(index);
                } else {
                    self.st.on_io_error(index, -res);
                }
                self.st.mark_dirty(index);
            }
        }
    }

    /// Submits each dirty connection's operations: connect, receive, one send; frees the
    /// connections that are closed and quiet.
    fn service_all(&mut self) {
        let dirty = std::mem::take(&mut self.st.dirty);
        for &index in &dirty {
            if let Some(conn) = self.st.conns.get_mut(index) {
                conn.dirty = false;
                self.service(index);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.st.dirty.is_empty() {
            self.st.dirty = dirty;
        }
    }

    fn service(&mut self, index: usize) {
        let now = self.st.now;
        let generation = self.st.conns[index].generation;
        let tag = |kind| OpTag::new(kind, index, generation).encode();
        let conn = &mut self.st.conns[index];
        let fd = types::Fd(conn.raw_fd());
        if conn.connect_queued {
            conn.connect_queued = false;
            let addr = conn.addr.as_ref().expect("a queued connect has an address");
            let entry = opcode::Connect::new(fd, addr.as_ptr(), addr.len())
                .build()
                .user_data(tag(OpKind::Connect));
            // SAFETY: the address is boxed in the connection, which is not freed while the
            // connect is in flight.
            self.push(&entry);
            self.st.conns[index].connect_in_flight = true;
        }
        let conn = &mut self.st.conns[index];
        if conn.recv_wanted && !conn.recv_armed && !conn.shut {
            let entry = match conn.phase {
                // One HELLO at most may arrive before the shard decides who owns the socket;
                // a single-shot receive leaves nothing in flight when it is handed over.
                Phase::Accepting(_) => opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                    .buf_group(self.bufs.group)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT),
                _ => opcode::RecvMulti::new(fd, self.bufs.group).build(),
            };
            conn.recv_armed = true;
            // SAFETY: the receive selects from the buffer ring, which outlives every operation.
            self.push(&entry.user_data(tag(OpKind::Recv)));
        }
        self.flush(index, now);
        let conn = &mut self.st.conns[index];
        if conn.closing && conn.is_flushed() && !conn.shut {
            conn.shut = true;
            socket::shutdown(conn.raw_fd());
        }
        let conn = &self.st.conns[index];
        if conn.closing && conn.shut && !conn.has_ops_in_flight() {
            self.st.conns.remove(index);
            self.st.counters.connections -= 1;
            return;
        }
        self.st.schedule_conn_timer(index);
    }

    /// Builds and submits one send if none is in flight.
    fn flush(&mut self, index: usize, now: Instant) {
        let st = &mut self.st;
        let conn = &mut st.conns[index];
        if conn.send_in_flight || conn.shut {
            return;
        }
        if conn.sent >= conn.sending.len() {
            conn.sending.clear();
            conn.sent = 0;
            if let Phase::Linked { peer, proto } = &mut conn.phase {
                let sessions = &mut st.peers[*peer].sessions;
                let budget = st.config.send_batch_bytes_max;
                st.counters.msgs_sent +=
                    proto.poll_transmit(sessions, now, &mut conn.out, budget) as u64;
            }
            std::mem::swap(&mut conn.out, &mut conn.sending);
        }
        if conn.sent < conn.sending.len() {
            let pending = &conn.sending[conn.sent..];
            let entry = opcode::Send::new(
                types::Fd(conn.raw_fd()),
                pending.as_ptr(),
                pending.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(OpTag::new(OpKind::Send, index, conn.generation).encode());
            conn.send_in_flight = true;
            // SAFETY: `sending` is not touched until this send's completion is reaped, and the
            // connection is not freed while a send is in flight.
            self.push(&entry);
        }
    }

    /// Arms the listener's multishot accept and the eventfd read when they are not armed.
    fn arm_reserved(&mut self) {
        if !self.wake_armed {
            let entry = opcode::Read::new(
                types::Fd(self.st.mailbox.eventfd()),
                (&raw mut *self.wake_buf).cast(),
                8,
            )
            .build()
            .user_data(OpTag::reserved(OpKind::Wake).encode());
            // SAFETY: `wake_buf` is boxed in the shard and outlives the read (teardown waits).
            self.push(&entry);
            self.wake_armed = true;
        }
        if self.st.shutdown.is_none()
            && !self.accept_armed
            && let Some(listener) = &self.listener
        {
            let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(OpTag::reserved(OpKind::Accept).encode());
            // SAFETY: accept references only the listener, owned by the shard.
            self.push(&entry);
            self.accept_armed = true;
        }
    }

    fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the callers, each of which states what keeps the entry's
        // buffers alive until completion.
        if let Err(e) = unsafe { self.ring.push(entry) } {
            // Submission failing means the ring itself is broken; nothing sensible remains.
            panic!("io_uring submission failed: {e}");
        }
    }
}

impl Shard {
    /// Quiesces the ring before its buffers may be freed: shuts every socket down, cancels what
    /// a shutdown does not end, and reaps until nothing is in flight. Returns `false` if some
    /// operation is still in flight after `TEARDOWN_GRACE`.
    fn teardown(&mut self) -> bool {
        let mut cancels = Vec::new();
        for (index, conn) in &mut self.st.conns {
            socket::shutdown(conn.raw_fd());
            conn.shut = true;
            if conn.connect_in_flight {
                cancels.push(OpTag::new(OpKind::Connect, index, conn.generation));
            }
        }
        if self.accept_armed {
            cancels.push(OpTag::reserved(OpKind::Accept));
        }
        for target in cancels {
            let entry = opcode::AsyncCancel::new(target.encode())
                .build()
                .user_data(OpTag::reserved(OpKind::Cancel).encode());
            // SAFETY: a cancel references no memory.
            if unsafe { self.ring.push(&entry) }.is_err() {
                return false;
            }
        }
        if self.wake_armed {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to the shard's eventfd, completing the
            // armed read.
            unsafe { libc::write(self.st.mailbox.eventfd(), (&raw const one).cast(), 8) };
        }
        let deadline = Instant::now() + TEARDOWN_GRACE;
        loop {
            self.collect_cqes();
            for (user_data, res, flags) in std::mem::take(&mut self.cqes) {
                self.complete_quietly(user_data, res, flags);
            }
            let busy = self.wake_armed
                || self.accept_armed
                || self.st.conns.iter().any(|(_, c)| c.has_ops_in_flight());
            if !busy {
                return true;
            }
            if Instant::now() >= deadline
                || self
                    .ring
                    .submit(true, Some(Duration::from_millis(10)))
                    .is_err()
            {
                return false;
            }
        }
    }

    /// Records a completion during teardown without acting on its data.
    fn complete_quietly(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(tag) = OpTag::decode(user_data) else {
            return;
        };
        let more = cqueue::more(flags);
        match tag.kind {
            OpKind::Wake => self.wake_armed = false,
            OpKind::Accept => {
                if res >= 0 {
                    // SAFETY: a new descriptor we own; dropping it closes it.
                    drop(unsafe { OwnedFd::from_raw_fd(res) });
                }
                self.accept_armed &= more;
            }
            OpKind::Cancel => {}
            OpKind::Recv | OpKind::Send | OpKind::Connect => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.recycle(bid);
                }
                if let Some(conn) = self.st.conns.get_mut(tag.index as usize) {
                    match tag.kind {
                        OpKind::Recv => conn.recv_armed &= more,
                        OpKind::Send => conn.send_in_flight = false,
                        _ => conn.connect_in_flight = false,
                    }
                }
            }
        }
    }
}

/// Feeds protocol events to the handler, the counters and the outbox.
struct ShardEvents<'a> {
    handler: &'a dyn Handler,
    peer: &'a Peer,
    counters: &'a mut Counters,
    durable: Option<&'a mut DurableState>,
    rx_slot: &'a mut Option<(usize, SessionId)>,
    /// The highest seq acknowledged during this call, if any, and the outbox record space of
    /// the messages it acknowledged.
    acked: Option<Seq>,
    acked_bytes: u64,
}

impl<'a> ShardEvents<'a> {
    fn new(
        handler: &'a dyn Handler,
        peer: &'a Peer,
        rx_slot: &'a mut Option<(usize, SessionId)>,
        counters: &'a mut Counters,
        durable: Option<&'a mut DurableState>,
    ) -> ShardEvents<'a> {
        ShardEvents {
            handler,
            peer,
            counters,
            durable,
            rx_slot,
            acked: None,
            acked_bytes: 0,
        }
    }

    /// Hands what these events acknowledged (the peer's new acknowledged seq and the record
    /// space freed) to the outbox's once-per-turn release.
    fn finish(self) {
        if let (Some(seq), Some(durable), Some(d)) =
            (self.acked, self.durable, &self.peer.shared.durable)
            && let Ok(slot) = d.slot
        {
            durable.acked.push((slot, seq, self.acked_bytes));
        }
    }

    /// Stores the delivered watermark, after the handler ran: a crash between the two
    /// redelivers that one message after the restart, and nothing else.
    fn store_delivered(&mut self, session: SessionId, seq: Seq) {
        let (Some(durable), Some((slot, stored))) =
            (self.durable.as_deref_mut(), self.rx_slot.as_mut())
        else {
            return;
        };
        durable.received_dirty = true;
        if *stored == session {
            durable.received.set_a(*slot, seq);
        } else {
            durable.received.set(
                *slot,
                Entry {
                    session,
                    a: seq,
                    b: Seq::ZERO,
                },
            );
            *stored = session;
        }
    }
}

impl Events<Token> for ShardEvents<'_> {
    fn on_message(&mut self, session: SessionId, seq: Seq, payload: &[u8]) {
        self.counters.msgs_received += 1;
        self.counters.bytes_received += payload.len() as u64;
        self.handler.on_message(
            self.peer,
            MessageId {
                session,
                seq: seq.0,
            },
            payload,
        );
        self.store_delivered(session, seq);
    }

    fn on_lost(&mut self, session: SessionId, seq: Seq) {
        self.counters.msgs_lost_by_peer += 1;
        tracing::error!(peer = %self.peer.node_id(), %session, seq = seq.0, "peer lost an accepted message");
        self.handler.on_lost(
            self.peer,
            MessageId {
                session,
                seq: seq.0,
            },
        );
        self.store_delivered(session, seq);
    }

    fn on_acked(&mut self, seq: Seq, entry: TxEntry<Token>) {
        self.counters.msgs_acked += 1;
        self.acked = Some(seq);
        if let Some(confirm) = entry.token.confirm {
            confirm.complete();
        }
        if self.durable.is_some() {
            self.acked_bytes += record::space(entry.payload.len()) as u64;
        }
    }
}

impl State {
    fn run_commands(&mut self) {
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.mailbox.commands.pop() else {
                break;
            };
            match command {
                Command::Connect { peer, config } => {
                    let index = self.ensure_peer(&peer);
                    let ps = &mut self.peers[index];
                    ps.dial = Some(Dial {
                        endpoints: config.endpoints,
                        next: 0,
                        attempt: 0,
                    });
                    self.start_dial(index);
                }
                Command::Adopt { fd, hello, peer } => {
                    let index = self.new_conn(fd, Phase::Detached);
                    self.adopt(index, hello, peer);
                }
                Command::Shutdown { drain_until } => {
                    if self.shutdown.is_none() {
                        self.shutdown = Some(Shutdown {
                            drain_until,
                            closing_since: None,
                        });
                    }
                }
            }
        }
    }

    /// Moves published messages from the ready peers' queues into their sessions.
    fn drain_peers(&mut self) {
        let mut ready = std::mem::take(&mut self.drain_again);
        for _ in 0..COMMAND_BUDGET * 16 {
            let Some(shared) = self.mailbox.ready.pop() else {
                break;
            };
            // Cleared before popping so a publish racing with this drain schedules the peer
            // again (see `PeerShared::push`).
            shared.notified.store(false, crate::sync::Ordering::SeqCst);
            ready.push(self.ensure_peer(&shared));
        }
        for peer in ready {
            self.drain_peer(peer);
        }
    }

    fn drain_peer(&mut self, peer: usize) {
        let Some(ps) = self.peers.get_mut(peer) else {
            return;
        };
        let tx = &mut ps.sessions.tx;
        // After a failed sync nothing written since the last good one may be confirmed, and a
        // record still in the queue may have been written after the failed sync's snapshot.
        let sync_failed = self.durable.as_ref().is_some_and(|d| d.outbox.has_failed());
        let mut count = 0;
        while count < DRAIN_BUDGET
            && tx.unacked_count() < self.config.unacked_count_max
            && tx.unacked_payload_len() < self.config.unacked_bytes_max
        {
            let Some((position, mut outgoing)) = ps.shared.queue.pop() else {
                break;
            };
            if sync_failed && let Some(confirm) = outgoing.confirm.take() {
                confirm.fail_sync();
            }
            let token = Token {
                confirm: outgoing.confirm,
            };
            tx.push(Seq(position + 1), outgoing.payload, token);
            count += 1;
        }
        if count > 0 {
            let seq = Seq(tx.seq_next().0 - 1);
            let now = self.now;
            let fresh = ps
                .taken_at
                .back()
                .is_none_or(|&(_, t)| now >= t + window_grain(self.config.session_buffer_window));
            match ps.taken_at.back_mut() {
                Some(last) if !fresh => last.0 = seq,
                _ => ps.taken_at.push_back((seq, now)),
            }
        }
        let conn = ps.conn.filter(|_| ps.established);
        if count == DRAIN_BUDGET {
            self.drain_again.push(peer);
        }
        if count > 0 {
            self.arm_window(self.now);
            if let Some(conn) = conn {
                self.mark_dirty(conn);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn { index, generation } => {
                    let Some(conn) = self.conns.get_mut(index) else {
                        continue;
                    };
                    if conn.generation != generation || conn.timer_at != Some(at) {
                        continue;
                    }
                    conn.timer_at = None;
                    match &mut conn.phase {
                        Phase::Connecting { deadline, .. }
                            if now >= *deadline && conn.connect_in_flight =>
                        {
                            // On Linux, shutdown(2) of a socket in SYN_SENT aborts the connect,
                            // so the in-flight connect completes with an error and redials.
                            tracing::debug!(index, "connect timed out");
                            socket::shutdown(conn.raw_fd());
                            conn.shut = true;
                        }
                        Phase::Accepting(acc) => {
                            if let Err(err) = acc.handle_timeout(now) {
                                self.reject(index, &err);
                            }
                        }
                        Phase::Linked { proto, .. } => {
                            if let Err(err) = proto.handle_timeout(now) {
                                tracing::info!(index, error = %err, "closing connection");
                                self.begin_close(index, Duration::ZERO);
                            }
                        }
                        _ => {}
                    }
                    self.mark_dirty(index);
                }
                Timer::Redial { peer } => {
                    let Some(ps) = self.peers.get_mut(peer) else {
                        continue;
                    };
                    if ps.redial_at != Some(at) {
                        continue;
                    }
                    ps.redial_at = None;
                    self.start_dial(peer);
                }
                Timer::Window => {
                    if self.window_timer == Some(at) {
                        self.window_timer = None;
                        self.check_window();
                    }
                }
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let shutdown = self
            .shutdown
            .as_ref()
            .and_then(|sd| match sd.closing_since {
                Some(since) => Some(since + CLOSE_GRACE),
                None => sd.drain_until,
            });
        match (timer, shutdown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether shutdown has closed every connection.
    fn is_closed(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|sd| sd.closing_since.is_some())
            && self.conns.is_empty()
    }

    /// Moves the shutdown along; returns `true` when the loop should end.
    fn advance_shutdown(&mut self) -> bool {
        let now = self.now;
        let Some(sd) = &mut self.shutdown else {
            return false;
        };
        if let Some(since) = sd.closing_since {
            return self.conns.is_empty() || now >= since + CLOSE_GRACE;
        }
        let drained = self
            .peers
            .iter()
            .all(|(_, p)| p.sessions.tx.unacked_count() == 0 && p.shared.queue.is_empty());
        if !drained && sd.drain_until.is_some_and(|until| now < until) {
            return false;
        }
        sd.closing_since = Some(now);
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            if let Phase::Linked { peer, proto } = &mut self.conns[index].phase {
                proto.close(
                    &self.peers[*peer].sessions,
                    GoAwayReason::Normal,
                    "shutting down",
                );
            }
            self.begin_close(index, Duration::ZERO);
        }
        for (_, ps) in &mut self.peers {
            ps.dial = None;
            for entry in ps.sessions.tx.drain() {
                if let Some(confirm) = entry.token.confirm {
                    confirm.fail();
                }
            }
            while let Some((_, outgoing)) = ps.shared.queue.pop() {
                if let Some(confirm) = outgoing.confirm {
                    confirm.fail();
                }
            }
        }
        self.conns.is_empty()
    }

    fn on_accept(&mut self, fd: OwnedFd) {
        if self.shutdown.is_some() {
            return;
        }
        if let Err(e) = socket::set_nodelay(fd.as_raw_fd()) {
            tracing::warn!(error = %e, "TCP_NODELAY on an accepted socket failed");
        }
        let deadline = self.now + self.config.handshake_timeout;
        let index = self.new_conn(
            fd,
            Phase::Accepting(Accepting::new(self.config.body_len_max, deadline)),
        );
        self.conns[index].recv_wanted = true;
    }

    fn on_data(&mut self, index: usize, data: &[u8]) {
        let now = self.now;
        let conn = &mut self.conns[index];
        match &mut conn.phase {
            Phase::Accepting(acc) => match acc.handle_bytes(data) {
                Ok(None) => {}
                Ok(Some(hello)) => self.route_hello(index, hello),
                Err(err) => self.reject(index, &err),
            },
            Phase::Linked { peer, proto } => {
                let peer = *peer;
                let ps = &mut self.peers[peer];
                let was_established = proto.is_established();
                let mut events = ShardEvents::new(
                    &*self.handler,
                    &ps.handle,
                    &mut ps.rx_slot,
                    &mut self.counters,
                    self.durable.as_mut(),
                );
                let result = proto.handle_bytes(&mut ps.sessions, data, now, &mut events);
                events.finish();
                ps.shared
                    .published
                    .seq_delivered
                    .store(ps.sessions.rx.seq_delivered().0, Ordering::Relaxed);
                ps.shared
                    .published
                    .seq_acked
                    .store(ps.sessions.tx.seq_acked().0, Ordering::Relaxed);
                if let Some(rtt) = proto.srtt() {
                    let rtt_ns = rtt.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
                    ps.shared.published.srtt_ns.store(rtt_ns, Ordering::Relaxed);
                }
                if let Err(err) = &result {
                    self.counters.protocol_errors += 1;
                    tracing::warn!(peer = %ps.shared.node_id, error = %err, "protocol error; closing connection");
                }
                let established = proto.is_established();
                let retry_after = match proto.close_cause() {
                    Some(CloseCause::GoAwayReceived {
                        reason,
                        retry_after_ms,
                        message,
                    }) => {
                        tracing::info!(peer = %ps.shared.node_id, ?reason, message, "peer sent goaway");
                        Some(Duration::from_millis(u64::from(*retry_after_ms)))
                    }
                    Some(_) => Some(Duration::ZERO),
                    None => None,
                };
                if !ps.shared.queue.is_empty() {
                    self.drain_again.push(peer);
                }
                if !was_established && established {
                    self.on_established(peer);
                }
                if let Some(retry_after) = retry_after {
                    self.begin_close(index, retry_after);
                }
            }
            Phase::Connecting { .. } | Phase::Detached => {}
        }
    }

    fn on_eof(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        conn.recv_wanted = false;
        match &mut conn.phase {
            Phase::Accepting(acc) => match acc.handle_eof() {
                Some(err) => self.reject(index, &err),
                None => self.begin_close(index, Duration::ZERO),
            },
            Phase::Linked { proto, .. } => {
                proto.handle_eof();
                if let Some(CloseCause::Protocol(err)) = proto.close_cause() {
                    self.counters.protocol_errors += 1;
                    tracing::warn!(index, error = %err, "stream ended inside a frame");
                }
                self.begin_close(index, Duration::ZERO);
            }
            Phase::Connecting { .. } | Phase::Detached => self.begin_close(index, Duration::ZERO),
        }
    }

    fn on_io_error(&mut self, index: usize, errno: i32) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        tracing::debug!(index, error = %std::io::Error::from_raw_os_error(errno), "connection i/o failed");
        conn.recv_wanted = false;
        conn.out.clear();
        if !conn.shut {
            conn.shut = true;
            socket::shutdown(conn.raw_fd());
        }
        self.begin_close(index, Duration::ZERO);
    }

    fn on_connected(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let Phase::Connecting { peer, .. } = conn.phase else {
            return;
        };
        let ps = &self.peers[peer];
        let proto = Connection::dial(
            Arc::clone(&self.proto_config),
            ps.shared.node_id.as_str(),
            &ps.sessions,
            self.now,
        );
        conn.phase = Phase::Linked { peer, proto };
        conn.addr = None;
        conn.recv_wanted = true;
    }

    fn on_established(&mut self, peer: usize) {
        let ps = &mut self.peers[peer];
        ps.established = true;
        if let Some(dial) = &mut ps.dial {
            dial.attempt = 0;
        }
        ps.shared
            .published
            .connected
            .store(true, crate::sync::Ordering::Relaxed);
        ps.shared
            .published
            .seq_acked
            .store(ps.sessions.tx.seq_acked().0, Ordering::Relaxed);
        if let Some(conn) = ps.conn
            && let Phase::Linked { proto, .. } = &self.conns[conn].phase
            && proto.lost_on_resume() > 0
        {
            // proto reports it; dropping it here would hide lost messages.
            tracing::warn!(
                peer = %ps.shared.node_id,
                lost = proto.lost_on_resume(),
                "peer had already dropped messages this node never delivered"
            );
        }
        self.counters.peers_connected += 1;
        self.counters.connects += 1;
        tracing::debug!(peer = %ps.shared.node_id, "connection established");
        self.handler.on_connected(&ps.handle);
        if let Some(conn) = ps.conn {
            self.mark_dirty(conn);
        }
        self.drain_again.push(peer);
    }

    /// The dialer's HELLO arrived: adopt the connection here or hand it to the owning shard.
    fn route_hello(&mut self, index: usize, hello: HelloInfo) {
        if hello.node_id == self.config.node_id {
            self.counters.protocol_errors += 1;
            let message = "hello claims this node's own id";
            return self.reject_with(index, GoAwayReason::WrongPeer, message);
        }
        let shared = self.router.peer_shared(&hello.node_id);
        if shared.shard == self.id {
            return self.adopt(index, hello, shared);
        }
        // The single-shot receive that carried the HELLO has completed and nothing else is in
        // flight, so the socket can move.
        let conn = self.conns.remove(index);
        debug_assert!(!conn.has_ops_in_flight());
        self.counters.connections -= 1;
        let mailbox = Arc::clone(&shared.mailbox);
        mailbox.send(Command::Adopt {
            fd: conn.fd,
            hello,
            peer: shared,
        });
    }

    fn adopt(&mut self, index: usize, hello: HelloInfo, shared: Arc<PeerShared>) {
        let peer = self.ensure_peer(&shared);
        if let Some(existing) = self.peers[peer].conn {
            let ours = match &self.conns[existing].phase {
                Phase::Connecting { .. } => true,
                Phase::Linked { proto, .. } => proto.role() == Role::Dialer,
                _ => false,
            };
            // Both sides dialed each other: keep the connection dialed by the smaller node id.
            if ours && self.config.node_id.as_str() < hello.node_id.as_str() {
                return self.reject_with(
                    index,
                    GoAwayReason::Replaced,
                    "crossing dials; keeping ours",
                );
            }
            if let Phase::Linked { proto, .. } = &mut self.conns[existing].phase {
                proto.close(
                    &self.peers[peer].sessions,
                    GoAwayReason::Replaced,
                    "replaced by a newer connection",
                );
            }
            self.begin_close(existing, Duration::ZERO);
        }
        let ps = &mut self.peers[peer];
        let mut events = ShardEvents::new(
            &*self.handler,
            &ps.handle,
            &mut ps.rx_slot,
            &mut self.counters,
            self.durable.as_mut(),
        );
        let accepted = Connection::accept(
            Arc::clone(&self.proto_config),
            &hello,
            &mut ps.sessions,
            self.now,
            &mut events,
        );
        events.finish();
        match accepted {
            Ok(proto) => {
                let conn = &mut self.conns[index];
                conn.phase = Phase::Linked { peer, proto };
                conn.recv_wanted = true;
                ps.conn = Some(index);
                self.on_established(peer);
            }
            Err(err) => self.reject(index, &err),
        }
    }

    /// Answers a protocol error on a connection that belongs to no peer, and closes it.
    fn reject(&mut self, index: usize, err: &ProtocolError) {
        self.counters.protocol_errors += 1;
        tracing::warn!(index, error = %err, "protocol error; closing connection");
        self.reject_with(index, err.reason(), &err.to_string());
    }

    fn reject_with(&mut self, index: usize, reason: GoAwayReason, message: &str) {
        let conn = &mut self.conns[index];
        Frame::GoAway {
            reason,
            retry_after_ms: 0,
            message,
        }
        .encode(&mut conn.out);
        conn.recv_wanted = false;
        self.begin_close(index, Duration::ZERO);
    }

    /// Detaches the connection from its peer and closes it once its queued bytes are sent.
    fn begin_close(&mut self, index: usize, retry_after: Duration) {
        let now = self.now;
        let conn = &mut self.conns[index];
        conn.closing = true;
        conn.recv_wanted = false;
        let phase = std::mem::replace(&mut conn.phase, Phase::Detached);
        let peer = match phase {
            Phase::Linked { peer, mut proto } => {
                // Keep what the closing connection still has to say (a GOAWAY, a final ACK).
                proto.poll_transmit(&mut self.peers[peer].sessions, now, &mut conn.out, 0);
                Some(peer)
            }
            Phase::Connecting { peer, .. } => Some(peer),
            Phase::Accepting(_) | Phase::Detached => None,
        };
        self.mark_dirty(index);
        let Some(peer) = peer else { return };
        let ps = &mut self.peers[peer];
        if ps.conn != Some(index) {
            return;
        }
        ps.conn = None;
        ps.sessions.tx.handle_disconnect();
        if ps.established {
            ps.established = false;
            ps.shared
                .published
                .connected
                .store(false, crate::sync::Ordering::Relaxed);
            self.counters.peers_connected -= 1;
            self.handler.on_disconnected(&ps.handle);
        }
        self.schedule_redial(peer, retry_after);
    }

    fn start_dial(&mut self, peer: usize) {
        if self.shutdown.is_some() {
            return;
        }
        let ps = &mut self.peers[peer];
        if ps.conn.is_some() {
            return;
        }
        let Some(dial) = &mut ps.dial else { return };
        let addr = dial.endpoints[dial.next % dial.endpoints.len()];
        dial.next += 1;
        let fd = match socket::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "socket creation failed");
                return self.schedule_redial(peer, Duration::ZERO);
            }
        };
        let deadline = self.now + self.config.connect_timeout;
        let index = self.new_conn(fd, Phase::Connecting { peer, deadline });
        let conn = &mut self.conns[index];
        conn.addr = Some(Box::new(socket::RawAddr::new(addr)));
        conn.connect_queued = true;
        self.peers[peer].conn = Some(index);
    }

    fn schedule_redial(&mut self, peer: usize, retry_after: Duration) {
        if self.shutdown.is_some() {
            return;
        }
        let unit = self.random_unit();
        let ps = &mut self.peers[peer];
        let Some(dial) = &mut ps.dial else { return };
        let delay = self
            .config
            .backoff
            .delay(dial.attempt, unit)
            .max(retry_after);
        dial.attempt = dial.attempt.saturating_add(1);
        let at = self.now + delay;
        ps.redial_at = Some(at);
        self.timers.push(Reverse((at, Timer::Redial { peer })));
    }

    fn schedule_conn_timer(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let next = match &conn.phase {
            Phase::Connecting { deadline, .. } => Some(*deadline),
            Phase::Accepting(acc) => Some(acc.deadline()),
            Phase::Linked { proto, .. } => proto.poll_timeout(),
            Phase::Detached => None,
        };
        if let Some(at) = next
            && conn.timer_at.is_none_or(|current| at < current)
        {
            conn.timer_at = Some(at);
            self.timers.push(Reverse((
                at,
                Timer::Conn {
                    index,
                    generation: conn.generation,
                },
            )));
        }
    }

    fn ensure_peer(&mut self, shared: &Arc<PeerShared>) -> usize {
        if let Some(&index) = self.peer_by_key.get(&shared.key) {
            return index;
        }
        debug_assert_eq!(shared.shard, self.id);
        let mut sessions = Sessions::new(shared.tx_session);
        let mut rx_slot = None;
        let mut taken_at = VecDeque::new();
        if let Some(durable) = &mut self.durable {
            let now = self.now;
            restore_sessions(
                durable,
                shared,
                &mut sessions,
                &mut rx_slot,
                &mut taken_at,
                now,
            );
        }
        if let Some(&(_, taken)) = taken_at.front() {
            self.arm_window(taken);
        }
        let index = self.peers.insert(PeerState {
            handle: Peer {
                shared: Arc::clone(shared),
                router: Arc::clone(&self.router),
            },
            sessions,
            rx_slot,
            shared: Arc::clone(shared),
            conn: None,
            established: false,
            dial: None,
            redial_at: None,
            taken_at,
            window_reported: Seq::ZERO,
        });
        self.peer_by_key.insert(shared.key, index);
        index
    }

    fn new_conn(&mut self, fd: OwnedFd, phase: Phase) -> usize {
        let generation = self.generation_next;
        self.generation_next = (self.generation_next + 1) & ring::GENERATION_MASK;
        let index = self.conns.insert(Conn::new(fd, generation, phase));
        self.counters.connections += 1;
        self.mark_dirty(index);
        index
    }

    fn mark_dirty(&mut self, index: usize) {
        if let Some(conn) = self.conns.get_mut(index)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    /// A uniform sample in [0, 1) for backoff jitter (splitmix64).
    fn random_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Gives a peer's new sessions what the durable state holds: the outbound session continues
/// after its acknowledged seq with the recovered messages, and the inbound session resumes from
/// the stored watermark.
fn restore_sessions(
    durable: &mut DurableState,
    shared: &PeerShared,
    sessions: &mut Sessions<Token>,
    rx_slot: &mut Option<(usize, SessionId)>,
    taken_at: &mut VecDeque<(Seq, Instant)>,
    now: Instant,
) {
    if let Some(d) = &shared.durable
        && let Ok(slot) = d.slot
    {
        sessions.tx = TxSession::resuming(shared.tx_session, d.acked_at_start);
        for message in durable.recovered.remove(&slot).unwrap_or_default() {
            let token = Token { confirm: None };
            match message.payload {
                Some(payload) => sessions.tx.push(message.seq, payload, token),
                None => sessions.tx.push_lost(message.seq, token),
            }
        }
    }
    let recovered = Seq(sessions.tx.seq_next().0 - 1);
    if recovered > sessions.tx.seq_acked() {
        taken_at.push_back((recovered, now));
    }
    match durable.received.find_or_claim(shared.node_id.as_str()) {
        Ok(slot) => {
            let entry = durable.received.get(slot);
            if entry.session != SessionId::NIL {
                sessions.rx = RxSession::restore(entry.session, entry.a);
            }
            *rx_slot = Some((slot, entry.session));
        }
        Err(e) => {
            tracing::error!(peer = %shared.node_id, error = %e, "no watermark slot: deduplication of this peer will not survive a restart");
        }
    }
}

impl State {
    /// Applies the sync policy. Under `Always` this runs after the queues were drained and
    /// before anything is sent, so every record that goes out is on disk first.
    fn sync_outbox(&mut self) {
        let Some(durable) = &mut self.durable else {
            return;
        };
        let due = match self.config.outbox_sync {
            SyncPolicy::None => false,
            SyncPolicy::Always => true,
            SyncPolicy::Interval(every) => self.now >= durable.last_sync + every,
        };
        if !due {
            return;
        }
        durable.last_sync = self.now;
        if durable.received_dirty {
            // Watermarks go to disk before this turn's ACKs go out, so a sender never trims a
            // message whose delivery a power loss could make this node forget.
            durable.received_dirty = false;
            if let Err(e) = durable.received.sync() {
                self.counters.outbox_sync_failures += 1;
                tracing::error!(error = %e, "syncing the delivered watermarks failed");
            }
        }
        if durable.outbox.has_failed() || !durable.outbox.is_dirty() {
            return;
        }
        self.counters.outbox_syncs += 1;
        if durable.outbox.sync().is_err() {
            self.counters.outbox_sync_failures += 1;
            // Nothing written since the last good sync may be confirmed: fail every pending
            // confirmation (the messages are still sent; only the promise is withdrawn).
            for (_, ps) in &mut self.peers {
                ps.sessions.tx.for_each_token(|token: &mut Token| {
                    if let Some(confirm) = token.confirm.take() {
                        confirm.fail_sync();
                    }
                });
            }
        }
    }

    /// Hands this turn's acknowledgements to the outbox, which trims and recycles.
    fn release_acked(&mut self) {
        if let Some(durable) = &mut self.durable
            && !durable.acked.is_empty()
        {
            durable.outbox.release(&durable.acked);
            durable.acked.clear();
        }
    }
}

/// How coarsely the session buffer window is tracked: a message may be reported up to this
/// much after it crossed the window.
fn window_grain(window: Duration) -> Duration {
    (window / 100).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl State {
    /// Arms the window check for the earliest moment a message taken now could cross it.
    fn arm_window(&mut self, taken: Instant) {
        if self.window_timer.is_none() {
            let at = taken + self.config.session_buffer_window;
            self.window_timer = Some(at);
            self.timers.push(Reverse((at, Timer::Window)));
        }
    }

    /// Reports, once each, unacknowledged messages taken longer than the session buffer window
    /// ago. They are kept and still delivered: the window only tells the application.
    fn check_window(&mut self) {
        let window = self.config.session_buffer_window;
        let now = self.now;
        let mut next: Option<Instant> = None;
        for (_, ps) in &mut self.peers {
            let acked = ps.sessions.tx.seq_acked();
            while let Some(&(seq, taken)) = ps.taken_at.front() {
                if seq <= acked {
                    ps.taken_at.pop_front();
                    continue;
                }
                if taken + window > now {
                    next = Some(next.map_or(taken, |n| n.min(taken)));
                    break;
                }
                ps.taken_at.pop_front();
                let first = acked.max(ps.window_reported).next();
                if first <= seq {
                    let count = seq.0 - first.0 + 1;
                    ps.window_reported = seq;
                    self.counters.msgs_window_exceeded += count;
                    tracing::warn!(peer = %ps.shared.node_id, first = first.0, count, ?window, "messages unacknowledged for longer than the session buffer window");
                    self.handler.on_window_exceeded(
                        &ps.handle,
                        MessageId {
                            session: ps.sessions.tx.id(),
                            seq: first.0,
                        },
                        count,
                    );
                }
            }
        }
        if let Some(taken) = next {
            self.arm_window(taken);
        }
    }
}
