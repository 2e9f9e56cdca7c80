//! loadgen: drives a one-way stream through an embedded ringwire node on loopback and prints
//! a throughput line. (The full tool, with latency and fan-in modes, reports and baselines, is
//! the loadgen issue; this is the smallest honest measurement of the data path.)
//!
//! Usage: `loadgen [--duration SECS] [--size BYTES] [--shards N]`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringwire::{Engine, Handler, MessageId, Peer, PeerConfig};

#[derive(Default)]
struct Count {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Handler for Count {
    fn on_message(&self, _: &Peer, _: MessageId, payload: &[u8]) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
    }
}

struct Args {
    duration: Duration,
    size: usize,
    shards: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(10),
        size: 64,
        shards: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--duration" => {
                let secs: f64 = value("--duration")?
                    .parse()
                    .map_err(|e| format!("--duration: {e}"))?;
                if !(secs > 0.0 && secs <= 3600.0) {
                    return Err("--duration must be between 0 and 3600 seconds".into());
                }
                args.duration = Duration::from_secs_f64(secs);
            }
            "--size" => {
                args.size = value("--size")?
                    .parse()
                    .map_err(|e| format!("--size: {e}"))?
            }
            "--shards" => {
                args.shards = value("--shards")?
                    .parse()
                    .map_err(|e| format!("--shards: {e}"))?;
            }
            "-h" | "--help" => {
                return Err("usage: loadgen [--duration SECS] [--size BYTES] [--shards N]".into());
            }
            other => return Err(format!("unknown flag {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("loadgen: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), ringwire::Error> {
    let received = Arc::new(Count::default());
    let server = Engine::builder()
        .node_id("loadgen-server")
        .listen("127.0.0.1:0")
        .shards(args.shards)
        .handler(Arc::clone(&received))
        .start()?;
    let client = Engine::builder()
        .node_id("loadgen-client")
        .shards(args.shards)
        .start()?;
    let peer = client.connect(PeerConfig::new(
        "loadgen-server",
        [server.local_addr().expect("listening")],
    ))?;
    let payload = Bytes::from(vec![0x42u8; args.size]);

    let cpu_start = cpu_time();
    let start = Instant::now();
    let mut published: u64 = 0;
    let mut refused: u64 = 0;
    while start.elapsed() < args.duration {
        // Check the clock every few thousand messages, not every one.
        for _ in 0..4096 {
            match peer.publish(payload.clone()) {
                Ok(_) => published += 1,
                Err(ringwire::Error::Backpressure(_)) => {
                    refused += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }
    let publish_elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.stats().msgs_acked < published && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    let stats = client.stats();
    let got = received.messages.load(Ordering::Relaxed);
    let rate = stats.msgs_acked as f64 / elapsed.as_secs_f64();
    println!(
        "ringwire throughput: {} B x {} msgs in {:.2}s (publishing {:.2}s): {:.0} msgs/s, {:.1} MB/s payload; acked {}, received {}, backpressure retries {}, cpu {:.2}s, ring enters client {} server {} ({:.4}/msg)",
        args.size,
        published,
        elapsed.as_secs_f64(),
        publish_elapsed.as_secs_f64(),
        rate,
        rate * args.size as f64 / 1e6,
        stats.msgs_acked,
        got,
        refused,
        cpu.as_secs_f64(),
        stats.ring_enters,
        server.stats().ring_enters,
        (stats.ring_enters + server.stats().ring_enters) as f64 / published.max(1) as f64,
    );
    client.shutdown_graceful(Duration::from_secs(5))?;
    server.shutdown_graceful(Duration::from_secs(5))?;
    if got != published || stats.msgs_acked != published {
        return Err(ringwire::Error::InvalidConfig(format!(
            "lost messages: published {published}, acked {}, received {got}",
            stats.msgs_acked
        )));
    }
    Ok(())
}

/// CPU time used by this process (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; both live for the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
