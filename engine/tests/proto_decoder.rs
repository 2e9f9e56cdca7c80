//! Property tests for the frame decoder and the acceptor's handshake (docs/protocol.md,
//! "Framing", "Frames" and "Handshake").
//!
//! Frames are generated as owned [`Spec`]s, encoded back to back with the crate's own encoder
//! and fed to [`Decoder`] split at arbitrary points. Hostile inputs are either arbitrary bytes
//! or valid streams with a few bytes overwritten, which reach much deeper into the body parsers
//! than noise does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

use ringwire::proto::ack::AckPolicy;
use ringwire::proto::connection::Events;
use ringwire::proto::frame::{
    AUTH_TOKEN_LEN_MAX, BODY_LEN_MAX_DEFAULT, BatchEntries, GOAWAY_MESSAGE_LEN_MAX, HEADER_LEN,
    NODE_ID_LEN_MAX,
};
use ringwire::proto::handshake::Accepting;
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{Acked, Sessions};
use ringwire::proto::{
    Connection, ConnectionConfig, Decoder, Frame, GoAwayReason, Hello, Kind, ProtocolError, Seq,
    SessionId,
};

/// An owned frame: what the strategies generate and what decoded frames are compared as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Hello {
        caps: u32,
        body_len_max: u32,
        tx_session: u128,
        tx_seq_first: u64,
        rx_session: u128,
        rx_delivered: u64,
        node_id: String,
    },
    Auth(Vec<u8>),
    Ping(u64),
    Pong(u64),
    Msg(u64, Vec<u8>),
    Ack(u64),
    GoAway {
        reason: u16,
        retry_after_ms: u32,
        message: String,
    },
    Close,
    Lost(u64),
    /// The first sequence number and the encoded entries.
    MsgBatch(u64, Vec<u8>),
    MsgLz4 {
        seq: u64,
        raw_len: u32,
        block: Vec<u8>,
        checksum: Option<u32>,
    },
}

impl Spec {
    fn from_frame(frame: &Frame<'_>) -> Spec {
        match *frame {
            Frame::Hello(h) => Spec::Hello {
                caps: h.caps,
                body_len_max: h.body_len_max,
                tx_session: h.tx_session.0.as_u128(),
                tx_seq_first: h.tx_seq_first.0,
                rx_session: h.rx_session.0.as_u128(),
                rx_delivered: h.rx_delivered.0,
                node_id: h.node_id.to_owned(),
            },
            Frame::Auth { body } => Spec::Auth(body.to_vec()),
            Frame::Ping { timestamp } => Spec::Ping(timestamp),
            Frame::Pong { timestamp } => Spec::Pong(timestamp),
            Frame::Msg { seq, payload } => Spec::Msg(seq.0, payload.to_vec()),
            Frame::Ack { seq } => Spec::Ack(seq.0),
            Frame::GoAway {
                reason,
                retry_after_ms,
                message,
            } => Spec::GoAway {
                reason: reason.code(),
                retry_after_ms,
                message: message.to_owned(),
            },
            Frame::Close => Spec::Close,
            Frame::Lost { seq } => Spec::Lost(seq.0),
            Frame::MsgBatch { seq_first, entries } => {
                Spec::MsgBatch(seq_first.0, entries.as_bytes().to_vec())
            }
            Frame::MsgLz4 {
                seq,
                raw_len,
                block,
                checksum,
            } => Spec::MsgLz4 {
                seq: seq.0,
                raw_len,
                block: block.to_vec(),
                checksum,
            },
        }
    }

    fn frame(&self) -> Frame<'_> {
        match self {
            Spec::Hello {
                caps,
                body_len_max,
                tx_session,
                tx_seq_first,
                rx_session,
                rx_delivered,
                node_id,
            } => Frame::Hello(Hello {
                caps: *caps,
                body_len_max: *body_len_max,
                tx_session: SessionId(Uuid::from_u128(*tx_session)),
                tx_seq_first: Seq(*tx_seq_first),
                rx_session: SessionId(Uuid::from_u128(*rx_session)),
                rx_delivered: Seq(*rx_delivered),
                node_id,
            }),
            Spec::Auth(body) => Frame::Auth { body },
            Spec::Ping(timestamp) => Frame::Ping {
                timestamp: *timestamp,
            },
            Spec::Pong(timestamp) => Frame::Pong {
                timestamp: *timestamp,
            },
            Spec::Msg(seq, payload) => Frame::Msg {
                seq: Seq(*seq),
                payload,
            },
            Spec::Ack(seq) => Frame::Ack { seq: Seq(*seq) },
            Spec::GoAway {
                reason,
                retry_after_ms,
                message,
            } => Frame::GoAway {
                reason: GoAwayReason::from_code(*reason),
                retry_after_ms: *retry_after_ms,
                message,
            },
            Spec::Close => Frame::Close,
            Spec::Lost(seq) => Frame::Lost { seq: Seq(*seq) },
            Spec::MsgBatch(seq_first, entries) => Frame::MsgBatch {
                seq_first: Seq(*seq_first),
                entries: BatchEntries::parse(entries).expect("generated entries are valid"),
            },
            Spec::MsgLz4 {
                seq,
                raw_len,
                block,
                checksum,
            } => Frame::MsgLz4 {
                seq: Seq(*seq),
                raw_len: *raw_len,
                block,
                checksum: *checksum,
            },
        }
    }

    /// What the peer decodes: the encoder cuts a GOAWAY message at a character boundary.
    fn expected(&self) -> Spec {
        match self {
            Spec::GoAway {
                reason,
                retry_after_ms,
                message,
            } => Spec::GoAway {
                reason: *reason,
                retry_after_ms: *retry_after_ms,
                message: truncate_utf8(message, GOAWAY_MESSAGE_LEN_MAX).to_owned(),
            },
            other => other.clone(),
        }
    }
}

/// A string of at most `len_max` bytes made of whole characters from `chars`.
fn utf8_within(chars: Vec<char>, len_max: usize) -> String {
    let mut out = String::new();
    for c in chars {
        if out.len() + c.len_utf8() > len_max {
            break;
        }
        out.push(c);
    }
    out
}

fn truncate_utf8(s: &str, len_max: usize) -> &str {
    let mut end = s.len().min(len_max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn node_id() -> impl Strategy<Value = String> {
    // One to 255 bytes: at least one character, and any character is at most 4 bytes.
    prop_oneof![
        prop::collection::vec(any::<char>(), 1..=80),
        prop::collection::vec(prop::char::range('a', 'z'), 1..=NODE_ID_LEN_MAX),
    ]
    .prop_map(|chars| utf8_within(chars, NODE_ID_LEN_MAX))
}

fn hello() -> impl Strategy<Value = Spec> {
    (
        any::<u32>(),
        8u32..,
        any::<u128>(),
        any::<u64>(),
        any::<u128>(),
        any::<u64>(),
        node_id(),
    )
        .prop_map(
            |(caps, body_len_max, tx_session, tx_seq_first, rx_session, rx_delivered, node_id)| {
                Spec::Hello {
                    caps,
                    body_len_max,
                    tx_session,
                    tx_seq_first,
                    rx_session,
                    rx_delivered,
                    node_id,
                }
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        1 => hello(),
        1 => prop::collection::vec(any::<u8>(), 1..=AUTH_TOKEN_LEN_MAX).prop_map(Spec::Auth),
        1 => any::<u64>().prop_map(Spec::Ping),
        1 => any::<u64>().prop_map(Spec::Pong),
        3 => (1u64.., prop::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(seq, payload)| Spec::Msg(seq, payload)),
        1 => any::<u64>().prop_map(Spec::Ack),
        1 => (
            any::<u16>(),
            any::<u32>(),
            // Up to 300 characters is up to 1200 bytes: some messages get truncated.
            prop::collection::vec(any::<char>(), 0..300),
        )
            .prop_map(|(reason, retry_after_ms, chars)| Spec::GoAway {
                reason,
                retry_after_ms,
                message: chars.into_iter().collect(),
            }),
        1 => Just(Spec::Close),
        1 => (1u64..).prop_map(Spec::Lost),
        2 => (1u64..u64::MAX / 2, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..20))
            .prop_map(|(seq_first, payloads)| {
                let mut entries = Vec::new();
                for payload in payloads {
                    entries.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    entries.extend_from_slice(&payload);
                }
                Spec::MsgBatch(seq_first, entries)
            }),
    ]
}

fn encode(specs: &[Spec]) -> Vec<u8> {
    let mut out = Vec::new();
    for spec in specs {
        spec.frame().encode(&mut out);
    }
    out
}

/// Splits `bytes` at the (sorted, deduplicated) positions `cuts` pick.
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut chunks = Vec::with_capacity(at.len());
    let mut start = 0;
    for end in at {
        chunks.push(&bytes[start..end]);
        start = end;
    }
    chunks
}

/// Feeds `chunks` in order, collecting frames until the first error. After an error every
/// further chunk (and one more arbitrary input) must return that same error and yield nothing.
fn decode_chunks(
    decoder: &mut Decoder,
    chunks: &[&[u8]],
) -> (Vec<Spec>, Result<(), ProtocolError>) {
    let mut frames = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        let outcome = decoder.decode(chunk, |frame| {
            frames.push(Spec::from_frame(&frame));
            Ok(())
        });
        match (&result, outcome) {
            (Ok(()), outcome) => result = outcome,
            (Err(first), outcome) => assert_eq!(outcome.as_ref(), Err(first), "stays failed"),
        }
    }
    if let Err(first) = &result {
        let frame_count = frames.len();
        let again = decoder.decode(&[0; HEADER_LEN], |frame| {
            frames.push(Spec::from_frame(&frame));
            Ok(())
        });
        assert_eq!(again.as_ref(), Err(first), "stays failed");
        assert_eq!(frames.len(), frame_count, "a failed decoder yields nothing");
    }
    (frames, result)
}

/// Valid frames with a few bytes overwritten and possibly cut short.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(spec(), 0..6),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(specs, edits, end)| {
            let mut bytes = encode(&specs);
            if !bytes.is_empty() {
                for (at, value) in edits {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
            }
            if let Some(end) = end {
                bytes.truncate(end.index(bytes.len() + 1));
            }
            bytes
        })
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Plausible headers: small little-endian lengths and kinds near the valid range.
        prop::collection::vec(
            (
                0u32..2048,
                0u8..11,
                prop::sample::select(vec![0u8, 0, 0, 1, 2, 4])
            ),
            0..8
        )
        .prop_map(|headers| {
            let mut bytes = Vec::new();
            for (body_len, kind, flags) in headers {
                bytes.extend_from_slice(&body_len.to_le_bytes());
                bytes.extend_from_slice(&[kind, flags, 0, 0]);
                bytes.extend(std::iter::repeat_n(0xA5, (body_len % 97) as usize));
            }
            bytes
        }),
        mutated_stream(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) Valid frames decode to themselves, however the stream is split.
    #[test]
    fn valid_frames_decode_identically_whole_and_split(
        specs in prop::collection::vec(spec(), 0..12),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let bytes = encode(&specs);
        let expected: Vec<Spec> = specs.iter().map(Spec::expected).collect();

        let mut whole = Decoder::new(BODY_LEN_MAX_DEFAULT);
        let (frames, result) = decode_chunks(&mut whole, &[&bytes]);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(&frames, &expected);
        prop_assert!(!whole.has_partial());

        let mut pieces = Decoder::new(BODY_LEN_MAX_DEFAULT);
        let (frames, result) = decode_chunks(&mut pieces, &split(&bytes, &cuts));
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(&frames, &expected);
        prop_assert!(!pieces.has_partial());
    }

    /// (a) The extreme split: one byte at a time.
    #[test]
    fn valid_frames_decode_byte_at_a_time(specs in prop::collection::vec(spec(), 0..4)) {
        let bytes = encode(&specs);
        let expected: Vec<Spec> = specs.iter().map(Spec::expected).collect();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let (frames, result) = decode_chunks(&mut Decoder::new(BODY_LEN_MAX_DEFAULT), &chunks);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(frames, expected);
    }

    /// (b) Hostile bytes never panic, a split stream yields the same frames and the same error
    /// as the whole one, a failed decoder keeps returning its error, and whatever decodes
    /// re-encodes to exactly the input it came from.
    #[test]
    fn hostile_bytes_never_panic_and_split_agrees(
        bytes in hostile_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        body_len_max in prop_oneof![Just(BODY_LEN_MAX_DEFAULT), 0u32..4096],
    ) {
        let (whole_frames, whole_result) =
            decode_chunks(&mut Decoder::new(body_len_max), &[&bytes]);
        let (split_frames, split_result) =
            decode_chunks(&mut Decoder::new(body_len_max), &split(&bytes, &cuts));
        prop_assert!(
            bytes.starts_with(&encode(&whole_frames)),
            "decoded frames re-encode to the bytes they came from"
        );
        prop_assert_eq!(whole_frames, split_frames);
        prop_assert_eq!(whole_result, split_result);
    }

    /// (c) A length over the maximum is rejected by the eighth byte, before any body arrives.
    #[test]
    fn oversized_length_is_rejected_after_eight_bytes(
        body_len_max in prop_oneof![Just(BODY_LEN_MAX_DEFAULT), any::<u32>()],
        excess in any::<Index>(),
        kind in 1u8..=8,
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assume!(body_len_max < u32::MAX);
        let body_len = body_len_max + 1 + excess.index((u32::MAX - body_len_max) as usize) as u32;
        prop_assert!(Kind::from_u8(kind).is_some());
        let mut header = Vec::new();
        header.extend_from_slice(&body_len.to_le_bytes());
        header.extend_from_slice(&[kind, 0, 0, 0]);
        let expected = ProtocolError::FrameTooLarge { body_len, body_len_max };

        let mut decoder = Decoder::new(body_len_max);
        for byte in &header[..HEADER_LEN - 1] {
            prop_assert_eq!(
                decoder.decode(std::slice::from_ref(byte), |_| unreachable!("no frame")),
                Ok(())
            );
        }
        prop_assert_eq!(
            decoder.decode(&header[HEADER_LEN - 1..], |_| unreachable!("no frame")),
            Err(expected.clone())
        );
        prop_assert_eq!(decoder.decode(&rest, |_| Ok(())), Err(expected.clone()));

        // The same header inside one larger input is rejected just the same.
        header.extend_from_slice(&rest);
        let mut decoder = Decoder::new(body_len_max);
        prop_assert_eq!(decoder.decode(&header, |_| Ok(())), Err(expected.clone()));
        prop_assert_eq!(expected.reason(), GoAwayReason::FrameTooLarge);
    }

    /// (d) The acceptor's handshake never panics, and a HELLO it returns can drive a
    /// connection (fed the rest of the input) without panicking either.
    #[test]
    fn accepting_never_panics(
        bytes in prop_oneof![
            hostile_bytes(),
            (hello(), mutated_stream()).prop_map(|(hello, tail)| {
                let mut bytes = encode(&[hello]);
                bytes.extend_from_slice(&tail);
                bytes
            }),
        ],
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let t0 = Instant::now();
        let mut accepting = Accepting::new(t0 + Duration::from_secs(5));
        let chunks = split(&bytes, &cuts);
        let mut first_err: Option<ProtocolError> = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let result = accepting.handle_bytes(chunk);
            if let Some(err) = &first_err {
                prop_assert_eq!(result.as_ref().err(), Some(err), "stays failed");
                continue;
            }
            match result {
                Err(err) => first_err = Some(err),
                Ok(None) => {}
                Ok(Some(hello)) => {
                    prop_assert!(!hello.node_id.is_empty());
                    prop_assert!(hello.node_id.len() <= NODE_ID_LEN_MAX);
                    prop_assert!(hello.body_len_max >= 8);
                    let mut sessions = Sessions::new(SessionId(Uuid::from_u128(1)));
                    let accepted =
                        Connection::accept(config(t0), &hello, &mut sessions, t0, &mut NoEvents);
                    if let Ok(mut conn) = accepted {
                        prop_assert!(conn.is_established());
                        for chunk in &chunks[i + 1..] {
                            let _ = conn.handle_bytes(&mut sessions, chunk, t0, &mut NoEvents);
                        }
                        conn.handle_eof();
                        let mut out = Vec::new();
                        conn.poll_transmit(&mut sessions, t0, &mut out, &mut Vec::new(), usize::MAX);
                    }
                    break;
                }
            }
        }
        let _ = accepting.handle_eof();
        prop_assert_eq!(
            accepting.handle_timeout(t0 + Duration::from_secs(5)),
            Err(ProtocolError::HandshakeTimeout)
        );
    }
}

struct NoEvents;

impl Events for NoEvents {
    fn on_message(&mut self, _: SessionId, _: Seq, _: &[u8]) {}
    fn on_acked(&mut self, _: Acked) {}
}

fn config(epoch: Instant) -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig {
        node_id: "acceptor".into(),
        body_len_max: BODY_LEN_MAX_DEFAULT,
        batch: true,
        crc: true,
        lz4_min_size: Some(256),
        auth: None,
        handshake_timeout: Duration::from_secs(5),
        heartbeat: HeartbeatConfig::default(),
        ack: AckPolicy::default(),
        epoch,
    })
}
