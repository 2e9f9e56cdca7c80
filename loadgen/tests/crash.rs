//! Crashes of real processes over real files: `loadgen send` and `loadgen serve --state
//! --verify` SIGKILLed at random moments during a 200,000-message run and restarted with the
//! same directories. The receiver's count file says how often each message was delivered.
//!
//! The moments come from a seed printed at the start; set `RINGWIRE_CRASH_SEED` to replay one.
//! Nothing here is timed: the pauses between kills only decide where the kills land.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringwire_tests::TempDir;
use serde_json::Value;

const COUNT: u64 = 200_000;
/// Paced so that the run lasts longer than the kills take: every kill lands mid-run.
const RATE: &str = "15000";
const PATIENCE: Duration = Duration::from_secs(300);

/// xorshift64*, seeded from the clock or `RINGWIRE_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("RINGWIRE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: RINGWIRE_CRASH_SEED={seed}");
        Rng(seed)
    }

    /// A pause uniform in `lo..hi` milliseconds.
    fn pause(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        Duration::from_millis(lo + r % (hi - lo))
    }
}

fn free_port() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

fn serve(listen: &str, state: &Path) -> Child {
    serve_expecting(listen, state, COUNT)
}

fn serve_expecting(listen: &str, state: &Path, count: u64) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["serve", "--listen", listen, "--verify", "--expect"])
        .arg(count.to_string())
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve never listened on {listen}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn send(target: &str, outbox: &Path) -> Child {
    send_with(target, outbox, COUNT, &["--rate", RATE])
}

fn send_with(target: &str, outbox: &Path, count: u64, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["send", "--target", target, "--size", "64"])
        .args(extra)
        .arg("--count")
        .arg(count.to_string())
        .arg("--outbox")
        .arg(outbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child`, which must still be running: a kill after the run ended proves nothing.
fn kill(mut child: Child, what: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what} ended before it was killed"
    );
    // SAFETY: kill sends a signal to a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

/// Waits for `child` to exit and returns its stdout, which must be JSON.
fn finish(child: Child, what: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// SIGTERMs the verifying receiver and returns its summary.
fn verdict(server: Child) -> Value {
    // SAFETY: as in `kill`.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    finish(server, "serve")
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn twenty_sender_kills_deliver_every_message_exactly_once() {
    let mut rng = Rng::new("sender kills");
    let dir = TempDir::new("sender");
    let (state, outbox) = (dir.0.join("rx"), dir.0.join("tx"));
    let listen = free_port();
    let server = serve(&listen, &state);
    for i in 0..20 {
        let sender = send(&listen, &outbox);
        std::thread::sleep(rng.pause(150, 600));
        kill(sender, &format!("sender run {i}"));
    }
    let last = finish(send(&listen, &outbox), "the last sender run");
    assert_eq!(u(&last, "acked"), COUNT);
    assert!(u(&last, "resumed_from") > 1, "the last run resumed: {last}");
    let v = verdict(server);
    eprintln!("sender kills: {v}");
    assert_eq!(
        (
            u(&v, "unique"),
            u(&v, "missing"),
            u(&v, "duplicates"),
            u(&v, "corrupt")
        ),
        (COUNT, 0, 0, 0),
        "{v}"
    );
    assert_eq!(u(&v, "received"), COUNT);
}

#[test]
fn ten_receiver_kills_lose_nothing_and_duplicate_at_most_one_each() {
    let mut rng = Rng::new("receiver kills");
    let dir = TempDir::new("receiver");
    let (state, outbox) = (dir.0.join("rx"), dir.0.join("tx"));
    let listen = free_port();
    let mut server = serve(&listen, &state);
    let sender = send(&listen, &outbox);
    for i in 0..10 {
        std::thread::sleep(rng.pause(300, 1000));
        kill(server, &format!("receiver run {i}"));
        server = serve(&listen, &state);
    }
    let summary = finish(sender, "the sender");
    assert_eq!(u(&summary, "acked"), COUNT);
    let v = verdict(server);
    eprintln!("receiver kills: {v}");
    assert_eq!(
        (u(&v, "unique"), u(&v, "missing"), u(&v, "corrupt")),
        (COUNT, 0, 0),
        "{v}"
    );
    assert!(
        u(&v, "duplicates") <= 10,
        "more than one duplicate per kill: {v}"
    );
    assert_eq!(u(&v, "received"), COUNT + u(&v, "duplicates"));
}

/// Unpaced: the sender is always inside `publish` (mostly inside an append), so the kills land
/// in the middle of writing records, and each restart recovers a torn tail or a clean end.
#[test]
fn sender_kills_in_full_flight_deliver_every_message_exactly_once() {
    // Enough that five kills land before a fast sender is done: at 10 M msgs/s and a kill
    // every 90 ms on average (minus each restart's start-up), 6 M take some ten restarts. With
    // 3 M and kills every 150 ms, a run on a fast machine finished after four.
    const BURST: u64 = 6_000_000;
    let mut rng = Rng::new("sender kills in full flight");
    let dir = TempDir::new("burst");
    let (state, outbox) = (dir.0.join("rx"), dir.0.join("tx"));
    let listen = free_port();
    let server = serve_expecting(&listen, &state, BURST);
    let mut killed = 0;
    for _ in 0..20 {
        let mut sender = send_with(&listen, &outbox, BURST, &[]);
        std::thread::sleep(rng.pause(30, 150));
        if sender.try_wait().unwrap().is_some() {
            break; // finished before this kill: the rest of the run is the check below
        }
        // SAFETY: kill sends a signal to a child we spawned and have not reaped.
        unsafe { libc::kill(sender.id() as i32, libc::SIGKILL) };
        sender.wait().unwrap();
        killed += 1;
    }
    assert!(
        killed >= 5,
        "only {killed} kills landed while the sender ran"
    );
    let last = finish(
        send_with(&listen, &outbox, BURST, &[]),
        "the last sender run",
    );
    assert_eq!(u(&last, "acked"), BURST);
    let v = verdict(server);
    eprintln!("sender kills in full flight ({killed}): {v}");
    assert_eq!(
        (
            u(&v, "unique"),
            u(&v, "missing"),
            u(&v, "duplicates"),
            u(&v, "corrupt")
        ),
        (BURST, 0, 0, 0),
        "{v}"
    );
}
