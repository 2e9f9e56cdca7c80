//! Fuzzes the acceptor's side of the handshake and the connection it leads to
//! (docs/protocol.md, "Handshake" and "Connection states").
//!
//! The dialer sends nothing after its HELLO until it is answered, so the acceptor reads exactly
//! one frame: the input's first frame, as long as its header says, goes to `Accepting` in two
//! reads split where the first input byte says. When a HELLO comes out, `Connection::accept`
//! answers it and the connection reads everything after that frame (again in two parts), then
//! times out, sees EOF and closes.
//!
//! Checked: nothing panics; `Accepting` gives the same answer for one read and for two, and a
//! failed one keeps its error; messages are delivered in order and acknowledgements release
//! messages in order; a connection that returned an error is closing; and everything the
//! connection wrote is a valid frame stream that ends on a frame boundary.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

use ringwire::proto::ack::AckPolicy;
use ringwire::proto::connection::Events;
use ringwire::proto::frame::{BODY_LEN_MAX_DEFAULT, HEADER_LEN, NODE_ID_LEN_MAX};
use ringwire::proto::handshake::{Accepting, HelloInfo};
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{Acked, RxSession, Sessions, TxSession};
use ringwire::proto::{Connection, ConnectionConfig, Decoder, GoAwayReason, Seq, SessionId};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting in this side's session, so that ACKs and resume points can release some.
const QUEUED_COUNT: u64 = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let hello_len = match rest.get(..4) {
        Some(len) => HEADER_LEN + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize,
        None => rest.len(),
    }
    .min(rest.len());
    let (hello_bytes, unread) = rest.split_at(hello_len);
    let (head, tail) = hello_bytes.split_at(split_point(hello_bytes.len(), selector));
    let t0 = Instant::now();

    let mut accepting = Accepting::new(t0 + HANDSHAKE_TIMEOUT);
    let mut result = Ok(None);
    for chunk in [head, tail] {
        result = accepting.handle_bytes(chunk);
        if !matches!(result, Ok(None)) {
            break;
        }
    }
    let mut whole = Accepting::new(t0 + HANDSHAKE_TIMEOUT);
    assert_eq!(
        whole.handle_bytes(hello_bytes),
        result,
        "one read or two give the same answer"
    );
    match result {
        Ok(Some(hello)) => {
            assert!(!hello.node_id.is_empty() && hello.node_id.len() <= NODE_ID_LEN_MAX);
            drive(&hello, unread, selector, t0);
        }
        Ok(None) => {
            assert_eq!(accepting.handle_eof().is_some(), !hello_bytes.is_empty());
            assert!(accepting.handle_timeout(t0 + HANDSHAKE_TIMEOUT).is_err());
        }
        Err(err) => assert_eq!(accepting.handle_bytes(b"more"), Err(err), "stays failed"),
    }
    // A dialer that breaks the rule and sends more in the same read must not panic anything.
    let _ = Accepting::new(t0 + HANDSHAKE_TIMEOUT).handle_bytes(rest);
});

/// Answers `hello` and runs the established connection over `rest`, read in two parts.
fn drive(hello: &HelloInfo, rest: &[u8], selector: u8, t0: Instant) {
    let mut sessions = Sessions {
        tx: TxSession::new(SessionId(Uuid::from_u128(1))),
        rx: RxSession::restore(SessionId(Uuid::from_u128(2)), Seq(5)),
    };
    for seq in 1..=QUEUED_COUNT {
        sessions.tx.push(Seq(seq), b"queued", 1);
    }
    let config = Arc::new(ConnectionConfig {
        node_id: "fuzz".into(),
        body_len_max: BODY_LEN_MAX_DEFAULT,
        batch: true,
        crc: true,
        lz4_min_size: Some(256),
        auth: None,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        heartbeat: HeartbeatConfig::default(),
        ack: AckPolicy::default(),
        epoch: t0,
    });
    let mut events = Checker::default();
    let Ok(mut conn) = Connection::accept(config, hello, &mut sessions, t0, &mut events) else {
        return;
    };
    assert!(conn.is_established());
    events.delivered = sessions.rx.seq_delivered().0;

    let mut out = Vec::new();
    let now = t0 + Duration::from_millis(1);
    transmit(&mut conn, &mut sessions, now, &mut out);
    let (head, tail) = rest.split_at(split_point(rest.len(), selector));
    for chunk in [head, tail] {
        if conn
            .handle_bytes(&mut sessions, chunk, now, &mut events)
            .is_err()
        {
            assert!(
                conn.close_cause().is_some(),
                "an error closes the connection"
            );
        }
        transmit(&mut conn, &mut sessions, now, &mut out);
    }
    let later = t0 + Duration::from_secs(3600);
    if conn.handle_timeout(later).is_err() {
        assert!(
            conn.close_cause().is_some(),
            "a timeout closes the connection"
        );
    }
    conn.handle_eof();
    conn.close(&sessions, GoAwayReason::Normal, "done");
    transmit(&mut conn, &mut sessions, later, &mut out);
    assert!(conn.close_cause().is_some());

    let mut decoder = Decoder::new(u32::MAX);
    assert_eq!(
        decoder.decode(&out, |_| Ok(())),
        Ok(()),
        "own output decodes"
    );
    assert!(
        !decoder.has_partial(),
        "own output ends on a frame boundary"
    );
}

/// Appends everything the connection has due to `out`, held message frames included.
fn transmit(conn: &mut Connection, sessions: &mut Sessions, now: Instant, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    conn.poll_transmit(sessions, now, out, &mut data, usize::MAX);
    for slice in data {
        out.extend_from_slice(&slice);
    }
}

fn split_point(len: usize, selector: u8) -> usize {
    len * usize::from(selector) / usize::from(u8::MAX)
}

/// Checks the order of what the connection reports.
#[derive(Default)]
struct Checker {
    delivered: u64,
    acked: u64,
}

impl Events for Checker {
    fn on_message(&mut self, _: SessionId, seq: Seq, _: &[u8]) {
        assert_eq!(seq.0, self.delivered + 1, "delivered in order");
        self.delivered = seq.0;
    }

    fn on_acked(&mut self, acked: Acked) {
        assert!(acked.through.0 > self.acked, "acknowledged in order");
        assert_eq!(acked.count, acked.through.0 - self.acked, "each once");
        assert!(acked.through.0 <= QUEUED_COUNT);
        self.acked = acked.through.0;
    }
}
