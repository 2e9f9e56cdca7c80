//! The link: a connection's byte pipeline between the ring and `proto`.
//!
//! ```text
//!   recv buffer ──► Link (TLS: decrypt) ──► proto (frames in)
//!   proto (frames out) ──► Link::poll_transmit (TLS: encrypt) ──► send buffer
//! ```
//!
//! Plaintext passes through untouched: proto encodes straight into the send batch (message
//! frames go out as slices of the session's buffers). With TLS (`security::tls`), proto
//! writes into the link's own buffers and the link encrypts them into the send batch, behind
//! whatever the handshake has to send; received bytes are decrypted by the link before proto
//! sees them (`shard/recv.rs`). The rest of the shard never knows whether a connection is
//! encrypted.

use bytes::Bytes;

use crate::security::tls::{TlsFailure, TlsLink};

use super::op::SendBatch;

/// How a connection's bytes are carried.
#[derive(Debug, Default)]
pub(super) enum Link {
    /// Plaintext TCP.
    #[default]
    Plain,
    /// TLS.
    Tls(Box<Tls>),
}

/// A TLS link and the plaintext buffers proto writes into.
#[derive(Debug)]
pub(super) struct Tls {
    pub(super) link: TlsLink,
    control: Vec<u8>,
    data: Vec<Bytes>,
}

impl Link {
    pub(super) fn tls(link: TlsLink) -> Link {
        Link::Tls(Box::new(Tls {
            link,
            control: Vec::new(),
            data: Vec::new(),
        }))
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
            Link::Tls(tls) => {
                let written = proto_output(&mut tls.control, &mut tls.data);
                // A failure stays with the link ([`Link::failure`]); after one, only the alert
                // that says why still goes out.
                let _ = tls
                    .link
                    .transmit(&tls.control, &tls.data, &mut wire.control);
                tls.control.clear();
                tls.data.clear();
                written
            }
        }
    }

    /// Why the link stopped working, if it did.
    pub(super) fn failure(&self) -> Option<&TlsFailure> {
        match self {
            Link::Plain => None,
            Link::Tls(tls) => tls.link.failure(),
        }
    }

    /// The TLS state, to move the connection to another shard.
    pub(super) fn into_tls(self) -> Option<Box<TlsLink>> {
        match self {
            Link::Plain => None,
            Link::Tls(tls) => Some(Box::new(tls.link)),
        }
    }
}
