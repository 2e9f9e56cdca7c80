//! loadgen: drives load at a ringwire node and reports what it measured.
//!
//! `loadgen` alone runs the throughput workload for ten seconds against a node embedded in
//! the same process on 127.0.0.1. `loadgen serve` is a standalone node to aim `--target` at;
//! `loadgen chart` overlays several JSON reports in one SVG. See docs/loadgen.md.

mod client;
mod durable;
mod fanin;
mod node;
mod pingpong;
mod publisher;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use loadgen::workload::{self, WorkloadArgs};
use loadgen::{Report, chart};

use crate::node::{NodeOptions, SERVER_ID, Sink};
use crate::publisher::Publisher;
use crate::tls::{EphemeralCa, Security, Tls, TlsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Drive load at a ringwire node and report throughput and latency",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workload (the default): against an embedded node, or --target.
    Run(RunArgs),
    /// Run a node that receives, acknowledges and echoes until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Send numbered messages through a durable outbox until the target acknowledges them
    /// all; run it again with the same outbox after a crash and it continues.
    Send(SendArgs),
    /// Draw several JSON reports into one SVG chart.
    Chart(ChartArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Shards of the embedded node (its client engines get one shard each).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Drive an external node (e.g. `loadgen serve`) instead of the embedded one.
    #[arg(long, value_name = "HOST:PORT")]
    target: Option<String>,
    /// Node id of the target.
    #[arg(long, default_value = SERVER_ID)]
    target_id: String,
    /// Give the sending engines a durable outbox in a fresh directory under DIR (removed after
    /// the run). Throughput and latency modes.
    #[arg(long, value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Outbox sync policy: none, always, or an interval such as 10ms. With `always`, an ACK
    /// means the message is on the sender's disk, so throughput counts durable messages.
    #[arg(long, default_value = "none", requires = "outbox")]
    sync: String,
    /// How the client engines publish: `thread` calls `Peer::publish` for every message from
    /// a thread; `batch` hands `Peer::publish_batch` 64 messages at a time from a thread
    /// (throughput only); `shard` publishes from a `Source` on the client engine's shard.
    /// Throughput and latency modes.
    #[arg(long, value_enum, default_value_t = Publisher::Thread)]
    publisher: Publisher,
    /// The client engines do not offer MSG_BATCH frames: every message travels in a MSG frame
    /// of its own, as protocol version 1 defined (throughput and latency modes).
    #[arg(long)]
    no_batch_frames: bool,
    /// Run every connection over TLS 1.3 with certificates made for this run: a throwaway CA,
    /// and for each engine a certificate naming its node id (mutual TLS, node ids checked).
    /// Embedded node only; not for fanin.
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
    #[command(flatten)]
    tls_files: TlsArgs,
    /// What the payload bytes are (throughput mode): `fill`, one byte repeated, or `text`,
    /// JSON log records that LZ4 compresses to about half (for --lz4 runs).
    #[arg(long, value_enum, default_value_t = client::Content::Fill)]
    content: client::Content,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to accept peers on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    #[arg(long, default_value = SERVER_ID)]
    node_id: String,
    /// Spin instead of parking when idle.
    #[arg(long)]
    busy_poll: bool,
    /// Also write what was seen as JSON to this file, or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// Keep the node's durable state (delivered watermarks, outbox) in this directory, so
    /// that deduplication survives a restart.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Check every payload of `loadgen send` and count deliveries per message number (kept in
    /// --state, so across restarts); on SIGTERM print {received, unique, duplicates, missing,
    /// corrupt} as JSON on stdout.
    #[arg(long, requires = "state")]
    verify: bool,
    /// With --verify: the number of messages expected, for `missing` (default: the highest
    /// number seen).
    #[arg(long, requires = "verify")]
    expect: Option<u64>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// The node to send to (e.g. `loadgen serve`).
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// Node id of the target.
    #[arg(long, default_value = SERVER_ID)]
    target_id: String,
    /// This sender's node id.
    #[arg(long, default_value = "loadgen-sender")]
    node_id: String,
    /// Outbox directory: messages live there until acknowledged, and a restarted sender
    /// continues from it.
    #[arg(long, value_name = "DIR")]
    outbox: PathBuf,
    /// Messages to send, numbered 1 to N.
    #[arg(long)]
    count: u64,
    /// Payload size in bytes (at least 8: the message number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per second (default: as fast as the outbox takes them).
    #[arg(long)]
    rate: Option<u64>,
    /// Outbox sync policy: none, always, or an interval such as 10ms.
    #[arg(long, default_value = "none")]
    sync: String,
    /// When the outbox is full, wait for the target to acknowledge instead of failing.
    #[arg(long)]
    wait_for_space: bool,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "10m")]
    timeout: String,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, clap::Args)]
struct ChartArgs {
    /// What to draw.
    #[arg(long, value_enum, default_value_t = ChartKind::Latency)]
    kind: ChartKind,
    /// The SVG file to write.
    #[arg(long)]
    out: PathBuf,
    /// Report files written by `--json` or `--out` (report.json).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChartKind {
    /// Latency by percentile.
    Latency,
    /// Throughput over time.
    Throughput,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Send(args)) => send(&args),
        Some(Command::Chart(args)) => draw(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("loadgen: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("loadgen: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Bad flags: exit 2.
    Usage(String),
    /// The run failed: exit 1.
    Run(String),
}

fn run(args: &RunArgs) -> Result<(), Failure> {
    let payload_max = ringwire::Config::new("x").payload_len_max();
    let w = args.workload.resolve(payload_max).map_err(Failure::Usage)?;
    if args.shards == 0 || args.shards > 64 {
        return Err(Failure::Usage("--shards must be 1 to 64".into()));
    }
    match (w.mode, args.publisher) {
        (_, Publisher::Thread)
        | (loadgen::Mode::Throughput, _)
        | (loadgen::Mode::Latency, Publisher::Shard) => {}
        (loadgen::Mode::Latency, Publisher::Batch) => {
            return Err(Failure::Usage(
                "--publisher batch applies to the throughput mode (a paced stream sends one \
                 message at a time); latency takes thread or shard"
                    .into(),
            ));
        }
        (loadgen::Mode::Fanin | loadgen::Mode::Pingpong, _) => {
            return Err(Failure::Usage(
                "--publisher applies to the throughput and latency modes".into(),
            ));
        }
    }
    let outbox = match &args.outbox {
        Some(_) if matches!(w.mode, loadgen::Mode::Fanin | loadgen::Mode::Pingpong) => {
            return Err(Failure::Usage(
                "--outbox applies to the throughput and latency modes".into(),
            ));
        }
        Some(root) => {
            let sync = parse_sync(&args.sync)?;
            let dir = root.join(format!("run-{}", std::process::id()));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| Failure::Run(format!("clearing {}: {e}", dir.display())))?;
            }
            Some((dir, sync))
        }
        None => None,
    };
    let tls = if args.tls {
        if args.target.is_some() {
            return Err(Failure::Usage(
                "--tls makes certificates for the embedded node; with --target give the node's \
                 CA and a certificate for this side (--tls-cert, --tls-key, --tls-ca)"
                    .into(),
            ));
        }
        Some(Tls::Ephemeral(Box::new(
            EphemeralCa::new().map_err(Failure::Run)?,
        )))
    } else {
        args.tls_files.tls()
    };
    if tls.is_some() && w.mode == loadgen::Mode::Fanin {
        return Err(Failure::Usage(
            "TLS does not apply to fanin: its load side speaks the protocol from one epoll \
             thread, in plaintext"
                .into(),
        ));
    }
    let target = client::Target {
        addr: args.target.clone(),
        node_id: args.target_id.clone(),
        shards: args.shards,
        outbox: outbox.clone(),
        batch_frames: !args.no_batch_frames,
        tls: tls.map(Arc::new),
        wire: args.tls_files.wire().map_err(Failure::Run)?,
        content: args.content,
    };
    let result = client::run(&w, &target, args.publisher);
    if let Some((dir, _)) = &outbox {
        let _ = std::fs::remove_dir_all(dir);
    }
    let (mut report, latency) = result.map_err(Failure::Run)?;
    if outbox.is_some() {
        report.outbox = Some(args.sync.clone());
    }
    report
        .emit(&w, latency.as_deref())
        .map_err(|e| Failure::Run(format!("writing the report: {e}")))
}

/// `none`, `always`, or an interval such as `10ms`.
fn parse_sync(text: &str) -> Result<ringwire::SyncPolicy, Failure> {
    Ok(match text {
        "none" => ringwire::SyncPolicy::None,
        "always" => ringwire::SyncPolicy::Always,
        every => ringwire::SyncPolicy::Interval(
            workload::parse_duration(every)
                .map_err(|e| Failure::Usage(format!("--sync {every:?}: {e}")))?,
        ),
    })
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    if args.shards == 0 || args.shards > 64 {
        return Err(Failure::Usage("--shards must be 1 to 64".into()));
    }
    // Block the signals before any engine thread starts, so all of them inherit the mask and
    // only `sigwait` below sees SIGINT and SIGTERM.
    let signals = block_signals();
    let sink = Arc::new(Sink::default());
    let security = Security::new(
        args.tls.tls().as_ref(),
        args.tls.wire().map_err(Failure::Run)?,
        &args.node_id,
    )
    .map_err(Failure::Run)?;
    let options = NodeOptions {
        node_id: args.node_id.clone(),
        listen: args.listen,
        shards: args.shards,
        busy_poll: args.busy_poll,
        state: args.state.clone(),
        security,
    };
    let verifier = match (&args.state, args.verify) {
        (Some(dir), true) => Some(Arc::new(durable::Verifier::open(dir).map_err(|e| {
            Failure::Run(format!(
                "opening the verify counts in {}: {e}",
                dir.display()
            ))
        })?)),
        _ => None,
    };
    let started = Instant::now();
    let cpu_start = workload::cpu_time();
    let engine = match &verifier {
        Some(v) => node::start(&options, Arc::clone(v)),
        None => node::start(&options, Arc::clone(&sink)),
    }
    .map_err(|e| Failure::Run(format!("starting the node on {}: {e}", args.listen)))?;
    eprintln!(
        "loadgen serve: node {:?} listening on {} with {} shard(s); SIGINT or SIGTERM stops it",
        args.node_id,
        engine.local_addr().expect("the node listens"),
        args.shards
    );
    let signal = wait_signal(&signals);
    let stats = engine.stats();
    let elapsed = started.elapsed().as_secs_f64();
    let mut seen = serde_json::Map::new();
    seen.insert("signal".into(), signal.into());
    seen.insert("uptime_s".into(), elapsed.into());
    seen.insert("received".into(), stats.msgs_received.into());
    seen.insert("bytes".into(), stats.bytes_received.into());
    seen.insert("echoed".into(), sink.echoed.load(Ordering::Relaxed).into());
    seen.insert(
        "echo_refused".into(),
        sink.echo_refused.load(Ordering::Relaxed).into(),
    );
    seen.insert("peers".into(), stats.peers.len().into());
    seen.insert(
        "cpu_s".into(),
        (workload::cpu_time() - cpu_start).as_secs_f64().into(),
    );
    for (name, value) in stats.counters() {
        seen.insert(format!("engine.{name}"), value.into());
    }
    let shutdown = engine.shutdown_graceful(Duration::from_secs(5));
    if let Some(v) = &verifier {
        println!("{}", v.summary(args.expect));
    }
    let summary = seen
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("  ");
    eprintln!("loadgen serve: {summary}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&seen).expect("a map serializes");
        if path == "-" {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .map_err(|e| Failure::Run(format!("writing {path}: {e}")))?;
        }
    }
    match shutdown {
        Ok(()) | Err(ringwire::Error::DrainTimeout { .. }) => Ok(()),
        Err(e) => Err(Failure::Run(format!("stopping the node: {e}"))),
    }
}

fn send(args: &SendArgs) -> Result<(), Failure> {
    if args.size < 8 || args.size > (16 << 20) - 8 {
        return Err(Failure::Usage(
            "--size must be 8 bytes (the message number) to 16 MiB".into(),
        ));
    }
    if args.count == 0 || args.count > durable::NUMBERS_MAX {
        return Err(Failure::Usage(format!(
            "--count must be 1 to {}",
            durable::NUMBERS_MAX
        )));
    }
    if args.rate == Some(0) {
        return Err(Failure::Usage("--rate must be positive".into()));
    }
    let sync = parse_sync(&args.sync)?;
    let timeout = workload::parse_duration(&args.timeout)
        .map_err(|e| Failure::Usage(format!("--timeout: {e}")))?;
    let options = durable::SendOptions {
        target: args.target.clone(),
        target_id: args.target_id.clone(),
        node_id: args.node_id.clone(),
        outbox: args.outbox.clone(),
        count: args.count,
        size: args.size,
        rate: args.rate,
        sync,
        wait_for_space: args.wait_for_space,
        timeout,
        security: Security::new(
            args.tls.tls().as_ref(),
            args.tls.wire().map_err(Failure::Run)?,
            &args.node_id,
        )
        .map_err(Failure::Run)?,
    };
    let summary = durable::send(&options).map_err(Failure::Run)?;
    println!("{summary}");
    Ok(())
}

fn draw(args: &ChartArgs) -> Result<(), Failure> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Run(format!("reading {}: {e}", path.display())))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            Failure::Run(format!("{} is not a loadgen report: {e}", path.display()))
        })?;
        reports.push(report);
    }
    let label = |r: &Report| {
        let busy = if r.busy_poll { " busy-poll" } else { "" };
        // The default publisher goes unnamed, so charts of plain runs read as before.
        let publisher = match r.publisher.as_deref() {
            None | Some("thread") => String::new(),
            Some(p) => format!(" publisher {p}"),
        };
        format!("{} {:?} {} B{busy}{publisher}", r.stack, r.mode, r.size).to_lowercase()
    };
    let labels: Vec<String> = reports.iter().map(label).collect();
    let svg = match args.kind {
        ChartKind::Latency => {
            let series: Vec<chart::Series<'_>> = labels
                .iter()
                .zip(&reports)
                .map(|(l, r)| (l.as_str(), r.latency_distribution.as_slice()))
                .collect();
            chart::percentiles(&series, "latency (µs)")
        }
        ChartKind::Throughput => {
            let points: Vec<Vec<(f64, f64)>> = reports
                .iter()
                .map(|r| r.timeline.iter().map(|s| (s.t_s, s.msgs_per_s)).collect())
                .collect();
            let series: Vec<chart::Series<'_>> = labels
                .iter()
                .zip(&points)
                .map(|(l, p)| (l.as_str(), p.as_slice()))
                .collect();
            chart::timeline(&series, "msgs/s")
        }
    };
    std::fs::write(&args.out, svg)
        .map_err(|e| Failure::Run(format!("writing {}: {e}", args.out.display())))
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialized by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> &'static str {
    let mut signal = 0;
    // SAFETY: `set` is an initialized signal set and `signal` a valid out pointer.
    while unsafe { libc::sigwait(set, &mut signal) } != 0 {}
    if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
