//! The durable outbox within one process: messages accepted while the peer is away survive a
//! restart of the sender and are delivered exactly once; damaged records are counted exactly and
//! reported to the peer; limits and a full disk fail `publish` with typed errors and lose
//! nothing already accepted. Crashes (SIGKILL) of real processes are in loadgen's tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ringwire::{Engine, Error, Handler, MessageId, Peer, PeerConfig};
use ringwire_tests::{
    Recorder, TempDir, builder, payload, publish_patiently, require_root, wait_until,
};

/// Publishes messages 0 to `count - 1` from an engine on `dir` whose peer never connects, then
/// drops the engine: the outbox keeps them all, unacknowledged.
fn publish_while_away(dir: &Path, count: u64) {
    let a = sender(dir, 1 << 20, 16 << 20);
    let to_b = a.peer("node-b");
    for n in 0..count {
        publish_patiently(&to_b, payload(n, 64));
    }
}

/// Publishes numbered messages from `from` until the outbox refuses one, and returns how many
/// it accepted and the refusal. Backpressure only says the shard has not taken the queued
/// messages yet, so it is retried.
fn publish_until_refused(peer: &Peer, from: u64) -> (u64, Error) {
    let mut accepted = 0;
    loop {
        match peer.publish(payload(from + accepted, 64)) {
            Ok(_) => accepted += 1,
            Err(Error::Backpressure(_)) => std::thread::yield_now(),
            Err(e) => return (accepted, e),
        }
    }
}

/// Publishes message `n`, waiting while the outbox is full: it frees up at the end of the
/// shard's turn after the peer's ACK, just after that ACK is visible here.
fn publish_when_room(peer: &Peer, n: u64) {
    let mut attempts = 0;
    while let Err(e) = peer.publish(payload(n, 64)) {
        assert!(
            matches!(e, Error::OutboxFull { .. } | Error::Backpressure(_)),
            "{e}"
        );
        attempts += 1;
        assert!(attempts < 100_000, "the outbox never freed up");
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

fn sender(dir: &Path, segment_len: usize, bytes_max: usize) -> Engine {
    let dir = dir.to_owned();
    builder("node-a", 1)
        .configure(move |c| {
            c.outbox_dir = Some(dir);
            c.outbox_segment_len = segment_len;
            c.outbox_bytes_max = bytes_max;
            c.body_len_max = 16 << 10;
        })
        .start()
        .unwrap()
}

/// Records deliveries and the messages the sender reported lost.
#[derive(Default)]
struct Lost {
    recorder: Recorder,
    lost: std::sync::Mutex<Vec<u64>>,
    delivered: AtomicU64,
    /// (first seq, count) of each `on_window_exceeded`.
    expired: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Handler for Lost {
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.recorder.on_message(peer, id, payload);
    }

    fn on_lost(&self, _peer: &Peer, id: MessageId) {
        self.lost.lock().unwrap().push(id.seq);
    }

    fn on_window_exceeded(&self, _peer: &Peer, first: MessageId, count: u64) {
        self.expired.lock().unwrap().push((first.seq, count));
    }
}

fn receiver(handler: Arc<Lost>) -> Engine {
    builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(handler)
        .start()
        .unwrap()
}

/// The offsets of the records of messages `numbers` in the sender's only segment, found by
/// their payload (number, then filler).
fn record_offsets(dir: &Path, numbers: &[u64]) -> (PathBuf, Vec<usize>) {
    let shard = dir.join("shard-0");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 1, "one segment expected");
    let bytes = std::fs::read(&segs[0]).unwrap();
    let offsets = numbers
        .iter()
        .map(|n| {
            let needle = payload(*n, 64);
            let at = bytes
                .windows(needle.len())
                .position(|w| w == &needle[..])
                .expect("record present");
            at - 32 // the record header precedes the payload
        })
        .collect();
    (segs[0].clone(), offsets)
}

#[test]
fn messages_accepted_while_the_peer_is_away_survive_a_sender_restart() {
    let dir = TempDir::new("restart");
    let session;
    {
        let a = sender(&dir.0, 1 << 20, 16 << 20);
        let to_b = a.peer("node-b");
        session = to_b.session();
        for n in 0..1000 {
            let id = publish_patiently(&to_b, payload(n, 64));
            assert_eq!(id.seq, n + 1);
        }
        assert_eq!(to_b.seq_next(), 1001);
    } // dropped: nothing was acknowledged

    let at_b = Arc::new(Lost::default());
    let b = receiver(Arc::clone(&at_b));
    let a = sender(&dir.0, 1 << 20, 16 << 20);
    let report = a.recovery().clone();
    assert_eq!(
        (report.records, report.unacked, report.lost),
        (1000, 1000, 0)
    );
    assert_eq!((report.torn_tails, report.damaged_regions), (0, 0));
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    assert_eq!(to_b.session(), session, "the session continues");
    assert_eq!(to_b.seq_next(), 1001);
    for n in 1000..1500 {
        assert_eq!(publish_patiently(&to_b, payload(n, 64)).seq, n + 1);
    }
    wait_until("all 1500 delivered and acknowledged", || {
        at_b.recorder.total() == 1500 && to_b.seq_acked() == 1500
    });
    at_b.recorder
        .tally("node-a")
        .assert_complete(1500, "node-a");
    drop(a);

    // Everything was acknowledged: a second restart finds nothing to replay.
    let a = sender(&dir.0, 1 << 20, 16 << 20);
    assert_eq!(a.recovery().unacked, 0);
    let to_b = a.peer("node-b");
    assert_eq!((to_b.session(), to_b.seq_next()), (session, 1501));
}

#[test]
fn damaged_records_are_counted_exactly_and_reported_lost_to_the_peer() {
    let dir = TempDir::new("damage");
    publish_while_away(&dir.0, 100);
    // Flip a payload bit of message 40 and zero the length word of message 70; tear the last
    // record (message 99) in half.
    let (path, offsets) = record_offsets(&dir.0, &[40, 70, 99]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[0] + 50] ^= 0x04;
    bytes[offsets[1]..offsets[1] + 4].fill(0);
    bytes[offsets[2] + 60..offsets[2] + 96].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let at_b = Arc::new(Lost::default());
    let b = receiver(Arc::clone(&at_b));
    let a = sender(&dir.0, 1 << 20, 16 << 20);
    let report = a.recovery().clone();
    assert_eq!(report.records, 97);
    assert_eq!(report.damaged_regions, 2);
    assert_eq!(report.torn_tails, 1);
    // All three were accepted (publish returned), so all three are lost, not just dropped.
    assert_eq!(report.lost, 3);
    assert_eq!(a.stats().outbox_lost, 3);
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    wait_until("the intact 97 delivered and 100 acknowledged", || {
        at_b.delivered.load(Ordering::Relaxed) == 97 && to_b.seq_acked() == 100
    });
    assert_eq!(*at_b.lost.lock().unwrap(), [41, 71, 100]);
    assert_eq!(b.stats().msgs_lost_by_peer, 3);
    // The next message continues the session after the lost ones.
    assert_eq!(publish_patiently(&to_b, payload(100, 64)).seq, 101);
    wait_until("message 101", || {
        at_b.delivered.load(Ordering::Relaxed) == 98
    });
}

#[test]
fn a_truncated_segment_loses_exactly_the_records_past_the_cut() {
    let dir = TempDir::new("truncate");
    publish_while_away(&dir.0, 100);
    let (path, offsets) = record_offsets(&dir.0, &[60]);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(offsets[0] as u64 + 10).unwrap();
    drop(file);

    let a = sender(&dir.0, 1 << 20, 16 << 20);
    let report = a.recovery().clone();
    assert_eq!((report.records, report.lost), (60, 40));
    assert_eq!(report.damaged_regions, 1);
    // New messages go to a new segment; the truncated one is never written again.
    let to_b = a.peer("node-b");
    assert_eq!(publish_patiently(&to_b, payload(100, 64)).seq, 101);
}

#[test]
fn a_full_outbox_refuses_new_messages_and_frees_up_as_the_peer_acknowledges() {
    let dir = TempDir::new("full");
    // Two 64 KiB segments: 1,310 records of 64-byte payloads (96 bytes each) at most.
    let a = sender(&dir.0, 64 << 10, 128 << 10);
    let to_b = a.peer("node-b");
    let (accepted, refused) = publish_until_refused(&to_b, 0);
    assert!(
        matches!(&refused, Error::OutboxFull { payload, disk_full: false } if payload.len() == 64),
        "{refused}"
    );
    assert!(refused.to_string().contains("outbox_bytes_max"));
    assert_eq!(accepted, 2 * ((64 * 1024 - 64) / 96));

    let at_b = Arc::new(Lost::default());
    let b = receiver(Arc::clone(&at_b));
    a.connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    wait_until("everything accepted delivered", || {
        at_b.recorder.total() == accepted && to_b.seq_acked() == accepted
    });
    // Acknowledged segments are reused: the outbox takes as much again.
    for n in accepted..2 * accepted {
        publish_when_room(&to_b, n);
    }
    wait_until("the second round delivered", || {
        at_b.recorder.total() == 2 * accepted
    });
    at_b.recorder
        .tally("node-a")
        .assert_complete(2 * accepted, "node-a");
    let segments = std::fs::read_dir(dir.0.join("shard-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(segments, 2, "segments are reused, not added");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk(TempDir);

impl SmallDisk {
    /// Mounts one, or returns `None` after printing `SKIPPED <test>: needs root ...` when this
    /// process is not root.
    fn mount(test: &str, size: &str) -> Option<SmallDisk> {
        if !require_root(test, "mount a tmpfs") {
            return None;
        }
        let dir = TempDir::new("disk");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .expect("mount(8) runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed, as root",
            dir.0.display()
        );
        Some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_publish_and_loses_nothing_accepted() {
    let Some(disk) = SmallDisk::mount("outbox disk-full", "8m") else {
        return;
    };
    let dir = disk.0.0.join("outbox");
    // The disk, not outbox_bytes_max (64 MiB), is the limit: the two 1.3 MiB session tables
    // and a handful of 1 MiB segments fill it.
    let a = sender(&dir, 1 << 20, 64 << 20);
    let to_b = a.peer("node-b");
    let (accepted, refused) = publish_until_refused(&to_b, 0);
    assert!(
        matches!(
            &refused,
            Error::OutboxFull {
                disk_full: true,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("no space left"), "{refused}");
    assert!(
        accepted > 10_000,
        "only {accepted} accepted before the disk filled"
    );
    // Still full: refused again, nothing accepted is touched.
    assert!(matches!(
        to_b.publish(payload(accepted, 64)),
        Err(Error::OutboxFull {
            disk_full: true,
            ..
        })
    ));

    let at_b = Arc::new(Lost::default());
    let b = receiver(Arc::clone(&at_b));
    a.connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    wait_until("everything accepted delivered", || {
        at_b.recorder.total() == accepted && to_b.seq_acked() == accepted
    });
    // Acknowledged segments are reused, so the full disk no longer stops publishing.
    for n in accepted..accepted + 1000 {
        publish_when_room(&to_b, n);
    }
    wait_until("the rest delivered", || {
        at_b.recorder.total() == accepted + 1000
    });
    at_b.recorder
        .tally("node-a")
        .assert_complete(accepted + 1000, "node-a");
    drop(a);
}

#[test]
fn messages_older_than_the_session_buffer_window_are_reported_once_and_still_delivered() {
    let dir = TempDir::new("window");
    let at_a = Arc::new(Lost::default());
    let outbox = dir.0.clone();
    let a = builder("node-a", 1)
        .configure(move |c| {
            c.outbox_dir = Some(outbox);
            c.outbox_segment_len = 1 << 20;
            c.body_len_max = 16 << 10;
            c.session_buffer_window = std::time::Duration::from_millis(200);
        })
        .handler(Arc::clone(&at_a))
        .start()
        .unwrap();
    let to_b = a.peer("node-b");
    for n in 0..300 {
        publish_patiently(&to_b, payload(n, 64));
        if n == 149 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    wait_until("all 300 reported", || a.stats().msgs_window_exceeded == 300);
    let expired = at_a.expired.lock().unwrap().clone();
    // Contiguous ranges from seq 1, each message once.
    let mut next = 1;
    for (first, count) in &expired {
        assert_eq!(*first, next, "{expired:?}");
        next += count;
    }
    assert_eq!(next, 301);
    // Reported, not dropped: the peer still gets every message.
    let at_b = Arc::new(Lost::default());
    let b = receiver(Arc::clone(&at_b));
    a.connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    wait_until("all 300 delivered", || at_b.recorder.total() == 300);
    at_b.recorder.tally("node-a").assert_complete(300, "node-a");
    assert_eq!(a.stats().msgs_window_exceeded, 300);
}
