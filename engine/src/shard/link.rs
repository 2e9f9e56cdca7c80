//! The link: a connection's byte pipeline between the ring and `proto`.
//!
//! ```text
//!   recv buffer ──► Link::handle_recv ──► proto (frames in)
//!   proto (frames out) ──► Link::poll_transmit ──► send buffer
//! ```
//!
//! Only plaintext exists today: bytes pass through untouched and proto encodes straight into
//! the send batch, at no cost (message frames go out as slices of the session's buffers). The TLS adapter (`security/`, the next issue) becomes a second
//! variant that decrypts what was received and encrypts what proto wrote, so the shard never
//! knows whether a connection is encrypted.

use bytes::Bytes;

use super::op::SendBatch;

/// How a connection's bytes are carried.
#[derive(Debug, Default)]
pub(super) enum Link {
    /// Plaintext TCP.
    #[default]
    Plain,
}

impl Link {
    /// Hands `proto_input` what proto should read of the bytes just received from the socket.
    pub(super) fn handle_recv<R>(
        &mut self,
        wire: &[u8],
        proto_input: impl FnOnce(&[u8]) -> R,
    ) -> R {
        match self {
            Link::Plain => proto_input(wire),
        }
    }

    /// Lets `proto_output` write its frames (control frames into a buffer, held message frames
    /// as shared slices), leaving in `wire` what goes to the socket.
    pub(super) fn poll_transmit<R>(
        &mut self,
        wire: &mut SendBatch,
        proto_output: impl FnOnce(&mut Vec<u8>, &mut Vec<Bytes>) -> R,
    ) -> R {
        match self {
            Link::Plain => proto_output(&mut wire.control, &mut wire.data),
        }
    }
}
