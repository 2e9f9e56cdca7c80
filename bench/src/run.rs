//! The harness every baseline runs in, so that they differ only in the stack that carries the
//! bytes: the shared counters and stop flag, the start gate that releases the load once every
//! connection is up, the measurement window from loadgen, the drain and the report.
//!
//! A run goes: the stack's `launch` starts the serving side on core 0 and the load side on the
//! client core, connects everything (each connection exchanging its HELLO, see
//! [`crate::wire`]) and parks the load threads at the gate; [`run`] takes `t0`, opens the
//! gate, lets [`measure`] run the warm-up and the window, sets the stop flag, gives the
//! connections [`DRAIN_MAX`] to close cleanly and builds the [`Report`].

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loadgen::workload::{self, Mode, Workload, measure, read_stamp};
use loadgen::{Counts, LatencyLog, Report};

use crate::{std_stack, tokio_stack, uring_stack};

/// The stacks a user might pick instead of ringwire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// Blocking `std::net` sockets, a thread per connection at each end.
    Std,
    /// tokio with tokio-util's `LengthDelimitedCodec`, one current-thread runtime per side.
    Tokio,
    /// tokio-uring's owned-buffer sockets, one runtime per side.
    #[value(name = "tokio-uring")]
    TokioUring,
    /// The tokio stack with every connection inside tokio-rustls (TLS 1.3, mutual TLS).
    #[value(name = "tokio-rustls")]
    TokioRustls,
}

impl Stack {
    /// The name the report carries in its `stack` field.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Std => "std",
            Stack::Tokio => "tokio",
            Stack::TokioUring => "tokio-uring",
            Stack::TokioRustls => "tokio-rustls",
        }
    }
}

/// Why a baseline run did not produce a report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// This stack does not run the requested workload (the binary exits with code 2).
    Unsupported(String),
    /// Setting up or carrying the load failed (the binary exits with code 1).
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported(why) => write!(f, "unsupported: {why}"),
            Error::Failed(why) => write!(f, "run failed: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// A finished run: its report and the latency samples behind it.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    start: Arc<Start>,
}

impl Outcome {
    /// Prints the summary and writes the `--json` and `--out` files `w` asks for.
    ///
    /// # Errors
    ///
    /// Writing a report file failed.
    pub fn emit(&self, w: &Workload) -> io::Result<()> {
        let latency = self
            .report
            .latency_kind
            .as_ref()
            .map(|_| &self.start.latency);
        self.report.emit(w, latency)
    }
}

/// Runs workload `w` over `stack` with the server embedded in this process, and reports.
///
/// # Errors
///
/// [`Error::Unsupported`] for a combination the stack does not run (checked before anything
/// starts); [`Error::Failed`] when setup or any connection hits an I/O error, a protocol
/// violation, or a thread panics.
pub fn run(stack: Stack, w: &Workload) -> Result<Outcome, Error> {
    check_supported(stack, w)?;
    let cpu_start = workload::cpu_time();
    let shared = Arc::new(Run::new());
    let threads = match stack {
        Stack::Std => std_stack::launch(w, &shared),
        Stack::Tokio => tokio_stack::launch(w, &shared, None),
        Stack::TokioRustls => {
            crate::tls::setup().and_then(|tls| tokio_stack::launch(w, &shared, Some(tls)))
        }
        Stack::TokioUring => uring_stack::launch(w, &shared),
    }
    .map_err(|e| Error::Failed(format!("setup: {e}")))?;

    let t0 = Instant::now();
    let start = Arc::new(Start {
        t0,
        latency: LatencyLog::new(t0 + w.warmup, LATENCY_INTERVAL),
    });
    shared.open_gate(&start);

    let (completed, latency_kind) = match (stack, w.mode) {
        (Stack::Std, Mode::Throughput) => ("received", None),
        (_, Mode::Throughput) => ("acked", Some("publish_to_ack")),
        (_, Mode::Latency | Mode::Fanin | Mode::Pingpong) => ("round_trips", Some("round_trip")),
    };
    let counter = if completed == "received" {
        &shared.received
    } else {
        &shared.acked
    };
    let window = measure(
        w,
        t0,
        || counter.load(Ordering::Relaxed),
        latency_kind.map(|_| &start.latency),
        || shared.has_failed(),
    );
    shared.stop();
    let drained = drain(threads, DRAIN_MAX);
    if let Some(failure) = shared.failure() {
        return Err(Error::Failed(failure));
    }
    match drained {
        Drain::Finished => {}
        Drain::TimedOut => eprintln!(
            "baseline: connections still open {} s after the run; counters are as they stood",
            DRAIN_MAX.as_secs()
        ),
        Drain::Panicked => return Err(Error::Failed("a baseline thread panicked".into())),
    }
    let cpu = workload::cpu_time().saturating_sub(cpu_start);
    let latency = latency_kind.map(|kind| (kind, &start.latency));
    let report = Report::new(
        stack.name(),
        w,
        1,
        &window,
        shared.counts(),
        completed,
        latency,
        cpu,
    );
    Ok(Outcome { report, start })
}

/// What a stack's threads share: the counters a report is made of, the stop flag, the first
/// failure, and the gate that holds the load until `t0`.
///
/// Counters are updated with relaxed atomics, in batches where a stack naturally has them.
/// In every mode a message is counted as `sent` before the stack gets it, as `received`
/// before the server answers it, and as `acked` (throughput: covered by an ACK; latency and
/// fanin: its echo came back) after the answer arrives, so `acked ≤ received ≤ sent` holds
/// whenever the counters are read in that order.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) received: AtomicU64,
    stopped: AtomicBool,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    gate: Mutex<Option<Arc<Start>>>,
    gate_opened: Condvar,
}

/// The clock of a run, handed to the load side when the gate opens.
#[derive(Debug)]
pub(crate) struct Start {
    /// When load began; the pacer's schedule and the warm-up count from here.
    pub(crate) t0: Instant,
    pub(crate) latency: LatencyLog,
}

impl Run {
    fn new() -> Run {
        Run {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            gate: Mutex::new(None),
            gate_opened: Condvar::new(),
        }
    }

    /// Records `error` as the run's failure (the first one wins) and stops the load.
    pub(crate) fn fail(&self, context: &str, error: &io::Error) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert_with(|| format!("{context}: {error}"));
        self.failed.store(true, Ordering::Relaxed);
        self.stop();
    }

    /// Tells the load side to stop offering messages and close its connections.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Blocks until [`run`] opens the gate, and returns the run's clock.
    pub(crate) fn wait_start(&self) -> Arc<Start> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(start) = &*gate {
                return Arc::clone(start);
            }
            gate = self
                .gate_opened
                .wait(gate)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records one echo that came back: its round trip from the time stamped in `payload`.
    pub(crate) fn on_echo(&self, start: &Start, payload: &[u8]) -> io::Result<()> {
        let sent = read_stamp(payload).ok_or_else(|| invalid("echo shorter than a timestamp"))?;
        let now = Instant::now();
        start
            .latency
            .record(now, now.saturating_duration_since(sent));
        self.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn open_gate(&self, start: &Arc<Start>) {
        *self.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(start));
        self.gate_opened.notify_all();
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A snapshot read in the order that keeps `acked ≤ received ≤ sent` (see [`Run`]).
    fn counts(&self) -> Counts {
        let acked = self.acked.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        Counts {
            sent,
            acked,
            received,
        }
    }
}

/// Starts a thread pinned to `core`.
pub(crate) fn spawn_pinned(
    name: &str,
    core: usize,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            workload::pin_thread(core);
            body();
        })
}

/// The core of the load side (client connections, pacer): the one after the server's.
pub(crate) fn load_core() -> usize {
    workload::client_core(1)
}

/// Waits for a thread that reports its setup through `ready` (an error, or that it is up).
pub(crate) fn wait_ready<T>(ready: &std::sync::mpsc::Receiver<io::Result<T>>) -> io::Result<T> {
    ready
        .recv()
        .map_err(|_| io::Error::other("a baseline thread exited during setup"))?
}

pub(crate) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn check_supported(stack: Stack, w: &Workload) -> Result<(), Error> {
    match stack {
        Stack::Std if w.conns > STD_CONNS_MAX => Err(Error::Unsupported(format!(
            "--stack std runs a thread per connection at each end and takes at most \
             {STD_CONNS_MAX} connections (--conns {}); use --stack tokio or tokio-uring",
            w.conns
        ))),
        Stack::Std if w.busy_poll && !matches!(w.mode, Mode::Latency | Mode::Pingpong) => {
            Err(Error::Unsupported(
                "--busy-poll with --stack std applies to --mode latency and pingpong only (the \
                 busy-polling references)"
                    .into(),
            ))
        }
        Stack::Tokio | Stack::TokioUring | Stack::TokioRustls if w.busy_poll => {
            Err(Error::Unsupported(format!(
                "--busy-poll is not supported by --stack {}: its runtime parks when idle and has \
             no busy-polling mode; use --stack std for the busy-polling reference",
                stack.name()
            )))
        }
        _ => Ok(()),
    }
}

enum Drain {
    Finished,
    TimedOut,
    Panicked,
}

/// Joins `threads`, giving them until `limit` from now to finish on their own.
fn drain(threads: Vec<JoinHandle<()>>, limit: Duration) -> Drain {
    let deadline = Instant::now() + limit;
    while threads.iter().any(|t| !t.is_finished()) {
        if Instant::now() >= deadline {
            return Drain::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if threads.into_iter().all(|t| t.join().is_ok()) {
        Drain::Finished
    } else {
        Drain::Panicked
    }
}

/// The core of the serving side: one server thread or runtime, like one ringwire shard.
pub(crate) const SERVER_CORE: usize = 0;
/// How long the connections get to close after the window before the report goes out anyway.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// `--stack std` spends two threads per connection; beyond this it measures the scheduler.
const STD_CONNS_MAX: usize = 64;
const LATENCY_INTERVAL: Duration = Duration::from_secs(1);
