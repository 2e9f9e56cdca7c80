//! Fuzzes the acceptor's side of the handshake and the connection it leads to
//! (docs/protocol.md, "Handshake" and "Connection states").
//!
//! The first input byte picks where the rest is split. The first part goes to `Accepting`; if
//! no HELLO came out of it, the second part follows. When a HELLO comes out, `Connection::accept`
//! answers it and the connection is fed whatever was not yet consumed, then times out, sees EOF
//! and closes. Checked: nothing panics; a failed `Accepting` keeps its error; messages are
//! delivered in order and acknowledgements release messages in order; a connection that
//! returned an error is closing; and everything the connection wrote is a valid frame stream.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

use ringwire::proto::ack::AckPolicy;
use ringwire::proto::connection::Events;
use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
use ringwire::proto::handshake::{Accepting, HelloInfo};
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{RxSession, Sessions, TxEntry, TxSession};
use ringwire::proto::{Connection, ConnectionConfig, Decoder, GoAwayReason, Seq, SessionId};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting in this side's session, so that ACKs and resume points can release some.
const QUEUED_COUNT: u64 = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len() * usize::from(first) / usize::from(u8::MAX);
    let (head, tail) = rest.split_at(cut);
    let t0 = Instant::now();
    let mut accepting = Accepting::new(BODY_LEN_MAX_DEFAULT, t0 + HANDSHAKE_TIMEOUT);
    let mut hello = None;
    for (chunk, unread) in [(head, tail), (tail, &[][..])] {
        match accepting.handle_bytes(chunk) {
            Ok(Some(h)) => {
                hello = Some((h, unread));
                break;
            }
            Ok(None) => {}
            Err(err) => {
                assert_eq!(accepting.handle_bytes(b"more"), Err(err), "stays failed");
                return;
            }
        }
    }
    match hello {
        Some((hello, unread)) => {
            assert!(!hello.node_id.is_empty() && hello.node_id.len() <= 255);
            drive(&hello, unread, t0);
        }
        None => {
            let _ = accepting.handle_eof();
            assert!(accepting.handle_timeout(t0 + HANDSHAKE_TIMEOUT).is_err());
        }
    }
});

/// Answers `hello` and runs the established connection over `rest`.
fn drive(hello: &HelloInfo, rest: &[u8], t0: Instant) {
    let mut sessions = Sessions {
        tx: TxSession::new(SessionId(Uuid::from_u128(1))),
        rx: RxSession::restore(SessionId(Uuid::from_u128(2)), Seq(5)),
    };
    for seq in 1..=QUEUED_COUNT {
        sessions
            .tx
            .push(Seq(seq), Bytes::from_static(b"queued"), seq);
    }
    let config = Arc::new(ConnectionConfig {
        node_id: "fuzz".into(),
        body_len_max: BODY_LEN_MAX_DEFAULT,
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
    conn.poll_transmit(&mut sessions, now, &mut out, usize::MAX);
    if conn
        .handle_bytes(&mut sessions, rest, now, &mut events)
        .is_err()
    {
        assert!(
            conn.close_cause().is_some(),
            "an error closes the connection"
        );
    }
    conn.poll_transmit(&mut sessions, now, &mut out, usize::MAX);
    let later = t0 + Duration::from_secs(3600);
    if conn.handle_timeout(later).is_err() {
        assert!(
            conn.close_cause().is_some(),
            "a timeout closes the connection"
        );
    }
    conn.handle_eof();
    conn.close(&sessions, GoAwayReason::Normal, "done");
    conn.poll_transmit(&mut sessions, later, &mut out, usize::MAX);
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

/// Checks the order of what the connection reports.
#[derive(Default)]
struct Checker {
    delivered: u64,
    acked: u64,
}

impl Events<u64> for Checker {
    fn on_message(&mut self, _: SessionId, seq: Seq, _: &[u8]) {
        assert_eq!(seq.0, self.delivered + 1, "delivered in order");
        self.delivered = seq.0;
    }

    fn on_acked(&mut self, seq: Seq, entry: TxEntry<u64>) {
        assert_eq!(seq.0, self.acked + 1, "released in order");
        assert_eq!(entry.token, seq.0);
        assert!(seq.0 <= QUEUED_COUNT);
        self.acked = seq.0;
    }
}
