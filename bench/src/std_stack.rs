//! The std baseline: blocking `std::net` sockets and a thread per connection at each end, the
//! plainest way to move length-prefixed frames ([`crate::wire`]) and so the raw-TCP reference.
//!
//! * **throughput**: per connection, a client thread writes frames back to back through a
//!   64 KiB `BufWriter`, and a server thread reads them through a 64 KiB `BufReader` and
//!   parses every one (its length prefix, then its payload into a reused buffer). There are no
//!   ACKs, so `completed` counts `received`, `acked` stays 0 and there is no latency: this is
//!   the ceiling for the same framing over TCP, not a like-for-like peer of ringwire.
//! * **latency**: a pacer thread (loadgen's `Pacer`) stamps each message with its due time and
//!   writes the frame to the next connection round-robin with one `write` (nothing waits in a
//!   buffer); a reader thread per connection reads the echoes through a `BufReader` and
//!   records the round trip. A server thread per connection echoes frames, gathering those
//!   that arrived together into one `write` as soon as no complete frame is left in its
//!   `BufReader`.
//! * **latency `--busy-poll`**, the busy-polling raw-TCP ping-pong reference: every socket is
//!   non-blocking; one server thread polls all its connections in turn and echoes what
//!   arrived, and one client thread polls all connections for echoes. The pacer still sleeps
//!   between messages, as loadgen's `Pacer` always does, because a second spinning thread on
//!   the load core would take turns with the poller only at the scheduler's time slice; the
//!   same holds for ringwire's busy-polling client shard and its pacer.
//! * **fanin**: a client thread per connection runs the closed loop (write a stamped frame,
//!   read its echo); the server echoes as in latency mode. Thread-per-connection makes no sense
//!   at fan-in's default 1000 connections, so `--stack std` takes at most 64 (`--conns`).
//! * **pingpong**, the raw-socket ping-pong reference: fanin's closed loop on one connection.
//!   The client thread stamps the frame, writes it with one `write` and blocks in `read` until
//!   the echo is back; the server thread blocks in `read` and echoes.
//! * **pingpong `--busy-poll`**: the same loop over non-blocking sockets, spinning at both
//!   ends with no sleep and no yield: the client thread retries `read` until the echo is back,
//!   and the server polls as in busy-polling latency mode. Nothing else runs on either core.
//!
//! Counting: `sent` is counted before the frames are written (in throughput per batch of 256,
//! fewer for messages over 1 KiB so a batch stays within 256 KiB), `received` as the server
//! parses frames (published at the latest every 1024 frames and whenever its buffer holds no
//! complete frame), and in latency and fanin `acked` counts the echoes that came back
//! (`completed` is `round_trips`, the same number).
//!
//! Every socket has `TCP_NODELAY`. Server threads are pinned to core 0, client threads and the
//! pacer to the client core. When the run stops, clients half-close their connections and the
//! servers read to the end, echo what is left and close.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use loadgen::Pacer;
use loadgen::workload::{Mode, Workload, stamp};

use crate::run::{Run, SERVER_CORE, Start, invalid, load_core, spawn_pinned};
use crate::wire::{
    HELLO, LEN_PREFIX, PAYLOAD_LEN_MAX, RecvBuf, check_hello, frames_per_batch, put_frame,
};

/// Starts the server, connects every client connection and parks the load threads at the
/// run's gate.
pub(crate) fn launch(w: &Workload, run: &Arc<Run>) -> io::Result<Vec<JoinHandle<()>>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let server = {
        let (w, run) = (w.clone(), Arc::clone(run));
        spawn_pinned("std-server", SERVER_CORE, move || {
            if let Err(e) = serve(listener, &w, &run) {
                run.fail("std server", &e);
            }
        })?
    };
    // The listener's backlog (128) holds every connection of the at most 64 allowed.
    let mut streams = Vec::with_capacity(w.conns);
    for _ in 0..w.conns {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        (&stream).write_all(&HELLO)?;
        let mut hello = [0; LEN_PREFIX];
        (&stream).read_exact(&mut hello)?;
        check_hello(&hello)?;
        streams.push(stream);
    }

    let mut threads = vec![server];
    let size = w.size;
    match w.mode {
        Mode::Throughput => {
            for (i, stream) in streams.into_iter().enumerate() {
                let name = format!("std-client-{i}");
                threads.push(spawn_load(&name, run, move |run, _| {
                    stream_out(stream, size, run)
                })?);
            }
        }
        Mode::Latency => {
            let rate = w.rate.expect("resolve sets a rate for latency mode");
            let readers = streams
                .iter()
                .map(TcpStream::try_clone)
                .collect::<io::Result<Vec<_>>>()?;
            if w.busy_poll {
                // The clones share the sockets' file status, so the pacer's writes are
                // non-blocking too.
                for stream in &streams {
                    stream.set_nonblocking(true)?;
                }
                threads.push(spawn_load("std-reader", run, move |run, start| {
                    read_echoes_polling(readers, run, start)
                })?);
            } else {
                for (i, reader) in readers.into_iter().enumerate() {
                    let name = format!("std-reader-{i}");
                    threads.push(spawn_load(&name, run, move |run, start| {
                        read_echoes(reader, run, start)
                    })?);
                }
            }
            threads.push(spawn_load("std-pacer", run, move |run, start| {
                pace(&streams, size, rate, run, start)
            })?);
        }
        Mode::Pingpong if w.busy_poll => {
            let stream = streams.pop().expect("pingpong runs one connection");
            threads.push(spawn_load("std-pingpong", run, move |run, start| {
                ping_polling(stream, size, run, start)
            })?);
        }
        Mode::Fanin | Mode::Pingpong => {
            for (i, stream) in streams.into_iter().enumerate() {
                let name = format!("std-client-{i}");
                threads.push(spawn_load(&name, run, move |run, start| {
                    ping(stream, size, run, start)
                })?);
            }
        }
    }
    Ok(threads)
}

/// Starts a load thread on the client core that waits for the gate, then runs `body`.
fn spawn_load(
    name: &str,
    run: &Arc<Run>,
    body: impl FnOnce(&Run, &Start) -> io::Result<()> + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let run = Arc::clone(run);
    let context = name.to_owned();
    spawn_pinned(name, load_core(), move || {
        let start = run.wait_start();
        if let Err(e) = body(&run, &start) {
            run.fail(&context, &e);
        }
    })
}

/// Accepts every connection and answers its HELLO, then serves each on its own thread (or all
/// on this one when busy-polling) until the clients close.
fn serve(listener: TcpListener, w: &Workload, run: &Arc<Run>) -> io::Result<()> {
    let mut streams = Vec::with_capacity(w.conns);
    for _ in 0..w.conns {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut hello = [0; LEN_PREFIX];
        (&stream).read_exact(&mut hello)?;
        check_hello(&hello)?;
        (&stream).write_all(&HELLO)?;
        streams.push(stream);
    }
    drop(listener);
    if w.busy_poll {
        return echo_polling(streams, run);
    }
    let mode = w.mode;
    let mut threads = Vec::with_capacity(streams.len());
    for (i, stream) in streams.into_iter().enumerate() {
        let run = Arc::clone(run);
        threads.push(spawn_pinned(
            &format!("std-server-{i}"),
            SERVER_CORE,
            move || {
                let served = match mode {
                    Mode::Throughput => absorb(&stream, &run),
                    Mode::Latency | Mode::Fanin | Mode::Pingpong => echo(&stream, &run),
                };
                if let Err(e) = served {
                    run.fail("std server connection", &e);
                }
            },
        )?);
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| io::Error::other("a server connection thread panicked"))?;
    }
    Ok(())
}

/// Throughput client: writes frames as fast as the socket takes them until the run stops.
fn stream_out(stream: TcpStream, size: usize, run: &Run) -> io::Result<()> {
    let mut frame = Vec::with_capacity(LEN_PREFIX + size);
    put_frame(&mut frame, &vec![0; size]);
    let mut writer = BufWriter::with_capacity(BUF_LEN, &stream);
    let batch = frames_per_batch(size);
    while !run.is_stopped() {
        run.sent.fetch_add(batch, Ordering::Relaxed);
        for _ in 0..batch {
            writer.write_all(&frame)?;
        }
    }
    writer.flush()?;
    stream.shutdown(Shutdown::Write)
}

/// Throughput server: parses and counts every frame until the client closes.
fn absorb(stream: &TcpStream, run: &Run) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(BUF_LEN, stream);
    let mut payload = Vec::new();
    let mut count = 0;
    while read_frame(&mut reader, &mut payload)? {
        count += 1;
        if count >= COUNT_BATCH || !holds_frame(reader.buffer()) {
            run.received.fetch_add(count, Ordering::Relaxed);
            count = 0;
        }
    }
    run.received.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

/// Latency and fanin server: echoes every frame; frames that arrived together go back in one
/// write, as soon as no complete frame is left buffered.
fn echo(stream: &TcpStream, run: &Run) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(BUF_LEN, stream);
    let mut payload = Vec::new();
    let mut out = Vec::with_capacity(BUF_LEN);
    let mut count = 0;
    while read_frame(&mut reader, &mut payload)? {
        put_frame(&mut out, &payload);
        count += 1;
        if count >= COUNT_BATCH || !holds_frame(reader.buffer()) {
            run.received.fetch_add(count, Ordering::Relaxed);
            (&*stream).write_all(&out)?;
            out.clear();
            count = 0;
        }
    }
    Ok(())
}

/// Latency pacer: sends each message when due, on the connections in turn, then half-closes
/// them when the run stops.
fn pace(streams: &[TcpStream], size: usize, rate: u64, run: &Run, start: &Start) -> io::Result<()> {
    let mut frame = Vec::with_capacity(LEN_PREFIX + size);
    put_frame(&mut frame, &vec![0; size]);
    let mut pacer = Pacer::new(rate, start.t0);
    for stream in streams.iter().cycle() {
        if run.is_stopped() {
            break;
        }
        let due = pacer.wait_next();
        stamp(&mut frame[LEN_PREFIX..], due);
        run.sent.fetch_add(1, Ordering::Relaxed);
        write_all_spinning(stream, &frame)?;
    }
    for stream in streams {
        stream.shutdown(Shutdown::Write)?;
    }
    Ok(())
}

/// Latency client reader: records the round trip of every echo until the server closes.
fn read_echoes(stream: TcpStream, run: &Run, start: &Start) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(BUF_LEN, stream);
    let mut payload = Vec::new();
    while read_frame(&mut reader, &mut payload)? {
        run.on_echo(start, &payload)?;
    }
    Ok(())
}

/// Fanin and pingpong client: one stamped message at a time, each sent once the previous echo
/// is back.
fn ping(stream: TcpStream, size: usize, run: &Run, start: &Start) -> io::Result<()> {
    let mut frame = Vec::with_capacity(LEN_PREFIX + size);
    put_frame(&mut frame, &vec![0; size]);
    let mut reader = BufReader::new(&stream);
    let mut payload = Vec::new();
    while !run.is_stopped() {
        stamp(&mut frame[LEN_PREFIX..], Instant::now());
        run.sent.fetch_add(1, Ordering::Relaxed);
        (&stream).write_all(&frame)?;
        if !read_frame(&mut reader, &mut payload)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        run.on_echo(start, &payload)?;
    }
    stream.shutdown(Shutdown::Write)
}

/// Busy-polling latency and pingpong server: one thread polls every connection and echoes what
/// arrived.
fn echo_polling(streams: Vec<TcpStream>, run: &Run) -> io::Result<()> {
    let mut conns = streams
        .into_iter()
        .map(Polled::new)
        .collect::<io::Result<Vec<_>>>()?;
    while conns.iter().any(|c| !c.is_done()) {
        for c in &mut conns {
            // Read only once earlier echoes are out, so a client that stops reading meets
            // backpressure rather than a growing buffer.
            if !c.flush()? || !c.poll_read()? {
                continue;
            }
            let mark = c.rx.mark();
            let mut count = 0;
            while c.rx.next_frame()?.is_some() {
                count += 1;
            }
            run.received.fetch_add(count, Ordering::Relaxed);
            c.tx.extend_from_slice(c.rx.parsed_since(mark));
            c.flush()?;
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// Busy-polling latency client reader: one thread polls every connection and records the
/// round trip of each echo, until the server has closed them all.
fn read_echoes_polling(streams: Vec<TcpStream>, run: &Run, start: &Start) -> io::Result<()> {
    let mut conns = streams
        .into_iter()
        .map(Polled::new)
        .collect::<io::Result<Vec<_>>>()?;
    while conns.iter().any(|c| !c.eof) {
        for c in &mut conns {
            if c.poll_read()? {
                while let Some(payload) = c.rx.next_frame()? {
                    run.on_echo(start, payload)?;
                }
            }
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// Busy-polling pingpong client: one stamped message at a time over a non-blocking socket,
/// spinning on `read` (no sleep, no yield) until its echo is back.
fn ping_polling(stream: TcpStream, size: usize, run: &Run, start: &Start) -> io::Result<()> {
    let mut frame = Vec::with_capacity(LEN_PREFIX + size);
    put_frame(&mut frame, &vec![0; size]);
    let mut conn = Polled::new(stream)?;
    while !run.is_stopped() {
        stamp(&mut frame[LEN_PREFIX..], Instant::now());
        run.sent.fetch_add(1, Ordering::Relaxed);
        write_all_spinning(&conn.stream, &frame)?;
        loop {
            if let Some(payload) = conn.rx.next_frame()? {
                run.on_echo(start, payload)?;
                break;
            }
            if !conn.poll_read()? {
                if conn.eof {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                std::hint::spin_loop();
            }
        }
    }
    conn.stream.shutdown(Shutdown::Write)
}

/// `write_all` that also works on a non-blocking socket, by retrying until the kernel takes
/// every byte (a blocking socket never asks it to).
fn write_all_spinning(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A non-blocking connection of the busy-polling modes: its read buffer, and the bytes it still
/// has to write.
#[derive(Debug)]
struct Polled {
    stream: TcpStream,
    rx: RecvBuf,
    tx: Vec<u8>,
    /// How much of `tx` is written.
    tx_done: usize,
    /// The peer has closed its side.
    eof: bool,
}

impl Polled {
    fn new(stream: TcpStream) -> io::Result<Polled> {
        stream.set_nonblocking(true)?;
        Ok(Polled {
            stream,
            rx: RecvBuf::new(),
            tx: Vec::with_capacity(BUF_LEN),
            tx_done: 0,
            eof: false,
        })
    }

    /// Writes pending bytes as far as the socket takes them; true when none are left.
    fn flush(&mut self) -> io::Result<bool> {
        while self.tx_done < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx.clear();
        self.tx_done = 0;
        Ok(true)
    }

    /// Reads whatever has arrived, without waiting; true when some bytes did.
    fn poll_read(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.stream.read(self.rx.spare()) {
            Ok(0) if !self.rx.is_empty() => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.rx.filled(n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The peer has closed and everything owed to it is written.
    fn is_done(&self) -> bool {
        self.eof && self.tx.is_empty()
    }
}

/// Reads one frame's payload into `payload`; false when the stream ends cleanly between frames.
fn read_frame(reader: &mut impl BufRead, payload: &mut Vec<u8>) -> io::Result<bool> {
    if reader.fill_buf()?.is_empty() {
        return Ok(false);
    }
    let mut prefix = [0; LEN_PREFIX];
    reader.read_exact(&mut prefix)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > PAYLOAD_LEN_MAX {
        return Err(invalid("frame longer than the largest payload"));
    }
    payload.resize(len, 0);
    reader.read_exact(payload)?;
    Ok(true)
}

/// True when `buffered` starts with a complete frame (reading it will not block).
fn holds_frame(buffered: &[u8]) -> bool {
    buffered
        .first_chunk::<LEN_PREFIX>()
        .is_some_and(|p| buffered.len() >= LEN_PREFIX + u32::from_be_bytes(*p) as usize)
}

/// Capacity of every `BufReader` and `BufWriter` (64 KiB).
const BUF_LEN: usize = 64 << 10;
/// The server publishes its `received` count at least this often (frames).
const COUNT_BATCH: u64 = 1024;
