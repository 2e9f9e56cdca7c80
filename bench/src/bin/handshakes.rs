//! `handshakes`: mutual-TLS handshakes per second into one serving core.
//!
//! ```text
//! handshakes --stack ringwire|tokio-rustls [--clients 16] [--duration 3s] [--warmup 1s] [--json PATH|-]
//! ```
//!
//! The serving side runs on core 0: a ringwire node with one shard and TLS, or a tokio
//! current-thread runtime accepting with tokio-rustls. Both are set up alike (TLS 1.3, the
//! ring provider with AES-128-GCM first, client certificates required, no tickets) from one
//! throwaway CA. The load side is the same for both, on core 1: `--clients` threads, each
//! opening a connection after another with rustls's blocking client, completing the mutual
//! TLS handshake, sending the stack's HELLO (ringwire's HELLO frame, naming the node id its
//! certificate carries, or the baseline's empty length-prefixed frame) and reading the answer
//! HELLO, then closing. A completed round counts one handshake. The report gives handshakes
//! per second over the measured window and how busy each core was: the bar compares serving
//! stacks, so it means something only while the serving core is the busy one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::workload::{self, Mode, Workload};
use ringwire::{Engine, TlsConfig};
use ringwire_bench::tls::Certs;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

#[derive(Debug, Parser)]
#[command(name = "handshakes")]
struct Cli {
    /// The serving stack.
    #[arg(long, value_parser = ["ringwire", "tokio-rustls"])]
    stack: String,
    /// Client threads on the load core, each with one connection at a time: enough that
    /// waiting for round trips does not leave the serving core idle.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value = "3s", value_parser = workload::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = workload::parse_duration)]
    warmup: Duration,
    /// Write the result as JSON to this file, or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
}

const NODE_ID: &str = "hs-node";
const CLIENT_ID: &str = "hs-client";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handshakes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("ringwire-handshakes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(cli, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(cli: &Cli, dir: &Path) -> Result<(), String> {
    let certs = Certs::make(NODE_ID, CLIENT_ID)?;
    let server_core = 0;
    let load_core = workload::client_core(1);
    // The serving side.
    // Whichever serves is kept alive until the run ends (the tokio thread with the process).
    let (addr, _engine) = match cli.stack.as_str() {
        "ringwire" => {
            let (cert, key, ca) = certs.write_server_pem(dir)?;
            let tls = TlsConfig::new(cert, key, ca);
            let engine = Engine::builder()
                .node_id(NODE_ID)
                .listen("127.0.0.1:0")
                .shards(1)
                .configure(move |c| {
                    c.first_core = server_core;
                    c.tls = Some(tls);
                })
                .start()
                .map_err(|e| format!("starting the node: {e}"))?;
            (engine.local_addr().expect("it listens"), Some(engine))
        }
        _ => (tokio_server(&certs, server_core)?, None),
    };
    // The load side.
    let client = Arc::new(certs.client_config()?);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hello = if cli.stack == "ringwire" {
        ringwire_hello()
    } else {
        vec![0; 4]
    };
    let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let threads: Vec<_> = (0..cli.clients)
        .map(|_| {
            let (client, done, stop, hello, failure) = (
                Arc::clone(&client),
                Arc::clone(&done),
                Arc::clone(&stop),
                hello.clone(),
                Arc::clone(&failure),
            );
            let ringwire = cli.stack == "ringwire";
            std::thread::spawn(move || {
                workload::pin_thread(load_core);
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = handshake(addr, &client, &hello, ringwire) {
                        *failure.lock().unwrap() = Some(e.to_string());
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let w = Workload {
        mode: Mode::Fanin,
        size: 8,
        conns: cli.clients,
        rate: None,
        duration: cli.duration,
        warmup: cli.warmup,
        busy_poll: false,
        json: None,
        out: None,
    };
    let window = workload::measure(
        &w,
        Instant::now(),
        || done.load(Ordering::Relaxed),
        None,
        || stop.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .for_each(|t| t.join().expect("a client thread"));
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(format!("a handshake failed: {e}"));
    }
    let busy = |core: usize| {
        window
            .cpu_by_core
            .get(&Some(core))
            .map_or(0.0, |d| d.as_secs_f64() / window.seconds())
    };
    let result = serde_json::json!({
        "stack": cli.stack,
        "clients": cli.clients,
        "duration_s": window.seconds(),
        "handshakes": window.completed.1 - window.completed.0,
        "handshakes_per_s": window.rate(),
        "busy_serving_core": busy(server_core),
        "busy_load_core": busy(load_core),
    });
    eprintln!(
        "{}: {:.0} handshakes/s ({} clients); busy: serving core {:.0} %, load core {:.0} %",
        cli.stack,
        window.rate(),
        cli.clients,
        busy(server_core) * 100.0,
        busy(load_core) * 100.0
    );
    match cli.json.as_deref() {
        Some("-") => println!("{result}"),
        Some(path) => {
            std::fs::write(path, result.to_string()).map_err(|e| format!("{path}: {e}"))?
        }
        None => {}
    }
    Ok(())
}

/// A dialer's HELLO naming [`CLIENT_ID`], the node id its certificate carries.
fn ringwire_hello() -> Vec<u8> {
    use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
    use ringwire::proto::{Frame, Hello, Seq, SessionId};
    let mut out = Vec::new();
    Frame::Hello(Hello {
        caps: 0,
        body_len_max: BODY_LEN_MAX_DEFAULT,
        tx_session: SessionId::NIL,
        tx_seq_first: Seq(1),
        rx_session: SessionId::NIL,
        rx_delivered: Seq::ZERO,
        node_id: CLIENT_ID,
    })
    .encode(&mut out);
    out
}

/// One round: connect, the mutual-TLS handshake, a HELLO each way, close.
fn handshake(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    hello: &[u8],
    ringwire: bool,
) -> io::Result<()> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(NODE_ID).expect("a DNS name");
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(hello)?;
    tls.flush()?;
    if ringwire {
        // ringwire's HELLO: an 8-byte header whose first 4 bytes are the body's length.
        let mut header = [0u8; 8];
        tls.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let mut body = vec![0u8; len];
        tls.read_exact(&mut body)?;
    } else {
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer)?;
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

/// The baseline's server: a current-thread tokio runtime on `core` accepting with tokio-rustls,
/// answering each HELLO and reading until the client closes.
fn tokio_server(certs: &Certs, core: usize) -> Result<SocketAddr, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()?));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        workload::pin_thread(core);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a listener");
            let _ = tx.send(listener.local_addr().expect("an address"));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let _ = stream.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut hello = [0u8; 4];
                    if tls.read_exact(&mut hello).await.is_err() {
                        return;
                    }
                    if tls.write_all(&hello).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    let mut rest = [0u8; 64];
                    while matches!(tls.read(&mut rest).await, Ok(n) if n > 0) {}
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the tokio server did not start".to_owned())
}
