//! Bad input over real loopback sockets while a good peer streams: every broken or hostile
//! client gets a GOAWAY with the reason its bytes earned and is then disconnected, and nothing
//! else notices. The good stream is delivered exactly once and in order, and its connection
//! is never dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringwire::PeerConfig;
use ringwire::proto::frame::{BODY_LEN_MAX_DEFAULT, HEADER_LEN, HELLO_BODY_LEN_MAX, MAGIC};
use ringwire::proto::{Decoder, Frame, GoAwayReason, Header, Kind};
use ringwire_tests::{PATIENCE, Recorder, builder, payload, publish_patiently, wait_until};

/// The good peer publishes at least this many messages, and keeps going until every bad
/// client is done.
const COUNT_MIN: u64 = 300_000;
/// A bound on the good stream, in case the bad clients take very long.
const COUNT_MAX: u64 = 5_000_000;
/// How long a bad client waits for its answer; it bounds a hang, it is not asserted on.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn bad_clients_get_goaway_and_the_good_stream_carries_on() {
    let at_b = Arc::new(Recorder::default());
    let b = builder("node-b", 2)
        .listen("127.0.0.1:0")
        .configure(|c| c.handshake_timeout = Duration::from_millis(300))
        .handler(Arc::clone(&at_b))
        .start()
        .unwrap();
    let a = builder("node-a", 2).start().unwrap();
    let addr = b.local_addr().unwrap();
    let to_b = a.connect(PeerConfig::new("node-b", [addr])).unwrap();
    wait_until("node-a connected to node-b", || {
        b.stats().connections == 1 && b.stats().peers_connected == 1
    });

    let clients = bad_clients();
    let bad_done = AtomicBool::new(false);
    let total = std::thread::scope(|s| {
        let publisher = s.spawn(|| {
            let mut n = 0;
            while n < COUNT_MIN || (!bad_done.load(Ordering::Relaxed) && n < COUNT_MAX) {
                publish_patiently(&to_b, payload(n, 64));
                n += 1;
            }
            n
        });
        // Lets the publisher finish even if a bad client's assertion fails.
        let done_guard = SetOnDrop(&bad_done);
        wait_until("the good stream flowing", || at_b.total() > 0);
        let runs: Vec<_> = clients
            .iter()
            .map(|client| s.spawn(move || (client, run(addr, client))))
            .collect();
        for handle in runs {
            let (client, replies) = handle.join().unwrap();
            eprintln!("{}: {replies:?}", client.name);
            client.check(&replies);
        }
        drop(done_guard);
        publisher.join().unwrap()
    });

    let bad_count = clients.len() as u64;
    wait_until("every bad client counted", || {
        b.stats().protocol_errors >= bad_count
    });
    wait_until("every bad connection freed", || b.stats().connections == 1);
    wait_until("the good stream delivered", || {
        at_b.tally("node-a").count >= total
    });
    let stats_a = a.stats();
    let stats_b = b.stats();
    eprintln!(
        "good stream: {total} messages; node-b: {} protocol errors, {} connects, {} connections",
        stats_b.protocol_errors, stats_b.connects, stats_b.connections
    );
    let tally = at_b.tally("node-a");
    assert_eq!(tally.count, total);
    assert_eq!(tally.next, total);
    assert_eq!(tally.out_of_order, 0);
    assert_eq!(tally.seq_errors, 0);
    assert!(stats_b.protocol_errors >= bad_count);
    assert_eq!(stats_a.protocol_errors, 0, "node-a saw no protocol error");
    assert_eq!(stats_a.connects, 1, "the good connection was never dropped");
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// One bad client: the bytes it sends on a fresh connection, what it does next, and the
/// GOAWAY reason it must get.
#[derive(Debug)]
struct BadClient {
    name: &'static str,
    bytes: Vec<u8>,
    then: Then,
    expected: GoAwayReason,
    /// Whether node-b may answer with its own HELLO before the GOAWAY: only when the bad
    /// frame could arrive after node-b accepted the HELLO in front of it.
    hello_reply_allowed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Keep the connection open and wait for node-b.
    Wait,
    /// Half-close: end the stream (EOF) but keep reading.
    ShutdownWrite,
}

/// What node-b sent back, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    GoAway {
        reason: GoAwayReason,
        message: String,
    },
    Other(Kind),
}

impl BadClient {
    fn new(name: &'static str, bytes: Vec<u8>, expected: GoAwayReason) -> BadClient {
        BadClient {
            name,
            bytes,
            then: Then::Wait,
            expected,
            hello_reply_allowed: false,
        }
    }

    fn check(&self, replies: &[Reply]) {
        let name = self.name;
        let Some((last, before)) = replies.split_last() else {
            panic!("{name}: connection closed without a GOAWAY");
        };
        assert!(
            matches!(last, Reply::GoAway { reason, message } if *reason == self.expected && !message.is_empty()),
            "{name}: expected a GOAWAY with {:?} and a message last, got {replies:?}",
            self.expected
        );
        let hellos = if self.hello_reply_allowed { 1 } else { 0 };
        assert!(
            before.len() <= hellos && before.iter().all(|r| *r == Reply::Other(Kind::Hello)),
            "{name}: unexpected frames before the GOAWAY: {replies:?}"
        );
    }
}

/// Every kind of bad input, each for its own connection.
fn bad_clients() -> Vec<BadClient> {
    let hello = hello_bytes("bad-client");
    let half_hello = hello[..hello.len() / 2].to_vec();
    vec![
        garbage("garbage: a stray http request", http_request()),
        garbage("garbage: random bytes", random_bytes(64, 0x5EED_0BAD)),
        BadClient::new(
            "length 0xFFFFFFFF",
            header(u32::MAX, Kind::Hello as u8, 0, 0),
            GoAwayReason::FrameTooLarge,
        ),
        BadClient::new(
            "length max + 1",
            header(BODY_LEN_MAX_DEFAULT + 1, Kind::Hello as u8, 0, 0),
            GoAwayReason::FrameTooLarge,
        ),
        BadClient::new(
            "a first frame longer than any hello",
            [
                header(HELLO_BODY_LEN_MAX + 1, Kind::Hello as u8, 0, 0),
                vec![0; 64],
            ]
            .concat(),
            GoAwayReason::FrameTooLarge,
        ),
        BadClient::new(
            "hello with wrong magic",
            with(&hello, |b| {
                b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(b"XWIR")
            }),
            GoAwayReason::BadMagic,
        ),
        BadClient::new(
            "unknown kind 0x7f",
            [header(8, 0x7F, 0, 0), vec![0; 8]].concat(),
            GoAwayReason::UnknownKind,
        ),
        BadClient::new(
            "reserved flag bit 2",
            with(&hello, |b| b[5] = 0b100),
            GoAwayReason::BadFlags,
        ),
        BadClient::new(
            "nonzero reserved u16",
            with(&hello, |b| b[7] = 0x80),
            GoAwayReason::BadFlags,
        ),
        BadClient {
            then: Then::ShutdownWrite,
            ..BadClient::new(
                "half a hello, then eof",
                half_hello.clone(),
                GoAwayReason::MalformedBody,
            )
        },
        BadClient::new(
            "half a hello, then silence",
            half_hello,
            GoAwayReason::HandshakeTimeout,
        ),
        BadClient {
            // A second HELLO is unexpected whether node-b still waits for the first one or
            // already answered it (if the two happened to arrive in separate reads).
            hello_reply_allowed: true,
            ..BadClient::new(
                "hello, then another frame before the reply",
                [hello.clone(), hello_bytes("bad-client")].concat(),
                GoAwayReason::UnexpectedFrame,
            )
        },
        BadClient::new(
            "hello claiming node-b's own id",
            hello_bytes("node-b"),
            GoAwayReason::WrongPeer,
        ),
    ]
}

/// Garbage is rejected for whatever its first eight bytes, read as a header, imply.
fn garbage(name: &'static str, bytes: Vec<u8>) -> BadClient {
    let head: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
    let err = Header::parse(head, HELLO_BODY_LEN_MAX, 0)
        .expect_err("garbage must not start with a valid header");
    let expected = err.reason();
    assert!(
        matches!(
            expected,
            GoAwayReason::BadFlags | GoAwayReason::UnknownKind | GoAwayReason::FrameTooLarge
        ),
        "{name}: a header check gives {expected:?}"
    );
    eprintln!("{name}: header {head:02x?} is rejected as {err}");
    BadClient::new(name, bytes, expected)
}

/// Connects, sends the client's bytes, and reads until node-b closes the connection.
fn run(addr: SocketAddr, client: &BadClient) -> Vec<Reply> {
    let name = client.name;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(&client.bytes).unwrap();
    if client.then == Then::ShutdownWrite {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
    let mut replies = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("{name}: read failed ({e}) before eof; got {replies:?}"),
        };
        decoder
            .decode(&buf[..n], |frame| {
                replies.push(match frame {
                    Frame::GoAway {
                        reason, message, ..
                    } => Reply::GoAway {
                        reason,
                        message: message.to_owned(),
                    },
                    other => Reply::Other(other.kind()),
                });
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: node-b sent an undecodable reply: {e}"));
    }
    assert!(
        !decoder.has_partial(),
        "{name}: node-b's reply ended inside a frame"
    );
    replies
}

fn hello_bytes(node_id: &str) -> Vec<u8> {
    let out = ringwire_tests::hello_frame(node_id);
    assert_eq!(out[HEADER_LEN..HEADER_LEN + 4], MAGIC);
    out
}

fn header(body_len: u32, kind: u8, flags: u8, reserved: u16) -> Vec<u8> {
    let mut out = body_len.to_le_bytes().to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&reserved.to_le_bytes());
    out
}

fn with(bytes: &[u8], change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    change(&mut bytes);
    bytes
}

/// What a listener most often sees from a stranger.
fn http_request() -> Vec<u8> {
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n".to_vec()
}

/// `len` bytes from a fixed seed (splitmix64), so a failure reproduces.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sets the flag when dropped, including during a panic.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
