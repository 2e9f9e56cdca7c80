//! Protocol errors: what a peer did wrong, and the GOAWAY reason code it earns.
//!
//! Every variant closes exactly one connection. None of them is ever a reason to panic, and
//! none of them touches a session's durable state.

use std::fmt;

use crate::proto::frame::Kind;

/// A peer broke the protocol (docs/protocol.md, "Errors").
///
/// The receiver answers with a GOAWAY carrying [`ProtocolError::reason`] and closes that one
/// connection; every other connection and every session carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The header announced a body longer than the negotiated maximum.
    FrameTooLarge { body_len: u32, body_len_max: u32 },
    /// The header's kind byte names no frame this version knows.
    UnknownKind(u8),
    /// A flag bit that must be zero is set, or the reserved field is not zero.
    ReservedBits { flags: u8, reserved: u16 },
    /// A defined flag (compression, checksum) is set but was not negotiated in HELLO.
    FlagNotNegotiated { flags: u8 },
    /// The body does not parse as the frame its kind announces.
    Malformed { kind: Kind, what: &'static str },
    /// HELLO does not start with the ringwire magic.
    BadMagic,
    /// HELLO names a protocol version this build does not speak.
    UnsupportedVersion(u16),
    /// A frame arrived that the connection's state does not allow.
    UnexpectedFrame { kind: Kind, state: &'static str },
    /// The dialed node answered with a different node id than the one configured.
    WrongPeer,
    /// No complete HELLO within the handshake deadline.
    HandshakeTimeout,
    /// Nothing was received for longer than the heartbeat timeout.
    IdleTimeout,
    /// A MSG skipped sequence numbers (TCP is ordered, so the sender is broken).
    SequenceGap { expected: u64, got: u64 },
    /// An ACK (or a resume point in HELLO) covers sequence numbers that were never sent.
    AckBeyondSent { acked: u64, sent: u64 },
    /// The stream ended in the middle of a frame.
    TruncatedFrame,
    /// Message `seq`'s payload does not match its CRC32C: corrupted between the sender's memory
    /// and here. Nothing of it was delivered; the replay on the next connection sends it again.
    ChecksumMismatch { seq: u64 },
    /// Message `seq`'s LZ4 block is malformed, or decompresses to more than the receiver
    /// accepts or to another length than announced (seed 002's `Compression` error).
    Compression { seq: u64, what: &'static str },
    /// The AUTH exchange failed (docs/protocol.md, "AUTH"): the peer does not hold the shared
    /// secret, or does not take part in the exchange a side requires.
    Unauthenticated(&'static str),
}

impl ProtocolError {
    /// The GOAWAY reason code this error is reported with.
    pub fn reason(&self) -> GoAwayReason {
        match self {
            Self::FrameTooLarge { .. } => GoAwayReason::FrameTooLarge,
            Self::UnknownKind(_) => GoAwayReason::UnknownKind,
            Self::ReservedBits { .. } | Self::FlagNotNegotiated { .. } => GoAwayReason::BadFlags,
            Self::Malformed { .. } | Self::TruncatedFrame => GoAwayReason::MalformedBody,
            Self::BadMagic => GoAwayReason::BadMagic,
            Self::UnsupportedVersion(_) => GoAwayReason::UnsupportedVersion,
            Self::UnexpectedFrame { .. } => GoAwayReason::UnexpectedFrame,
            Self::WrongPeer => GoAwayReason::WrongPeer,
            Self::HandshakeTimeout => GoAwayReason::HandshakeTimeout,
            Self::IdleTimeout => GoAwayReason::IdleTimeout,
            Self::ChecksumMismatch { .. } => GoAwayReason::ChecksumMismatch,
            Self::Unauthenticated(_) => GoAwayReason::Unauthenticated,
            Self::Compression { .. } => GoAwayReason::Compression,
            Self::SequenceGap { .. } | Self::AckBeyondSent { .. } => GoAwayReason::SequenceError,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLarge {
                body_len,
                body_len_max,
            } => {
                write!(
                    f,
                    "frame body of {body_len} bytes exceeds the maximum of {body_len_max}"
                )
            }
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            Self::ReservedBits { flags, reserved } => {
                write!(
                    f,
                    "reserved bits set (flags {flags:#04x}, reserved {reserved:#06x})"
                )
            }
            Self::FlagNotNegotiated { flags } => write!(f, "flags {flags:#04x} not negotiated"),
            Self::Malformed { kind, what } => write!(f, "malformed {kind:?} frame: {what}"),
            Self::BadMagic => f.write_str("bad magic in hello"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::UnexpectedFrame { kind, state } => {
                write!(f, "unexpected {kind:?} frame while {state}")
            }
            Self::WrongPeer => f.write_str("peer answered with an unexpected node id"),
            Self::HandshakeTimeout => f.write_str("no hello before the handshake deadline"),
            Self::IdleTimeout => f.write_str("peer silent past the heartbeat timeout"),
            Self::SequenceGap { expected, got } => {
                write!(f, "sequence gap: expected {expected}, got {got}")
            }
            Self::AckBeyondSent { acked, sent } => {
                write!(f, "ack of {acked} beyond the last sent sequence {sent}")
            }
            Self::TruncatedFrame => f.write_str("stream ended inside a frame"),
            Self::Unauthenticated(what) => write!(f, "AUTH failed: {what}"),
            Self::ChecksumMismatch { seq } => {
                write!(f, "message {seq} does not match its CRC32C")
            }
            Self::Compression { seq, what } => {
                write!(f, "message {seq}: LZ4 block refused: {what}")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// The reason code carried by GOAWAY (docs/protocol.md, "GOAWAY reason codes").
///
/// Codes this build does not know are kept as [`GoAwayReason::Other`] so newer peers can add
/// reasons without breaking older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GoAwayReason {
    /// Orderly close: the sender is shutting down.
    Normal,
    FrameTooLarge,
    UnknownKind,
    BadFlags,
    MalformedBody,
    BadMagic,
    UnsupportedVersion,
    UnexpectedFrame,
    WrongPeer,
    HandshakeTimeout,
    IdleTimeout,
    SequenceError,
    /// A newer connection from the same peer took this one's place.
    Replaced,
    /// The node is overloaded; retry after the hinted delay.
    Overloaded,
    /// The sender could not prove it is the node it claims to be (its certificate does not
    /// name the node id of its HELLO).
    Unauthenticated,
    /// The sender accepts only TLS, and this side spoke plaintext: sent in plaintext, before
    /// closing, so that a plaintext dialer can tell why.
    TlsRequired,
    /// A payload did not match its CRC32C ([`ProtocolError::ChecksumMismatch`]).
    ChecksumMismatch,
    /// An LZ4 block was refused ([`ProtocolError::Compression`]).
    Compression,
    /// A code this build does not know.
    Other(u16),
}

impl GoAwayReason {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 0,
            Self::FrameTooLarge => 1,
            Self::UnknownKind => 2,
            Self::BadFlags => 3,
            Self::MalformedBody => 4,
            Self::BadMagic => 5,
            Self::UnsupportedVersion => 6,
            Self::UnexpectedFrame => 7,
            Self::WrongPeer => 8,
            Self::HandshakeTimeout => 9,
            Self::IdleTimeout => 10,
            Self::SequenceError => 11,
            Self::Replaced => 12,
            Self::Overloaded => 13,
            Self::Unauthenticated => 14,
            Self::TlsRequired => 15,
            Self::ChecksumMismatch => 16,
            Self::Compression => 17,
            Self::Other(code) => code,
        }
    }

    /// The reason for a code read off the wire.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::FrameTooLarge,
            2 => Self::UnknownKind,
            3 => Self::BadFlags,
            4 => Self::MalformedBody,
            5 => Self::BadMagic,
            6 => Self::UnsupportedVersion,
            7 => Self::UnexpectedFrame,
            8 => Self::WrongPeer,
            9 => Self::HandshakeTimeout,
            10 => Self::IdleTimeout,
            11 => Self::SequenceError,
            12 => Self::Replaced,
            13 => Self::Overloaded,
            14 => Self::Unauthenticated,
            15 => Self::TlsRequired,
            16 => Self::ChecksumMismatch,
            17 => Self::Compression,
            other => Self::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip() {
        for code in 0..64 {
            assert_eq!(GoAwayReason::from_code(code).code(), code);
        }
    }
}
