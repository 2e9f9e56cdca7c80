//! The tokio-uring baseline: io_uring through tokio-uring's owned-buffer sockets, the
//! off-the-shelf way to put io_uring under a Rust service. tokio-uring is current-thread by
//! nature: each side is one runtime (`tokio_uring::Runtime` with its default 256-entry ring)
//! on its own pinned thread, server on core 0 and clients on the client core, with the same
//! protocol and bytes on the wire as the tokio baseline ([`crate::tokio_stack`]).
//!
//! Every read goes into the connection's reused 64 KiB buffer ([`RecvBuf`]), frames are parsed
//! across read boundaries, and each write hands over one buffer of whole frames (`write_all`).
//!
//! * **throughput**: per connection, a writer task fills a batch buffer with frames (up to
//!   256 KiB, and only as many as the 65,536-message window allows) and writes it; an ACK task
//!   on the same socket (shared by `Rc`) reads cumulative ACKs, counts `acked` and records the
//!   publish-to-ack latency of every 1024th message ([`crate::flow`]). The server's task per
//!   connection counts the frames of each read as `received` and answers with one cumulative
//!   ACK: the frames one read returns are exactly those that were available without waiting,
//!   the same grouping the tokio server gets from `now_or_never`. (A 64 KiB read holds under
//!   1024 frames of 64 B or more; smaller frames parsed in one burst share one ACK rather than
//!   several sent at the same instant.) `completed` = `acked`.
//! * **latency**: loadgen's `Pacer` on a std thread on the client core hands stamped payloads
//!   to each connection's writer task through an unbounded channel (as in the tokio
//!   baseline); the writer frames whatever the channel holds (up to 256 KiB) into one write.
//!   A reader task per connection records round trips. The server echoes the frames of each
//!   read back in one write. `acked` counts echoes back; `completed` = `round_trips`.
//! * **fanin**: a client task per connection (`tokio_uring::spawn`) runs the closed loop; the
//!   server echoes as above, a task per accepted connection (listen backlog 1024).
//! * **pingpong**: fanin's closed loop on its one connection: one stamped message in flight,
//!   the next written once the echo is read.
//!
//! Every socket has `TCP_NODELAY`. `--busy-poll` is refused: tokio-uring parks in tokio's
//! `epoll_wait` (with the ring's fd registered) when idle and offers no polling mode. When the
//! run stops, clients finish their write, shut down their write side, and read until the
//! server has answered and closed.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use loadgen::workload::{Mode, Workload, stamp};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_uring::Runtime;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::flow::Flow;
use crate::run::{Run, SERVER_CORE, Start, load_core, spawn_pinned, wait_ready};
use crate::tokio_stack::{request_channels, spawn_pacer};
use crate::wire::{
    BATCH_LEN, HELLO, LEN_PREFIX, READ_LEN, RecvBuf, ack_payload, check_hello, parse_ack, put_frame,
};

/// Starts the server runtime, connects every client connection on the client runtime and
/// parks it (and the pacer, in latency mode) at the run's gate.
pub(crate) fn launch(w: &Workload, run: &Arc<Run>) -> io::Result<Vec<JoinHandle<()>>> {
    let (addr_tx, addr_rx) = sync_channel(1);
    let server = {
        let (w, run) = (w.clone(), Arc::clone(run));
        spawn_pinned("uring-server", SERVER_CORE, move || {
            let listening = runtime().and_then(|rt| {
                let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
                Ok((rt, listener))
            });
            let (rt, listener) = match listening {
                Ok(listening) => listening,
                Err(e) => return drop(addr_tx.send(Err(e))),
            };
            let _ = addr_tx.send(listener.local_addr());
            rt.block_on(serve(listener, &w, &run));
        })?
    };
    let addr = wait_ready(&addr_rx)?;

    let (requests, request_queues) = request_channels(w);
    let (ready_tx, ready_rx) = sync_channel(1);
    let client = {
        let (w, run) = (w.clone(), Arc::clone(run));
        spawn_pinned("uring-client", load_core(), move || {
            let connected = runtime().and_then(|rt| {
                let streams = rt.block_on(connect_all(addr, w.conns))?;
                Ok((rt, streams))
            });
            let (rt, streams) = match connected {
                Ok(connected) => connected,
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            let _ = ready_tx.send(Ok(()));
            let start = run.wait_start();
            rt.block_on(load(streams, request_queues, &w, &run, &start));
        })?
    };
    wait_ready(&ready_rx)?;

    let mut threads = vec![server, client];
    if w.mode == Mode::Latency {
        threads.push(spawn_pacer(w, run, requests)?);
    }
    Ok(threads)
}

fn runtime() -> io::Result<Runtime> {
    Runtime::new(&tokio_uring::builder())
}

async fn connect_all(addr: SocketAddr, conns: usize) -> io::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (written, _) = stream.write_all(HELLO.to_vec()).await;
        written?;
        read_hello(&stream).await?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Accepts every connection with a task each, then waits for them all to close.
async fn serve(listener: TcpListener, w: &Workload, run: &Arc<Run>) {
    let mut tasks = Vec::with_capacity(w.conns);
    for _ in 0..w.conns {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return run.fail("tokio-uring server accept", &e),
        };
        let (mode, run2) = (w.mode, Arc::clone(run));
        tasks.push(spawn_conn(
            run,
            "tokio-uring server connection",
            async move {
                read_hello(&stream).await?;
                let (written, _) = stream.write_all(HELLO.to_vec()).await;
                written?;
                match mode {
                    Mode::Throughput => absorb(stream, run2).await,
                    Mode::Latency | Mode::Fanin | Mode::Pingpong => echo(stream, run2).await,
                }
            },
        ));
    }
    drop(listener);
    join_all(run, "tokio-uring server connection", tasks).await;
}

/// Starts the client side's tasks and waits for them to finish.
async fn load(
    streams: Vec<TcpStream>,
    request_queues: Vec<UnboundedReceiver<Bytes>>,
    w: &Workload,
    run: &Arc<Run>,
    start: &Arc<Start>,
) {
    let mut request_queues = request_queues.into_iter();
    let mut tasks = Vec::new();
    let context = "tokio-uring client";
    for stream in streams {
        let (run2, start) = (Arc::clone(run), Arc::clone(start));
        match w.mode {
            Mode::Throughput => {
                tasks.push(spawn_conn(
                    run,
                    context,
                    stream_out(stream, w.size, run2, start),
                ));
            }
            Mode::Latency => {
                let requests = request_queues
                    .next()
                    .expect("one request queue per connection in latency mode");
                let stream = Rc::new(stream);
                let reader = read_echoes(Rc::clone(&stream), run2, start);
                tasks.push(spawn_conn(run, context, reader));
                tasks.push(spawn_conn(run, context, write_requests(stream, requests)));
            }
            Mode::Fanin | Mode::Pingpong => {
                tasks.push(spawn_conn(run, context, ping(stream, w.size, run2, start)));
            }
        }
    }
    join_all(run, context, tasks).await;
}

/// Spawns a connection's task on this thread's runtime; its error fails the run.
fn spawn_conn(
    run: &Arc<Run>,
    context: &'static str,
    task: impl Future<Output = io::Result<()>> + 'static,
) -> tokio::task::JoinHandle<()> {
    let run = Arc::clone(run);
    tokio_uring::spawn(async move {
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

/// Throughput client: writes batches of frames within the window until the run stops, then
/// shuts down its write side and waits for the last ACK.
async fn stream_out(
    stream: TcpStream,
    size: usize,
    run: Arc<Run>,
    start: Arc<Start>,
) -> io::Result<()> {
    let stream = Rc::new(stream);
    let flow = Rc::new(Flow::default());
    let acks = tokio_uring::spawn(read_acks(
        Rc::clone(&stream),
        Rc::clone(&flow),
        Arc::clone(&run),
        start,
    ));
    let payload = vec![0; size];
    let frames_per_write = (BATCH_LEN / (LEN_PREFIX + size)).max(1) as u64;
    let mut batch = Vec::with_capacity(BATCH_LEN.max(LEN_PREFIX + size));
    while !run.is_stopped() {
        let count = flow.room().await.min(frames_per_write);
        batch.clear();
        for _ in 0..count {
            put_frame(&mut batch, &payload);
        }
        flow.on_send(count);
        run.sent.fetch_add(count, Ordering::Relaxed);
        let (written, buf) = stream.write_all(batch).await;
        batch = buf;
        written?;
    }
    stream.shutdown(Shutdown::Write)?;
    acks.await.map_err(io::Error::other)?
}

/// Throughput client, ACK task: takes the server's cumulative ACKs until it closes.
async fn read_acks(
    stream: Rc<TcpStream>,
    flow: Rc<Flow>,
    run: Arc<Run>,
    start: Arc<Start>,
) -> io::Result<()> {
    let mut rx = RecvBuf::new();
    loop {
        let n = read_into(&stream, &mut rx).await?;
        let mut latest = None;
        while let Some(payload) = rx.next_frame()? {
            latest = Some(parse_ack(payload)?);
        }
        if let Some(total) = latest {
            let newly_acked = flow.on_ack(total, &start.latency)?;
            run.acked.fetch_add(newly_acked, Ordering::Relaxed);
        }
        if n == 0 {
            return end_of_stream(&rx);
        }
    }
}

/// Throughput server: counts the frames of each read and acknowledges them with one
/// cumulative ACK.
async fn absorb(stream: TcpStream, run: Arc<Run>) -> io::Result<()> {
    let mut rx = RecvBuf::new();
    let mut ack = Vec::new();
    let mut total = 0;
    loop {
        let n = read_into(&stream, &mut rx).await?;
        let mut count = 0;
        while rx.next_frame()?.is_some() {
            count += 1;
        }
        if count > 0 {
            total += count;
            run.received.fetch_add(count, Ordering::Relaxed);
            ack.clear();
            put_frame(&mut ack, &ack_payload(total));
            let (written, buf) = stream.write_all(ack).await;
            ack = buf;
            written?;
        }
        if n == 0 {
            return end_of_stream(&rx);
        }
    }
}

/// Latency and fanin server: echoes the complete frames of each read in one write.
async fn echo(stream: TcpStream, run: Arc<Run>) -> io::Result<()> {
    let mut rx = RecvBuf::new();
    let mut out = Vec::with_capacity(READ_LEN);
    loop {
        let n = read_into(&stream, &mut rx).await?;
        let mark = rx.mark();
        let mut count = 0;
        while rx.next_frame()?.is_some() {
            count += 1;
        }
        if count > 0 {
            run.received.fetch_add(count, Ordering::Relaxed);
            out.clear();
            out.extend_from_slice(rx.parsed_since(mark));
            let (written, buf) = stream.write_all(out).await;
            out = buf;
            written?;
        }
        if n == 0 {
            return end_of_stream(&rx);
        }
    }
}

/// Latency client, writer task: frames what the pacer hands over, everything the queue holds
/// in one write; shuts down the write side when the pacer is done.
async fn write_requests(
    stream: Rc<TcpStream>,
    mut requests: UnboundedReceiver<Bytes>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(BATCH_LEN);
    while let Some(payload) = requests.recv().await {
        batch.clear();
        put_frame(&mut batch, &payload);
        while batch.len() < BATCH_LEN
            && let Ok(payload) = requests.try_recv()
        {
            put_frame(&mut batch, &payload);
        }
        let (written, buf) = stream.write_all(batch).await;
        batch = buf;
        written?;
    }
    stream.shutdown(Shutdown::Write)
}

/// Latency client, reader task: records the round trip of every echo until the server closes.
async fn read_echoes(stream: Rc<TcpStream>, run: Arc<Run>, start: Arc<Start>) -> io::Result<()> {
    let mut rx = RecvBuf::new();
    loop {
        let n = read_into(&stream, &mut rx).await?;
        while let Some(payload) = rx.next_frame()? {
            run.on_echo(&start, payload)?;
        }
        if n == 0 {
            return end_of_stream(&rx);
        }
    }
}

/// Fanin and pingpong client: one stamped message at a time, each sent once the previous echo
/// is back.
async fn ping(stream: TcpStream, size: usize, run: Arc<Run>, start: Arc<Start>) -> io::Result<()> {
    let mut rx = RecvBuf::new();
    let mut frame = Vec::with_capacity(LEN_PREFIX + size);
    put_frame(&mut frame, &vec![0; size]);
    while !run.is_stopped() {
        stamp(&mut frame[LEN_PREFIX..], Instant::now());
        run.sent.fetch_add(1, Ordering::Relaxed);
        let (written, buf) = stream.write_all(frame).await;
        frame = buf;
        written?;
        loop {
            if let Some(payload) = rx.next_frame()? {
                run.on_echo(&start, payload)?;
                break;
            }
            if read_into(&stream, &mut rx).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    stream.shutdown(Shutdown::Write)
}

/// Reads the HELLO frame a connection opens with (the peer sends nothing else until it is
/// answered).
async fn read_hello(stream: &TcpStream) -> io::Result<()> {
    let mut hello = Vec::with_capacity(HELLO.len());
    while hello.len() < HELLO.len() {
        let at = hello.len();
        let (read, slice) = stream.read(hello.slice(at..)).await;
        hello = slice.into_inner();
        if read? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    check_hello(&hello)
}

/// One read into `rx`'s buffer, lent to the kernel for the operation; returns the bytes read
/// (0 at the end of the stream).
async fn read_into(stream: &TcpStream, rx: &mut RecvBuf) -> io::Result<usize> {
    let (buf, at) = rx.take();
    let (read, slice) = stream.read(buf.slice(at..)).await;
    rx.restore(slice.into_inner());
    let n = read?;
    rx.filled(n);
    Ok(n)
}

/// The end of a stream is clean only between frames.
fn end_of_stream(rx: &RecvBuf) -> io::Result<()> {
    if rx.is_empty() {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}
