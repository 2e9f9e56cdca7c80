//! End-to-end CRC32C and LZ4 over real sockets. A proxy between two nodes flips one payload
//! byte on the first connection: with checksums on (the plaintext default) the receiver
//! refuses the frame before delivering it, closes that connection, and the replay on the next
//! one delivers every message intact, exactly once; with checksums off, the same flip reaches
//! the application, which is what the check is for. LZ4 carries compressible payloads in less
//! than half their size, and a node that does not offer it still gets every message.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ringwire::{Engine, Handler, MessageId, Peer, PeerConfig};
use ringwire_tests::{PATIENCE, builder, publish_patiently, wait_until};

const COUNT: u64 = 20_000;

/// Checks every payload against what message `n` must be, whole.
#[derive(Default)]
struct Checker {
    delivered: AtomicU64,
    corrupt: AtomicU64,
    out_of_order: AtomicU64,
    next: Mutex<u64>,
}

impl Handler for Checker {
    fn on_message(&self, _peer: &Peer, _id: MessageId, payload: &[u8]) {
        let n = u64::from_le_bytes(payload[..8].try_into().unwrap());
        let mut next = self.next.lock().unwrap();
        if n != *next {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        *next = n + 1;
        if payload != &message(n, payload.len())[..] {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Message `n`: its number, then text that depends on it (compressible, and any flipped byte
/// shows).
fn message(n: u64, len: usize) -> Bytes {
    let mut v = n.to_le_bytes().to_vec();
    let words = ["alpha ", "bravo ", "charlie ", "delta ", "echo "];
    let mut i = n as usize;
    while v.len() < len {
        v.extend_from_slice(words[i % words.len()].as_bytes());
        i += 1;
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Forwards connections to `target`; on the first one, flips the last byte of the
/// `target_frame`-th MSG or MSG_BATCH frame the dialer sends (a payload byte: checksums
/// precede payloads). Returns its address and the flag set once the byte was flipped.
fn corrupting_proxy(target: SocketAddr, target_frame: u64) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&flipped);
    std::thread::spawn(move || {
        for dialer in listener.incoming() {
            let Ok(dialer) = dialer else { return };
            let Ok(node) = TcpStream::connect(target) else {
                continue;
            };
            let corrupt = !flag.load(Ordering::SeqCst);
            let (d2, n2) = (dialer.try_clone().unwrap(), node.try_clone().unwrap());
            let flag = Arc::clone(&flag);
            std::thread::spawn(move || {
                let mut parser = corrupt.then(|| Parser::new(target_frame, flag));
                pump(dialer, node, parser.as_mut());
            });
            std::thread::spawn(move || pump(n2, d2, None));
        }
    });
    (addr, flipped)
}

fn pump(mut from: TcpStream, mut to: TcpStream, mut parser: Option<&mut Parser>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(parser) = parser.as_deref_mut() {
            parser.process(&mut buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Follows the frame boundaries of one direction of a plaintext connection.
struct Parser {
    header: Vec<u8>,
    body_left: usize,
    messages_frames: u64,
    target: u64,
    in_target: bool,
    flipped: Arc<AtomicBool>,
}

impl Parser {
    fn new(target: u64, flipped: Arc<AtomicBool>) -> Parser {
        Parser {
            header: Vec::new(),
            body_left: 0,
            messages_frames: 0,
            target,
            in_target: false,
            flipped,
        }
    }

    fn process(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.body_left == 0 {
                let take = (8 - self.header.len()).min(buf.len() - i);
                self.header.extend_from_slice(&buf[i..i + take]);
                i += take;
                if self.header.len() == 8 {
                    self.body_left =
                        u32::from_le_bytes(self.header[..4].try_into().unwrap()) as usize;
                    let kind = self.header[4];
                    self.in_target = false;
                    if kind == 5 || kind == 10 {
                        self.messages_frames += 1;
                        self.in_target = self.messages_frames == self.target;
                    }
                    self.header.clear();
                }
            } else {
                let take = self.body_left.min(buf.len() - i);
                if self.in_target && take == self.body_left {
                    buf[i + take - 1] ^= 0x40;
                    self.flipped.store(true, Ordering::SeqCst);
                }
                self.body_left -= take;
                i += take;
            }
        }
    }
}

/// Sends `COUNT` messages of `size` bytes from a to b through the corrupting proxy; returns
/// b's checker and its protocol error count once everything arrived.
fn through_a_flipped_byte(crc: bool, size: usize) -> (Arc<Checker>, u64) {
    let checker = Arc::new(Checker::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(move |c| c.crc = Some(crc))
        .handler(Arc::clone(&checker))
        .start()
        .unwrap();
    let (proxy, flipped) = corrupting_proxy(b.local_addr().unwrap(), 50);
    let a = builder("node-a", 1)
        .configure(move |c| {
            c.crc = Some(crc);
            c.backoff.initial = std::time::Duration::from_millis(10);
        })
        .start()
        .unwrap();
    let peer = a.connect(PeerConfig::new("node-b", [proxy])).unwrap();
    for n in 0..COUNT {
        publish_patiently(&peer, message(n, size));
    }
    wait_until("everything delivered", || {
        checker.delivered.load(Ordering::Relaxed) >= COUNT
    });
    assert!(flipped.load(Ordering::SeqCst), "the proxy flipped a byte");
    let errors = b.stats().protocol_errors;
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
    (checker, errors)
}

#[test]
fn a_flipped_byte_is_caught_and_the_replay_delivers_the_message_intact() {
    for size in [100, 3000] {
        let (checker, errors) = through_a_flipped_byte(true, size);
        assert_eq!(checker.delivered.load(Ordering::Relaxed), COUNT, "{size} B");
        assert_eq!(checker.out_of_order.load(Ordering::Relaxed), 0, "{size} B");
        assert_eq!(checker.corrupt.load(Ordering::Relaxed), 0, "{size} B");
        assert!(
            errors >= 1,
            "the receiver refused the corrupted frame ({size} B)"
        );
    }
}

#[test]
fn without_checksums_the_same_flip_reaches_the_application() {
    let (checker, errors) = through_a_flipped_byte(false, 100);
    assert_eq!(checker.delivered.load(Ordering::Relaxed), COUNT);
    assert_eq!(checker.corrupt.load(Ordering::Relaxed), 1);
    assert_eq!(errors, 0);
}

fn lz4_node(id: &str, lz4: bool, sink: Option<&Arc<Checker>>) -> Engine {
    let mut b = builder(id, 1).configure(move |c| c.compression.enabled = lz4);
    if let Some(sink) = sink {
        b = b.listen("127.0.0.1:0").handler(Arc::clone(sink));
    }
    b.start().unwrap()
}

/// Sends `COUNT` messages of `size` bytes from an engine with LZ4 `a_lz4` to one with `b_lz4`;
/// returns the bytes a sent on the wire.
fn lz4_run(a_lz4: bool, b_lz4: bool, size: usize) -> u64 {
    let checker = Arc::new(Checker::default());
    let b = lz4_node("node-b", b_lz4, Some(&checker));
    let a = lz4_node("node-a", a_lz4, None);
    let peer = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    for n in 0..COUNT {
        publish_patiently(&peer, message(n, size));
    }
    wait_until("everything delivered", || {
        checker.delivered.load(Ordering::Relaxed) >= COUNT
    });
    assert_eq!(checker.corrupt.load(Ordering::Relaxed), 0);
    assert_eq!(checker.out_of_order.load(Ordering::Relaxed), 0);
    let sent = a.stats().bytes_sent;
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
    sent
}

#[test]
fn lz4_halves_compressible_payloads_and_only_between_nodes_that_offer_it() {
    for size in [300, 1024, 20_000] {
        let payload = COUNT * size as u64;
        let both = lz4_run(true, true, size);
        eprintln!("{size} B: {both} bytes on the wire for {payload} of payload");
        assert!(both < payload / 2, "{size} B: {both} bytes for {payload}");
        // One side without LZ4: nothing compressed goes either way.
        let one = lz4_run(true, false, size);
        assert!(one >= payload, "{size} B: {one} bytes for {payload}");
    }
    // Below min_size nothing is compressed.
    let small = lz4_run(true, true, 200);
    assert!(small >= COUNT * 200);
}
