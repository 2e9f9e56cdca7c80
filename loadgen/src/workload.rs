//! What a run does, independent of the stack that carries it: the flags every workload takes,
//! open-loop pacing, timestamps carried in payloads, the measurement window with its live
//! progress line, and the thread placement that keeps runs comparable.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::report::{self, LatencyLog, Sample};

/// The four workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A one-way stream as fast as the stack takes it, every message acknowledged.
    Throughput,
    /// Request/echo round trips at a fixed rate, open loop.
    Latency,
    /// Many connections into one node, each a closed loop of request/echo.
    Fanin,
    /// One connection, one message in flight: each echo that comes back sends the next one.
    Pingpong,
}

/// Flags shared by `loadgen run` and the baselines.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Which workload to drive.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    pub mode: Mode,
    /// Payload bytes per message (latency, fanin and pingpong need at least 8, for the
    /// timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Connections driving load [default: 1, or 1000 for fanin; pingpong takes only 1].
    #[arg(long)]
    pub conns: Option<usize>,
    /// Offered load in messages per second, all connections together (latency mode)
    /// [default: 10000].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Measured time, after warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time run before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Busy-poll instead of sleeping when idle (ringwire: shards spin; baselines: sockets
    /// are polled without blocking).
    #[arg(long)]
    pub busy_poll: bool,
    /// Write the JSON report to this file, or to stdout for `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Write report.json, the latency interval log (latency.hlog, latency.hgrm) and SVG
    /// charts into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// [`WorkloadArgs`] with defaults applied and checked.
#[derive(Debug, Clone)]
pub struct Workload {
    pub mode: Mode,
    pub size: usize,
    pub conns: usize,
    pub rate: Option<u64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub busy_poll: bool,
    pub json: Option<String>,
    pub out: Option<PathBuf>,
}

impl WorkloadArgs {
    /// Applies the per-mode defaults and rejects combinations that cannot run.
    pub fn resolve(&self, size_max: usize) -> Result<Workload, String> {
        let conns = self
            .conns
            .unwrap_or(if self.mode == Mode::Fanin { 1000 } else { 1 });
        if conns == 0 || conns > CONNS_MAX {
            return Err(format!("--conns must be 1 to {CONNS_MAX}"));
        }
        if self.mode == Mode::Pingpong && conns != 1 {
            return Err(
                "--mode pingpong runs one connection with one message in flight (--conns 1)".into(),
            );
        }
        if self.size > size_max {
            return Err(format!(
                "--size {} exceeds the largest payload, {size_max}",
                self.size
            ));
        }
        if self.mode != Mode::Throughput && self.size < STAMP_LEN {
            return Err(format!(
                "--mode {:?} needs --size of at least {STAMP_LEN} bytes, for the timestamp",
                self.mode
            )
            .to_lowercase());
        }
        let rate = match (self.mode, self.rate) {
            (Mode::Latency, None) => Some(10_000),
            (Mode::Latency, Some(0)) => return Err("--rate must be positive".into()),
            (Mode::Latency, Some(r)) => Some(r),
            (_, Some(_)) => return Err("--rate applies to --mode latency only".into()),
            (_, None) => None,
        };
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if let Some(dir) = &self.out
            && dir.exists()
            && !dir.is_dir()
        {
            return Err(format!(
                "--out {} exists and is not a directory",
                dir.display()
            ));
        }
        Ok(Workload {
            mode: self.mode,
            size: self.size,
            conns,
            rate,
            duration: self.duration,
            warmup: self.warmup,
            busy_poll: self.busy_poll,
            json: self.json.clone(),
            out: self.out.clone(),
        })
    }
}

/// Parses `10s`, `250ms`, `2m`, `1.5s`, `300us` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 10s, 500ms or 2m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use us, ms, s or m)"
            ));
        }
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{s:?} is out of range (0 to 24 h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The measured window of a run, sampled while the load runs.
#[derive(Debug)]
pub struct Window {
    /// When warm-up ended and measuring began.
    pub start: Instant,
    /// When measuring ended.
    pub end: Instant,
    /// The completion count at `start` and at `end`.
    pub completed: (u64, u64),
    pub timeline: Vec<Sample>,
    /// CPU time this process's threads used in the window, by the one core each is pinned
    /// to (`None`: threads not pinned to a single core).
    pub cpu_by_core: BTreeMap<Option<usize>, Duration>,
}

impl Window {
    /// Completed messages per second in the window.
    pub fn rate(&self) -> f64 {
        (self.completed.1 - self.completed.0) as f64 / self.seconds()
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// Runs the clock of a run that began at `t0`: waits out the warm-up, then samples
/// `completed()` four times a second until the duration has passed, drawing a progress line
/// on a terminal. `stop()` is checked between samples, to end early (a signal, a failure).
pub fn measure(
    w: &Workload,
    t0: Instant,
    completed: impl Fn() -> u64,
    latency: Option<&LatencyLog>,
    stop: impl Fn() -> bool,
) -> Window {
    let tty = std::io::stderr().is_terminal();
    let start = t0 + w.warmup;
    let end = start + w.duration;
    let mut progress = Progress::new(tty, w.size);
    while Instant::now() < start && !stop() {
        std::thread::sleep(TICK.min(start.saturating_duration_since(Instant::now())));
        progress.draw(t0, completed(), None, "warm-up");
    }
    let first = completed();
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let mut timeline = Vec::new();
    let (mut last_t, mut last_n) = (start, first);
    while Instant::now() < end && !stop() {
        std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        let (now, n) = (Instant::now(), completed());
        let dt = (now - last_t).as_secs_f64();
        if dt > 0.0 {
            timeline.push(Sample {
                t_s: (now - start).as_secs_f64(),
                msgs_per_s: (n - last_n) as f64 / dt,
            });
        }
        (last_t, last_n) = (now, n);
        let p99 = latency
            .and_then(|l| report::percentiles(&l.total(now)))
            .map(|p| p.p99);
        progress.draw(start, n - first, p99, "");
    }
    let end = Instant::now();
    let cpu_end = thread_cpu();
    progress.finish();
    let mut cpu_by_core = BTreeMap::new();
    for (tid, (core, used)) in cpu_end {
        let before = cpu_start
            .get(&tid)
            .map_or(Duration::ZERO, |&(_, used)| used);
        *cpu_by_core.entry(core).or_default() += used.saturating_sub(before);
    }
    Window {
        start,
        end,
        completed: (first, completed()),
        timeline,
        cpu_by_core,
    }
}

/// Each thread of this process: the one core it is pinned to (if it is pinned to exactly one)
/// and the CPU time (user + system) it has used, from `/proc/self/task`. A thread that exits
/// between two readings drops out of the difference, so read while the run's threads live.
fn thread_cpu() -> HashMap<u32, (Option<usize>, Duration)> {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    // SAFETY: sysconf reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces, so split at its closing
        // parenthesis): state is field 3, utime and stime fields 14 and 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let used = tick(11) + tick(12);
        let cpu = Duration::from_nanos(used * 1_000_000_000 / ticks);
        threads.insert(tid, (pinned_core(tid), cpu));
    }
    threads
}

/// The core thread `tid` is pinned to, if its affinity is exactly one core.
fn pinned_core(tid: u32) -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(
            tid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        ) != 0
        {
            return None;
        }
        set
    };
    let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect();
    match cores[..] {
        [core] => Some(core),
        _ => None,
    }
}

/// Sleeps until `deadline`.
pub fn sleep_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep(deadline - now);
    }
}

/// Open-loop pacing: the k-th message is due at `start + k / rate`, whether or not earlier
/// ones completed, so a stall shows up as latency instead of hiding as a lower send rate.
///
/// The pacer always sleeps between messages, even in busy-poll runs: it shares the load core
/// with the thread that polls for replies, and two spinning threads on one core would take
/// turns in scheduler time slices (milliseconds), measuring the scheduler instead of the stack.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    interval_ns: f64,
    next: u64,
}

impl Pacer {
    /// Call on the thread that will pace: it also tightens that thread's timer slack so a
    /// sleep ends within microseconds of its deadline instead of the default 50 µs.
    pub fn new(rate: u64, start: Instant) -> Pacer {
        // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        Pacer {
            start,
            interval_ns: 1e9 / rate as f64,
            next: 0,
        }
    }

    /// Waits for the next message's due time and returns it (the time to stamp it with).
    pub fn wait_next(&mut self) -> Instant {
        let due = self.start + Duration::from_nanos((self.next as f64 * self.interval_ns) as u64);
        self.next += 1;
        sleep_until(due);
        due
    }
}

/// Writes `t` into the first [`STAMP_LEN`] bytes of `payload`.
pub fn stamp(payload: &mut [u8], t: Instant) {
    let ns = t.saturating_duration_since(anchor()).as_nanos() as u64;
    payload[..STAMP_LEN].copy_from_slice(&ns.to_le_bytes());
}

/// The time stamped into `payload` by [`stamp`] in this process.
pub fn read_stamp(payload: &[u8]) -> Option<Instant> {
    let bytes: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(anchor() + Duration::from_nanos(u64::from_le_bytes(bytes)))
}

fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

/// Pins the calling thread to `core` (modulo the core count); a no-op if that fails.
pub fn pin_thread(core: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for core < cores ≤ CPU_SETSIZE,
    // and sched_setaffinity(0, ..) reads the set for the call only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % cores, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The core the load side (clients, pacers) runs on; the serving side takes the ones before.
pub fn client_core(server_threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    server_threads % cores
}

/// CPU time used by this process so far (user + system).
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; both live for the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The live progress line: drawn on stderr when it is a terminal, never otherwise.
struct Progress {
    tty: bool,
    size: usize,
    drawn: bool,
}

impl Progress {
    fn new(tty: bool, size: usize) -> Progress {
        Progress {
            tty,
            size,
            drawn: false,
        }
    }

    fn draw(&mut self, since: Instant, completed: u64, p99_us: Option<f64>, phase: &str) {
        if !self.tty {
            return;
        }
        let secs = since.elapsed().as_secs_f64().max(1e-9);
        let rate = completed as f64 / secs;
        let p99 = p99_us.map_or(String::new(), |p| format!("  p99 {p:.1} µs"));
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{phase:>7} {secs:6.1} s  {rate:>12.0} msgs/s  {:>9.1} MB/s{p99}",
            rate * self.size as f64 / 1e6
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// Bytes of a payload taken by the send timestamp in latency and fanin modes, and in the
/// baselines' pingpong (ringwire's pingpong client keeps the send time itself, but takes the
/// same minimum size so every stack runs the same `--size`).
pub const STAMP_LEN: usize = 8;
/// Upper bound on `--conns` (each connection is a socket at each end, all in one process when
/// the node is embedded, under a 20,000 open-file limit).
pub const CONNS_MAX: usize = 5000;
const TICK: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn stamps_round_trip() {
        let t = Instant::now() + Duration::from_millis(3);
        let mut buf = [0u8; 16];
        stamp(&mut buf, t);
        let back = read_stamp(&buf).unwrap();
        let diff = if back > t { back - t } else { t - back };
        assert!(diff < Duration::from_micros(1));
        assert_eq!(read_stamp(&buf[..4]), None);
    }

    fn args(mode: Mode) -> WorkloadArgs {
        WorkloadArgs {
            mode,
            size: 64,
            conns: None,
            rate: None,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            busy_poll: false,
            json: None,
            out: None,
        }
    }

    #[test]
    fn defaults_and_bad_combinations() {
        let fanin = args(Mode::Fanin).resolve(1 << 20).unwrap();
        assert_eq!((fanin.conns, fanin.rate), (1000, None));
        let latency = args(Mode::Latency).resolve(1 << 20).unwrap();
        assert_eq!((latency.conns, latency.rate), (1, Some(10_000)));
        let pingpong = args(Mode::Pingpong).resolve(1 << 20).unwrap();
        assert_eq!((pingpong.conns, pingpong.rate), (1, None));

        let mut a = args(Mode::Pingpong);
        a.conns = Some(2);
        assert!(a.resolve(1 << 20).unwrap_err().contains("--conns 1"));
        let mut a = args(Mode::Pingpong);
        a.rate = Some(1000);
        assert!(a.resolve(1 << 20).is_err());

        let mut a = args(Mode::Latency);
        a.size = 4;
        assert!(a.resolve(1 << 20).unwrap_err().contains("at least 8"));
        let mut a = args(Mode::Throughput);
        a.rate = Some(5);
        assert!(a.resolve(1 << 20).is_err());
        let mut a = args(Mode::Throughput);
        a.size = 100;
        assert!(a.resolve(99).is_err());
        a.size = 10;
        a.conns = Some(0);
        assert!(a.resolve(99).is_err());
    }
}
