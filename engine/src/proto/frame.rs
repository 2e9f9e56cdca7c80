//! Frame codec: the 8-byte header, every frame body, and an incremental decoder
//! (docs/protocol.md, "Framing" and "Frames").
//!
//! ```text
//!  0               4       5       6               8
//! +---------------+-------+-------+---------------+-----------------------+
//! | body_len u32  | kind  | flags | reserved u16  | body (body_len bytes) |
//! +---------------+-------+-------+---------------+-----------------------+
//!   little-endian   u8      u8      must be zero
//! ```
//!
//! The decoder validates a header as soon as its eight bytes are present, so an oversized
//! length, an unknown kind or a reserved bit is rejected before a byte of body is buffered or
//! allocated. Bodies are parsed into borrowed [`Frame`]s; a frame that lies whole inside the
//! caller's input is never copied.

use std::fmt;

use uuid::Uuid;

use crate::proto::error::{GoAwayReason, ProtocolError};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Default maximum body length (16 MiB), negotiated down to the smaller of both sides.
pub const BODY_LEN_MAX_DEFAULT: u32 = 16 << 20;
/// Flag bit 0, on MSG only: the payload is an LZ4 block, after its decompressed length
/// (negotiated with [`CAP_LZ4`]; docs/protocol.md, "LZ4").
pub const FLAG_LZ4: u8 = 0b01;
/// Flag bit 1, on MSG and MSG_BATCH: each payload is preceded by its CRC32C (negotiated with
/// [`CAP_CRC`]; docs/protocol.md, "CRC").
pub const FLAG_CRC: u8 = 0b10;
/// Length of a payload's checksum.
pub const CHECKSUM_LEN: usize = 4;
/// Length of a compressed MSG's decompressed-length field.
pub const LZ4_PREFIX_LEN: usize = 4;
/// The first four bytes of every HELLO body.
pub const MAGIC: [u8; 4] = *b"RWIR";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Length of a MSG body before its payload (the sequence number).
pub const MSG_PREFIX_LEN: usize = 8;
/// HELLO capability bit 0: the sender accepts MSG_BATCH frames (docs/protocol.md, "MSG_BATCH").
pub const CAP_BATCH: u32 = 0b1;
/// HELLO capability bit 1: the sender accepts [`FLAG_CRC`] frames.
pub const CAP_CRC: u32 = 0b10;
/// HELLO capability bit 2: the sender accepts [`FLAG_LZ4`] frames.
pub const CAP_LZ4: u32 = 0b100;
/// HELLO capability bit 3: the sender holds a shared secret and takes part in the AUTH
/// exchange (docs/protocol.md, "AUTH").
pub const CAP_AUTH: u32 = 0b1000;
/// Length of a MSG_BATCH body before its first entry (the first sequence number).
pub const BATCH_PREFIX_LEN: usize = 8;
/// Length of a MSG_BATCH entry before its payload (the payload's length).
pub const BATCH_ENTRY_PREFIX_LEN: usize = 4;
/// The largest MSG_BATCH body this implementation sends: small enough that a frame straddling
/// two receive buffers costs little to reassemble, large enough that its header is shared by
/// dozens of small messages. It batches only towards peers whose `body_len_max` admits it.
pub const BATCH_BODY_MAX: usize = 4 << 10;
/// Maximum length of a node id in bytes.
pub const NODE_ID_LEN_MAX: usize = 255;
/// Maximum length of an AUTH token in bytes.
pub const AUTH_TOKEN_LEN_MAX: usize = 1024;
/// Maximum length of a GOAWAY message in bytes.
pub const GOAWAY_MESSAGE_LEN_MAX: usize = 1024;

const HELLO_FIXED_LEN: usize = 65;
/// The longest HELLO body (a 255-byte node id): the limit on the first frame an acceptor reads.
pub const HELLO_BODY_LEN_MAX: u32 = (HELLO_FIXED_LEN + NODE_ID_LEN_MAX) as u32;
const GOAWAY_FIXED_LEN: usize = 6;
const FLAGS_KNOWN: u8 = FLAG_LZ4 | FLAG_CRC;

/// A per-session message sequence number. The first message of a session is 1; 0 means
/// "nothing yet" when used as a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The watermark before any message.
    pub const ZERO: Seq = Seq(0);

    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The identity of one direction of a peer pair; created once by the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// "No session known", sent in HELLO by a node that has never heard from its peer.
    pub const NIL: SessionId = SessionId(Uuid::nil());

    /// Whether this is [`SessionId::NIL`].
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Frame kinds (docs/protocol.md, "Frame kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Auth = 2,
    Ping = 3,
    Pong = 4,
    Msg = 5,
    Ack = 6,
    GoAway = 7,
    Close = 8,
    Lost = 9,
    MsgBatch = 10,
}

impl Kind {
    /// The kind for a byte read off the wire.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Auth,
            3 => Kind::Ping,
            4 => Kind::Pong,
            5 => Kind::Msg,
            6 => Kind::Ack,
            7 => Kind::GoAway,
            8 => Kind::Close,
            9 => Kind::Lost,
            10 => Kind::MsgBatch,
            _ => return None,
        })
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub kind: Kind,
    pub flags: u8,
}

impl Header {
    /// Parses and validates a header against the negotiated limits.
    ///
    /// # Errors
    ///
    /// A reserved bit, an unknown kind, a flag that was not negotiated (`flags_allowed`) or a
    /// body longer than `body_len_max` is a [`ProtocolError`].
    pub fn parse(
        bytes: &[u8; HEADER_LEN],
        body_len_max: u32,
        flags_allowed: u8,
    ) -> Result<Header, ProtocolError> {
        let body_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let flags = bytes[5];
        let reserved = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags & !FLAGS_KNOWN != 0 || reserved != 0 {
            return Err(ProtocolError::ReservedBits { flags, reserved });
        }
        let kind = Kind::from_u8(bytes[4]).ok_or(ProtocolError::UnknownKind(bytes[4]))?;
        if flags & !flags_allowed != 0 {
            return Err(ProtocolError::FlagNotNegotiated { flags });
        }
        if body_len > body_len_max {
            return Err(ProtocolError::FrameTooLarge {
                body_len,
                body_len_max,
            });
        }
        Ok(Header {
            body_len,
            kind,
            flags,
        })
    }

    /// Writes the header's eight bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.flags);
        out.extend_from_slice(&[0, 0]);
    }
}

/// HELLO: the first frame on every connection, in each direction (docs/protocol.md, "HELLO").
///
/// ```text
///  0      4        6          8      12             16            32            40
/// +------+--------+----------+------+--------------+-------------+-------------+
/// |magic |version |reserved  | caps | body_len_max | tx_session  | tx_seq_first|
/// |"RWIR"| u16    | u16 = 0  | u32  | u32          | uuid (16)   | u64         |
/// +------+--------+----------+------+--------------+-------------+-------------+
///  40            56             64            65
/// +-------------+--------------+-------------+-------------------+
/// | rx_session  | rx_delivered | node_id_len | node_id (utf-8)   |
/// | uuid (16)   | u64          | u8          | node_id_len bytes |
/// +-------------+--------------+-------------+-------------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Capability bits the sender supports (none are defined by version 1).
    pub caps: u32,
    /// The largest frame body the sender accepts.
    pub body_len_max: u32,
    /// The sender's outbound session.
    pub tx_session: SessionId,
    /// The lowest sequence number the sender still holds: everything below is acknowledged.
    pub tx_seq_first: Seq,
    /// The peer's session the sender last received from, or NIL.
    pub rx_session: SessionId,
    /// The highest sequence number of `rx_session` the sender has delivered.
    pub rx_delivered: Seq,
    /// The sender's node id: 1 to 255 bytes of UTF-8.
    pub node_id: &'a str,
}

/// Whether `bytes`, the first a connection received, start a plaintext HELLO: a header of
/// kind HELLO, no flags, a body no longer than the longest HELLO, and the magic if it arrived.
/// A TLS ClientHello never does (its first bytes, `16 03`, read as a body length of at least
/// 790), so a TLS acceptor uses this to tell a plaintext dialer why it is refused.
pub fn is_plaintext_hello(bytes: &[u8]) -> bool {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return false;
    };
    let magic_ok = bytes
        .get(HEADER_LEN..HEADER_LEN + MAGIC.len())
        .is_none_or(|magic| magic == MAGIC);
    matches!(
        Header::parse(header, HELLO_BODY_LEN_MAX, 0),
        Ok(Header {
            kind: Kind::Hello,
            ..
        })
    ) && magic_ok
}

/// One decoded frame, borrowing its body from the decoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    /// A step of the shared-secret exchange ([`crate::proto::auth::AuthMessage`]).
    Auth {
        body: &'a [u8],
    },
    /// A heartbeat; `timestamp` is opaque to the receiver and echoed in PONG.
    Ping {
        timestamp: u64,
    },
    Pong {
        timestamp: u64,
    },
    /// One message of the sender's outbound session. With [`FLAG_CRC`], its checksum was
    /// verified by [`Frame::parse`].
    Msg {
        seq: Seq,
        payload: &'a [u8],
    },
    /// One message whose payload is an LZ4 block ([`FLAG_LZ4`]): `raw_len` bytes once
    /// decompressed, which the receiver checks against its limit before it allocates, and
    /// whose CRC32C is `checksum` (with [`FLAG_CRC`]), checked after decompression.
    MsgLz4 {
        seq: Seq,
        raw_len: u32,
        block: &'a [u8],
        checksum: Option<u32>,
    },
    /// Everything up to and including `seq` of the receiver's outbound session was processed.
    Ack {
        seq: Seq,
    },
    /// The sender is closing this connection for `reason`; retry no sooner than `retry_after_ms`.
    GoAway {
        reason: GoAwayReason,
        retry_after_ms: u32,
        message: &'a str,
    },
    /// Graceful close: the sender will send nothing more.
    Close,
    /// Stands in for message `seq`, which the sender accepted but lost (its outbox record was
    /// damaged): the receiver advances past it without delivering anything.
    Lost {
        seq: Seq,
    },
    /// Consecutive messages of the sender's outbound session, `seq_first` and on, under one
    /// header (negotiated with [`CAP_BATCH`]).
    MsgBatch {
        seq_first: Seq,
        entries: BatchEntries<'a>,
    },
}

/// The entries of a MSG_BATCH body, validated: at least one, each a `u32` length, the
/// payload's CRC32C if the batch is `checksummed`, and that many payload bytes, filling the
/// body exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntries<'a> {
    bytes: &'a [u8],
    count: u64,
    checksummed: bool,
}

/// Why a MSG_BATCH body was refused by [`BatchEntries::parse_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// The entries do not fill the body exactly, or there are none.
    Malformed,
    /// Entry `index` (0 for the first) does not match its checksum.
    Checksum { index: u64 },
}

impl<'a> BatchEntries<'a> {
    /// Validates `bytes` as a sequence of entries without checksums; `None` if they do not fill
    /// it exactly or if there are none.
    pub fn parse(bytes: &'a [u8]) -> Option<BatchEntries<'a>> {
        Self::parse_checked(bytes, false).ok()
    }

    /// Validates `bytes` as a sequence of entries, each with its checksum if `checksummed`,
    /// and verifies every checksum.
    ///
    /// # Errors
    ///
    /// [`BatchError`]: the layout is wrong, or a payload does not match its checksum.
    pub fn parse_checked(
        bytes: &'a [u8],
        checksummed: bool,
    ) -> Result<BatchEntries<'a>, BatchError> {
        let mut rest = bytes;
        let mut count = 0;
        while !rest.is_empty() {
            let (payload, checksum, tail) =
                split_entry(rest, checksummed).ok_or(BatchError::Malformed)?;
            if let Some(checksum) = checksum
                && crc32c(payload) != checksum
            {
                return Err(BatchError::Checksum { index: count });
            }
            rest = tail;
            count += 1;
        }
        if count == 0 {
            return Err(BatchError::Malformed);
        }
        Ok(BatchEntries {
            bytes,
            count,
            checksummed,
        })
    }

    /// Entries this node encoded: trusted, not verified.
    fn parse_trusted(bytes: &'a [u8], checksummed: bool) -> BatchEntries<'a> {
        let mut rest = bytes;
        let mut count = 0;
        while !rest.is_empty() {
            (_, _, rest) = split_entry(rest, checksummed).expect("a batch this node encoded");
            count += 1;
        }
        BatchEntries {
            bytes,
            count,
            checksummed,
        }
    }

    /// Whether each entry carries its payload's checksum.
    pub fn is_checksummed(&self) -> bool {
        self.checksummed
    }

    /// The encoded entries, as they follow the first sequence number in the body.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How many messages the batch carries.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The payloads, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let mut rest = self.bytes;
        let checksummed = self.checksummed;
        std::iter::from_fn(move || {
            let (payload, _, tail) = split_entry(rest, checksummed)?;
            rest = tail;
            Some(payload)
        })
    }
}

/// The payload of the entry `bytes` starts with, its checksum if the entries are
/// `checksummed`, and what follows it; `None` if `bytes` is empty or the entry runs past its
/// end.
fn split_entry(bytes: &[u8], checksummed: bool) -> Option<(&[u8], Option<u32>, &[u8])> {
    let (len, mut tail) = bytes.split_first_chunk::<BATCH_ENTRY_PREFIX_LEN>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let mut checksum = None;
    if checksummed {
        let (sum, rest) = tail.split_first_chunk::<CHECKSUM_LEN>()?;
        checksum = Some(u32::from_le_bytes(*sum));
        tail = rest;
    }
    (len <= tail.len()).then(|| {
        let (payload, rest) = tail.split_at(len);
        (payload, checksum, rest)
    })
}

/// The CRC32C of a payload, as [`FLAG_CRC`] frames carry it.
pub fn crc32c(payload: &[u8]) -> u32 {
    crate::sys::crc::checksum_seeded(0, payload)
}

impl<'a> Frame<'a> {
    /// Parses the body of a frame whose header was validated by [`Header::parse`].
    ///
    /// # Errors
    ///
    /// A body that does not match its kind's layout is [`ProtocolError::Malformed`]; a HELLO
    /// with the wrong magic or version is [`ProtocolError::BadMagic`] or
    /// [`ProtocolError::UnsupportedVersion`].
    pub fn parse(header: Header, body: &'a [u8]) -> Result<Frame<'a>, ProtocolError> {
        debug_assert_eq!(body.len(), header.body_len as usize);
        let kind = header.kind;
        let malformed = |what| ProtocolError::Malformed { kind, what };
        let flags_allowed = match kind {
            Kind::Msg => FLAG_LZ4 | FLAG_CRC,
            Kind::MsgBatch => FLAG_CRC,
            _ => 0,
        };
        if header.flags & !flags_allowed != 0 {
            return Err(malformed("a flag this kind does not take"));
        }
        match kind {
            Kind::Hello => parse_hello(body).map(Frame::Hello),
            Kind::Auth => {
                if body.is_empty() || body.len() > AUTH_TOKEN_LEN_MAX {
                    return Err(malformed("token length out of range"));
                }
                Ok(Frame::Auth { body })
            }
            Kind::Ping | Kind::Pong => {
                let timestamp = u64_exact(body).ok_or(malformed("body is not 8 bytes"))?;
                Ok(if kind == Kind::Ping {
                    Frame::Ping { timestamp }
                } else {
                    Frame::Pong { timestamp }
                })
            }
            Kind::Msg => {
                if body.len() < MSG_PREFIX_LEN {
                    return Err(malformed("shorter than its sequence number"));
                }
                let seq = Seq(read_u64(body, 0));
                if seq == Seq::ZERO {
                    return Err(malformed("sequence number 0"));
                }
                let mut rest = &body[MSG_PREFIX_LEN..];
                let mut checksum = None;
                if header.flags & FLAG_CRC != 0 {
                    let (sum, tail) = rest
                        .split_first_chunk::<CHECKSUM_LEN>()
                        .ok_or(malformed("shorter than its checksum"))?;
                    checksum = Some(u32::from_le_bytes(*sum));
                    rest = tail;
                }
                if header.flags & FLAG_LZ4 != 0 {
                    let (raw_len, block) = rest
                        .split_first_chunk::<LZ4_PREFIX_LEN>()
                        .ok_or(malformed("shorter than its decompressed length"))?;
                    return Ok(Frame::MsgLz4 {
                        seq,
                        raw_len: u32::from_le_bytes(*raw_len),
                        block,
                        checksum,
                    });
                }
                if let Some(checksum) = checksum
                    && crc32c(rest) != checksum
                {
                    return Err(ProtocolError::ChecksumMismatch { seq: seq.0 });
                }
                Ok(Frame::Msg { seq, payload: rest })
            }
            Kind::Ack => {
                let seq = u64_exact(body).ok_or(malformed("body is not 8 bytes"))?;
                Ok(Frame::Ack { seq: Seq(seq) })
            }
            Kind::GoAway => {
                if body.len() < GOAWAY_FIXED_LEN
                    || body.len() > GOAWAY_FIXED_LEN + GOAWAY_MESSAGE_LEN_MAX
                {
                    return Err(malformed("length out of range"));
                }
                let reason = GoAwayReason::from_code(u16::from_le_bytes([body[0], body[1]]));
                let retry_after_ms = u32::from_le_bytes([body[2], body[3], body[4], body[5]]);
                let message = std::str::from_utf8(&body[GOAWAY_FIXED_LEN..])
                    .map_err(|_| malformed("message is not utf-8"))?;
                Ok(Frame::GoAway {
                    reason,
                    retry_after_ms,
                    message,
                })
            }
            Kind::Close => {
                if !body.is_empty() {
                    return Err(malformed("body is not empty"));
                }
                Ok(Frame::Close)
            }
            Kind::Lost => {
                let seq = u64_exact(body).ok_or(malformed("body is not 8 bytes"))?;
                if seq == 0 {
                    return Err(malformed("sequence number 0"));
                }
                Ok(Frame::Lost { seq: Seq(seq) })
            }
            Kind::MsgBatch => {
                if body.len() < BATCH_PREFIX_LEN {
                    return Err(malformed("shorter than its sequence number"));
                }
                let seq_first = read_u64(body, 0);
                if seq_first == 0 {
                    return Err(malformed("sequence number 0"));
                }
                let checksummed = header.flags & FLAG_CRC != 0;
                let entries =
                    match BatchEntries::parse_checked(&body[BATCH_PREFIX_LEN..], checksummed) {
                        Ok(entries) => entries,
                        Err(BatchError::Malformed) => {
                            return Err(malformed("entries do not fill the body"));
                        }
                        Err(BatchError::Checksum { index }) => {
                            return Err(ProtocolError::ChecksumMismatch {
                                seq: seq_first.saturating_add(index),
                            });
                        }
                    };
                if seq_first.checked_add(entries.count - 1).is_none() {
                    return Err(malformed("sequence numbers overflow"));
                }
                Ok(Frame::MsgBatch {
                    seq_first: Seq(seq_first),
                    entries,
                })
            }
        }
    }

    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Auth { .. } => Kind::Auth,
            Frame::Ping { .. } => Kind::Ping,
            Frame::Pong { .. } => Kind::Pong,
            Frame::Msg { .. } | Frame::MsgLz4 { .. } => Kind::Msg,
            Frame::Ack { .. } => Kind::Ack,
            Frame::GoAway { .. } => Kind::GoAway,
            Frame::Close => Kind::Close,
            Frame::Lost { .. } => Kind::Lost,
            Frame::MsgBatch { .. } => Kind::MsgBatch,
        }
    }

    /// Appends the whole frame, header and body, to `out`.
    ///
    /// # Panics
    ///
    /// If a length exceeds what its field can carry (a node id over 255 bytes, a message body
    /// over 4 GiB): callers validate those at the API boundary.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Frame::Hello(ref hello) => encode_hello(hello, out),
            Frame::Auth { body } => {
                header(Kind::Auth, body.len()).encode(out);
                out.extend_from_slice(body);
            }
            Frame::Ping { timestamp } => encode_u64(Kind::Ping, timestamp, out),
            Frame::Pong { timestamp } => encode_u64(Kind::Pong, timestamp, out),
            Frame::Msg { seq, payload } => encode_msg(seq, payload, out),
            Frame::MsgLz4 {
                seq,
                raw_len,
                block,
                checksum,
            } => {
                let sum_len = if checksum.is_some() { CHECKSUM_LEN } else { 0 };
                let mut head = header(
                    Kind::Msg,
                    MSG_PREFIX_LEN + sum_len + LZ4_PREFIX_LEN + block.len(),
                );
                head.flags = FLAG_LZ4 | if checksum.is_some() { FLAG_CRC } else { 0 };
                head.encode(out);
                out.extend_from_slice(&seq.0.to_le_bytes());
                if let Some(checksum) = checksum {
                    out.extend_from_slice(&checksum.to_le_bytes());
                }
                out.extend_from_slice(&raw_len.to_le_bytes());
                out.extend_from_slice(block);
            }
            Frame::Ack { seq } => encode_u64(Kind::Ack, seq.0, out),
            Frame::GoAway {
                reason,
                retry_after_ms,
                message,
            } => {
                let message = truncate_utf8(message, GOAWAY_MESSAGE_LEN_MAX);
                header(Kind::GoAway, GOAWAY_FIXED_LEN + message.len()).encode(out);
                out.extend_from_slice(&reason.code().to_le_bytes());
                out.extend_from_slice(&retry_after_ms.to_le_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Close => header(Kind::Close, 0).encode(out),
            Frame::Lost { seq } => encode_u64(Kind::Lost, seq.0, out),
            Frame::MsgBatch { seq_first, entries } => {
                let mut head = header(Kind::MsgBatch, BATCH_PREFIX_LEN + entries.bytes.len());
                if entries.checksummed {
                    head.flags = FLAG_CRC;
                }
                head.encode(out);
                out.extend_from_slice(&seq_first.0.to_le_bytes());
                out.extend_from_slice(entries.bytes);
            }
        }
    }
}

/// Appends a MSG frame: the hot path, so it skips building a [`Frame`].
///
/// ```text
/// +----------------+----------+-------------------+
/// | header (8)     | seq u64  | payload           |
/// | body_len = 8+n |          | n bytes           |
/// +----------------+----------+-------------------+
/// ```
pub fn encode_msg(seq: Seq, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + MSG_PREFIX_LEN + payload.len());
    header(Kind::Msg, MSG_PREFIX_LEN + payload.len()).encode(out);
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The header and sequence number of a MSG frame whose payload is `payload_len` bytes: the 16
/// bytes that precede the payload, built in one piece for encoders that write into their own
/// buffers.
///
/// # Panics
///
/// If the body would not fit the header's u32 length (callers cap payloads far below).
pub fn msg_head(seq: Seq, payload_len: usize) -> [u8; HEADER_LEN + MSG_PREFIX_LEN] {
    let body_len =
        u32::try_from(MSG_PREFIX_LEN + payload_len).expect("frame body length fits in u32");
    let mut head = [0u8; HEADER_LEN + MSG_PREFIX_LEN];
    head[..4].copy_from_slice(&body_len.to_le_bytes());
    head[4] = Kind::Msg as u8;
    head[8..].copy_from_slice(&seq.0.to_le_bytes());
    head
}

/// A whole LOST frame for `seq` (see [`Frame::Lost`]).
pub fn lost_frame(seq: Seq) -> [u8; HEADER_LEN + 8] {
    let mut frame = [0u8; HEADER_LEN + 8];
    frame[..4].copy_from_slice(&8u32.to_le_bytes());
    frame[4] = Kind::Lost as u8;
    frame[8..].copy_from_slice(&seq.0.to_le_bytes());
    frame
}

/// The header and first sequence number of a MSG_BATCH frame, with a body length of
/// [`BATCH_PREFIX_LEN`]: the encoder appends entries and then patches the length with
/// [`set_body_len`].
pub fn batch_head(seq_first: Seq) -> [u8; HEADER_LEN + BATCH_PREFIX_LEN] {
    let mut head = [0u8; HEADER_LEN + BATCH_PREFIX_LEN];
    head[..4].copy_from_slice(&(BATCH_PREFIX_LEN as u32).to_le_bytes());
    head[4] = Kind::MsgBatch as u8;
    head[8..].copy_from_slice(&seq_first.0.to_le_bytes());
    head
}

/// Overwrites the body length in the header that `frame` starts with.
///
/// # Panics
///
/// If `frame` is shorter than a header or `body_len` exceeds a u32.
pub fn set_body_len(frame: &mut [u8], body_len: usize) {
    let body_len = u32::try_from(body_len).expect("frame body length fits in u32");
    frame[..4].copy_from_slice(&body_len.to_le_bytes());
}

/// The length, header included, of the well-formed frame that `bytes` starts with (as this
/// node encoded it: the caller vouches for the header).
pub fn encoded_frame_len(bytes: &[u8]) -> usize {
    let body_len = u32::from_le_bytes(bytes[..4].try_into().expect("a whole header"));
    HEADER_LEN + body_len as usize
}

/// How many messages the frame that `bytes` starts with carries (as this node encoded it):
/// the number of entries of a MSG_BATCH, 1 for a MSG or LOST. `bytes` must hold the whole frame
/// if it is a MSG_BATCH, and at least its header otherwise.
pub fn encoded_frame_messages(bytes: &[u8]) -> u64 {
    encoded_batch(bytes).map_or(1, |(_, entries)| entries.count)
}

/// The first sequence number and the entries of the MSG_BATCH frame that `bytes` starts with
/// (as this node encoded it: whole, and valid), or `None` if it is another kind.
pub fn encoded_batch(bytes: &[u8]) -> Option<(Seq, BatchEntries<'_>)> {
    if bytes[4] != Kind::MsgBatch as u8 {
        return None;
    }
    let body = &bytes[HEADER_LEN..encoded_frame_len(bytes)];
    let entries = BatchEntries::parse_trusted(&body[BATCH_PREFIX_LEN..], bytes[5] & FLAG_CRC != 0);
    Some((Seq(read_u64(body, 0)), entries))
}

/// The payload length of the MSG frame that `bytes` starts with (as this node encoded it; at
/// least its fixed fields): decompressed, without its checksum.
pub fn encoded_msg_payload_len(bytes: &[u8]) -> usize {
    let body_len = encoded_frame_len(bytes) - HEADER_LEN;
    let flags = bytes[5];
    let mut at = HEADER_LEN + MSG_PREFIX_LEN;
    if flags & FLAG_CRC != 0 {
        at += CHECKSUM_LEN;
    }
    if flags & FLAG_LZ4 != 0 {
        return u32::from_le_bytes(bytes[at..at + LZ4_PREFIX_LEN].try_into().expect("a length"))
            as usize;
    }
    body_len - (at - HEADER_LEN)
}

/// The encoded length of a MSG frame carrying `payload_len` bytes.
pub fn msg_frame_len(payload_len: usize) -> usize {
    HEADER_LEN + MSG_PREFIX_LEN + payload_len
}

/// An incremental frame decoder for one byte stream.
///
/// Feed it whatever the socket delivered, split anywhere; it calls back with each complete
/// frame in order. Frames that lie whole inside one input slice are parsed in place; only a
/// frame that straddles two inputs is copied into the decoder's buffer, and only after its
/// header was validated, so a hostile length never allocates.
#[derive(Debug)]
pub struct Decoder {
    partial: Vec<u8>,
    body_len_max: u32,
    flags_allowed: u8,
    failed: Option<ProtocolError>,
}

impl Decoder {
    /// A decoder that accepts bodies up to `body_len_max` bytes and no optional flags.
    pub fn new(body_len_max: u32) -> Decoder {
        Decoder {
            partial: Vec::new(),
            body_len_max,
            flags_allowed: 0,
            failed: None,
        }
    }

    /// Sets the flags frames may carry: those this node offered in its HELLO.
    pub fn set_flags_allowed(&mut self, flags: u8) {
        self.flags_allowed = flags;
    }

    /// Changes the accepted body length (after HELLO negotiated it).
    pub fn set_body_len_max(&mut self, body_len_max: u32) {
        self.body_len_max = body_len_max;
    }

    /// Decodes every complete frame in `input`, calling `on_frame` for each in order, and keeps
    /// an incomplete tail for the next call.
    ///
    /// # Errors
    ///
    /// The first [`ProtocolError`] from the stream or from `on_frame` stops decoding; the
    /// decoder then stays failed and returns the same error from every later call.
    pub fn decode<F>(&mut self, mut input: &[u8], mut on_frame: F) -> Result<(), ProtocolError>
    where
        F: FnMut(Frame<'_>) -> Result<(), ProtocolError>,
    {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result: Result<(), ProtocolError> = (|| {
            if !self.partial.is_empty() {
                input = self.fill_partial(input)?;
                if !self.partial_is_complete()? {
                    return Ok(());
                }
                let header = self.partial_header()?;
                let frame = Frame::parse(header, &self.partial[HEADER_LEN..])?;
                on_frame(frame)?;
                self.reset_partial();
            }
            while input.len() >= HEADER_LEN {
                let header = self.parse_header(&input[..HEADER_LEN])?;
                let frame_len = HEADER_LEN + header.body_len as usize;
                if input.len() < frame_len {
                    break;
                }
                on_frame(Frame::parse(header, &input[HEADER_LEN..frame_len])?)?;
                input = &input[frame_len..];
            }
            if !input.is_empty() {
                self.fill_partial(input)?;
            }
            Ok(())
        })();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Whether a frame is partly received (an EOF now would truncate it).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Moves as much of `input` into the partial buffer as the pending frame needs and returns
    /// the rest. The header is validated before any body byte is buffered.
    fn fill_partial<'i>(&mut self, mut input: &'i [u8]) -> Result<&'i [u8], ProtocolError> {
        if self.partial.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < HEADER_LEN {
                return Ok(input);
            }
            let header = self.partial_header()?;
            self.partial.reserve_exact(header.body_len as usize);
        }
        let header = self.partial_header()?;
        let frame_len = HEADER_LEN + header.body_len as usize;
        let take = (frame_len - self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        Ok(&input[take..])
    }

    fn partial_is_complete(&self) -> Result<bool, ProtocolError> {
        if self.partial.len() < HEADER_LEN {
            return Ok(false);
        }
        let header = self.partial_header()?;
        Ok(self.partial.len() == HEADER_LEN + header.body_len as usize)
    }

    fn partial_header(&self) -> Result<Header, ProtocolError> {
        self.parse_header(&self.partial[..HEADER_LEN])
    }

    fn parse_header(&self, bytes: &[u8]) -> Result<Header, ProtocolError> {
        // The callers pass exactly HEADER_LEN bytes.
        let bytes: &[u8; HEADER_LEN] = bytes.try_into().expect("header slice is 8 bytes");
        Header::parse(bytes, self.body_len_max, self.flags_allowed)
    }

    fn reset_partial(&mut self) {
        // Keep a modest buffer for the next straddling frame; give back a large one.
        if self.partial.capacity() > PARTIAL_KEEP_MAX {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
    }
}

const PARTIAL_KEEP_MAX: usize = 64 * 1024;

pub(crate) fn header(kind: Kind, body_len: usize) -> Header {
    let body_len = u32::try_from(body_len).expect("frame body length fits in u32");
    Header {
        body_len,
        kind,
        flags: 0,
    }
}

fn encode_u64(kind: Kind, value: u64, out: &mut Vec<u8>) {
    header(kind, 8).encode(out);
    out.extend_from_slice(&value.to_le_bytes());
}

fn encode_hello(hello: &Hello<'_>, out: &mut Vec<u8>) {
    let node_id = hello.node_id.as_bytes();
    assert!(
        node_id.len() <= NODE_ID_LEN_MAX,
        "node id validated by the builder"
    );
    header(Kind::Hello, HELLO_FIXED_LEN + node_id.len()).encode(out);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&hello.caps.to_le_bytes());
    out.extend_from_slice(&hello.body_len_max.to_le_bytes());
    out.extend_from_slice(hello.tx_session.0.as_bytes());
    out.extend_from_slice(&hello.tx_seq_first.0.to_le_bytes());
    out.extend_from_slice(hello.rx_session.0.as_bytes());
    out.extend_from_slice(&hello.rx_delivered.0.to_le_bytes());
    out.push(node_id.len() as u8);
    out.extend_from_slice(node_id);
}

fn parse_hello(body: &[u8]) -> Result<Hello<'_>, ProtocolError> {
    let malformed = |what| ProtocolError::Malformed {
        kind: Kind::Hello,
        what,
    };
    if body.len() < 6 || body[..4] != MAGIC {
        return Err(if body.len() >= 4 && body[..4] != MAGIC {
            ProtocolError::BadMagic
        } else {
            malformed("shorter than its fixed part")
        });
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    if body.len() < HELLO_FIXED_LEN {
        return Err(malformed("shorter than its fixed part"));
    }
    if body[6..8] != [0, 0] {
        return Err(malformed("reserved field is not zero"));
    }
    let node_id_len = body[HELLO_FIXED_LEN - 1] as usize;
    if body.len() != HELLO_FIXED_LEN + node_id_len {
        return Err(malformed("length does not match the node id length"));
    }
    if node_id_len == 0 {
        return Err(malformed("empty node id"));
    }
    let node_id = std::str::from_utf8(&body[HELLO_FIXED_LEN..])
        .map_err(|_| malformed("node id is not utf-8"))?;
    let body_len_max = u32::from_le_bytes([body[12], body[13], body[14], body[15]]);
    if (body_len_max as usize) < MSG_PREFIX_LEN {
        return Err(malformed("body_len_max too small"));
    }
    Ok(Hello {
        caps: u32::from_le_bytes([body[8], body[9], body[10], body[11]]),
        body_len_max,
        tx_session: SessionId(Uuid::from_bytes(body[16..32].try_into().expect("16 bytes"))),
        tx_seq_first: Seq(read_u64(body, 32)),
        rx_session: SessionId(Uuid::from_bytes(body[40..56].try_into().expect("16 bytes"))),
        rx_delivered: Seq(read_u64(body, 56)),
        node_id,
    })
}

fn u64_exact(body: &[u8]) -> Option<u64> {
    (body.len() == 8).then(|| read_u64(body, 0))
}

fn read_u64(body: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        body[at..at + 8]
            .try_into()
            .expect("caller checked the length"),
    )
}

fn truncate_utf8(s: &str, len_max: usize) -> &str {
    if s.len() <= len_max {
        return s;
    }
    let mut end = len_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello<'static> {
        Hello {
            caps: 0,
            body_len_max: BODY_LEN_MAX_DEFAULT,
            tx_session: SessionId(Uuid::from_u128(7)),
            tx_seq_first: Seq(3),
            rx_session: SessionId::NIL,
            rx_delivered: Seq(0),
            node_id: "node-a",
        }
    }

    fn all_frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello(hello()),
            Frame::Auth { body: b"secret" },
            Frame::Ping { timestamp: 42 },
            Frame::Pong { timestamp: 43 },
            Frame::Msg {
                seq: Seq(1),
                payload: b"",
            },
            Frame::Msg {
                seq: Seq(9),
                payload: b"hello",
            },
            Frame::Ack { seq: Seq(9) },
            Frame::GoAway {
                reason: GoAwayReason::IdleTimeout,
                retry_after_ms: 5,
                message: "bye",
            },
            Frame::Close,
        ]
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<String>, ProtocolError> {
        let mut out = Vec::new();
        decoder.decode(bytes, |f| {
            out.push(format!("{f:?}"));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in all_frames() {
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
            let mut seen = Vec::new();
            decoder
                .decode(&bytes, |f| {
                    assert_eq!(f, frame);
                    seen.push(());
                    Ok(())
                })
                .unwrap();
            assert_eq!(seen.len(), 1);
            assert!(!decoder.has_partial());
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let mut bytes = Vec::new();
        for frame in all_frames() {
            frame.encode(&mut bytes);
        }
        let whole = decode_all(&mut Decoder::new(BODY_LEN_MAX_DEFAULT), &bytes).unwrap();
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        let mut split = Vec::new();
        for byte in &bytes {
            split.extend(decode_all(&mut decoder, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(whole, split);
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut decoder = Decoder::new(1024);
        let header = [0xFF, 0xFF, 0xFF, 0xFF, Kind::Msg as u8, 0, 0, 0];
        let err = decoder.decode(&header, |_| Ok(())).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooLarge {
                body_len: u32::MAX,
                body_len_max: 1024
            }
        );
        assert!(
            decoder.partial.capacity() < 1024,
            "nothing was allocated for the body"
        );
        assert_eq!(
            decoder.decode(b"more", |_| Ok(())).unwrap_err(),
            err,
            "stays failed"
        );
    }

    #[test]
    fn header_errors_map_to_reasons() {
        let cases: [([u8; 8], GoAwayReason); 5] = [
            ([0, 0, 0, 0, 0x7F, 0, 0, 0], GoAwayReason::UnknownKind),
            (
                [0, 0, 0, 0, Kind::Close as u8, 0x04, 0, 0],
                GoAwayReason::BadFlags,
            ),
            (
                [0, 0, 0, 0, Kind::Close as u8, 0, 1, 0],
                GoAwayReason::BadFlags,
            ),
            (
                [0, 0, 0, 0, Kind::Close as u8, FLAG_LZ4, 0, 0],
                GoAwayReason::BadFlags,
            ),
            (
                [1, 4, 0, 0, Kind::Msg as u8, 0, 0, 0],
                GoAwayReason::FrameTooLarge,
            ),
        ];
        for (bytes, reason) in cases {
            let err = Header::parse(&bytes, 1024, 0).unwrap_err();
            assert_eq!(err.reason(), reason, "{bytes:?}");
        }
    }

    #[test]
    fn hello_rejects_bad_magic_version_and_lengths() {
        let mut bytes = Vec::new();
        Frame::Hello(hello()).encode(&mut bytes);
        let reparse = |bytes: &[u8]| {
            let header = Header::parse(bytes[..8].try_into().unwrap(), u32::MAX, 0).unwrap();
            Frame::parse(header, &bytes[8..]).map(|_| ())
        };
        let mut bad_magic = bytes.clone();
        bad_magic[8] = b'X';
        assert_eq!(reparse(&bad_magic), Err(ProtocolError::BadMagic));
        let mut bad_version = bytes.clone();
        bad_version[12] = 9;
        assert_eq!(
            reparse(&bad_version),
            Err(ProtocolError::UnsupportedVersion(9))
        );
        let mut bad_len = bytes.clone();
        bad_len[8 + 64] = 200;
        assert!(matches!(
            reparse(&bad_len),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn callback_error_stops_decoding() {
        let mut bytes = Vec::new();
        Frame::Close.encode(&mut bytes);
        Frame::Close.encode(&mut bytes);
        let mut calls = 0;
        let err = Decoder::new(64)
            .decode(&bytes, |f| {
                calls += 1;
                Err(ProtocolError::UnexpectedFrame {
                    kind: f.kind(),
                    state: "testing",
                })
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err.reason(), GoAwayReason::UnexpectedFrame);
    }

    #[test]
    fn a_plaintext_hello_is_told_from_a_tls_client_hello() {
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            caps: CAP_BATCH,
            body_len_max: BODY_LEN_MAX_DEFAULT,
            tx_session: SessionId::NIL,
            tx_seq_first: Seq(1),
            rx_session: SessionId::NIL,
            rx_delivered: Seq::ZERO,
            node_id: &"n".repeat(NODE_ID_LEN_MAX),
        })
        .encode(&mut hello);
        for len in [HEADER_LEN, HEADER_LEN + 2, hello.len()] {
            assert!(is_plaintext_hello(&hello[..len]), "{len} bytes");
        }
        assert!(!is_plaintext_hello(&hello[..HEADER_LEN - 1]));
        let mut bad_magic = hello.clone();
        bad_magic[HEADER_LEN] = b'X';
        assert!(!is_plaintext_hello(&bad_magic));
        // The start of a TLS record carrying a ClientHello, and other frames.
        let client_hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        assert!(!is_plaintext_hello(&client_hello));
        let mut ping = Vec::new();
        Frame::Ping { timestamp: 7 }.encode(&mut ping);
        assert!(!is_plaintext_hello(&ping));
    }

    /// A checksummed MSG and MSG_BATCH as a sender encodes them.
    fn checksummed_frames() -> (Vec<u8>, Vec<u8>) {
        let payload = b"end to end";
        let mut msg = Vec::new();
        let mut head = header(Kind::Msg, MSG_PREFIX_LEN + CHECKSUM_LEN + payload.len());
        head.flags = FLAG_CRC;
        head.encode(&mut msg);
        msg.extend_from_slice(&7u64.to_le_bytes());
        msg.extend_from_slice(&crc32c(payload).to_le_bytes());
        msg.extend_from_slice(payload);
        let mut entries = Vec::new();
        for p in [&b"first"[..], b"second", b""] {
            entries.extend_from_slice(&(p.len() as u32).to_le_bytes());
            entries.extend_from_slice(&crc32c(p).to_le_bytes());
            entries.extend_from_slice(p);
        }
        let mut batch = Vec::new();
        Frame::MsgBatch {
            seq_first: Seq(20),
            entries: BatchEntries::parse_checked(&entries, true).unwrap(),
        }
        .encode(&mut batch);
        (msg, batch)
    }

    #[test]
    fn a_flipped_byte_fails_its_checksum() {
        let (msg, batch) = checksummed_frames();
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        decoder.set_flags_allowed(FLAG_CRC);
        let got = decode_all(&mut decoder, &[msg.clone(), batch.clone()].concat()).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        // Any payload or checksum byte flipped: refused, naming the message.
        for at in HEADER_LEN + MSG_PREFIX_LEN..msg.len() {
            let mut bad = msg.clone();
            bad[at] ^= 0x10;
            let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
            decoder.set_flags_allowed(FLAG_CRC);
            assert_eq!(
                decode_all(&mut decoder, &bad),
                Err(ProtocolError::ChecksumMismatch { seq: 7 }),
                "byte {at}"
            );
        }
        // In a batch: the second entry's payload ("second" starts after 8 + 4 + 4 + 5 + 4 + 4).
        let mut bad = batch.clone();
        bad[HEADER_LEN + 8 + 4 + 4 + 5 + 4 + 4 + 2] ^= 1;
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        decoder.set_flags_allowed(FLAG_CRC);
        let err = decode_all(&mut decoder, &bad).unwrap_err();
        assert_eq!(err, ProtocolError::ChecksumMismatch { seq: 21 });
        assert_eq!(err.reason(), GoAwayReason::ChecksumMismatch);
        // Not negotiated: refused at the header.
        let mut plain = Decoder::new(BODY_LEN_MAX_DEFAULT);
        assert!(matches!(
            decode_all(&mut plain, &msg),
            Err(ProtocolError::FlagNotNegotiated { .. })
        ));
    }

    #[test]
    fn flags_go_only_where_they_mean_something() {
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        decoder.set_flags_allowed(FLAG_CRC | FLAG_LZ4);
        // A PING with the checksum flag, a batch with the compression flag.
        let mut ping = Vec::new();
        Frame::Ping { timestamp: 1 }.encode(&mut ping);
        ping[5] = FLAG_CRC;
        assert!(matches!(
            decode_all(&mut decoder, &ping),
            Err(ProtocolError::Malformed {
                kind: Kind::Ping,
                ..
            })
        ));
        let (_, mut batch) = checksummed_frames();
        batch[5] |= FLAG_LZ4;
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        decoder.set_flags_allowed(FLAG_CRC | FLAG_LZ4);
        assert!(matches!(
            decode_all(&mut decoder, &batch),
            Err(ProtocolError::Malformed {
                kind: Kind::MsgBatch,
                ..
            })
        ));
        // A compressed MSG too short for its length field.
        let mut msg = Vec::new();
        let mut head = header(Kind::Msg, MSG_PREFIX_LEN + 2);
        head.flags = FLAG_LZ4;
        head.encode(&mut msg);
        msg.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 9]);
        let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
        decoder.set_flags_allowed(FLAG_LZ4);
        assert!(matches!(
            decode_all(&mut decoder, &msg),
            Err(ProtocolError::Malformed {
                kind: Kind::Msg,
                ..
            })
        ));
    }
}
