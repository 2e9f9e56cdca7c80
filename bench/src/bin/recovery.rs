//! `recovery`: how long an engine takes to start on a full outbox.
//!
//! ```text
//! recovery [--bytes 1GiB] [--size 1024] [--dir target/bench-recovery] [--cold] [--json PATH|-]
//! ```
//!
//! Fills an outbox through the public API (an engine publishing `--size`-byte messages to a peer
//! that never connects, until the records take `--bytes`), drops that engine, then starts a new
//! one on the same directory and reports what the recovery scan found and how long it took:
//! `scan_s` is the scan itself (every segment mapped, every record's CRC checked, the
//! unacknowledged set rebuilt), `start_s` the whole `Engine::start`. With `--cold` the page
//! cache is dropped first (root; as after a reboot), otherwise the files are in memory (as after
//! a process crash). Exits 1 if the recovered count differs from what was published.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use ringwire::{Engine, Error};

#[derive(Debug, Parser)]
#[command(name = "recovery")]
struct Cli {
    /// Outbox size to fill, in record bytes (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    bytes: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Scratch directory (emptied before and removed after).
    #[arg(long, default_value = "target/bench-recovery")]
    dir: PathBuf,
    /// Drop the page cache before recovering (needs root).
    #[arg(long)]
    cold: bool,
    /// Write the result as JSON to this file, or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{s:?}: unit must be B, KiB, MiB or GiB")),
    };
    Ok(n * scale)
}

fn engine(dir: &std::path::Path, bytes: u64) -> Result<Engine, Error> {
    let dir = dir.to_owned();
    let room = (bytes as usize * 2).max(256 << 20);
    Engine::builder()
        .node_id("recovery-bench")
        .shards(1)
        .configure(move |c| {
            c.outbox_dir = Some(dir);
            c.outbox_bytes_max = room;
            c.outbox_peer_bytes_max = room;
            // The peer never connects: let the shard hold everything.
            c.unacked_count_max = usize::MAX;
            c.unacked_bytes_max = room;
        })
        .start()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recovery: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&cli.dir);
    let record = (32 + cli.size).next_multiple_of(8) as u64;
    let count = cli.bytes.div_ceil(record);
    let fill_started = Instant::now();
    {
        let e = engine(&cli.dir, cli.bytes).map_err(|e| format!("starting: {e}"))?;
        let peer = e.peer("never-connects");
        let payload = Bytes::from(vec![0xA5u8; cli.size]);
        let mut published = 0;
        while published < count {
            match peer.publish(payload.clone()) {
                Ok(_) => published += 1,
                Err(Error::Backpressure(_)) => std::thread::sleep(Duration::from_micros(50)),
                Err(e) => return Err(format!("publishing message {published}: {e}")),
            }
        }
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    if cli.cold {
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .map_err(|e| format!("dropping the page cache (needs root): {e}"))?;
    }
    let started = Instant::now();
    let e = engine(&cli.dir, cli.bytes).map_err(|e| format!("recovering: {e}"))?;
    let start_s = started.elapsed().as_secs_f64();
    let report = e.recovery().clone();
    drop(e);
    let _ = std::fs::remove_dir_all(&cli.dir);
    let result = serde_json::json!({
        "bytes": count * record,
        "messages": count,
        "size": cli.size,
        "cold": cli.cold,
        "fill_s": fill_s,
        "segments": report.segments,
        "bytes_scanned": report.bytes_scanned,
        "records": report.records,
        "unacked": report.unacked,
        "lost": report.lost,
        "scan_s": report.duration.as_secs_f64(),
        "start_s": start_s,
    });
    match cli.json.as_deref() {
        Some("-") => println!("{result}"),
        Some(path) => std::fs::write(path, format!("{result}\n"))
            .map_err(|e| format!("writing {path}: {e}"))?,
        None => eprintln!("recovery: {result}"),
    }
    if report.unacked != count || report.lost != 0 {
        return Err(format!(
            "recovered {} unacknowledged and {} lost of {count} published",
            report.unacked, report.lost
        ));
    }
    Ok(())
}
