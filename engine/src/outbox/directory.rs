//! Opening the engine's durable state at start: the directory lock, each shard's outbox (with
//! its recovery) and each shard's table of delivered watermarks.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::outbox::store::{self, Recovered, RecoveryReport, ShardOutbox};
use crate::outbox::watermarks::Watermarks;

/// One shard's durable state, handed to its thread.
#[derive(Debug)]
pub(crate) struct ShardDurable {
    pub outbox: Arc<ShardOutbox>,
    pub recovered: Recovered,
    /// Delivered watermarks of the peers' sessions to this node.
    pub received: Watermarks,
}

pub(crate) struct Opened {
    pub lock: File,
    pub shards: Vec<ShardDurable>,
    pub report: RecoveryReport,
}

/// Locks `root` for this process, then opens and recovers every shard's state, in parallel.
pub(crate) fn open(root: &Path, config: &Config) -> Result<Opened, Error> {
    let context = |what: &str| format!("{what} in outbox directory {}", root.display());
    std::fs::create_dir_all(root).map_err(|e| Error::io(context("creating"), e))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("LOCK"))
        .map_err(|e| Error::io(context("opening LOCK"), e))?;
    // SAFETY: flock on a descriptor we own; released when it closes (or the process dies).
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::InvalidConfig(format!(
            "outbox directory {} is in use by another engine",
            root.display()
        )));
    }
    // A peer's messages live in the outbox of the shard that owns it; a different shard count
    // would route peers to shards that do not hold their sessions.
    let extra = store::shard_dir(root, config.shards);
    if extra.exists() {
        return Err(Error::InvalidConfig(format!(
            "outbox directory {} was written by an engine with more than {} shards ({} exists); \
             start with the same shard count",
            root.display(),
            config.shards,
            extra.display()
        )));
    }
    let results: Vec<Result<ShardDurable, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.shards)
            .map(|shard| scope.spawn(move || open_shard(root, shard, config)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("outbox recovery thread panicked"))
            .collect()
    });
    let mut shards = Vec::with_capacity(config.shards);
    let mut report = RecoveryReport::default();
    for result in results {
        let shard = result?;
        report.add(&shard.recovered.report);
        shards.push(shard);
    }
    if report.segments > 0 {
        tracing::info!(?report, "outbox recovered");
    }
    Ok(Opened {
        lock,
        shards,
        report,
    })
}

fn open_shard(root: &Path, shard: usize, config: &Config) -> Result<ShardDurable, Error> {
    let dir = store::shard_dir(root, shard);
    let (outbox, recovered) = ShardOutbox::open(
        &dir,
        config.outbox_segment_len,
        config.outbox_bytes_max,
        config.outbox_peer_bytes_max,
    )
    .map_err(|e| Error::io(format!("opening outbox {}", dir.display()), e))?;
    let received = Watermarks::open(&dir.join("received"), store::PEERS_MAX)
        .map_err(|e| Error::io(format!("opening watermarks in {}", dir.display()), e))?;
    Ok(ShardDurable {
        outbox: Arc::new(outbox),
        recovered,
        received,
    })
}
