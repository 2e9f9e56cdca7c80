//! The link: a connection's byte pipeline between the ring and `proto`.
//!
//! ```text
//!   recv buffer ──► Link::handle_recv ──► proto (frames in)
//!   proto (frames out) ──► Link::poll_transmit ──► send buffer
//! ```
//!
//! Only plaintext exists today: bytes pass through untouched and proto encodes straight into
//! the send buffer, at no cost. The TLS adapter (`security/`, the next issue) becomes a second
//! variant that decrypts what was received and encrypts what proto wrote, so the shard never
//! knows whether a connection is encrypted.

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

    /// Lets `proto_output` write its frames, leaving in `wire` what goes to the socket.
    pub(super) fn poll_transmit<R>(
        &mut self,
        wire: &mut Vec<u8>,
        proto_output: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> R {
        match self {
            Link::Plain => proto_output(wire),
        }
    }
}
