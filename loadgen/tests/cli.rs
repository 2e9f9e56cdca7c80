//! loadgen end to end, as a user runs it: every workload against the embedded node (and over
//! TLS), the JSON and `--out` files, `serve` driven through `--target`, and the errors for bad
//! input. Counts are checked exactly; nothing here depends on how fast the machine is.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs")
}

/// Runs a short workload with `--json -` and returns the parsed report.
fn report(args: &[&str]) -> Value {
    let mut all = vec![
        "run",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--json",
        "-",
    ];
    all.extend_from_slice(args);
    let out = loadgen(&all);
    assert!(
        out.status.success(),
        "loadgen {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is the JSON report")
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn throughput_acks_everything_it_sends() {
    let r = report(&["--mode", "throughput", "--size", "100"]);
    assert_eq!(r["schema"], 1);
    assert_eq!(r["stack"], "ringwire");
    assert_eq!(r["mode"], "throughput");
    assert_eq!(r["size"], 100);
    assert_eq!(r["completed"], "acked");
    assert_eq!(r["publisher"], "thread");
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(u(&r, "acked"), sent);
    assert_eq!(u(&r, "received"), sent);
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0);
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][key].as_f64().is_some(), "latency_us.{key}");
    }
    assert_eq!(r["engine"]["server.msgs_received"], sent);
}

#[test]
fn shard_publisher_acks_everything_it_sends() {
    throughput_with("shard");
}

#[test]
fn batch_publisher_acks_everything_it_sends() {
    throughput_with("batch");
}

/// Runs a short throughput workload with `--publisher` and checks the counts: everything sent
/// was acknowledged and received, exactly.
fn throughput_with(publisher: &str) {
    let r = report(&["--mode", "throughput", "--publisher", publisher]);
    assert_eq!(r["publisher"], publisher);
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(u(&r, "acked"), sent);
    assert_eq!(u(&r, "received"), sent);
    assert_eq!(r["engine"]["server.msgs_received"], sent);
}

#[test]
fn latency_round_trips_every_message() {
    let r = report(&["--mode", "latency", "--rate", "2000", "--conns", "2"]);
    assert_eq!(r["mode"], "latency");
    assert_eq!(r["rate"], 2000);
    assert_eq!(r["latency_kind"], "round_trip");
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(r["engine"]["round_trips"], sent);
    assert_eq!(u(&r, "received"), sent);
    let l = &r["latency_us"];
    assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
    assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
}

#[test]
fn latency_from_shard_sources_round_trips_every_message() {
    let r = report(&[
        "--mode",
        "latency",
        "--rate",
        "2000",
        "--conns",
        "2",
        "--publisher",
        "shard",
    ]);
    assert_eq!(r["publisher"], "shard");
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(r["engine"]["round_trips"], sent);
    assert_eq!(u(&r, "received"), sent);
    assert!(u(&r["latency_us"], "count") > 0);
}

#[test]
fn fanin_keeps_every_connection_in_its_loop() {
    let r = report(&["--mode", "fanin", "--conns", "50"]);
    assert_eq!(r["conns"], 50);
    assert_eq!(r["publisher"], Value::Null);
    assert_eq!(r["engine"]["server.connects"], 50);
    let sent = u(&r, "sent");
    assert!(sent >= 50, "each connection sent at least once");
    assert_eq!(r["engine"]["round_trips"], sent);
    assert_eq!(r["engine"]["server.msgs_received"], sent);
}

#[test]
fn pingpong_keeps_one_message_in_flight() {
    pingpong(&[]);
}

#[test]
fn pingpong_busy_poll_keeps_one_message_in_flight() {
    let r = pingpong(&["--busy-poll"]);
    assert_eq!(r["busy_poll"], true);
}

/// Runs a short pingpong and checks what cannot depend on the machine's speed: every message
/// sent came back, and the percentiles are positive and in order.
fn pingpong(extra: &[&str]) -> Value {
    let mut args = vec!["--mode", "pingpong", "--size", "64"];
    args.extend_from_slice(extra);
    let r = report(&args);
    assert_eq!(r["mode"], "pingpong");
    assert_eq!(r["conns"], 1);
    assert_eq!(r["rate"], Value::Null);
    assert_eq!(r["completed"], "round_trips");
    assert_eq!(r["latency_kind"], "round_trip");
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(r["engine"]["round_trips"], sent);
    assert_eq!(u(&r, "received"), sent);
    assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0);
    let l = &r["latency_us"];
    assert!(u(l, "count") > 0, "{l}");
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("latency_us.{k} in {l}"))
        })
        .collect();
    assert!(p[0] > 0.0, "{l}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{l}");
    r
}

#[test]
fn out_dir_holds_report_logs_and_charts() {
    let dir = std::env::temp_dir().join(format!("loadgen-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = loadgen(&[
        "run",
        "--mode",
        "latency",
        "--rate",
        "1000",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["mode"], "latency");
    let hlog = std::fs::read_to_string(dir.join("latency.hlog")).unwrap();
    assert!(hlog.contains("#[StartTime:"));
    // Interval lines: start,length,max,base64 of a V2 compressed histogram ("HISTF").
    assert!(
        hlog.lines()
            .any(|l| !l.starts_with('#') && l.contains(",HISTF")),
        "{hlog}"
    );
    let hgrm = std::fs::read_to_string(dir.join("latency.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile") && hgrm.contains("#[Max"));
    for svg in ["latency.svg", "throughput.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("<polyline"),
            "{svg}"
        );
    }

    let chart = dir.join("both.svg");
    let out = loadgen(&[
        "chart",
        "--out",
        chart.to_str().unwrap(),
        dir.join("report.json").to_str().unwrap(),
        dir.join("report.json").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&chart).unwrap();
    assert_eq!(text.matches("<polyline").count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_usage_errors() {
    for (args, needle) in [
        (&["--mode", "sideways"][..], "invalid value"),
        (&["--size", "-3"][..], "unexpected argument"),
        (&["--mode", "latency", "--size", "4"][..], "at least 8"),
        (&["--rate", "100"][..], "latency only"),
        (&["--duration", "soon"][..], "not a duration"),
        (&["--conns", "0"][..], "--conns"),
        (&["--size", "99999999"][..], "largest payload"),
        (&["--shards", "0"][..], "--shards"),
        (&["--mode", "pingpong", "--conns", "2"][..], "--conns 1"),
        (&["--mode", "pingpong", "--rate", "100"][..], "latency only"),
        (
            &["--mode", "pingpong", "--outbox", "/tmp/x"][..],
            "--outbox applies",
        ),
        (&["--publisher", "carrier-pigeon"][..], "invalid value"),
        (
            &["--mode", "latency", "--publisher", "batch"][..],
            "throughput mode",
        ),
        (
            &["--mode", "fanin", "--publisher", "shard"][..],
            "--publisher applies",
        ),
    ] {
        let out = loadgen(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn unreachable_target_says_so() {
    // A port nothing listens on: bind one, then free it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = loadgen(&["--target", &target, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach --target") && err.contains(&target),
        "{err}"
    );
}

#[test]
fn serve_answers_a_remote_run_and_reports_on_sigterm() {
    let (server, listen) = serve(&[]);
    let r = report(&["--target", &listen, "--mode", "latency", "--rate", "1000"]);
    let sent = u(&r, "sent");
    assert_eq!(r["engine"]["round_trips"], sent);
    let seen = stop(server);
    assert_eq!(seen["signal"], "SIGTERM");
    assert_eq!(seen["received"], sent);
    assert_eq!(seen["echoed"], sent);
}

/// Starts `loadgen serve --json -` with `extra` flags on a free port and waits until it
/// listens; returns the process and its address.
fn serve(extra: &[&str]) -> (std::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let server = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["serve", "--listen", &listen, "--json", "-"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&listen);
    (server, listen)
}

/// Stops `serve` with SIGTERM and returns what it printed (its JSON summary).
fn stop(server: std::process::Child) -> Value {
    // SAFETY: kill sends a signal to the child we spawned and still own.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let out = server.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "serve never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tls_run_acks_everything_over_tls() {
    let r = report(&["--mode", "throughput", "--tls"]);
    assert_eq!(r["tls"], true);
    let sent = u(&r, "sent");
    assert!(sent > 0);
    assert_eq!(u(&r, "acked"), sent);
    assert_eq!(r["engine"]["server.msgs_received"], sent);
    assert_eq!(r["engine"]["server.tls_failures"], 0);
    assert_eq!(r["engine"]["client.tls_failures"], 0);
    let plain = report(&["--mode", "pingpong"]);
    assert_eq!(plain["tls"], false);
    let r = report(&["--mode", "pingpong", "--tls"]);
    assert_eq!(r["tls"], true);
    assert_eq!(r["engine"]["round_trips"], u(&r, "sent"));
    // Permissive: TLS, the node asks no client certificate.
    let r = report(&["--mode", "throughput", "--tls", "--security", "permissive"]);
    assert_eq!(r["tls"], true);
    assert_eq!(u(&r, "acked"), u(&r, "sent"));
}

#[test]
fn tls_flags_that_cannot_work_are_usage_errors() {
    for (args, needle) in [
        (
            &["--tls", "--mode", "fanin"][..],
            "TLS does not apply to fanin",
        ),
        (
            &["--tls", "--target", "127.0.0.1:9"][..],
            "--tls makes certificates",
        ),
        (&["--tls-cert", "node.crt"][..], "required"),
        (
            &[
                "--tls",
                "--tls-cert",
                "a",
                "--tls-key",
                "b",
                "--tls-ca",
                "c",
            ][..],
            "cannot be used with",
        ),
        (&["--security", "paranoid"][..], "unknown security mode"),
    ] {
        let out = loadgen(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Files that are not there: a run error that names the file.
    let out = loadgen(&[
        "--duration",
        "300ms",
        "--tls-cert",
        "/nonexistent/node.crt",
        "--tls-key",
        "/nonexistent/node.key",
        "--tls-ca",
        "/nonexistent/ca.crt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/"), "{err}");
    // A mode that needs what is not configured: refused before anything runs.
    let out = loadgen(&["--duration", "300ms", "--security", "strict"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("strict mode needs a TLS configuration"),
        "{err}"
    );
}

/// `serve` with certificate files made by openssl, driven by a remote `run` with its own: the
/// run checks that the node's certificate names the node id it dials; the node takes any
/// client certificate from the CA (`--node-id-verification none`), since the run's node ids
/// carry its process id.
#[test]
fn serve_over_tls_answers_a_remote_run_with_openssl_certificates() {
    let Some(ca) = ringwire_tests::certs::OpensslCa::new(
        "serve_over_tls_answers_a_remote_run_with_openssl_certificates",
        "ca",
    ) else {
        return;
    };
    let node = ca.node("loadgen-server", &["loadgen-server"], &ca);
    let client = ca.node("a-client", &["a-client"], &ca);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let (server, listen) = serve(&[
        "--tls-cert",
        &path(&node.cert_path),
        "--tls-key",
        &path(&node.key_path),
        "--tls-ca",
        &path(&node.ca_cert_path),
        "--node-id-verification",
        "none",
    ]);
    let r = report(&[
        "--target",
        &listen,
        "--mode",
        "latency",
        "--rate",
        "1000",
        "--tls-cert",
        &path(&client.cert_path),
        "--tls-key",
        &path(&client.key_path),
        "--tls-ca",
        &path(&client.ca_cert_path),
    ]);
    assert_eq!(r["tls"], true);
    let sent = u(&r, "sent");
    assert_eq!(r["engine"]["round_trips"], sent);
    let seen = stop(server);
    assert_eq!(seen["received"], sent);
    assert_eq!(seen["engine.tls_failures"], 0);
}

/// `--content text --lz4` halves the bytes on the wire; `--crc off` adds none; the report says
/// which was asked for.
#[test]
fn lz4_and_crc_flags_reach_the_engines() {
    let r = report(&["--size", "1024", "--content", "text", "--lz4"]);
    assert_eq!(r["lz4"], true);
    assert_eq!(r["content"], "text");
    assert_eq!(r["crc"], Value::Null);
    let (sent, wire) = (u(&r, "sent"), u(&r["engine"], "client.bytes_sent"));
    assert!(sent > 0 && u(&r, "acked") == sent);
    assert!(
        wire < sent * 1024 * 6 / 10,
        "{wire} bytes for {sent} messages"
    );
    let r = report(&["--size", "1024", "--content", "text", "--crc", "off"]);
    assert_eq!(
        (r["lz4"].clone(), r["crc"].clone()),
        (false.into(), false.into())
    );
    let (sent, wire) = (u(&r, "sent"), u(&r["engine"], "client.bytes_sent"));
    assert!(wire >= sent * 1024, "{wire} bytes for {sent} messages");
    let out = loadgen(&["--crc", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--rate-limit` reaches the engines: the node pauses the client, and everything sent is
/// still acknowledged.
#[test]
fn rate_limit_slows_the_client_and_loses_nothing() {
    // Generous enough that the flood a 300 ms run queues (some 75,000 messages) drains quickly.
    let r = report(&["--rate-limit", "1000/50000"]);
    assert!(u(&r["engine"], "server.rate_limit_pauses") > 0, "{r}");
    assert_eq!(u(&r, "acked"), u(&r, "sent"));
    for bad in ["fast", "0/10"] {
        let out = loadgen(&["--rate-limit", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

/// `--auth-token-file`: engines holding the same secret run as usual; a file that is missing or
/// holds too short a secret fails the run before it starts.
#[test]
fn auth_token_file_reaches_the_engines() {
    let dir = std::env::temp_dir().join(format!("loadgen-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("token");
    std::fs::write(&good, "a cluster secret of 32 bytes!!!!\n").unwrap();
    let r = report(&["--auth-token-file", good.to_str().unwrap()]);
    assert!(u(&r, "sent") > 0);
    assert_eq!(u(&r, "acked"), u(&r, "sent"));
    let short = dir.join("short");
    std::fs::write(&short, "tiny").unwrap();
    for (path, needle) in [
        (short.to_str().unwrap(), "at least 16"),
        ("/nonexistent/token", "/nonexistent/token"),
    ] {
        let out = loadgen(&["--duration", "300ms", "--auth-token-file", path]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{path}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
