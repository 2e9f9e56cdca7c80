//! `loadgen run` over ringwire: starts the embedded node (unless `--target` names one), drives
//! the chosen workload from client engines on the load core, and builds the report.
//!
//! Thread placement matches the baselines in `bench/`: the node's shards take cores 0.., the
//! client engines' shards and the threads that publish take the next core.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use loadgen::workload::{self, Pacer, Workload};
use loadgen::{Counts, LatencyLog, Mode, Report};
use ringwire::{Engine, Error, Handler, MessageId, Peer, PeerConfig, Stats};

use crate::node::{self, ECHO_PREFIX, NodeOptions, Sink};
use crate::publisher::{
    AckSamples, PacedSource, Publisher, StreamSource, Tally, publish_batches, publish_flat_out,
};
use crate::tls::{Security, Tls};
use crate::{fanin, pingpong};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `None`: start a node in this process.
    pub addr: Option<String>,
    pub node_id: String,
    /// Shards of the embedded node.
    pub shards: usize,
    /// Give each client engine a durable outbox under this directory, with this sync policy.
    pub outbox: Option<(std::path::PathBuf, ringwire::SyncPolicy)>,
    /// Whether the client engines offer MSG_BATCH frames.
    pub batch_frames: bool,
    /// TLS on every connection of the run.
    pub tls: Option<Arc<Tls>>,
    /// The security mode, checksums and compression of every engine of the run.
    pub wire: crate::tls::Wire,
    /// What the payload bytes of a throughput run are.
    pub content: Content,
}

/// What the payload bytes of a throughput run are (`--content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Content {
    /// One byte repeated (0x5a).
    #[default]
    Fill,
    /// JSON log records, each different: text as services send it, which LZ4 compresses
    /// to about half in 1 KiB.
    Text,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Fill => "fill",
            Content::Text => "text",
        }
    }
}

/// The TLS settings and security mode of the run's engine `node_id`.
pub fn security_for(target: &Target, node_id: &str) -> Result<Security, String> {
    Security::new(target.tls.as_deref(), target.wire.clone(), node_id)
}

/// Runs the workload and returns its report.
pub fn run(
    w: &Workload,
    target: &Target,
    publisher: Publisher,
) -> Result<(Report, Option<Arc<LatencyLog>>), String> {
    let sink = Arc::new(Sink::default());
    let (server, addr) = match &target.addr {
        None => {
            let options = NodeOptions {
                node_id: target.node_id.clone(),
                listen: "127.0.0.1:0".parse().expect("valid address"),
                shards: target.shards,
                busy_poll: w.busy_poll,
                state: None,
                security: security_for(target, &target.node_id)?,
            };
            let server = node::start(&options, Arc::clone(&sink))
                .map_err(|e| format!("starting the embedded node: {e}"))?;
            let addr = server.local_addr().expect("the node listens");
            (Some(server), addr)
        }
        Some(addr) => (None, reach(addr)?),
    };
    // The load side takes the core after the node's shards (or core 0 for a remote node).
    let load_core = workload::client_core(if server.is_some() { target.shards } else { 0 });
    let t0_cpu = workload::cpu_time();
    let outcome = match w.mode {
        Mode::Fanin => fanin::run(w, addr, &target.node_id, load_core)?,
        Mode::Pingpong => pingpong::run(w, addr, target, load_core)?,
        Mode::Throughput | Mode::Latency => streams(w, addr, target, load_core, publisher)?,
    };
    let cpu = workload::cpu_time() - t0_cpu;

    let mut counts = outcome.counts;
    let server_stats = server.as_ref().map(Engine::stats);
    if let Some(stats) = &server_stats {
        counts.received = stats.msgs_received;
    }
    let latency = outcome
        .latency
        .as_deref()
        .map(|log| (outcome.latency_kind, log));
    let mut report = Report::new(
        "ringwire",
        w,
        target.shards,
        &outcome.window,
        counts,
        outcome.completed,
        latency,
        cpu,
    );
    report.tls = target.tls.is_some();
    report.crc = target.wire.crc;
    report.lz4 = target.wire.lz4;
    report.content = Some(target.content.name().to_owned());
    if matches!(w.mode, Mode::Throughput | Mode::Latency) {
        report.publisher = Some(publisher.name().to_owned());
        report.batch_frames = Some(target.batch_frames);
    }
    let mut engine = serde_json::Map::new();
    for (name, value) in &outcome.client_stats {
        engine.insert(format!("client.{name}"), (*value).into());
    }
    for (name, value) in server_stats.iter().flat_map(Stats::counters) {
        engine.insert(format!("server.{name}"), value.into());
    }
    engine.insert("backpressure_retries".into(), outcome.backpressure.into());
    if server.is_some() {
        engine.insert(
            "server.echo_refused".into(),
            sink.echo_refused.load(Ordering::Relaxed).into(),
        );
    }
    if let Some(n) = outcome.round_trips {
        engine.insert("round_trips".into(), n.into());
    }
    report.engine = Some(engine);
    if let Some(server) = server {
        server
            .shutdown_graceful(Duration::from_secs(5))
            .map_err(|e| format!("stopping the embedded node: {e}"))?;
    }
    check_delivery(w, &report, outcome.round_trips, target.addr.is_none())?;
    Ok((report, outcome.latency))
}

/// What a workload driver measured.
pub struct Outcome {
    pub window: workload::Window,
    pub counts: Counts,
    pub completed: &'static str,
    pub latency_kind: &'static str,
    pub latency: Option<Arc<LatencyLog>>,
    /// The client engines' counters, summed.
    pub client_stats: Vec<(&'static str, u64)>,
    pub backpressure: u64,
    /// Echoes that came back (latency, fanin and pingpong).
    pub round_trips: Option<u64>,
}

/// Resolves `--target` and checks that something accepts TCP connections there, so an
/// unreachable node is reported at once rather than as a stalled run.
fn reach(addr: &str) -> Result<SocketAddr, String> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("--target {addr}: {e}"))?
        .collect();
    let mut last = None;
    for a in &resolved {
        match TcpStream::connect_timeout(a, REACH_TIMEOUT) {
            Ok(_) => return Ok(*a),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(format!(
        "cannot reach --target {addr} ({})",
        last.unwrap_or_else(|| "no address".into())
    ))
}

/// Throughput and latency: one client engine per connection, each fed by the `publisher`.
fn streams(
    w: &Workload,
    addr: SocketAddr,
    target: &Target,
    core: usize,
    publisher: Publisher,
) -> Result<Outcome, String> {
    let server_id = target.node_id.as_str();
    let echo = w.mode == Mode::Latency;
    let t0 = Instant::now() + SETTLE;
    let log = Arc::new(LatencyLog::new(t0 + w.warmup, Duration::from_secs(1)));
    let echoes = Arc::new(Echoes {
        log: Arc::clone(&log),
        count: AtomicU64::new(0),
    });
    let mut clients = Vec::with_capacity(w.conns);
    let mut peers = Vec::with_capacity(w.conns);
    for i in 0..w.conns {
        let prefix = if echo { ECHO_PREFIX } else { "" };
        let node_id = format!("{prefix}loadgen-{}-{i}", std::process::id());
        let security = security_for(target, &node_id)?;
        let client = Engine::builder()
            .node_id(node_id)
            .shards(1)
            .handler(Arc::clone(&echoes))
            .configure(|c| {
                security.clone().apply(c);
                c.first_core = core;
                c.idle_spin = node::idle_spin(w.busy_poll);
                c.batch_frames = target.batch_frames;
                if let Some((dir, sync)) = &target.outbox {
                    c.outbox_dir = Some(dir.join(format!("client-{i}")));
                    c.outbox_sync = *sync;
                }
            })
            .start()
            .map_err(|e| format!("starting client engine {i}: {e}"))?;
        let peer = client
            .connect(PeerConfig::new(server_id, [addr]))
            .map_err(|e| format!("connecting to {server_id} at {addr}: {e}"))?;
        clients.push(client);
        peers.push(peer);
    }
    wait_connected(&clients, server_id, addr)?;
    workload::sleep_until(t0);

    let tally = Arc::new(Tally::default());
    let mut threads = Vec::new();
    let mut sources = 0;
    match (echo, publisher) {
        (true, Publisher::Shard) => {
            let rate = w.rate.expect("latency has a rate");
            for (i, (client, peer)) in clients.iter().zip(&peers).enumerate() {
                let source = PacedSource::new(
                    peer.clone(),
                    i,
                    peers.len(),
                    rate,
                    t0,
                    w.size,
                    w.busy_poll,
                    Arc::clone(&tally),
                );
                client
                    .add_source(peer, source)
                    .map_err(|e| format!("adding a source to client engine {i}: {e}"))?;
                sources += 1;
            }
        }
        (true, Publisher::Batch) => {
            return Err("--publisher batch cannot pace a latency run".into());
        }
        (true, Publisher::Thread) => {
            let (peers, tally) = (peers.clone(), Arc::clone(&tally));
            let (rate, size) = (w.rate.expect("latency has a rate"), w.size);
            threads.push(thread::spawn(move || {
                workload::pin_thread(core);
                let mut pacer = Pacer::new(rate, t0);
                let mut k = 0usize;
                while !tally.stop.load(Ordering::Relaxed) {
                    let due = pacer.wait_next();
                    let mut payload = BytesMut::zeroed(size);
                    workload::stamp(&mut payload, due);
                    match peers[k % peers.len()].publish(payload.freeze()) {
                        Ok(_) => tally.sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => tally.refused.fetch_add(1, Ordering::Relaxed),
                    };
                    k += 1;
                }
            }));
        }
        (false, Publisher::Thread) => {
            for peer in &peers {
                let (peer, tally) = (peer.clone(), Arc::clone(&tally));
                let mut samples = AckSamples::new(Arc::clone(&log));
                let payload = Bytes::from_static(static_payload(w.size, target.content));
                threads.push(thread::spawn(move || {
                    workload::pin_thread(core);
                    publish_flat_out(&peer, &payload, &tally, &mut samples);
                }));
            }
        }
        (false, Publisher::Batch) => {
            for peer in &peers {
                let (peer, tally) = (peer.clone(), Arc::clone(&tally));
                let mut samples = AckSamples::new(Arc::clone(&log));
                let payload = Bytes::from_static(static_payload(w.size, target.content));
                threads.push(thread::spawn(move || {
                    workload::pin_thread(core);
                    publish_batches(&peer, &payload, &tally, &mut samples);
                }));
            }
        }
        (false, Publisher::Shard) => {
            for (i, (client, peer)) in clients.iter().zip(&peers).enumerate() {
                let source = StreamSource::new(
                    peer.clone(),
                    static_payload(w.size, target.content),
                    Arc::clone(&tally),
                    Arc::clone(&log),
                );
                client
                    .add_source(peer, source)
                    .map_err(|e| format!("adding a source to client engine {i}: {e}"))?;
                sources += 1;
            }
        }
    }

    let acked = |clients: &[Engine]| clients.iter().map(|c| c.stats().msgs_acked).sum::<u64>();
    let window = if echo {
        workload::measure(
            w,
            t0,
            || echoes.count.load(Ordering::Relaxed),
            Some(&log),
            || false,
        )
    } else {
        workload::measure(w, t0, || acked(&clients), Some(&log), || false)
    };
    tally.stop.store(true, Ordering::Relaxed);
    for t in threads.drain(..) {
        // A publisher that panicked is a bug in loadgen; report it rather than hide it.
        t.join().map_err(|_| "a load thread panicked".to_string())?;
    }
    // A source stops at its next poll (at once, or at its next due time), and its shard
    // then drops it; only after that is `sent` final.
    let deadline = Instant::now() + SOURCE_STOP_TIMEOUT;
    while tally.sources_done.load(Ordering::Acquire) < sources {
        if Instant::now() > deadline {
            return Err(format!(
                "a source on a client shard did not stop within {SOURCE_STOP_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
    // Let what was accepted finish: every message acknowledged, every echo back.
    let sent = tally.sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline
        && (acked(&clients) < sent || (echo && echoes.count.load(Ordering::Relaxed) < sent))
    {
        thread::sleep(Duration::from_millis(1));
    }
    let stats = sum_counters(clients.iter().map(Engine::stats));
    let acked = counter(&stats, "msgs_acked");
    let round_trips = echoes.count.load(Ordering::Relaxed);
    let counts = Counts {
        sent,
        acked,
        received: if echo { round_trips } else { acked },
    };
    for client in clients {
        // Echoes may still be unacknowledged by the node; that is not an error of the run.
        match client.shutdown_graceful(Duration::from_secs(2)) {
            Ok(()) | Err(Error::DrainTimeout { .. }) => {}
            Err(e) => return Err(format!("stopping a client engine: {e}")),
        }
    }
    Ok(Outcome {
        window,
        counts,
        completed: if echo { "round_trips" } else { "acked" },
        latency_kind: if echo { "round_trip" } else { "publish_to_ack" },
        latency: Some(log),
        client_stats: stats,
        backpressure: tally.refused.load(Ordering::Relaxed),
        round_trips: echo.then_some(round_trips),
    })
}

/// The payload of every message of a throughput run, one static buffer as the baselines write
/// one buffer: a refcounted `Bytes` would add an atomic increment and decrement per message on
/// a counter shared by the publishing thread and the shard. Leaked: it lives as long as the
/// run, which is as long as the process.
fn static_payload(size: usize, content: Content) -> &'static [u8] {
    let bytes = match content {
        Content::Fill => vec![0x5a; size],
        Content::Text => log_records(size),
    };
    Box::leak(bytes.into_boxed_slice())
}

/// `size` bytes of JSON log records, one per line, their fields varying from record to record.
fn log_records(size: usize) -> Vec<u8> {
    const SERVICES: [&str; 4] = ["orders", "billing", "inventory", "shipping"];
    const EVENTS: [&str; 5] = [
        "order accepted",
        "payment captured",
        "stock reserved",
        "label printed",
        "customer notified",
    ];
    let mut out = String::with_capacity(size + 256);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = x % 1_000_000;
        out.push_str(&format!(
            "{{\"ts\":\"2026-12-02T18:{:02}:{:02}.{:03}Z\",\"level\":\"info\",\"service\":\"{}\",\
             \"event\":\"{}\",\"order_id\":{},\"user\":\"u-{}\",\"items\":{},\"total\":\"{}.{:02}\"}}\n",
            n % 60,
            (n / 60) % 60,
            n % 1000,
            SERVICES[(x >> 20) as usize % SERVICES.len()],
            EVENTS[(x >> 24) as usize % EVENTS.len()],
            100_000 + n,
            x >> 40 & 0xffff,
            1 + (x >> 32) % 9,
            (x >> 8) % 500,
            (x >> 16) % 100,
        ));
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(size);
    bytes
}

/// The client handler in latency mode: every echo carries its send time.
struct Echoes {
    log: Arc<LatencyLog>,
    count: AtomicU64,
}

impl Handler for Echoes {
    fn on_message(&self, _: &Peer, _: MessageId, payload: &[u8]) {
        let now = Instant::now();
        if let Some(sent) = workload::read_stamp(payload) {
            self.log.record(now, now.saturating_duration_since(sent));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn wait_connected(
    clients: &[Engine],
    server_id: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let up = clients
            .iter()
            .filter(|c| c.stats().peers_connected > 0)
            .count();
        if up == clients.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {up} of {} connections to {server_id} at {addr} completed the handshake \
                 within {CONNECT_TIMEOUT:?} (is the node id right? see --target-id)",
                clients.len()
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sums the counters of several engines, by name.
pub fn sum_counters(all: impl Iterator<Item = Stats>) -> Vec<(&'static str, u64)> {
    let mut sum: Vec<(&'static str, u64)> = Vec::new();
    for stats in all {
        let counters = stats.counters();
        if sum.is_empty() {
            sum = counters;
        } else {
            for (total, (_, value)) in sum.iter_mut().zip(counters) {
                total.1 += value;
            }
        }
    }
    sum
}

fn counter(counters: &[(&'static str, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

/// A run that lost messages is not a benchmark result: say so and fail.
fn check_delivery(
    w: &Workload,
    report: &Report,
    round_trips: Option<u64>,
    embedded: bool,
) -> Result<(), String> {
    let delivered = !embedded || report.received == report.sent;
    let complete = match w.mode {
        Mode::Throughput => report.acked == report.sent && delivered,
        Mode::Latency | Mode::Fanin | Mode::Pingpong => {
            round_trips == Some(report.sent) && delivered
        }
    };
    if complete {
        Ok(())
    } else {
        Err(format!(
            "incomplete run: sent {}, acked {}, received {}, echoes {} (after up to {DRAIN_TIMEOUT:?} of draining)",
            report.sent,
            report.acked,
            report.received,
            round_trips.map_or("-".into(), |n| n.to_string())
        ))
    }
}

/// How long a source may take to see the stop flag and be dropped by its shard.
const SOURCE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between connecting and starting the load, so the first samples are not connects.
pub(crate) const SETTLE: Duration = Duration::from_millis(20);
const REACH_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
