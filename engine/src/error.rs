//! The public error type: who is at fault, and what the caller can do about it.

use std::fmt;
use std::io;

use bytes::Bytes;

/// Everything that can go wrong when using an [`Engine`](crate::Engine).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer's queue is full. The payload is handed back; retry later.
    Backpressure(Bytes),
    /// A payload is larger than a MSG frame can carry.
    PayloadTooLarge { len: usize, len_max: usize },
    /// A batch holds more messages than the peer's queue can ever take at once
    /// (`Config::peer_queue_len`, rounded up to a power of two); split it.
    BatchTooLarge { len: usize, len_max: usize },
    /// A configuration value is invalid; the message says which and why.
    InvalidConfig(String),
    /// The engine is shutting down, or shut down before the peer acknowledged a message.
    ShuttingDown,
    /// Graceful shutdown ran out of time with messages still unacknowledged.
    DrainTimeout { unacked: u64 },
    /// The shard's outbox has no room: its `outbox_bytes_max` is reached, or the disk is full
    /// (`disk_full`). The payload is handed back; messages already accepted are intact and
    /// space returns as the peer acknowledges them.
    OutboxFull { payload: Bytes, disk_full: bool },
    /// A sync of the outbox failed. The kernel may have dropped the written pages, so nothing
    /// written since the last good sync is ever confirmed, and the outbox accepts nothing more
    /// until the engine is restarted (which recovers what is really on disk).
    OutboxFailed,
    /// The shard that owns the peer stopped on a failure (a panic in a handler or source, or
    /// the ring failing); `reason` says which. Its peers accept nothing more; the engine's
    /// other shards go on. Restart the engine.
    ShardFailed { shard: usize, reason: String },
    /// The kernel lacks an io_uring feature the engine needs.
    Unsupported(String),
    /// A connection to `peer` failed before it could carry messages: its TLS handshake failed
    /// (a certificate from another CA, one that does not name the node id, a plaintext peer),
    /// or the peer refused this node as unauthenticated (GOAWAY `Unauthenticated`). Reported
    /// through [`Handler::on_handshake_failed`](crate::Handler::on_handshake_failed); the
    /// engine dials again with backoff. Check the certificates and the CA on both sides.
    HandshakeFailed { peer: String, reason: String },
    /// TLS is needed and missing: a configuration whose security mode needs TLS has none
    /// (configure [`Config::tls`](crate::Config::tls)), or the node dialed accepts only TLS
    /// (it answered this node's plaintext HELLO with GOAWAY `TlsRequired`; reported through
    /// `Handler::on_handshake_failed`). `reason` says which.
    TlsRequired { reason: String },
    /// Mutual TLS is needed and missing: `Strict` mode without `require_client_auth`, or the
    /// node dialed asked for a client certificate this node did not present (its TLS alert
    /// `certificate_required`). Give the node a certificate the peer's CA signed.
    MtlsRequired { reason: String },
    /// No peer of that node id is known to the engine ([`Engine::known_peer`](crate::Engine));
    /// declare it with `Engine::connect` or `Engine::peer` first.
    PeerNotFound { node_id: String },
    /// A wait ran out of time ([`Confirm::wait`](crate::Confirm::wait)): the message is still
    /// queued or in flight, and will be delivered; only the wait ended. Wait again, or go on.
    Timeout { waited: std::time::Duration },
    /// The peer's outbound rate limit ([`Config::outbound_rate_limit`](crate::Config)) has no
    /// token left: the payload is handed back; retry after `retry_after`, when the bucket will
    /// have one (for a batch, enough for all of it; the payload is then empty).
    RateLimited {
        payload: Bytes,
        retry_after: std::time::Duration,
    },
    /// The operating system failed; `context` says what the engine was doing.
    Io { context: String, source: io::Error },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Backpressure(payload) => {
                write!(
                    f,
                    "peer queue full; {} byte payload not accepted",
                    payload.len()
                )
            }
            Error::PayloadTooLarge { len, len_max } => {
                write!(f, "payload of {len} bytes exceeds the maximum of {len_max}")
            }
            Error::BatchTooLarge { len, len_max } => write!(
                f,
                "batch of {len} messages exceeds the peer queue's {len_max}; split it"
            ),
            Error::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
            Error::ShuttingDown => f.write_str("engine is shutting down"),
            Error::DrainTimeout { unacked } => {
                write!(
                    f,
                    "shutdown timed out with {unacked} messages unacknowledged"
                )
            }
            Error::OutboxFull { payload, disk_full } => write!(
                f,
                "outbox full ({}); {} byte payload not accepted",
                if *disk_full {
                    "no space left on the disk"
                } else {
                    "outbox_bytes_max reached"
                },
                payload.len()
            ),
            Error::OutboxFailed => f.write_str(
                "outbox sync failed earlier; the outbox accepts and confirms nothing until restart",
            ),
            Error::ShardFailed { shard, reason } => write!(f, "shard {shard} failed: {reason}"),
            Error::Unsupported(msg) => write!(f, "unsupported kernel: {msg}"),
            Error::HandshakeFailed { peer, reason } => {
                write!(f, "handshake with {peer} failed: {reason}")
            }
            Error::TlsRequired { reason } => write!(f, "TLS required: {reason}"),
            Error::PeerNotFound { node_id } => write!(f, "no peer {node_id:?} is known"),
            Error::Timeout { waited } => write!(f, "timed out after {waited:?}"),
            Error::RateLimited {
                payload,
                retry_after,
            } => write!(
                f,
                "rate limited; {} byte payload not accepted, retry after {retry_after:?}",
                payload.len()
            ),
            Error::MtlsRequired { reason } => write!(f, "mutual TLS required: {reason}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
