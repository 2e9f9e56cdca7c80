//! Smoke test of the `baseline` binary: every stack runs every workload it supports for a
//! moment and writes a report in loadgen's schema whose counters are consistent; unsupported
//! combinations and bad flags exit with status 2. Nothing here asserts on timing.

use std::process::{Command, Output};
use std::sync::Mutex;

use loadgen::Report;
use loadgen::workload::Mode;

#[test]
fn std_throughput() {
    smoke("std", "throughput", &[]);
}

#[test]
fn std_latency() {
    smoke("std", "latency", &["--rate", "2000"]);
}

#[test]
fn std_latency_busy_poll() {
    let report = smoke("std", "latency", &["--rate", "2000", "--busy-poll"]);
    assert!(report.busy_poll);
}

#[test]
fn std_fanin() {
    smoke("std", "fanin", &["--conns", "20"]);
}

#[test]
fn std_pingpong() {
    let report = smoke("std", "pingpong", &[]);
    assert!(!report.busy_poll);
}

#[test]
fn std_pingpong_busy_poll() {
    let report = smoke("std", "pingpong", &["--busy-poll"]);
    assert!(report.busy_poll);
}

#[test]
fn tokio_throughput() {
    smoke("tokio", "throughput", &[]);
}

#[test]
fn tokio_latency() {
    smoke("tokio", "latency", &["--rate", "2000"]);
}

#[test]
fn tokio_fanin() {
    smoke("tokio", "fanin", &["--conns", "20"]);
}

#[test]
fn tokio_pingpong() {
    smoke("tokio", "pingpong", &[]);
}

#[test]
fn tokio_rustls_throughput() {
    smoke("tokio-rustls", "throughput", &[]);
}

#[test]
fn tokio_rustls_latency() {
    smoke("tokio-rustls", "latency", &["--rate", "2000"]);
}

#[test]
fn tokio_rustls_fanin() {
    smoke("tokio-rustls", "fanin", &["--conns", "20"]);
}

#[test]
fn tokio_uring_throughput() {
    if has_io_uring() {
        smoke("tokio-uring", "throughput", &[]);
    }
}

#[test]
fn tokio_uring_latency() {
    if has_io_uring() {
        smoke("tokio-uring", "latency", &["--rate", "2000"]);
    }
}

#[test]
fn tokio_uring_fanin() {
    if has_io_uring() {
        smoke("tokio-uring", "fanin", &["--conns", "20"]);
    }
}

#[test]
fn tokio_uring_pingpong() {
    if has_io_uring() {
        smoke("tokio-uring", "pingpong", &[]);
    }
}

#[test]
fn busy_poll_on_tokio_is_refused() {
    let out = baseline(&["--stack", "tokio", "--mode", "latency", "--busy-poll"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--busy-poll"), "{}", stderr(&out));
}

#[test]
fn std_fanin_at_a_thousand_connections_is_refused() {
    let out = baseline(&["--stack", "std", "--mode", "fanin"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--conns"), "{}", stderr(&out));
}

#[test]
fn pingpong_on_more_than_one_connection_is_refused() {
    let out = baseline(&["--stack", "std", "--mode", "pingpong", "--conns", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--conns 1"), "{}", stderr(&out));
}

#[test]
fn bad_flags_are_refused() {
    let out = baseline(&["--stack", "carrier-pigeon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = baseline(&["--stack", "tokio", "--mode", "throughput", "--rate", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Runs one short workload and checks the report for what cannot depend on the machine's speed.
fn smoke(stack: &str, mode: &str, extra: &[&str]) -> Report {
    let mut args = vec![
        "--stack",
        stack,
        "--mode",
        mode,
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--json",
        "-",
    ];
    args.extend_from_slice(extra);
    let out = baseline(&args);
    assert!(
        out.status.success(),
        "baseline {args:?} failed:\n{}",
        stderr(&out)
    );
    let report: Report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("baseline {args:?} wrote no report ({e}):\n{}", stderr(&out)));

    assert_eq!(report.stack, stack);
    assert_eq!(serde_json::to_value(report.mode).unwrap(), mode);
    assert_eq!(report.shards, 1);
    let counts = (report.sent, report.acked, report.received);
    assert!(report.sent > 0 && report.received > 0, "{counts:?}");
    assert!(report.received <= report.sent, "{counts:?}");
    assert!(report.acked <= report.received, "{counts:?}");
    match (stack, report.mode) {
        ("std", Mode::Throughput) => {
            assert_eq!(report.completed, "received");
            assert_eq!(report.acked, 0);
            assert!(report.latency_us.is_none());
        }
        (_, Mode::Throughput) => {
            assert_eq!(report.completed, "acked");
            assert_eq!(report.latency_kind.as_deref(), Some("publish_to_ack"));
            assert!(report.latency_us.is_some(), "no latency samples");
        }
        (_, Mode::Latency | Mode::Fanin | Mode::Pingpong) => {
            assert_eq!(report.completed, "round_trips");
            assert!(report.acked > 0, "{counts:?}");
            assert_eq!(report.latency_kind.as_deref(), Some("round_trip"));
            assert!(report.latency_us.is_some(), "no latency samples");
        }
    }
    if report.mode == Mode::Pingpong {
        // One message in flight: every one sent came back, and the percentiles are in order.
        assert_eq!(report.conns, 1);
        assert_eq!(report.acked, report.sent, "{counts:?}");
        let l = report.latency_us.expect("checked above");
        assert!(l.count > 0 && l.p50 > 0.0, "{l:?}");
        assert!(
            l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
            "{l:?}"
        );
        assert!(report.msgs_per_s > 0.0);
    }
    report
}

/// Runs the binary, one at a time: parallel runs on a small machine would only slow each other.
fn baseline(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_baseline"))
        .args(args)
        .output()
        .expect("the baseline binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether this kernel lets the process set up an io_uring; prints why a test is skipped.
fn has_io_uring() -> bool {
    match tokio_uring::Runtime::new(&tokio_uring::builder()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: io_uring is unavailable here ({e})");
            false
        }
    }
}
