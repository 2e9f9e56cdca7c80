//! The fsyncgate rule with a sync that really fails: the outbox lives on a FUSE filesystem
//! (`scripts/failfs.py`) whose fsync returns EIO while a control file exists. After the first
//! failure the engine never confirms a message written since the last good sync, refuses new
//! messages with `OutboxFailed`, and keeps doing so after syncs would succeed again.
//!
//! Needs root (mounting), /dev/fuse, and libfuse2 + fusepy, which `scripts/ci-deps.sh` installs
//! (`.ci/run` runs it before the tests; the test installs nothing). Without them the test prints
//! `SKIPPED fsyncgate: <what is missing>` and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringwire::{Error, PeerConfig, SyncPolicy};
use ringwire_tests::{Recorder, block_on, builder, is_root, payload, skip, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A mounted failfs, unmounted and stopped on drop.
struct FailFs {
    base: PathBuf,
    mount: PathBuf,
    control: PathBuf,
    child: Child,
}

/// Finds whether fusepy would load: it looks libfuse.so.2 up with `ctypes.util.find_library`
/// when imported. Prints `libfuse` and/or `fusepy` for each that is missing; otherwise imports it.
const FUSE_PROBE: &str = "\
import ctypes.util, importlib.util
lib = ctypes.util.find_library('fuse') is not None
mod = importlib.util.find_spec('fuse') is not None
if not lib: print('libfuse')
if not mod: print('fusepy')
if lib and mod: import fuse
";

impl FailFs {
    /// What mounting failfs needs that this machine lacks, each with how to get it; empty when
    /// nothing is missing.
    fn missing() -> Vec<String> {
        let mut missing = Vec::new();
        if !is_root() {
            missing.push("needs root to mount a FUSE filesystem (run as root, as CI does)".into());
        }
        if !Path::new("/dev/fuse").exists() {
            missing.push(
                "needs /dev/fuse (load the fuse kernel module; a container needs the device)"
                    .into(),
            );
        }
        match Command::new("python3").args(["-c", FUSE_PROBE]).output() {
            Err(e) => missing.push(format!(
                "needs python3, which does not run ({e}; scripts/ci-deps.sh installs it)"
            )),
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stdout);
                if said.lines().any(|l| l == "libfuse") {
                    missing
                        .push("needs libfuse.so.2 (scripts/ci-deps.sh installs libfuse2)".into());
                }
                if said.lines().any(|l| l == "fusepy") {
                    missing.push("needs fusepy (scripts/ci-deps.sh installs it)".into());
                }
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let last = err.lines().last().unwrap_or("no message");
                    missing.push(format!("python3 -c 'import fuse' fails: {last}"));
                }
            }
        }
        missing
    }

    /// Mounts a failfs, or returns `None` after printing `SKIPPED <test>: <why>` when this
    /// machine lacks what that needs.
    fn mount(test: &str) -> Option<FailFs> {
        let missing = FailFs::missing();
        if !missing.is_empty() {
            skip(test, &missing.join("; "));
            return None;
        }
        let base = std::env::temp_dir().join(format!("ringwire-failfs-{}", std::process::id()));
        let (backing, mount) = (base.join("backing"), base.join("mnt"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        let control = base.join("fail-fsync");
        let mut child = Command::new("python3")
            .arg(repo().join("scripts/failfs.py"))
            .args([&backing, &mount, &control])
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        let canonical = std::fs::canonicalize(&mount).unwrap();
        loop {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
            if mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == canonical.to_str())
            {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("failfs exited ({status}) before mounting: {err}");
            }
            assert!(Instant::now() < deadline, "failfs never mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(FailFs {
            base,
            mount,
            control,
            child,
        })
    }

    fn fail_syncs(&self, fail: bool) {
        if fail {
            std::fs::write(&self.control, b"").unwrap();
        } else {
            std::fs::remove_file(&self.control).unwrap();
        }
    }
}

impl Drop for FailFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[test]
fn after_a_failed_sync_nothing_written_since_is_ever_confirmed() {
    let Some(fs) = FailFs::mount("fsyncgate") else {
        return;
    };
    let at_b = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&at_b))
        .start()
        .unwrap();
    let outbox = fs.mount.join("outbox");
    let a = builder("node-a", 1)
        .configure(move |c| {
            c.outbox_dir = Some(outbox);
            c.outbox_sync = SyncPolicy::Always;
            c.outbox_segment_len = 1 << 20;
            c.body_len_max = 16 << 10;
        })
        .start()
        .unwrap();
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();

    // Syncs work: a confirmation means synced and acknowledged.
    let id = block_on(to_b.publish_confirmed(payload(0, 64))).expect("a good sync confirms");
    assert_eq!(id.seq, 1);
    assert!(a.stats().outbox_syncs >= 1);

    fs.fail_syncs(true);
    let refused = block_on(to_b.publish_confirmed(payload(1, 64)));
    assert!(
        matches!(refused, Err(Error::OutboxFailed)),
        "a message written before a failed sync is not confirmed: {refused:?}"
    );
    wait_until("the failure counted", || {
        a.stats().outbox_sync_failures >= 1
    });
    assert!(matches!(
        to_b.publish(payload(2, 64)),
        Err(Error::OutboxFailed)
    ));

    // Syncs would succeed again; the outbox still refuses and confirms nothing.
    fs.fail_syncs(false);
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        to_b.publish(Bytes::from_static(b"later")),
        Err(Error::OutboxFailed)
    ));
    assert!(matches!(
        block_on(to_b.publish_confirmed(payload(3, 64))),
        Err(Error::OutboxFailed)
    ));
    assert!(Error::OutboxFailed.to_string().contains("restart"));
    // Message 2 was accepted before the failure: it is still delivered, only not confirmed.
    wait_until("both accepted messages delivered", || at_b.total() == 2);
    at_b.tally("node-a").assert_complete(2, "node-a");
    drop(a);
    drop(b);
}
