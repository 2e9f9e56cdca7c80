//! The fanin workload's load side: many connections (default 1000) into one node, each a
//! closed loop of one message and its echo.
//!
//! A thousand client *engines* would mean a thousand shard threads fighting the node for two
//! cores, measuring the scheduler rather than the node. So the load side speaks the wire
//! protocol itself, through ringwire's public sans-IO core (`ringwire::proto::Connection`),
//! with every connection multiplexed on one epoll thread. Each connection is a distinct
//! client node id, so the node sees 1000 real peers, each with its sessions, acks and
//! heartbeats; the driver acknowledges every echo as a real peer would.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::workload::{self, Workload};
use loadgen::{Counts, LatencyLog};
use ringwire::proto::connection::Events;
use ringwire::proto::session::{Acked, Sessions};
use ringwire::proto::{Connection, ConnectionConfig, Seq, SessionId};
use ringwire::{AckPolicy, HeartbeatConfig};

use crate::client::Outcome;
use crate::node::ECHO_PREFIX;

/// Runs the fanin workload against the node at `addr`, load driven from `core`.
pub fn run(
    w: &Workload,
    addr: SocketAddr,
    server_id: &str,
    core: usize,
) -> Result<Outcome, String> {
    // Started for real once every connection is up (`reset` below).
    let log = Arc::new(LatencyLog::new(Instant::now(), Duration::from_secs(1)));
    let round_trips = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let driver = {
        let (log, round_trips, stop, failed) = (
            log.clone(),
            round_trips.clone(),
            stop.clone(),
            failed.clone(),
        );
        let (conns, size, server_id) = (w.conns, w.size, server_id.to_owned());
        thread::spawn(move || -> Result<Driver, String> {
            workload::pin_thread(core);
            let mut driver = Driver::connect(conns, size, addr, &server_id, log, round_trips)?;
            driver.handshake()?;
            let _ = ready_tx.send(Instant::now());
            let result = driver.run(&stop);
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result.map(|()| driver)
        })
    };
    let Ok(t0) = ready_rx.recv() else {
        // The driver gave up before the load started: its error says why.
        return Err(match driver.join() {
            Ok(Err(e)) => e,
            _ => "the fanin driver stopped".into(),
        });
    };
    log.reset(t0 + w.warmup);
    let window = workload::measure(
        w,
        t0,
        || round_trips.load(Ordering::Relaxed),
        Some(&log),
        || failed.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let driver = driver
        .join()
        .map_err(|_| "the fanin driver panicked".to_string())??;
    let n = round_trips.load(Ordering::Relaxed);
    Ok(Outcome {
        window,
        counts: Counts {
            sent: driver.sent,
            acked: driver.acked,
            received: n,
        },
        completed: "round_trips",
        latency_kind: "round_trip",
        latency: Some(log),
        client_stats: vec![
            ("connections", driver.clients.len() as u64),
            ("msgs_sent", driver.sent),
            ("msgs_acked", driver.acked),
        ],
        backpressure: 0,
        round_trips: Some(n),
    })
}

/// Every connection of the load side, on one thread.
struct Driver {
    epoll: i32,
    clients: Vec<Client>,
    log: Arc<LatencyLog>,
    round_trips: Arc<AtomicU64>,
    sent: u64,
    acked: u64,
    scratch: Vec<u8>,
    /// The next payload, stamped in place.
    payload: Vec<u8>,
}

struct Client {
    stream: TcpStream,
    conn: Connection,
    sessions: Sessions,
    /// Bytes to write, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Whether a message awaits its echo.
    waiting: bool,
    /// Whether EPOLLOUT is armed (the socket was full).
    want_write: bool,
    eof: bool,
}

/// What one connection's input produced.
#[derive(Default)]
struct Seen {
    echoes: Vec<Instant>,
    acked: u64,
}

impl Events for Seen {
    fn on_message(&mut self, _: SessionId, _: Seq, payload: &[u8]) {
        if let Some(sent) = workload::read_stamp(payload) {
            self.echoes.push(sent);
        }
    }

    fn on_acked(&mut self, acked: Acked) {
        self.acked += acked.count;
    }
}

impl Driver {
    fn connect(
        conns: usize,
        size: usize,
        addr: SocketAddr,
        server_id: &str,
        log: Arc<LatencyLog>,
        round_trips: Arc<AtomicU64>,
    ) -> Result<Driver, String> {
        // SAFETY: epoll_create1 takes flags only and returns a new fd or -1.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
        }
        let now = Instant::now();
        let mut clients = Vec::with_capacity(conns);
        for i in 0..conns {
            let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .map_err(|e| format!("fanin connection {i} to {addr}: {e}"))?;
            stream
                .set_nodelay(true)
                .and_then(|()| stream.set_nonblocking(true))
                .map_err(|e| format!("fanin connection {i}: {e}"))?;
            let config = Arc::new(ConnectionConfig {
                node_id: format!("{ECHO_PREFIX}fanin-{}-{i}", std::process::id()).into(),
                body_len_max: BODY_LEN_MAX,
                batch: true,
                crc: false,
                lz4_min_size: None,
                auth: None,
                handshake_timeout: CONNECT_TIMEOUT,
                heartbeat: HeartbeatConfig::default(),
                ack: AckPolicy::default(),
                epoch: now,
            });
            let sessions = Sessions::new(SessionId(uuid::Uuid::new_v4()));
            let conn = Connection::dial(config, server_id, &sessions, now);
            let mut client = Client {
                stream,
                conn,
                sessions,
                out: Vec::new(),
                out_pos: 0,
                waiting: false,
                want_write: false,
                eof: false,
            };
            client.queue_transmit(now);
            epoll_ctl(epoll, libc::EPOLL_CTL_ADD, &client.stream, i, false)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            clients.push(client);
        }
        Ok(Driver {
            epoll,
            clients,
            log,
            round_trips,
            sent: 0,
            acked: 0,
            scratch: vec![0; 64 * 1024],
            payload: vec![0; size],
        })
    }

    /// Sends every HELLO and waits until all connections are established.
    fn handshake(&mut self) -> Result<(), String> {
        for i in 0..self.clients.len() {
            self.flush(i)?;
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while !self.clients.iter().all(|c| c.conn.is_established()) {
            if Instant::now() > deadline {
                let up = self
                    .clients
                    .iter()
                    .filter(|c| c.conn.is_established())
                    .count();
                return Err(format!(
                    "only {up} of {} fanin connections completed the handshake in {CONNECT_TIMEOUT:?}",
                    self.clients.len()
                ));
            }
            self.turn(false)?;
        }
        Ok(())
    }

    /// Keeps every connection in its closed loop until `stop`.
    fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.clients.len() {
            self.send_next(i, now);
            self.flush(i)?;
        }
        while !stop.load(Ordering::Relaxed) {
            self.turn(true)?;
        }
        // Collect the last echoes so every message sent is accounted for.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.clients.iter().any(|c| c.waiting) && Instant::now() < deadline {
            self.turn(false)?;
        }
        Ok(())
    }

    /// One epoll wait and the work it reports. `resend`: start the next round trip on each
    /// connection whose echo arrived.
    fn turn(&mut self, resend: bool) -> Result<(), String> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        // SAFETY: `events` is a writable array of the length passed; epoll is our fd.
        let n =
            unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, 10) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("epoll_wait: {e}"));
        }
        let now = Instant::now();
        let mut completed = 0;
        for event in &events[..n as usize] {
            let i = event.u64 as usize;
            if event.events & libc::EPOLLOUT as u32 != 0 {
                self.flush(i)?;
            }
            if event.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                completed += self.read(i, now, resend)?;
                self.flush(i)?;
            }
        }
        self.round_trips.fetch_add(completed, Ordering::Relaxed);
        Ok(())
    }

    /// Reads what connection `i` has, feeds it to the protocol and records echoes.
    fn read(&mut self, i: usize, now: Instant, resend: bool) -> Result<u64, String> {
        let mut seen = Seen::default();
        loop {
            let client = &mut self.clients[i];
            match client.stream.read(&mut self.scratch) {
                Ok(0) => {
                    client.eof = true;
                    client.conn.handle_eof();
                    break;
                }
                Ok(n) => {
                    client
                        .conn
                        .handle_bytes(&mut client.sessions, &self.scratch[..n], now, &mut seen)
                        .map_err(|e| format!("fanin connection {i}: protocol error: {e}"))?;
                    // A short read drained the socket; epoll is level-triggered, so anything
                    // that arrives later is reported again. Saves a read that would say EAGAIN.
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("fanin connection {i}: read: {e}")),
            }
        }
        if self.clients[i].eof {
            let cause = self.clients[i].conn.close_cause().map(|c| format!("{c:?}"));
            return Err(format!(
                "fanin connection {i}: the node closed it ({})",
                cause.unwrap_or_else(|| "no reason given".into())
            ));
        }
        self.acked += seen.acked;
        let echoes = seen.echoes.len() as u64;
        for sent in seen.echoes {
            self.log.record(now, now.saturating_duration_since(sent));
        }
        if echoes > 0 {
            self.clients[i].waiting = false;
            if resend {
                self.send_next(i, now);
            }
        }
        self.clients[i].queue_transmit(now);
        Ok(echoes)
    }

    /// Starts connection `i`'s next round trip.
    fn send_next(&mut self, i: usize, now: Instant) {
        let client = &mut self.clients[i];
        workload::stamp(&mut self.payload, now);
        let seq = client.sessions.tx.seq_next();
        client.sessions.tx.push(seq, &self.payload, 0);
        client.waiting = true;
        self.sent += 1;
        client.queue_transmit(now);
    }

    /// Writes connection `i`'s pending bytes; arms EPOLLOUT if the socket is full.
    fn flush(&mut self, i: usize) -> Result<(), String> {
        let epoll = self.epoll;
        let client = &mut self.clients[i];
        while client.out_pos < client.out.len() {
            match client.stream.write(&client.out[client.out_pos..]) {
                Ok(n) => client.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("fanin connection {i}: write: {e}")),
            }
        }
        let want_write = client.out_pos < client.out.len();
        if want_write != client.want_write {
            epoll_ctl(epoll, libc::EPOLL_CTL_MOD, &client.stream, i, want_write)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            client.want_write = want_write;
        }
        Ok(())
    }
}

impl Client {
    /// Appends what the protocol has due to the bytes waiting to be written.
    fn queue_transmit(&mut self, now: Instant) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        let mut data = Vec::new();
        self.conn.poll_transmit(
            &mut self.sessions,
            now,
            &mut self.out,
            &mut data,
            usize::MAX,
        );
        // A blocking-socket client: the held frames are copied into the write buffer.
        for slice in data {
            self.out.extend_from_slice(&slice);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: the driver owns this epoll fd and closes it once.
        unsafe { libc::close(self.epoll) };
    }
}

fn epoll_ctl(epoll: i32, op: i32, stream: &TcpStream, index: usize, write: bool) -> io::Result<()> {
    let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
    if write {
        flags |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event {
        events: flags as u32,
        u64: index as u64,
    };
    // SAFETY: both fds are open for the call; `event` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(epoll, op, stream.as_raw_fd(), &mut event) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_LEN_MAX: u32 = 16 << 20;
