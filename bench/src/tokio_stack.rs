//! The tokio baseline: tokio's TCP sockets with tokio-util's `LengthDelimitedCodec`, the stack
//! most Rust services would reach for. Each side is a `current_thread` runtime on its own
//! pinned thread (server on core 0, clients on the client core), thread-per-core like
//! ringwire's shards; the listener's backlog is 1024 so fan-in's connects all queue.
//!
//! * **throughput**, acknowledged like ringwire's: per connection, a sending task feeds up to
//!   256 frames (fewer above 1 KiB, to stay within 256 KiB) into a `FramedWrite`, which writes
//!   whenever its buffer passes tokio-util's default 8 KiB backpressure mark, and flushes,
//!   keeping at most 65,536 messages unacknowledged (ringwire's default window). The server's
//!   task per connection reads with `Framed`, takes every frame that is ready without waiting
//!   (`now_or_never`) up to 1024, counts them as `received` and answers with one cumulative
//!   ACK frame (8-byte big-endian total). The client reads ACKs in a second task on the read
//!   half, counts `acked`, and records the publish-to-ack latency of every 1024th message
//!   ([`crate::flow`]). `completed` = `acked`.
//! * **latency**: a pacer thread on the client core (loadgen's `Pacer`; tokio's timers tick in
//!   milliseconds, too coarse for a microsecond schedule) stamps each payload with its due
//!   time and hands it to the next connection's writer task through an unbounded channel; the
//!   writer feeds whatever the channel holds (up to 256) and flushes. A reader task per
//!   connection records round trips. The server echoes each frame, flushing once no further
//!   frame is ready. `acked` counts echoes back; `completed` = `round_trips`.
//! * **fanin**: a client task per connection runs the closed loop (send a stamped frame, await
//!   its echo); the server echoes as above, a task per accepted connection.
//! * **pingpong**: fanin's closed loop on its one connection: one stamped message in flight,
//!   the next sent once the echo is back.
//!
//! Every socket has `TCP_NODELAY`. `--busy-poll` is refused: tokio parks in `epoll_wait` when
//! idle and has no polling mode. When the run stops, clients finish their last batch, close
//! their write half, and read until the server, having answered everything, closes.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use loadgen::Pacer;
use loadgen::workload::{Mode, Workload, stamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

use crate::flow::{ACK_EVERY, Flow};
use crate::run::{Run, SERVER_CORE, Start, load_core, spawn_pinned, wait_ready};
use crate::tls::Tls;
use crate::wire::{
    BATCH_FRAMES_MAX, HELLO, LEN_PREFIX, ack_payload, check_hello, codec, frames_per_batch,
    parse_ack,
};

/// Starts the server runtime, connects every client connection on the client runtime and
/// parks it (and the pacer, in latency mode) at the run's gate. With `tls`, every connection
/// runs over it (the `tokio-rustls` stack).
pub(crate) fn launch(
    w: &Workload,
    run: &Arc<Run>,
    tls: Option<Tls>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let (acceptor, connector) = match tls {
        Some(tls) => (Some(tls.acceptor), Some(tls.connector)),
        None => (None, None),
    };
    let (addr_tx, addr_rx) = sync_channel(1);
    let server = {
        let (w, run) = (w.clone(), Arc::clone(run));
        spawn_pinned("tokio-server", SERVER_CORE, move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return drop(addr_tx.send(Err(e))),
            };
            rt.block_on(async {
                let listener = match listen() {
                    Ok(listener) => listener,
                    Err(e) => return drop(addr_tx.send(Err(e))),
                };
                let _ = addr_tx.send(listener.local_addr());
                serve(listener, &w, &run, acceptor).await;
            });
        })?
    };
    let addr = wait_ready(&addr_rx)?;

    let (requests, request_queues) = request_channels(w);
    let (ready_tx, ready_rx) = sync_channel(1);
    let client = {
        let (w, run) = (w.clone(), Arc::clone(run));
        spawn_pinned("tokio-client", load_core(), move || {
            let connected = runtime().and_then(|rt| {
                let streams = rt.block_on(connect_all(addr, w.conns, connector))?;
                Ok((rt, streams))
            });
            let (rt, streams) = match connected {
                Ok(connected) => connected,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            let _ = ready_tx.send(Ok(()));
            let start = run.wait_start();
            match streams {
                Streams::Plain(streams) => {
                    rt.block_on(load(streams, request_queues, &w, &run, &start));
                }
                Streams::Tls(streams) => {
                    rt.block_on(load(streams, request_queues, &w, &run, &start));
                }
            }
        })?
    };
    wait_ready(&ready_rx)?;

    let mut threads = vec![server, client];
    if w.mode == Mode::Latency {
        threads.push(spawn_pacer(w, run, requests)?);
    }
    Ok(threads)
}

/// One unbounded request channel per connection in latency mode (none otherwise): the pacer
/// thread holds the senders, the connections' writer tasks the receivers.
pub(crate) fn request_channels(
    w: &Workload,
) -> (Vec<UnboundedSender<Bytes>>, Vec<UnboundedReceiver<Bytes>>) {
    let conns = if w.mode == Mode::Latency { w.conns } else { 0 };
    (0..conns).map(|_| unbounded_channel()).unzip()
}

/// The latency pacer: a std thread on the client core that stamps each payload with its due
/// time and hands it to the connections' writer tasks in turn. Dropping the senders when the
/// run stops lets the writers finish.
pub(crate) fn spawn_pacer(
    w: &Workload,
    run: &Arc<Run>,
    requests: Vec<UnboundedSender<Bytes>>,
) -> io::Result<JoinHandle<()>> {
    let rate = w.rate.expect("resolve sets a rate for latency mode");
    let size = w.size;
    let run = Arc::clone(run);
    spawn_pinned("pacer", load_core(), move || {
        let start = run.wait_start();
        let mut pacer = Pacer::new(rate, start.t0);
        for queue in requests.iter().cycle() {
            if run.is_stopped() {
                break;
            }
            let due = pacer.wait_next();
            let mut payload = BytesMut::zeroed(size);
            stamp(&mut payload, due);
            run.sent.fetch_add(1, Ordering::Relaxed);
            if queue.send(payload.freeze()).is_err() {
                // The writer task is gone, after recording the error that ended it.
                break;
            }
        }
    })
}

fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn listen() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(BACKLOG)
}

/// A stream the stack carries its frames over: plain TCP, or TLS on it. The plain one splits
/// into tokio's owned halves, as the `tokio` stack always did; TLS into `tokio::io::split`'s.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;

    fn split(self) -> (Self::Reader, Self::Writer);
}

impl Conn for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl Conn for ClientTls {
    type Reader = ReadHalf<ClientTls>;
    type Writer = WriteHalf<ClientTls>;

    fn split(self) -> (ReadHalf<ClientTls>, WriteHalf<ClientTls>) {
        tokio::io::split(self)
    }
}

impl Conn for ServerTls {
    type Reader = ReadHalf<ServerTls>;
    type Writer = WriteHalf<ServerTls>;

    fn split(self) -> (ReadHalf<ServerTls>, WriteHalf<ServerTls>) {
        tokio::io::split(self)
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The client's connections, handshaken.
enum Streams {
    Plain(Vec<TcpStream>),
    Tls(Vec<ClientTls>),
}

async fn connect_all(
    addr: SocketAddr,
    conns: usize,
    tls: Option<tokio_rustls::TlsConnector>,
) -> io::Result<Streams> {
    let mut plain = Vec::new();
    let mut encrypted = Vec::new();
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match &tls {
            None => plain.push(exchange_hello(stream).await?),
            Some(connector) => {
                let stream = connector.connect(crate::tls::server_name(), stream).await?;
                encrypted.push(exchange_hello(stream).await?);
            }
        }
    }
    Ok(if tls.is_some() {
        Streams::Tls(encrypted)
    } else {
        Streams::Plain(plain)
    })
}

/// Sends the client's HELLO and checks the server's.
async fn exchange_hello<S: Conn>(mut stream: S) -> io::Result<S> {
    stream.write_all(&HELLO).await?;
    stream.flush().await?;
    let mut hello = [0; LEN_PREFIX];
    stream.read_exact(&mut hello).await?;
    check_hello(&hello)?;
    Ok(stream)
}

/// Accepts every connection with a task each, then waits for them all to close.
async fn serve(
    listener: TcpListener,
    w: &Workload,
    run: &Arc<Run>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut tasks = Vec::with_capacity(w.conns);
    for _ in 0..w.conns {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return run.fail("tokio server accept", &e),
        };
        let (mode, run2, tls) = (w.mode, Arc::clone(run), tls.clone());
        tasks.push(spawn_conn(run, "tokio server connection", async move {
            match tls {
                None => answer(stream, mode, run2).await,
                Some(acceptor) => answer(acceptor.accept(stream).await?, mode, run2).await,
            }
        }));
    }
    drop(listener);
    join_all(run, "tokio server connection", tasks).await;
}

/// Serves one accepted connection: its HELLO, then the workload.
async fn answer<S: Conn>(stream: S, mode: Mode, run: Arc<Run>) -> io::Result<()> {
    let stream = answer_hello(stream).await?;
    match mode {
        Mode::Throughput => absorb(stream, run).await,
        Mode::Latency | Mode::Fanin | Mode::Pingpong => echo(stream, run).await,
    }
}

/// Reads a connection's HELLO and echoes it.
async fn answer_hello<S: Conn>(mut stream: S) -> io::Result<S> {
    let mut hello = [0; LEN_PREFIX];
    stream.read_exact(&mut hello).await?;
    check_hello(&hello)?;
    stream.write_all(&HELLO).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Starts the client side's tasks and waits for them to finish.
async fn load<S: Conn>(
    streams: Vec<S>,
    request_queues: Vec<UnboundedReceiver<Bytes>>,
    w: &Workload,
    run: &Arc<Run>,
    start: &Arc<Start>,
) {
    let mut request_queues = request_queues.into_iter();
    let mut tasks = Vec::new();
    for stream in streams {
        let (run2, start) = (Arc::clone(run), Arc::clone(start));
        match w.mode {
            Mode::Throughput => {
                tasks.push(spawn_conn(
                    run,
                    "tokio client",
                    stream_out(stream, w.size, run2, start),
                ));
            }
            Mode::Latency => {
                let requests = request_queues
                    .next()
                    .expect("one request queue per connection in latency mode");
                let (reader, writer) = stream.split();
                tasks.push(spawn_conn(
                    run,
                    "tokio client",
                    read_echoes(reader, run2, start),
                ));
                tasks.push(spawn_conn(
                    run,
                    "tokio client",
                    write_requests(writer, requests),
                ));
            }
            Mode::Fanin | Mode::Pingpong => {
                tasks.push(spawn_conn(
                    run,
                    "tokio client",
                    ping(stream, w.size, run2, start),
                ));
            }
        }
    }
    join_all(run, "tokio client", tasks).await;
}

/// Spawns a connection's task; its error fails the run.
fn spawn_conn(
    run: &Arc<Run>,
    context: &'static str,
    task: impl Future<Output = io::Result<()>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let run = Arc::clone(run);
    tokio::spawn(async move {
        if let Err(e) = task.await {
            run.fail(context, &e);
        }
    })
}

/// Waits for connection tasks to end; one that panicked fails the run.
async fn join_all(run: &Run, context: &str, tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        if let Err(panic) = task.await {
            run.fail(context, &io::Error::other(panic));
        }
    }
}

/// Throughput client: streams frames within the window until the run stops, then closes its
/// write half and waits for the last ACK.
async fn stream_out<S: Conn>(
    stream: S,
    size: usize,
    run: Arc<Run>,
    start: Arc<Start>,
) -> io::Result<()> {
    let (reader, writer) = stream.split();
    let flow = Arc::new(Flow::default());
    let acks = tokio::spawn(read_acks(
        reader,
        Arc::clone(&flow),
        Arc::clone(&run),
        start,
    ));
    let mut sink = FramedWrite::new(writer, codec());
    let payload = Bytes::from(vec![0; size]);
    let batch = frames_per_batch(size);
    while !run.is_stopped() {
        let count = flow.room().await.min(batch);
        flow.on_send(count);
        run.sent.fetch_add(count, Ordering::Relaxed);
        for _ in 0..count {
            sink.feed(payload.clone()).await?;
        }
        SinkExt::<Bytes>::flush(&mut sink).await?;
    }
    SinkExt::<Bytes>::close(&mut sink).await?;
    acks.await.map_err(io::Error::other)?
}

/// Throughput client, read half: takes the server's cumulative ACKs until it closes.
async fn read_acks<R: AsyncRead + Unpin>(
    reader: R,
    flow: Arc<Flow>,
    run: Arc<Run>,
    start: Arc<Start>,
) -> io::Result<()> {
    let mut frames = FramedRead::new(reader, codec());
    while let Some(frame) = frames.next().await {
        let newly_acked = flow.on_ack(parse_ack(&frame?)?, &start.latency)?;
        run.acked.fetch_add(newly_acked, Ordering::Relaxed);
    }
    Ok(())
}

/// Throughput server: counts frames and acknowledges each group of those ready together (at
/// most [`ACK_EVERY`]) with one cumulative ACK.
async fn absorb<S: Conn>(stream: S, run: Arc<Run>) -> io::Result<()> {
    let mut framed = Framed::new(stream, codec());
    let mut total = 0;
    while let Some(frame) = framed.next().await {
        frame?;
        let mut count = 1;
        let mut ended = false;
        while count < ACK_EVERY {
            match framed.next().now_or_never() {
                Some(Some(frame)) => {
                    frame?;
                    count += 1;
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        total += count;
        run.received.fetch_add(count, Ordering::Relaxed);
        framed
            .send(Bytes::copy_from_slice(&ack_payload(total)))
            .await?;
        if ended {
            break;
        }
    }
    // Everything is answered: close the write side too (TLS sends its close_notify).
    SinkExt::<Bytes>::close(&mut framed).await
}

/// Latency and fanin server: echoes every frame, flushing once no further frame is ready.
async fn echo<S: Conn>(stream: S, run: Arc<Run>) -> io::Result<()> {
    let mut framed = Framed::new(stream, codec());
    while let Some(frame) = framed.next().await {
        framed.feed(frame?.freeze()).await?;
        let mut count = 1;
        let mut ended = false;
        while count < FEED_BATCH {
            match framed.next().now_or_never() {
                Some(Some(frame)) => {
                    framed.feed(frame?.freeze()).await?;
                    count += 1;
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        run.received.fetch_add(count, Ordering::Relaxed);
        SinkExt::<Bytes>::flush(&mut framed).await?;
        if ended {
            break;
        }
    }
    SinkExt::<Bytes>::close(&mut framed).await
}

/// Latency client, write half: sends what the pacer hands over, flushing when the queue is
/// momentarily empty; closes the write half when the pacer is done.
async fn write_requests<W: AsyncWrite + Unpin>(
    writer: W,
    mut requests: UnboundedReceiver<Bytes>,
) -> io::Result<()> {
    let mut sink = FramedWrite::new(writer, codec());
    while let Some(payload) = requests.recv().await {
        sink.feed(payload).await?;
        let mut count = 1;
        while count < FEED_BATCH
            && let Ok(payload) = requests.try_recv()
        {
            sink.feed(payload).await?;
            count += 1;
        }
        SinkExt::<Bytes>::flush(&mut sink).await?;
    }
    SinkExt::<Bytes>::close(&mut sink).await
}

/// Latency client, read half: records the round trip of every echo until the server closes.
async fn read_echoes<R: AsyncRead + Unpin>(
    reader: R,
    run: Arc<Run>,
    start: Arc<Start>,
) -> io::Result<()> {
    let mut frames = FramedRead::new(reader, codec());
    while let Some(frame) = frames.next().await {
        run.on_echo(&start, &frame?)?;
    }
    Ok(())
}

/// Fanin and pingpong client: one stamped message at a time, each sent once the previous echo
/// is back.
async fn ping<S: Conn>(stream: S, size: usize, run: Arc<Run>, start: Arc<Start>) -> io::Result<()> {
    let mut framed = Framed::new(stream, codec());
    while !run.is_stopped() {
        let mut payload = BytesMut::zeroed(size);
        stamp(&mut payload, Instant::now());
        run.sent.fetch_add(1, Ordering::Relaxed);
        framed.send(payload.freeze()).await?;
        let echo = framed.next().await.ok_or(io::ErrorKind::UnexpectedEof)??;
        run.on_echo(&start, &echo)?;
    }
    SinkExt::<Bytes>::close(&mut framed).await
}

/// Listen backlog: room for fan-in's 1000 connects at once.
const BACKLOG: u32 = 1024;
/// Frames fed into a codec before a flush (latency writer, echo).
const FEED_BATCH: u64 = BATCH_FRAMES_MAX;
