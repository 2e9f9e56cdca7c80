//! The report every workload produces, whatever stack ran it (ringwire here, the baselines in
//! `bench/`), so that runs compare field by field. The JSON schema is documented in
//! docs/loadgen.md; bump [`SCHEMA`] when a field changes meaning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use serde::{Deserialize, Serialize};

use crate::chart;
use crate::workload::{Mode, Window, Workload};

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// One run's results. Counters (`sent`, `acked`, `received`) cover the whole run, warm-up and
/// final drain included; rates and latencies cover only the measured window after warm-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// What carried the messages: `ringwire`, `std`, `tokio` or `tokio-uring`.
    pub stack: String,
    pub mode: Mode,
    /// Payload bytes per message.
    pub size: usize,
    pub conns: usize,
    /// Offered load in messages per second (latency mode), else `null`.
    pub rate: Option<u64>,
    /// Shards (ringwire) or server threads (baselines) on the receiving side.
    pub shards: usize,
    pub busy_poll: bool,
    /// The sending engines' outbox sync policy (`none`, `always`, `interval:<d>`), or `null`
    /// without an outbox (and for the baselines).
    #[serde(default)]
    pub outbox: Option<String>,
    /// How the client engines published (`--publisher`: `shard`, `batch` or `thread`), or
    /// `null` for the workloads without that choice (fanin, pingpong) and for the baselines.
    #[serde(default)]
    pub publisher: Option<String>,
    /// Whether the client engines offered MSG_BATCH frames (`--no-batch-frames` turns them
    /// off), or `null` where loadgen has no such choice (fanin, pingpong, the baselines).
    #[serde(default)]
    pub batch_frames: Option<bool>,
    /// Whether every connection ran over TLS (`--tls` or the `--tls-*` files); `false` for the
    /// plaintext stacks.
    #[serde(default)]
    pub tls: bool,
    /// `--crc` as given (`null`: the engine's default, on without TLS).
    #[serde(default)]
    pub crc: Option<bool>,
    /// Whether the engines offered LZ4 (`--lz4`).
    #[serde(default)]
    pub lz4: bool,
    /// What the payload bytes were (`--content`); `null` for the baselines.
    #[serde(default)]
    pub content: Option<String>,
    /// Length of the measured window.
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Messages the load side handed to the stack.
    pub sent: u64,
    /// Messages the receiving side acknowledged (0 for a stack without acknowledgements).
    pub acked: u64,
    /// Messages the receiving side delivered to its application.
    pub received: u64,
    /// What `msgs_per_s` counts: `acked`, `received` or `round_trips`.
    pub completed: String,
    /// Completed messages per second in the measured window.
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second in the measured window, one way.
    pub mb_per_s: f64,
    /// What `latency_us` measures: `round_trip` (from the intended send time, so an open-loop
    /// run is corrected for coordinated omission) or `publish_to_ack` (sampled).
    pub latency_kind: Option<String>,
    pub latency_us: Option<Percentiles>,
    /// (percentile, microseconds) points of the latency distribution, for charts.
    pub latency_distribution: Vec<(f64, f64)>,
    /// CPU seconds this process used during the whole run (both sides when embedded).
    pub cpu_s: f64,
    /// CPU seconds used in the measured window, by the core the threads are pinned to (`"0"`,
    /// `"1"`, …; `"unpinned"` for the rest): with the serving side on the first cores and the
    /// load side on the next, how busy each side was.
    #[serde(default)]
    pub cpu_window_s: BTreeMap<String, f64>,
    /// Completed messages per second, sampled through the run (time from the end of warm-up).
    pub timeline: Vec<Sample>,
    /// The engine's own counters (ringwire only): name → value.
    pub engine: Option<serde_json::Map<String, serde_json::Value>>,
    pub machine: Machine,
    /// When the measured window ended, so that files written later summarize the same
    /// samples as `latency_us` (not part of the JSON).
    #[serde(skip)]
    pub window_end: Option<Instant>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One point of the throughput timeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub msgs_per_s: f64,
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's description from /proc.
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
        }
    }
}

impl Report {
    /// Writes the report as pretty JSON to `path`, or to stdout for `-`.
    pub fn write_json(&self, path: &str) -> io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        if path == "-" {
            let mut out = io::stdout().lock();
            out.write_all(json.as_bytes())?;
            out.write_all(b"\n")
        } else {
            std::fs::write(path, json + "\n")
        }
    }

    /// The human-readable summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let rate = self
            .rate
            .map_or(String::new(), |r| format!(", offered {r} msgs/s"));
        let publisher = self
            .publisher
            .as_ref()
            .map_or(String::new(), |p| format!(", publisher {p}"));
        let _ = writeln!(
            s,
            "{} {}: {} B × {} conns, {:.1} s measured after {:.1} s warm-up{rate}{publisher}",
            self.stack,
            format!("{:?}", self.mode).to_lowercase(),
            self.size,
            self.conns,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            s,
            "  sent {}  acked {}  received {}",
            self.sent, self.acked, self.received
        );
        let _ = writeln!(
            s,
            "  {:.0} msgs/s ({})  {:.1} MB/s payload  cpu {:.2} s",
            self.msgs_per_s, self.completed, self.mb_per_s, self.cpu_s
        );
        if let (Some(kind), Some(l)) = (&self.latency_kind, &self.latency_us) {
            let _ = writeln!(
                s,
                "  {kind} µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        if let Some(engine) = &self.engine {
            let counters: Vec<String> = engine.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  engine: {}", counters.join("  "));
        }
        s
    }
}

/// Latency samples in nanoseconds, kept per interval so they can be written as an HdrHistogram
/// interval log. Shared by the threads that observe completions.
#[derive(Debug)]
pub struct LatencyLog {
    inner: Mutex<Intervals>,
}

#[derive(Debug)]
struct Intervals {
    start: Instant,
    interval: Duration,
    hists: Vec<Histogram<u64>>,
}

impl LatencyLog {
    /// Samples taken at or after `start` are kept, in `interval`-long histograms.
    pub fn new(start: Instant, interval: Duration) -> LatencyLog {
        LatencyLog {
            inner: Mutex::new(Intervals {
                start,
                interval,
                hists: Vec::new(),
            }),
        }
    }

    /// Forgets every sample and starts the log afresh at `start` (for a run whose start was not
    /// known when the log had to be shared).
    pub fn reset(&self, start: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.start = start;
        inner.hists.clear();
    }

    /// Records one latency observed at `now` (ignored before the log's start).
    pub fn record(&self, now: Instant, latency: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(since) = now.checked_duration_since(inner.start) else {
            return;
        };
        let index = (since.as_nanos() / inner.interval.as_nanos()) as usize;
        while inner.hists.len() <= index {
            inner.hists.push(new_histogram());
        }
        let ns = (latency.as_nanos() as u64).clamp(1, LATENCY_NS_MAX);
        inner.hists[index].saturating_record(ns);
    }

    /// All intervals merged, limited to those starting before `end` (the measured window).
    pub fn total(&self, end: Instant) -> Histogram<u64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = new_histogram();
        for (i, h) in inner.hists.iter().enumerate() {
            if inner.start + inner.interval * i as u32 >= end {
                break;
            }
            let _ = total.add(h);
        }
        total
    }

    /// Writes the intervals in HdrHistogram's interval-log format (values in nanoseconds,
    /// V2 compressed encoding), readable by HistogramLogProcessor and similar tools.
    pub fn write_interval_log(&self, path: &Path) -> io::Result<()> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = io::BufWriter::new(std::fs::File::create(path)?);
        let mut serializer = V2DeflateSerializer::new();
        let wall_start = SystemTime::now() - inner.start.elapsed();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("ringwire loadgen latency log; values in nanoseconds")
            .with_start_time(wall_start)
            .with_base_time(wall_start)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut file, &mut serializer)?;
        for (i, h) in inner.hists.iter().enumerate() {
            log.write_histogram(h, inner.interval * i as u32, inner.interval, None)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        drop(log);
        file.flush()
    }
}

/// Summarizes a histogram of nanoseconds in microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Some(Percentiles {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    })
}

/// The distribution as (percentile, µs) points, denser towards the tail, for charts.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    // 1/(1-q) from 1 to 10^5 in 40 steps per decade, then the max.
    for step in 0..=200 {
        let q = 1.0 - 10f64.powf(-(step as f64) / 40.0);
        points.push((q * 100.0, h.value_at_quantile(q) as f64 / 1000.0));
    }
    points.push((100.0, h.max() as f64 / 1000.0));
    points
}

/// Writes the percentile distribution in HdrHistogram's classic `.hgrm` text form (values in
/// microseconds), which HdrHistogram's online plotter reads.
pub fn write_hgrm(h: &Histogram<u64>, path: &Path) -> io::Result<()> {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14.2}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            v.count_since_last_iteration(),
            inverse
        );
    }
    if let Some(p) = percentiles(h) {
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            p.mean,
            h.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            p.max, p.count
        );
    }
    std::fs::write(path, out)
}

/// Writes `report.json`, `latency.hlog`, `latency.hgrm` and the SVG charts into `dir`.
pub fn write_out_dir(
    report: &Report,
    latency: Option<(&LatencyLog, &Histogram<u64>)>,
    dir: &Path,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    report.write_json(&dir.join("report.json").to_string_lossy())?;
    if let Some((log, total)) = latency {
        log.write_interval_log(&dir.join("latency.hlog"))?;
        write_hgrm(total, &dir.join("latency.hgrm"))?;
    }
    let label = format!("{} {:?} {} B", report.stack, report.mode, report.size);
    if !report.latency_distribution.is_empty() {
        std::fs::write(
            dir.join("latency.svg"),
            chart::percentiles(&[(&label, &report.latency_distribution)], "latency (µs)"),
        )?;
    }
    let points: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|s| (s.t_s, s.msgs_per_s))
        .collect();
    std::fs::write(
        dir.join("throughput.svg"),
        chart::timeline(&[(&label, &points)], "msgs/s"),
    )?;
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// Latencies above a minute are recorded as a minute.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// The totals a workload counted, for [`Report::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
}

impl Report {
    /// Assembles a report from a finished run. `completed` names what the window counted
    /// (`acked`, `received` or `round_trips`); `latency` is the kind and the samples, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stack: &str,
        w: &Workload,
        shards: usize,
        window: &Window,
        counts: Counts,
        completed: &str,
        latency: Option<(&str, &LatencyLog)>,
        cpu: Duration,
    ) -> Report {
        let rate = window.rate();
        let total = latency.map(|(_, log)| log.total(window.end));
        Report {
            schema: SCHEMA,
            stack: stack.to_owned(),
            mode: w.mode,
            size: w.size,
            conns: w.conns,
            rate: w.rate,
            shards,
            busy_poll: w.busy_poll,
            outbox: None,
            publisher: None,
            batch_frames: None,
            tls: false,
            crc: None,
            lz4: false,
            content: None,
            duration_s: window.seconds(),
            warmup_s: w.warmup.as_secs_f64(),
            sent: counts.sent,
            acked: counts.acked,
            received: counts.received,
            completed: completed.to_owned(),
            msgs_per_s: rate,
            mb_per_s: rate * w.size as f64 / 1e6,
            latency_kind: latency.map(|(kind, _)| kind.to_owned()),
            latency_us: total.as_ref().and_then(percentiles),
            latency_distribution: total.as_ref().map(distribution).unwrap_or_default(),
            cpu_s: cpu.as_secs_f64(),
            cpu_window_s: window
                .cpu_by_core
                .iter()
                .map(|(core, used)| {
                    let key = core.map_or_else(|| "unpinned".to_owned(), |c| c.to_string());
                    (key, used.as_secs_f64())
                })
                .collect(),
            timeline: window.timeline.clone(),
            engine: None,
            machine: Machine::this(),
            window_end: Some(window.end),
        }
    }

    /// Prints the summary (to stderr when the JSON goes to stdout) and writes the `--json`
    /// and `--out` files the workload asked for.
    pub fn emit(&self, w: &Workload, latency: Option<&LatencyLog>) -> io::Result<()> {
        if w.json.as_deref() == Some("-") {
            eprint!("{}", self.summary());
        } else {
            print!("{}", self.summary());
        }
        if let Some(path) = &w.json {
            self.write_json(path)?;
        }
        if let Some(dir) = &w.out {
            let end = self.window_end.unwrap_or_else(Instant::now);
            let total = latency.map(|log| (log, log.total(end)));
            write_out_dir(self, total.as_ref().map(|(log, h)| (*log, h)), dir)?;
        }
        Ok(())
    }
}
