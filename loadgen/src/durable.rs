//! What a crash test needs: `loadgen send`, a sender that numbers its messages and resumes from
//! its outbox after a restart, and the `--verify` handler of `loadgen serve`, which checks every
//! payload and counts each number's deliveries in a mapped file that survives its own crashes.
//!
//! Message number `k` is sent as sequence number `k` of the sender's session (a fresh outbox
//! starts at 1), so "where the outbox says it stopped" is the session's next sequence number.
//! Payload of message `k`: `k` as a little-endian u64, then filler byte `i` = `(k * 31 + i) as
//! u8`; any other content is corrupt.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::MmapMut;
use ringwire::{Engine, Error, Handler, MessageId, Peer, PeerConfig, SyncPolicy};
use serde_json::json;

/// `loadgen send`'s settings.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub target: String,
    pub target_id: String,
    pub node_id: String,
    pub outbox: PathBuf,
    pub count: u64,
    pub size: usize,
    pub rate: Option<u64>,
    pub sync: SyncPolicy,
    pub wait_for_space: bool,
    pub timeout: Duration,
    /// TLS on the connection to the target.
    pub security: crate::tls::Security,
}

/// The payload of message `k`.
pub fn payload(k: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&k.to_le_bytes());
    v.extend((8..size).map(|i| (k.wrapping_mul(31) as usize + i) as u8));
    Bytes::from(v)
}

/// The number a payload carries, if the rest of it matches.
pub fn check(payload: &[u8]) -> Option<u64> {
    let k = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let intact = payload[8..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (k.wrapping_mul(31) as usize + i + 8) as u8);
    intact.then_some(k)
}

/// Runs `loadgen send`; returns the summary printed as JSON.
pub fn send(o: &SendOptions) -> Result<serde_json::Value, String> {
    let addr: std::net::SocketAddr = o
        .target
        .parse()
        .map_err(|e| format!("--target {:?}: {e}", o.target))?;
    let outbox = o.outbox.clone();
    let sync = o.sync;
    let security = o.security.clone();
    let engine = Engine::builder()
        .node_id(o.node_id.clone())
        .shards(1)
        .configure(move |c| {
            c.outbox_dir = Some(outbox);
            c.outbox_sync = sync;
            security.apply(c);
            c.pin_shards = false;
            // A crash test restarts the receiver too: find it again quickly.
            c.backoff.initial = Duration::from_millis(20);
            c.backoff.max = Duration::from_millis(500);
        })
        .start()
        .map_err(|e| {
            format!(
                "starting the sender with outbox {}: {e}",
                o.outbox.display()
            )
        })?;
    let recovery = engine.recovery().clone();
    let peer = engine
        .connect(PeerConfig::new(o.target_id.clone(), [addr]))
        .map_err(|e| format!("connecting to {}: {e}", o.target))?;
    let resumed_from = peer.seq_next();
    eprintln!(
        "loadgen send: {} -> {} ({}), session {}, resuming at message {resumed_from} of {}",
        o.node_id,
        o.target_id,
        o.target,
        peer.session(),
        o.count
    );
    let started = Instant::now();
    let deadline = started + o.timeout;
    let mut full_waits = 0u64;
    let mut next = resumed_from;
    while next <= o.count {
        if let Some(rate) = o.rate {
            // Paced in 1 ms steps: message `next` is due `(next - resumed_from) / rate` in.
            let due = started + Duration::from_secs_f64((next - resumed_from) as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        match peer.publish(payload(next, o.size)) {
            Ok(id) if id.seq == next => next += 1,
            Ok(id) => {
                return Err(format!(
                    "message {next} got sequence number {}: the outbox does not belong to this \
                     run (use a fresh --outbox per target)",
                    id.seq
                ));
            }
            Err(Error::Backpressure(_)) => std::thread::sleep(Duration::from_micros(50)),
            Err(e @ Error::OutboxFull { .. }) if !o.wait_for_space => {
                return Err(format!("publishing message {next}: {e}"));
            }
            Err(Error::OutboxFull { .. }) => {
                full_waits += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("publishing message {next}: {e}")),
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {:?} publishing", o.timeout));
        }
    }
    while peer.seq_acked() < o.count {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {:?}: {} of {} acknowledged",
                o.timeout,
                peer.seq_acked(),
                o.count
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let stats = engine.stats();
    engine
        .shutdown_graceful(Duration::from_secs(5))
        .map_err(|e| format!("stopping: {e}"))?;
    Ok(json!({
        "count": o.count,
        "resumed_from": resumed_from,
        "published": o.count + 1 - resumed_from.min(o.count + 1),
        "acked": o.count,
        "elapsed_s": elapsed.as_secs_f64(),
        "outbox_full_waits": full_waits,
        "recovery": {
            "records": recovery.records,
            "unacked": recovery.unacked,
            "torn_tails": recovery.torn_tails,
            "damaged_regions": recovery.damaged_regions,
            "lost": recovery.lost,
            "duration_s": recovery.duration.as_secs_f64(),
        },
        "engine": stats
            .counters()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// Counts deliveries per message number in `verify.counts`, a mapped file in the state
/// directory, so that the counts survive a SIGKILL of the receiver just as its watermarks do.
///
/// Layout: 8-byte magic, u64 corrupt count, u64 highest number seen, 40 reserved bytes, then one
/// saturating u8 delivery count per number up to [`NUMBERS_MAX`]. The file is sparse.
pub struct Verifier {
    map: Mutex<MmapMut>,
}

const MAGIC: &[u8; 8] = b"RWVERIFY";
const HEADER: usize = 64;
/// Highest message number the verifier can count.
pub const NUMBERS_MAX: u64 = 1 << 26;

impl Verifier {
    pub fn open(dir: &Path) -> std::io::Result<Verifier> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("verify.counts"))?;
        let len = HEADER as u64 + NUMBERS_MAX + 1;
        let fresh = file.metadata()?.len() == 0;
        if fresh {
            file.set_len(len)?;
        } else if file.metadata()?.len() != len {
            return Err(std::io::Error::other("verify.counts has the wrong size"));
        }
        // SAFETY: loadgen owns its state directory; nothing else maps or truncates the file.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        if fresh {
            map[..8].copy_from_slice(MAGIC);
        } else if &map[..8] != MAGIC {
            return Err(std::io::Error::other(
                "verify.counts is not a loadgen count file",
            ));
        }
        Ok(Verifier {
            map: Mutex::new(map),
        })
    }

    /// `{received, unique, duplicates, missing, corrupt}`; `missing` counts the numbers from 1
    /// to `expect` (or to the highest seen) never delivered.
    pub fn summary(&self, expect: Option<u64>) -> serde_json::Value {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap());
        let corrupt = u64_at(8);
        let highest = u64_at(16);
        let upto = expect.unwrap_or(highest).max(highest).min(NUMBERS_MAX);
        let (mut received, mut unique, mut duplicates, mut missing) = (0u64, 0u64, 0u64, 0u64);
        for k in 1..=upto {
            let c = u64::from(map[HEADER + k as usize]);
            received += c;
            if c == 0 {
                missing += u64::from(expect.is_none_or(|e| k <= e));
            } else {
                unique += 1;
                duplicates += c - 1;
            }
        }
        json!({
            "received": received + corrupt,
            "unique": unique,
            "duplicates": duplicates,
            "missing": missing,
            "corrupt": corrupt,
        })
    }
}

impl Handler for Verifier {
    fn on_message(&self, _: &Peer, _: MessageId, payload: &[u8]) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match check(payload).filter(|k| (1..=NUMBERS_MAX).contains(k)) {
            Some(k) => {
                let count = &mut map[HEADER + k as usize];
                *count = count.saturating_add(1);
                let highest = u64::from_le_bytes(map[16..24].try_into().unwrap());
                if k > highest {
                    map[16..24].copy_from_slice(&k.to_le_bytes());
                }
            }
            None => {
                let corrupt = u64::from_le_bytes(map[8..16].try_into().unwrap()) + 1;
                map[8..16].copy_from_slice(&corrupt.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check_and_damage_is_caught() {
        for size in [8, 9, 64, 1000] {
            let p = payload(123_456, size);
            assert_eq!(p.len(), size);
            assert_eq!(check(&p), Some(123_456));
            let mut bad = p.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_ne!(check(&bad), Some(123_456));
        }
        assert_eq!(check(b"short"), None);
    }
}
