//! `idle_peers`: opens `--peers` connections to a node (e.g. `loadgen serve`), each a distinct
//! peer that completes its handshake and delivers one message, then keeps them open and idle
//! until killed: the load for measuring what an idle established peer costs the node.
//!
//! ```text
//! loadgen serve &                          # node id loadgen-server on 127.0.0.1:7878
//! idle_peers --peers 2500 --tag a &        # two processes: the open-file limit is per process
//! idle_peers --peers 2500 --tag b &
//! grep VmRSS /proc/$(pgrep -f 'loadgen serve')/status   # before and after
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ringwire::proto::ack::AckPolicy;
use ringwire::proto::connection::{ConnectionConfig, Events};
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{Acked, Sessions};
use ringwire::proto::{Connection, Seq, SessionId};

/// Opens idle, established peer connections to a node.
#[derive(Debug, Parser)]
struct Cli {
    /// The node to connect to.
    #[arg(long, default_value = "127.0.0.1:7878")]
    target: SocketAddr,
    /// The node's id.
    #[arg(long, default_value = "loadgen-server")]
    target_id: String,
    /// How many peers (connections) to open.
    #[arg(long)]
    peers: usize,
    /// Distinguishes this process's peer ids from another's (`idle-<tag>-<i>`).
    #[arg(long, default_value = "0")]
    tag: String,
}

/// The node's replies carry nothing this probe needs.
struct Ignore;

impl Events for Ignore {
    fn on_message(&mut self, _: SessionId, _: Seq, _: &[u8]) {}
    fn on_acked(&mut self, _: Acked) {}
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let epoch = Instant::now();
    let mut open = Vec::with_capacity(cli.peers);
    for i in 0..cli.peers {
        let mut stream = TcpStream::connect(cli.target)?;
        let config = Arc::new(ConnectionConfig {
            node_id: format!("idle-{}-{i}", cli.tag).into(),
            body_len_max: 1 << 20,
            batch: true,
            crc: false,
            lz4_min_size: None,
            auth: None,
            handshake_timeout: Duration::from_secs(30),
            heartbeat: HeartbeatConfig::default(),
            ack: AckPolicy::default(),
            epoch,
        });
        let mut sessions = Sessions::new(SessionId(uuid::Uuid::new_v4()));
        let mut conn = Connection::dial(config, &cli.target_id, &sessions, Instant::now());
        let mut buf = [0u8; 4096];
        write_due(&mut conn, &mut sessions, &mut stream)?;
        while !conn.is_established() {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other(format!("peer {i}: refused")));
            }
            conn.handle_bytes(&mut sessions, &buf[..n], Instant::now(), &mut Ignore)
                .map_err(|e| std::io::Error::other(format!("peer {i}: {e}")))?;
        }
        sessions.tx.push(Seq(1), b"one message, then idle", 0);
        write_due(&mut conn, &mut sessions, &mut stream)?;
        open.push((stream, conn, sessions));
    }
    eprintln!("{} peers connected and idle", open.len());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes everything the connection has due.
fn write_due(
    conn: &mut Connection,
    sessions: &mut Sessions,
    stream: &mut TcpStream,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut data = Vec::new();
    conn.poll_transmit(sessions, Instant::now(), &mut out, &mut data, usize::MAX);
    for slice in &data {
        out.extend_from_slice(slice);
    }
    stream.write_all(&out)
}
