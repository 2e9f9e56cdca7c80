//! Engine and peer configuration, with the documented defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::net::backoff::Backoff;
use crate::proto::ack::AckPolicy;
use crate::proto::frame::{BODY_LEN_MAX_DEFAULT, MSG_PREFIX_LEN, NODE_ID_LEN_MAX};
use crate::proto::heartbeat::HeartbeatConfig;
use crate::security::{AuthToken, NodeIdVerification, RateLimit, SecurityMode, TlsConfig};

/// Every engine setting. Built by [`EngineBuilder`](crate::EngineBuilder); each field's doc
/// gives its default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's id (required): 1 to 255 bytes of UTF-8.
    pub node_id: String,
    /// Address to accept peers on; `None` (default) makes a dial-only node.
    pub listen: Option<SocketAddr>,
    /// Number of shards (default: available cores).
    pub shards: usize,
    /// Pin shard `i` to core `(first_core + i) % cores` (default `true`).
    pub pin_shards: bool,
    /// The core shard 0 is pinned to (default 0), so that two engines in one process (a node
    /// and its load generator, say) can be given different cores.
    pub first_core: usize,
    /// Largest frame body accepted and sent (default 16 MiB). A payload may be 8 bytes less.
    pub body_len_max: u32,
    /// Whether to offer MSG_BATCH frames in HELLO (default on): small messages to a peer that
    /// offers them too travel many to a frame (docs/protocol.md, "MSG_BATCH"). Off, this node
    /// speaks the protocol as version 1 defined it, MSG frames only.
    pub batch_frames: bool,
    /// Peers the engine keeps state for (default 10,000). A node that dials in when this many
    /// are known is refused with GOAWAY `Overloaded` and a retry-after; peers the application
    /// declares itself (`Engine::connect`, `Engine::peer`) are not limited.
    pub peers_max: usize,
    /// Open connections per shard, dialed and accepted (default 10,000). An accepted connection
    /// beyond it is refused at once: with GOAWAY `Overloaded` and a retry-after in plaintext,
    /// by closing it under TLS (no GOAWAY can be sent before a handshake).
    pub connections_max: usize,
    /// Accepted connections per shard still in their handshake, not yet known as a peer
    /// (default 1,000): one more is refused as above, so that connections that never say who
    /// they are cannot pile up.
    pub handshakes_max: usize,
    /// Messages a peer's publish queue holds before `publish` returns `Backpressure`
    /// (default 8192, rounded up to a power of two).
    pub peer_queue_len: usize,
    /// Unacknowledged messages a shard keeps per peer before it stops taking more from the
    /// peer's queue (default 65,536).
    pub unacked_count_max: usize,
    /// Unacknowledged payload bytes a shard keeps per peer, likewise (default 64 MiB).
    pub unacked_bytes_max: usize,
    /// Submission queue entries per shard ring (default 1024).
    pub ring_entries: u32,
    /// Size of each provided receive buffer (default 32 KiB).
    pub recv_buf_len: u32,
    /// Number of provided receive buffers per shard, a power of two (default 256).
    pub recv_buf_count: u16,
    /// Bytes coalesced into one send per connection per loop turn (default 256 KiB). Sessions
    /// fed by a source or a handler on the shard send at most 64 KiB at a time (one segment),
    /// which measured faster for them.
    pub send_batch_bytes_max: usize,
    /// Time allowed for the HELLO exchange (default 5 s).
    pub handshake_timeout: Duration,
    /// Time allowed for a TCP connect (default 5 s).
    pub connect_timeout: Duration,
    /// Heartbeat cadence (default PING every 30 s, dead after 90 s of silence).
    pub heartbeat: HeartbeatConfig,
    /// ACK coalescing (default: every 1024 messages or at the end of the loop turn).
    pub ack: AckPolicy,
    /// Redial backoff (seed defaults: 100 ms doubling to 30 s, ±10 % jitter).
    pub backoff: Backoff,
    /// How long an idle shard keeps polling before it parks (default zero: park at once).
    pub idle_spin: Duration,
    /// Directory of the durable outbox and of the receiver's watermarks (default `None`:
    /// unacknowledged messages live in memory only and survive dropped links, not a crash of
    /// this process). See docs/durability.md.
    pub outbox_dir: Option<PathBuf>,
    /// When the outbox reaches the disk (default [`SyncPolicy::None`]).
    pub outbox_sync: SyncPolicy,
    /// Size of each outbox segment file (default 64 MiB). Must hold the largest record.
    pub outbox_segment_len: usize,
    /// Outbox bytes per shard before `publish` returns [`Error::OutboxFull`] (default 1 GiB,
    /// rounded down to whole segments).
    pub outbox_bytes_max: usize,
    /// Outbox bytes per peer before `publish` returns [`Error::Backpressure`] (default
    /// 256 MiB).
    pub outbox_peer_bytes_max: usize,
    /// Messages unacknowledged for longer than this are reported through
    /// [`Handler::on_window_exceeded`](crate::Handler::on_window_exceeded) and the
    /// `msgs_window_exceeded` counter, once each; they are not dropped (default 5 minutes, the
    /// seeds' `SessionBufferWindow`). Tracked to within 1 % of the window (10 ms to 1 s).
    pub session_buffer_window: Duration,
    /// TLS 1.3 on every connection, accepted and dialed (default `None`: plaintext). A node
    /// with TLS refuses plaintext dialers and dials only over TLS. See docs/security.md.
    pub tls: Option<TlsConfig>,
    /// End-to-end CRC32C of every payload, offered in HELLO and used with peers that offer it
    /// too (default `None`: on without TLS, off with it, whose AEAD already authenticates every
    /// byte). A payload that arrives corrupted closes the connection before it is delivered,
    /// and the replay delivers it intact. See docs/protocol.md, "CRC".
    pub crc: Option<bool>,
    /// LZ4 compression of large payloads, offered in HELLO and used with peers that offer it
    /// too (default: off).
    pub compression: CompressionConfig,
    /// A shared secret (seed 000's `AuthenticationToken`; default `None`). Set, the node
    /// requires every dialer to prove it holds the same secret before it keeps any state for
    /// it, and proves it back, by HMAC-SHA256 over nonces from both sides (docs/protocol.md,
    /// "AUTH"); it requires the same of every node it dials. In any mode but `Legacy`; with
    /// TLS it authenticates nodes in addition to their certificates.
    pub auth_token: Option<AuthToken>,
    /// Messages per peer this node takes in (default `None`: no limit; seed 002's presets are
    /// [`RateLimit::DEFAULT`] and friends). A peer over its budget is slowed, never dropped:
    /// the node stops reading from it until the bucket refills, and TCP pushes back on the
    /// sender. Whole receive buffers are processed, so a pause lasts up to one buffer's worth
    /// of messages at the peer's rate. See docs/security.md, "Rate limits".
    pub inbound_rate_limit: Option<RateLimit>,
    /// Messages per peer `publish` accepts (default `None`: no limit); beyond it `publish`
    /// returns [`Error::RateLimited`] with the payload.
    pub outbound_rate_limit: Option<RateLimit>,
    /// What the node accepts and dials (default `None`: [`SecurityMode::inferred`] from
    /// [`Config::tls`]). Set it to have [`Config::validate_security`] hold the configuration
    /// to a mode: `Strict` refuses to start without mutual TLS, say.
    pub security_mode: Option<SecurityMode>,
}

/// LZ4 compression of payloads (seed 002's `[compression]`; docs/protocol.md, "LZ4").
///
/// Off by default, unlike the seed: on loopback and fast networks compressing costs more CPU
/// than the bytes it saves (docs/benchmarks.md). Turn it on for slow or metered links and
/// compressible payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Whether to offer LZ4 and compress for peers that offer it too (default `false`).
    pub enabled: bool,
    /// Payloads shorter than this are sent as they are (default 256 bytes). A payload whose
    /// block would not be shorter is sent as it is too.
    pub min_size: usize,
}

impl Default for CompressionConfig {
    fn default() -> CompressionConfig {
        CompressionConfig {
            enabled: false,
            min_size: 256,
        }
    }
}

/// When outbox records are written to disk, and what `publish_confirmed` then promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Never forced: records sit in the page cache and survive a crash of the process, not of
    /// the machine. `publish_confirmed` resolves on the peer's ACK.
    #[default]
    None,
    /// Every interval, the shard syncs what was written since the last sync: a machine crash
    /// loses at most that much. `publish_confirmed` resolves on the peer's ACK.
    Interval(Duration),
    /// Group commit: once per loop turn the shard syncs everything appended, and sends a message
    /// only after its record is on disk, so an ACK implies durability and `publish_confirmed`
    /// resolves only for synced records.
    Always,
}

impl Config {
    /// Defaults for everything but the node id.
    pub fn new(node_id: impl Into<String>) -> Config {
        Config {
            node_id: node_id.into(),
            listen: None,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_shards: true,
            first_core: 0,
            body_len_max: BODY_LEN_MAX_DEFAULT,
            batch_frames: true,
            peer_queue_len: 8192,
            peers_max: 10_000,
            connections_max: 10_000,
            handshakes_max: 1_000,
            unacked_count_max: 65_536,
            unacked_bytes_max: 64 << 20,
            ring_entries: 1024,
            recv_buf_len: 32 * 1024,
            recv_buf_count: 256,
            send_batch_bytes_max: 256 * 1024,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            heartbeat: HeartbeatConfig::default(),
            ack: AckPolicy::default(),
            backoff: Backoff::default(),
            idle_spin: Duration::ZERO,
            outbox_dir: None,
            outbox_sync: SyncPolicy::None,
            outbox_segment_len: 64 << 20,
            outbox_bytes_max: 1 << 30,
            outbox_peer_bytes_max: 256 << 20,
            session_buffer_window: Duration::from_secs(300),
            tls: None,
            security_mode: None,
            crc: None,
            compression: CompressionConfig::default(),
            inbound_rate_limit: None,
            outbound_rate_limit: None,
            auth_token: None,
        }
    }

    /// The largest payload `publish` accepts.
    pub fn payload_len_max(&self) -> usize {
        self.body_len_max as usize - MSG_PREFIX_LEN
    }

    /// Whether the node offers end-to-end CRC32C: [`Config::crc`], or on without TLS.
    pub fn crc_enabled(&self) -> bool {
        self.crc.unwrap_or(self.tls.is_none())
    }

    /// The security mode the node runs in: the one set, or the one inferred from the TLS
    /// settings.
    pub fn security_mode(&self) -> SecurityMode {
        self.security_mode
            .unwrap_or_else(|| SecurityMode::inferred(self.tls.as_ref()))
    }

    /// Checks the security settings against the mode, without starting anything (the engine
    /// runs it at start, too): a mode that needs TLS without it, `Strict` without mutual TLS
    /// or without a node id check, a plaintext mode with a TLS configuration it would ignore,
    /// and certificate, key and CA files that do not load are refused.
    ///
    /// # Errors
    ///
    /// [`Error::TlsRequired`], [`Error::MtlsRequired`], or [`Error::InvalidConfig`] saying
    /// what is wrong and what to change.
    pub fn validate_security(&self) -> Result<(), Error> {
        self.check_security_mode()?;
        if let Some(tls) = &self.tls {
            crate::security::tls::TlsContext::load(tls).map_err(Error::InvalidConfig)?;
        }
        Ok(())
    }

    /// [`Config::validate_security`] but for loading the files (the engine loads them once,
    /// when it starts).
    fn check_security_mode(&self) -> Result<(), Error> {
        let mode = self.security_mode();
        match (mode, &self.tls) {
            (SecurityMode::Strict | SecurityMode::Permissive, None) => Err(Error::TlsRequired {
                reason: format!("{mode} mode needs a TLS configuration (Config::tls)"),
            }),
            (SecurityMode::Strict, Some(tls)) if !tls.require_client_auth => {
                Err(Error::MtlsRequired {
                    reason: "strict mode needs require_client_auth (use permissive mode to \
                             accept dialers without a certificate)"
                        .to_owned(),
                })
            }
            (SecurityMode::Strict, Some(tls))
                if tls.node_id_verification == NodeIdVerification::None =>
            {
                Err(Error::InvalidConfig(
                    "strict mode checks node ids against certificates: node_id_verification \
                     must be CommonName or SubjectAltName"
                        .to_owned(),
                ))
            }
            _ if self
                .auth_token
                .as_ref()
                .is_some_and(|t| t.len() < AuthToken::LEN_MIN) =>
            {
                Err(Error::InvalidConfig(format!(
                    "auth_token must be at least {} bytes: a shorter one can be guessed",
                    AuthToken::LEN_MIN
                )))
            }
            (SecurityMode::Legacy, _) if self.auth_token.is_some() => Err(Error::InvalidConfig(
                "legacy mode talks to builds without AUTH: remove auth_token, or use \
                     development mode"
                    .to_owned(),
            )),
            (SecurityMode::Development | SecurityMode::Legacy, Some(_)) => {
                Err(Error::InvalidConfig(format!(
                    "{mode} mode is plaintext, and would ignore the TLS configuration: use \
                     strict or permissive mode, or remove Config::tls"
                )))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: &str| Err(Error::InvalidConfig(msg.to_owned()));
        if self.node_id.is_empty() || self.node_id.len() > NODE_ID_LEN_MAX {
            return invalid("node_id must be 1 to 255 bytes");
        }
        if self.shards == 0 || self.shards > 1024 {
            return invalid("shards must be 1 to 1024");
        }
        if (self.body_len_max as usize) <= MSG_PREFIX_LEN {
            return invalid("body_len_max must exceed 8 bytes");
        }
        if self.peer_queue_len == 0 || self.unacked_count_max == 0 || self.unacked_bytes_max == 0 {
            return invalid("queue and unacked limits must be positive");
        }
        if self.connections_max == 0 || self.handshakes_max == 0 {
            return invalid("connections_max and handshakes_max must be positive");
        }
        if !self.recv_buf_count.is_power_of_two() || self.recv_buf_count > 32_768 {
            return invalid("recv_buf_count must be a power of two up to 32768");
        }
        if self.recv_buf_len < 512 {
            return invalid("recv_buf_len must be at least 512 bytes");
        }
        if self.ring_entries < 8 || self.send_batch_bytes_max == 0 {
            return invalid("ring_entries must be at least 8 and send_batch_bytes_max positive");
        }
        if self.heartbeat.interval.is_zero() || self.heartbeat.timeout <= self.heartbeat.interval {
            return invalid("heartbeat timeout must exceed a non-zero interval");
        }
        if self.session_buffer_window.is_zero() {
            return invalid("session_buffer_window must be positive");
        }
        let record_max = crate::outbox::record::space(self.payload_len_max());
        if self.outbox_dir.is_some() {
            if self.outbox_segment_len < crate::outbox::segment::HEADER_LEN + record_max
                || !self.outbox_segment_len.is_multiple_of(4096)
            {
                return invalid(
                    "outbox_segment_len must be a multiple of 4096 that holds the largest record \
                     (lower body_len_max or raise the segment size)",
                );
            }
            if self.outbox_bytes_max < self.outbox_segment_len || self.outbox_peer_bytes_max == 0 {
                return invalid(
                    "outbox_bytes_max must hold a segment; outbox_peer_bytes_max must be positive",
                );
            }
            if matches!(self.outbox_sync, SyncPolicy::Interval(d) if d.is_zero()) {
                return invalid(
                    "outbox_sync interval must be positive (or use SyncPolicy::Always)",
                );
            }
        }
        self.check_security_mode()?;
        for limit in [&self.inbound_rate_limit, &self.outbound_rate_limit]
            .into_iter()
            .flatten()
        {
            limit.validate().map_err(Error::InvalidConfig)?;
        }
        self.backoff.validate()
    }
}

/// A peer to dial: its node id and one or more endpoints, tried in order.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub(crate) node_id: String,
    pub(crate) endpoints: Vec<SocketAddr>,
    pub(crate) unresolved: Vec<String>,
}

impl PeerConfig {
    /// A peer reachable at `endpoints` (anything `ToSocketAddrs` accepts, e.g. `"10.0.1.2:9100"`
    /// or a `SocketAddr`). Names are resolved here; one that does not resolve is reported by
    /// [`Engine::connect`](crate::Engine::connect).
    pub fn new<I, A>(node_id: impl Into<String>, endpoints: I) -> PeerConfig
    where
        I: IntoIterator<Item = A>,
        A: ToSocketAddrs + std::fmt::Debug,
    {
        let mut resolved = Vec::new();
        let mut unresolved = Vec::new();
        for endpoint in endpoints {
            match endpoint.to_socket_addrs() {
                Ok(addrs) => resolved.extend(addrs),
                Err(_) => unresolved.push(format!("{endpoint:?}")),
            }
        }
        PeerConfig {
            node_id: node_id.into(),
            endpoints: resolved,
            unresolved,
        }
    }

    /// The peer's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused() {
        let mut c = Config::new("");
        assert!(c.validate().is_err());
        c.node_id = "n".into();
        assert!(c.validate().is_ok());
        c.recv_buf_count = 100;
        assert!(c.validate().is_err());
    }
}
