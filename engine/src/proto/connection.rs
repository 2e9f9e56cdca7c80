//! One TCP connection bound to a peer: handshake completion, message flow, acknowledgements,
//! heartbeats and close (docs/protocol.md, "Connection states").
//!
//! ```text
//!   dial ──► AwaitHello ──HELLO──► Established ──GOAWAY/CLOSE/EOF/error──► Closing
//!   accept (HELLO already read) ─────┘      └──────── close(reason) ────────────┘
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::ack::{AckPolicy, AckState};
use crate::proto::auth::{AuthMessage, Authenticator, NONCE_LEN, Prover, transcript};
use crate::proto::error::{GoAwayReason, ProtocolError};
use crate::proto::frame::{
    self, CAP_AUTH, CAP_BATCH, CAP_CRC, CAP_LZ4, Decoder, FLAG_CRC, FLAG_LZ4, Frame, Hello, Seq,
    SessionId,
};
use crate::proto::handshake::HelloInfo;
use crate::proto::heartbeat::{Heartbeat, HeartbeatConfig};
use crate::proto::session::{Acked, Delivery, Encoding, Sessions};

/// Settings shared by every connection of a node.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// This node's id, sent in HELLO.
    pub node_id: Arc<str>,
    /// The largest frame body this node accepts.
    pub body_len_max: u32,
    /// Whether this node offers MSG_BATCH ([`CAP_BATCH`] in its HELLO): it then accepts
    /// batches, and sends them to a peer that offers them too.
    pub batch: bool,
    /// Whether this node offers end-to-end CRC32C ([`CAP_CRC`]): it then accepts checksummed
    /// frames (and verifies them), and checksums what it sends to a peer that offers it too.
    pub crc: bool,
    /// Whether this node offers LZ4 ([`CAP_LZ4`]), and the smallest payload it compresses for
    /// a peer that offers it too.
    pub lz4_min_size: Option<usize>,
    /// The shared secret's MAC, if this node takes part in AUTH ([`CAP_AUTH`]): a dialer proves
    /// it to every node it dials and requires the same of them; an acceptor requires it of
    /// every dialer (see [`Accepting::with_auth`](crate::proto::handshake::Accepting)).
    pub auth: Option<Arc<dyn Authenticator>>,
    /// How long a connection may take to exchange HELLOs.
    pub handshake_timeout: Duration,
    pub heartbeat: HeartbeatConfig,
    pub ack: AckPolicy,
    /// Anchor for PING timestamps.
    pub epoch: Instant,
}

impl ConnectionConfig {
    /// The encoding this node would use with a peer that offers everything it does: what a
    /// new session encodes with until a HELLO says otherwise.
    pub fn encoding(&self) -> Encoding {
        Encoding {
            crc: self.crc,
            lz4_min_size: self.lz4_min_size,
        }
    }

    /// The capability bits of this node's HELLO.
    fn caps(&self) -> u32 {
        let mut caps = 0;
        if self.batch {
            caps |= CAP_BATCH;
        }
        if self.crc {
            caps |= CAP_CRC;
        }
        if self.lz4_min_size.is_some() {
            caps |= CAP_LZ4;
        }
        if self.auth.is_some() {
            caps |= CAP_AUTH;
        }
        caps
    }

    /// The optional flags this node accepts on received frames: those it offered.
    fn flags_allowed(&self) -> u8 {
        let mut flags = 0;
        if self.crc {
            flags |= FLAG_CRC;
        }
        if self.lz4_min_size.is_some() {
            flags |= FLAG_LZ4;
        }
        flags
    }
}

/// Which side opened the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// Why a connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The peer broke the protocol; a GOAWAY with its reason is queued.
    Protocol(ProtocolError),
    /// The peer sent GOAWAY.
    GoAwayReceived {
        reason: GoAwayReason,
        retry_after_ms: u32,
        message: String,
    },
    /// The peer sent CLOSE.
    CloseReceived,
    /// The stream ended cleanly between frames.
    Eof,
    /// This side closed the connection.
    Local(GoAwayReason),
}

/// What a connection reports while it processes input.
pub trait Events {
    /// A new message of the peer's `session`, in order, exactly once.
    fn on_message(&mut self, session: SessionId, seq: Seq, payload: &[u8]);
    /// The peer acknowledged messages (called only when the acknowledged seq moved).
    fn on_acked(&mut self, acked: Acked);
    /// The peer reported message `seq` of its `session` lost: it will never arrive.
    fn on_lost(&mut self, _session: SessionId, _seq: Seq) {}
}

/// The protocol state of one connection.
///
/// Call order, once per loop turn: [`Connection::handle_bytes`] for each received chunk (or
/// [`Connection::handle_eof`]), [`Connection::handle_timeout`] when [`Connection::poll_timeout`]
/// has passed, then [`Connection::poll_transmit`] to collect what to send. The peer's
/// [`Sessions`] are passed to every call because they outlive the connection.
#[derive(Debug)]
pub struct Connection {
    decoder: Decoder,
    core: Core,
}

#[derive(Debug)]
struct Core {
    role: Role,
    config: Arc<ConnectionConfig>,
    state: State,
    /// Control frames queued for the next transmit (HELLO, final ACK, GOAWAY, CLOSE).
    pending: Vec<u8>,
    /// The node id a dialer expects to answer.
    expected_peer: Option<Box<str>>,
    /// A dialer's side of the AUTH exchange.
    dial_auth: DialAuth,
}

/// Where a dialer stands in the AUTH exchange.
#[derive(Debug, Clone, Copy, Default)]
struct DialAuth {
    /// The acceptor's challenge and the nonce this side answered with.
    nonces: Option<([u8; NONCE_LEN], [u8; NONCE_LEN])>,
    /// The acceptor proved the secret.
    proven: bool,
}

#[derive(Debug)]
enum State {
    AwaitHello { deadline: Instant },
    Established(Established),
    Closing(CloseCause),
}

#[derive(Debug)]
struct Established {
    ack: AckState,
    heartbeat: Heartbeat,
    /// Messages the receiver's state lost before this connection (see `RxSession::resume`).
    lost_on_resume: u64,
    /// Where LZ4 blocks are decompressed.
    scratch: Vec<u8>,
}

/// A decompression buffer larger than this is given back after use.
const SCRATCH_KEEP_MAX: usize = 1 << 20;

/// Decompresses message `seq`'s block into `scratch`: `raw_len` bytes, at most `len_max`
/// (checked before anything is allocated), matching `checksum` if there is one. What an
/// established connection does with a [`Frame::MsgLz4`]; public for the fuzz targets.
///
/// # Errors
///
/// [`ProtocolError::Compression`] for a block that is too large, malformed, truncated or of
/// another length than announced; [`ProtocolError::ChecksumMismatch`].
pub fn decompress<'s>(
    scratch: &'s mut Vec<u8>,
    seq: Seq,
    raw_len: u32,
    block: &[u8],
    checksum: Option<u32>,
    len_max: usize,
) -> Result<&'s [u8], ProtocolError> {
    let refused = |what| ProtocolError::Compression { seq: seq.0, what };
    let raw_len = raw_len as usize;
    if raw_len > len_max {
        return Err(refused(
            "it would decompress to more than this node accepts",
        ));
    }
    scratch.clear();
    scratch.resize(raw_len, 0);
    match lz4_flex::block::decompress_into(block, scratch) {
        Ok(len) if len == raw_len => {}
        Ok(_) => return Err(refused("it decompresses to another length than announced")),
        Err(_) => return Err(refused("the block is malformed")),
    }
    if let Some(checksum) = checksum
        && frame::crc32c(scratch) != checksum
    {
        return Err(ProtocolError::ChecksumMismatch { seq: seq.0 });
    }
    Ok(scratch)
}

impl Connection {
    /// A dialed connection: queues this side's HELLO and waits for the peer's.
    pub fn dial(
        config: Arc<ConnectionConfig>,
        expected_peer: &str,
        sessions: &Sessions,
        now: Instant,
    ) -> Connection {
        let mut core = Core {
            role: Role::Dialer,
            state: State::AwaitHello {
                deadline: now + config.handshake_timeout,
            },
            config,
            pending: Vec::new(),
            expected_peer: Some(expected_peer.into()),
            dial_auth: DialAuth::default(),
        };
        core.queue_hello(sessions);
        Connection {
            decoder: core.decoder(),
            core,
        }
    }

    /// An accepted connection whose HELLO was read by
    /// [`Accepting`](crate::proto::handshake::Accepting): resumes the sessions from it, queues
    /// the answering HELLO and is established at once.
    ///
    /// # Errors
    ///
    /// A resume point beyond what this side ever sent is [`ProtocolError::AckBeyondSent`].
    pub fn accept(
        config: Arc<ConnectionConfig>,
        hello: &HelloInfo,
        sessions: &mut Sessions,
        now: Instant,
        events: &mut impl Events,
    ) -> Result<Connection, ProtocolError> {
        let mut core = Core {
            role: Role::Acceptor,
            state: State::AwaitHello {
                deadline: now + config.handshake_timeout,
            },
            config,
            pending: Vec::new(),
            expected_peer: None,
            dial_auth: DialAuth::default(),
        };
        // With AUTH, the dialer proved the secret to `Accepting`; the acceptor proves it back,
        // before its HELLO, over the same nonces.
        if let Some(auth) = &core.config.auth {
            let Some(nonces) = hello.auth else {
                return Err(ProtocolError::Unauthenticated(
                    "the dialer did not go through the AUTH exchange",
                ));
            };
            let proof = auth.prove(&transcript(
                Prover::Acceptor,
                &nonces.nonce_a,
                &nonces.nonce_d,
                &hello.node_id,
                &core.config.node_id,
            ));
            AuthMessage::Proof { proof }.encode(&mut core.pending);
        }
        core.establish(hello, sessions, now, events)?;
        core.queue_hello(sessions);
        Ok(Connection {
            decoder: core.decoder(),
            core,
        })
    }

    /// Feeds bytes received from the socket; delivers messages and acks through `events`.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`]: a GOAWAY is queued and the connection is closing. Send what
    /// [`Connection::poll_transmit`] returns, then close the socket.
    pub fn handle_bytes(
        &mut self,
        sessions: &mut Sessions,
        data: &[u8],
        now: Instant,
        events: &mut impl Events,
    ) -> Result<(), ProtocolError> {
        if matches!(self.core.state, State::Closing(_)) {
            return Ok(());
        }
        let core = &mut self.core;
        let result = self.decoder.decode(data, |frame| {
            core.handle_frame(frame, sessions, now, events)
        });
        if let State::Established(e) = &mut self.core.state {
            e.heartbeat.handle_rx(now);
        }
        if let (Err(_), State::Closing(_)) = (&result, &self.core.state) {
            // A CLOSE or GOAWAY ended the connection earlier in this input: what follows it is
            // not the peer's protocol any more and is ignored, whether it arrived in the same
            // read or a later one.
            return Ok(());
        }
        result.inspect_err(|err| self.core.fail(err.clone()))
    }

    /// The peer closed its side of the stream.
    pub fn handle_eof(&mut self) {
        if matches!(self.core.state, State::Closing(_)) {
            return;
        }
        if self.decoder.has_partial() {
            self.core.fail(ProtocolError::TruncatedFrame);
        } else {
            self.core.state = State::Closing(CloseCause::Eof);
        }
    }

    /// Checks the handshake deadline and the heartbeat timeout.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::HandshakeTimeout`] or [`ProtocolError::IdleTimeout`]; the connection is
    /// then closing with a GOAWAY queued.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let err = match &self.core.state {
            State::AwaitHello { deadline } if now >= *deadline => ProtocolError::HandshakeTimeout,
            State::Established(e) if e.heartbeat.is_dead(now) => ProtocolError::IdleTimeout,
            _ => return Ok(()),
        };
        self.core.fail(err.clone());
        Err(err)
    }

    /// Closes from this side: writes any pending ACK, then GOAWAY with `reason` (or CLOSE for
    /// [`GoAwayReason::Normal`]).
    pub fn close(&mut self, sessions: &Sessions, reason: GoAwayReason, message: &str) {
        if matches!(self.core.state, State::Closing(_)) {
            return;
        }
        if let State::Established(e) = &mut self.core.state
            && e.ack.poll_timeout().is_some()
        {
            Frame::Ack {
                seq: sessions.rx.seq_delivered(),
            }
            .encode(&mut self.core.pending);
            e.ack.handle_sent();
        }
        if reason == GoAwayReason::Normal {
            Frame::Close.encode(&mut self.core.pending);
        } else {
            Frame::GoAway {
                reason,
                retry_after_ms: 0,
                message,
            }
            .encode(&mut self.core.pending);
        }
        self.core.state = State::Closing(CloseCause::Local(reason));
    }

    /// Appends what is due: queued control frames, a PONG, a PING and an ACK to `out`, then the
    /// session's unsent messages to `data`, as slices of the frames it holds (they go on the
    /// wire after `out`), while fewer than `budget` bytes were added (a segment of messages
    /// may overshoot the budget, and control frames that fill it defer messages to the next
    /// call). Returns the number of messages added.
    pub fn poll_transmit(
        &mut self,
        sessions: &mut Sessions,
        now: Instant,
        out: &mut Vec<u8>,
        data: &mut Vec<Bytes>,
        budget: usize,
    ) -> u64 {
        let start = out.len();
        out.append(&mut self.core.pending);
        let State::Established(e) = &mut self.core.state else {
            return 0;
        };
        if let Some(timestamp) = e.heartbeat.poll_pong() {
            Frame::Pong { timestamp }.encode(out);
        }
        if let Some(timestamp) = e.heartbeat.poll_ping(now) {
            Frame::Ping { timestamp }.encode(out);
        }
        if e.ack.is_due(now) {
            Frame::Ack {
                seq: sessions.rx.seq_delivered(),
            }
            .encode(out);
            e.ack.handle_sent();
        }
        let used = out.len() - start;
        if used >= budget {
            return 0;
        }
        sessions.tx.poll_transmit(budget - used, data)
    }

    /// Whether [`Connection::poll_transmit`] has something to write now.
    pub fn wants_transmit(&self, sessions: &Sessions, now: Instant) -> bool {
        if !self.core.pending.is_empty() {
            return true;
        }
        match &self.core.state {
            State::Established(e) => {
                sessions.tx.has_unsent() || e.ack.is_due(now) || e.heartbeat.poll_timeout() <= now
            }
            _ => false,
        }
    }

    /// The next instant at which [`Connection::handle_timeout`] or
    /// [`Connection::poll_transmit`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.core.state {
            State::AwaitHello { deadline } => Some(*deadline),
            State::Established(e) => {
                let hb = e.heartbeat.poll_timeout();
                Some(e.ack.poll_timeout().map_or(hb, |ack| ack.min(hb)))
            }
            State::Closing(_) => None,
        }
    }

    /// Why the connection is closing, once it is.
    pub fn close_cause(&self) -> Option<&CloseCause> {
        match &self.core.state {
            State::Closing(cause) => Some(cause),
            _ => None,
        }
    }

    /// Whether both HELLOs were exchanged and the connection is not closing.
    pub fn is_established(&self) -> bool {
        matches!(self.core.state, State::Established(_))
    }

    /// Which side opened the connection.
    pub fn role(&self) -> Role {
        self.core.role
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        match &self.core.state {
            State::Established(e) => e.heartbeat.srtt(),
            _ => None,
        }
    }

    /// Messages the peer had already dropped that this side never delivered, as learned when
    /// the connection was established (non-zero only after a receiver lost its state).
    pub fn lost_on_resume(&self) -> u64 {
        match &self.core.state {
            State::Established(e) => e.lost_on_resume,
            _ => 0,
        }
    }
}

impl Core {
    fn decoder(&self) -> Decoder {
        let mut decoder = Decoder::new(self.config.body_len_max);
        decoder.set_flags_allowed(self.config.flags_allowed());
        decoder
    }

    fn handle_frame(
        &mut self,
        frame: Frame<'_>,
        sessions: &mut Sessions,
        now: Instant,
        events: &mut impl Events,
    ) -> Result<(), ProtocolError> {
        match &mut self.state {
            State::Closing(_) => Ok(()),
            State::AwaitHello { .. } => match frame {
                Frame::Hello(hello) => {
                    if self.expected_peer.as_deref() != Some(hello.node_id) {
                        return Err(ProtocolError::WrongPeer);
                    }
                    if self.config.auth.is_some() && !self.dial_auth.proven {
                        return Err(ProtocolError::Unauthenticated(
                            "the peer answered without proving the shared secret",
                        ));
                    }
                    self.establish(&HelloInfo::from(&hello), sessions, now, events)
                }
                Frame::Auth { body } => self.handle_auth(AuthMessage::parse(body)?),
                Frame::GoAway {
                    reason,
                    retry_after_ms,
                    message,
                } => {
                    self.state = State::Closing(CloseCause::GoAwayReceived {
                        reason,
                        retry_after_ms,
                        message: message.to_owned(),
                    });
                    Ok(())
                }
                other => Err(ProtocolError::UnexpectedFrame {
                    kind: other.kind(),
                    state: "awaiting hello",
                }),
            },
            State::Established(e) => match frame {
                Frame::Msg { seq, payload } => {
                    if sessions.rx.handle_msg(seq)? == Delivery::Deliver {
                        events.on_message(sessions.rx.id(), seq, payload);
                    }
                    e.ack.handle_received(now, 1);
                    Ok(())
                }
                Frame::MsgLz4 {
                    seq,
                    raw_len,
                    block,
                    checksum,
                } => {
                    // Checked and decompressed before the watermark moves, so that a refused
                    // block leaves the message to the replay; a replayed one is not even read.
                    if seq > sessions.rx.seq_delivered() {
                        let payload = decompress(
                            &mut e.scratch,
                            seq,
                            raw_len,
                            block,
                            checksum,
                            self.config.body_len_max as usize - frame::MSG_PREFIX_LEN,
                        )?;
                        if sessions.rx.handle_msg(seq)? == Delivery::Deliver {
                            events.on_message(sessions.rx.id(), seq, payload);
                        }
                        if e.scratch.capacity() > SCRATCH_KEEP_MAX {
                            e.scratch = Vec::new();
                        }
                    }
                    e.ack.handle_received(now, 1);
                    Ok(())
                }
                Frame::MsgBatch { seq_first, entries } => {
                    if !self.config.batch {
                        return Err(ProtocolError::UnexpectedFrame {
                            kind: frame::Kind::MsgBatch,
                            state: "established without MSG_BATCH",
                        });
                    }
                    let rx_id = sessions.rx.id();
                    for (seq, payload) in (seq_first.0..).map(Seq).zip(entries.iter()) {
                        if sessions.rx.handle_msg(seq)? == Delivery::Deliver {
                            events.on_message(rx_id, seq, payload);
                        }
                    }
                    e.ack.handle_received(now, entries.count());
                    Ok(())
                }
                Frame::Lost { seq } => {
                    if sessions.rx.handle_msg(seq)? == Delivery::Deliver {
                        events.on_lost(sessions.rx.id(), seq);
                    }
                    e.ack.handle_received(now, 1);
                    Ok(())
                }
                Frame::Ack { seq } => {
                    let acked = sessions.tx.handle_ack(seq)?;
                    if acked.count > 0 {
                        events.on_acked(acked);
                    }
                    Ok(())
                }
                Frame::Ping { timestamp } => {
                    e.heartbeat.handle_ping(timestamp);
                    Ok(())
                }
                Frame::Pong { timestamp } => {
                    e.heartbeat.handle_pong(timestamp, now);
                    Ok(())
                }
                Frame::GoAway {
                    reason,
                    retry_after_ms,
                    message,
                } => {
                    Self::ack_before_close(e, sessions, &mut self.pending);
                    self.state = State::Closing(CloseCause::GoAwayReceived {
                        reason,
                        retry_after_ms,
                        message: message.to_owned(),
                    });
                    Ok(())
                }
                Frame::Close => {
                    Self::ack_before_close(e, sessions, &mut self.pending);
                    self.state = State::Closing(CloseCause::CloseReceived);
                    Ok(())
                }
                other @ (Frame::Hello(_) | Frame::Auth { .. }) => {
                    Err(ProtocolError::UnexpectedFrame {
                        kind: other.kind(),
                        state: "established",
                    })
                }
            },
        }
    }

    /// A dialer's step of the AUTH exchange.
    fn handle_auth(&mut self, message: AuthMessage) -> Result<(), ProtocolError> {
        let Some(auth) = self.config.auth.clone() else {
            return Err(ProtocolError::Unauthenticated(
                "the peer requires AUTH, and this node has no shared secret",
            ));
        };
        let peer = self.expected_peer.as_deref().unwrap_or_default();
        match (message, self.dial_auth.nonces) {
            (AuthMessage::Challenge { nonce_a }, None) => {
                let nonce_d = auth.nonce();
                let proof = auth.prove(&transcript(
                    Prover::Dialer,
                    &nonce_a,
                    &nonce_d,
                    &self.config.node_id,
                    peer,
                ));
                self.dial_auth.nonces = Some((nonce_a, nonce_d));
                AuthMessage::Response { nonce_d, proof }.encode(&mut self.pending);
                Ok(())
            }
            (AuthMessage::Proof { proof }, Some((nonce_a, nonce_d))) if !self.dial_auth.proven => {
                let transcript = transcript(
                    Prover::Acceptor,
                    &nonce_a,
                    &nonce_d,
                    &self.config.node_id,
                    peer,
                );
                if !auth.verify(&transcript, &proof) {
                    return Err(ProtocolError::Unauthenticated(
                        "the peer's AUTH proof does not verify",
                    ));
                }
                self.dial_auth.proven = true;
                Ok(())
            }
            _ => Err(ProtocolError::UnexpectedFrame {
                kind: frame::Kind::Auth,
                state: "awaiting hello, out of the AUTH exchange's order",
            }),
        }
    }

    /// A received CLOSE or GOAWAY ends the connection: acknowledge what was delivered before
    /// it, so the sender learns it now, whatever the ACK policy's timing would have said.
    fn ack_before_close(e: &mut Established, sessions: &Sessions, pending: &mut Vec<u8>) {
        if e.ack.poll_timeout().is_some() {
            Frame::Ack {
                seq: sessions.rx.seq_delivered(),
            }
            .encode(pending);
            e.ack.handle_sent();
        }
    }

    fn establish(
        &mut self,
        hello: &HelloInfo,
        sessions: &mut Sessions,
        now: Instant,
        events: &mut impl Events,
    ) -> Result<(), ProtocolError> {
        // Batches go to a peer that offers them and whose frame limit holds the largest one.
        sessions.tx.set_batching(
            self.config.batch
                && hello.caps & CAP_BATCH != 0
                && hello.body_len_max as usize >= frame::BATCH_BODY_MAX,
        );
        let ours = self.config.encoding();
        sessions.tx.set_encoding(Encoding {
            crc: ours.crc && hello.caps & CAP_CRC != 0,
            lz4_min_size: ours.lz4_min_size.filter(|_| hello.caps & CAP_LZ4 != 0),
        });
        // Nothing larger than the peer accepts goes out: such messages become LOST.
        sessions.tx.set_peer_body_len_max(hello.body_len_max);
        let acked = sessions.tx.resume(hello.rx_session, hello.rx_delivered)?;
        if acked.count > 0 {
            events.on_acked(acked);
        }
        let lost_on_resume = sessions.rx.resume(hello.tx_session, hello.tx_seq_first);
        self.state = State::Established(Established {
            ack: AckState::new(self.config.ack),
            heartbeat: Heartbeat::new(self.config.heartbeat, self.config.epoch, now),
            lost_on_resume,
            scratch: Vec::new(),
        });
        Ok(())
    }

    fn queue_hello(&mut self, sessions: &Sessions) {
        Frame::Hello(Hello {
            caps: self.config.caps(),
            body_len_max: self.config.body_len_max,
            tx_session: sessions.tx.id(),
            tx_seq_first: sessions.tx.seq_first(),
            rx_session: sessions.rx.id(),
            rx_delivered: sessions.rx.seq_delivered(),
            node_id: &self.config.node_id,
        })
        .encode(&mut self.pending);
    }

    fn fail(&mut self, err: ProtocolError) {
        if matches!(self.state, State::Closing(_)) {
            return;
        }
        Frame::GoAway {
            reason: err.reason(),
            retry_after_ms: 0,
            message: &err.to_string(),
        }
        .encode(&mut self.pending);
        self.state = State::Closing(CloseCause::Protocol(err));
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::proto::frame::{BODY_LEN_MAX_DEFAULT, Kind};
    use crate::proto::handshake::{AcceptAuth, Accepting};

    #[derive(Default)]
    struct Log {
        messages: Vec<(u64, Vec<u8>)>,
        /// The acknowledged seq after each acknowledgement.
        acked: Vec<u64>,
    }

    impl Events for Log {
        fn on_message(&mut self, _: SessionId, seq: Seq, payload: &[u8]) {
            self.messages.push((seq.0, payload.to_vec()));
        }
        fn on_acked(&mut self, acked: Acked) {
            self.acked.push(acked.through.0);
        }
    }

    /// A node that speaks version 1 without MSG_BATCH, so that tests can count MSG frames.
    fn config(node: &str, t0: Instant) -> Arc<ConnectionConfig> {
        config_batch(node, t0, false)
    }

    fn config_batch(node: &str, t0: Instant, batch: bool) -> Arc<ConnectionConfig> {
        Arc::new(ConnectionConfig {
            node_id: node.into(),
            body_len_max: BODY_LEN_MAX_DEFAULT,
            batch,
            crc: false,
            lz4_min_size: None,
            auth: None,
            handshake_timeout: Duration::from_secs(5),
            heartbeat: HeartbeatConfig::default(),
            ack: AckPolicy::default(),
            epoch: t0,
        })
    }

    fn transmit(conn: &mut Connection, s: &mut Sessions, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        let mut data = Vec::new();
        conn.poll_transmit(s, now, &mut out, &mut data, usize::MAX);
        data.iter().for_each(|d| out.extend_from_slice(d));
        out
    }

    /// Dials `a` to `b`, returning both established connections.
    fn connect(
        a: &mut Sessions,
        b: &mut Sessions,
        t0: Instant,
        log: &mut Log,
    ) -> (Connection, Connection) {
        connect_batch(a, b, t0, log, [false, false])
    }

    /// Like [`connect`], with MSG_BATCH offered by `a` and `b` as `batch` says.
    fn connect_batch(
        a: &mut Sessions,
        b: &mut Sessions,
        t0: Instant,
        log: &mut Log,
        batch: [bool; 2],
    ) -> (Connection, Connection) {
        let mut dialer = Connection::dial(config_batch("a", t0, batch[0]), "b", a, t0);
        let hello = transmit(&mut dialer, a, t0);
        let mut acc = Accepting::new(t0 + Duration::from_secs(5));
        let info = acc.handle_bytes(&hello).unwrap().unwrap();
        assert_eq!(info.node_id, "a");
        let mut acceptor =
            Connection::accept(config_batch("b", t0, batch[1]), &info, b, t0, log).unwrap();
        let reply = transmit(&mut acceptor, b, t0);
        dialer.handle_bytes(a, &reply, t0, log).unwrap();
        assert!(dialer.is_established() && acceptor.is_established());
        (dialer, acceptor)
    }

    #[test]
    fn messages_flow_are_acked_and_replayed_after_reconnect() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        let mut log = Log::default();
        let (mut da, mut ab) = connect(&mut a, &mut b, t0, &mut log);
        for i in 1..=4u64 {
            a.tx.push(Seq(i), &[i as u8], 0);
        }
        let bytes = transmit(&mut da, &mut a, t0);
        // Deliver only the first two MSG frames (17 bytes each) before the link dies.
        ab.handle_bytes(&mut b, &bytes[..34], t0, &mut log).unwrap();
        assert_eq!(log.messages, [(1, vec![1]), (2, vec![2])]);
        a.tx.handle_disconnect();

        let mut log2 = Log::default();
        let (mut da, mut ab) = connect(&mut a, &mut b, t0, &mut log2);
        assert_eq!(
            log2.acked,
            [2],
            "the acceptor's HELLO acknowledged what it delivered"
        );
        let bytes = transmit(&mut da, &mut a, t0);
        ab.handle_bytes(&mut b, &bytes, t0, &mut log2).unwrap();
        assert_eq!(log2.messages, [(3, vec![3]), (4, vec![4])]);
        let ack = transmit(&mut ab, &mut b, t0);
        da.handle_bytes(&mut a, &ack, t0, &mut log2).unwrap();
        assert_eq!(log2.acked, [2, 4]);
        assert_eq!(a.tx.unacked_count(), 0);
    }

    #[test]
    fn a_close_after_messages_acknowledges_them_and_ends_decoding() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        let mut log = Log::default();
        let (mut da, mut ab) = connect(&mut a, &mut b, t0, &mut log);
        for i in 1..=3u64 {
            a.tx.push(Seq(i), &[i as u8], 0);
        }
        let mut bytes = transmit(&mut da, &mut a, t0);
        Frame::Close.encode(&mut bytes);
        // Garbage after the CLOSE is not the peer's protocol any more: ignored, not an error.
        bytes.extend_from_slice(&[0xFF; 8]);
        ab.handle_bytes(&mut b, &bytes, t0, &mut log).unwrap();
        assert_eq!(log.messages.len(), 3);
        assert_eq!(ab.close_cause(), Some(&CloseCause::CloseReceived));
        let reply = transmit(&mut ab, &mut b, t0);
        da.handle_bytes(&mut a, &reply, t0, &mut log).unwrap();
        assert_eq!(
            a.tx.seq_acked(),
            Seq(3),
            "the messages before the CLOSE were acknowledged"
        );
    }

    /// Kinds of the frames in `bytes`, in order.
    fn kinds(mut bytes: &[u8]) -> Vec<Kind> {
        let mut kinds = Vec::new();
        while !bytes.is_empty() {
            kinds.push(Kind::from_u8(bytes[4]).unwrap());
            bytes = &bytes[frame::encoded_frame_len(bytes)..];
        }
        kinds
    }

    #[test]
    fn peers_that_both_offer_batches_send_small_messages_many_to_a_frame() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        let mut log = Log::default();
        let (mut da, mut ab) = connect_batch(&mut a, &mut b, t0, &mut log, [true, true]);
        for i in 1..=5u64 {
            a.tx.push(Seq(i), &[i as u8; 3], 0);
        }
        let bytes = transmit(&mut da, &mut a, t0);
        assert_eq!(kinds(&bytes), [Kind::MsgBatch]);
        ab.handle_bytes(&mut b, &bytes, t0, &mut log).unwrap();
        let expected: Vec<_> = (1..=5u64).map(|i| (i, vec![i as u8; 3])).collect();
        assert_eq!(log.messages, expected);
        let ack = transmit(&mut ab, &mut b, t0);
        da.handle_bytes(&mut a, &ack, t0, &mut log).unwrap();
        assert_eq!(a.tx.unacked_count(), 0);
    }

    #[test]
    fn batches_encoded_before_the_handshake_go_as_msg_frames_to_a_peer_without_them() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        // Encoded while no peer had answered: batched, as a session starts.
        for i in 1..=3u64 {
            a.tx.push(Seq(i), &[i as u8], 0);
        }
        let mut log = Log::default();
        let (mut da, mut ab) = connect_batch(&mut a, &mut b, t0, &mut log, [true, false]);
        a.tx.push(Seq(4), &[4], 0);
        let bytes = transmit(&mut da, &mut a, t0);
        assert_eq!(kinds(&bytes), [Kind::Msg; 4]);
        ab.handle_bytes(&mut b, &bytes, t0, &mut log).unwrap();
        assert_eq!(log.messages.len(), 4);
    }

    #[test]
    fn a_batch_to_a_node_that_did_not_offer_batches_is_unexpected() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        let mut log = Log::default();
        let (_, mut ab) = connect(&mut a, &mut b, t0, &mut log);
        let mut bytes = Vec::new();
        let body = [&1u64.to_le_bytes()[..], &1u32.to_le_bytes(), &[7]].concat();
        frame::header(Kind::MsgBatch, body.len()).encode(&mut bytes);
        bytes.extend_from_slice(&body);
        let err = ab.handle_bytes(&mut b, &bytes, t0, &mut log).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::UnexpectedFrame {
                    kind: Kind::MsgBatch,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(log.messages.is_empty());
    }

    #[test]
    fn wrong_peer_and_timeouts_queue_a_goaway() {
        let t0 = Instant::now();
        let mut a: Sessions = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut dialer = Connection::dial(config("a", t0), "not-b", &a, t0);
        let mut reply = Vec::new();
        let b: Sessions = Sessions::new(SessionId(Uuid::from_u128(2)));
        Connection::dial(config("b", t0), "a", &b, t0).poll_transmit(
            &mut Sessions::new(SessionId::NIL),
            t0,
            &mut reply,
            &mut Vec::new(),
            0,
        );
        transmit(&mut dialer, &mut a, t0);
        let err = dialer
            .handle_bytes(&mut a, &reply, t0, &mut Log::default())
            .unwrap_err();
        assert_eq!(err, ProtocolError::WrongPeer);
        let goaway = transmit(&mut dialer, &mut a, t0);
        assert_eq!(goaway[4], crate::proto::frame::Kind::GoAway as u8);

        let mut stalled = Connection::dial(config("a", t0), "b", &a, t0);
        assert_eq!(stalled.handle_timeout(t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(
            stalled.handle_timeout(t0 + Duration::from_secs(5)),
            Err(ProtocolError::HandshakeTimeout)
        );
    }

    #[test]
    fn lz4_blocks_are_bounded_before_allocation_and_checked() {
        let text: Vec<u8> = b"compressible compressible compressible "
            .iter()
            .copied()
            .cycle()
            .take(4000)
            .collect();
        let block = lz4_flex::block::compress(&text);
        let crc = frame::crc32c(&text);
        let sum = Some(crc);
        let mut scratch = Vec::new();
        let seq = Seq(3);
        let ok = decompress(&mut scratch, seq, 4000, &block, sum, 1 << 20).unwrap();
        assert_eq!(ok, &text[..]);
        // A bomb: a small block announcing more than the receiver accepts is refused before
        // any buffer grows.
        let mut scratch = Vec::new();
        let err = decompress(&mut scratch, seq, u32::MAX, &block, None, 1 << 20).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Compression { seq: 3, .. }),
            "{err}"
        );
        assert_eq!(scratch.capacity(), 0);
        // A real one: 1 MiB of zeros in a tiny block, against a 64 KiB limit.
        let zeros = lz4_flex::block::compress(&vec![0u8; 1 << 20]);
        assert!(zeros.len() < 8 << 10);
        let err = decompress(&mut scratch, seq, 1 << 20, &zeros, None, 64 << 10).unwrap_err();
        assert!(matches!(err, ProtocolError::Compression { .. }), "{err}");
        assert_eq!(scratch.capacity(), 0);
        // Truncated, garbage, or announcing another length.
        for cut in [1, block.len() / 2, block.len() - 1] {
            let err = decompress(&mut scratch, seq, 4000, &block[..cut], None, 1 << 20);
            assert!(
                matches!(err, Err(ProtocolError::Compression { .. })),
                "cut {cut}"
            );
        }
        let err = decompress(&mut scratch, seq, 4000, &[0xff; 64], None, 1 << 20);
        assert!(matches!(err, Err(ProtocolError::Compression { .. })));
        let err = decompress(&mut scratch, seq, 3999, &block, None, 1 << 20);
        assert!(matches!(err, Err(ProtocolError::Compression { .. })));
        let err = decompress(&mut scratch, seq, 4001, &block, None, 1 << 20);
        assert!(matches!(err, Err(ProtocolError::Compression { .. })));
        // Decompressed fine, but not what was checksummed.
        let err = decompress(&mut scratch, seq, 4000, &block, Some(crc ^ 1), 1 << 20);
        assert_eq!(err, Err(ProtocolError::ChecksumMismatch { seq: 3 }));
    }

    fn config_auth(node: &str, t0: Instant, token: Option<&str>) -> Arc<ConnectionConfig> {
        let mut config = (*config(node, t0)).clone();
        config.auth = token.map(|t| {
            Arc::new(crate::security::auth::HmacAuth::new(
                &crate::security::AuthToken::new(t),
            )) as Arc<dyn Authenticator>
        });
        Arc::new(config)
    }

    /// Runs the AUTH exchange between a dialer "a" holding `dialer_token` and an acceptor "b"
    /// holding `acceptor_token`, as far as it goes; returns the first error and whether the
    /// acceptor let the HELLO through.
    fn auth_exchange(
        dialer_token: Option<&str>,
        acceptor_token: &str,
    ) -> (Result<(), ProtocolError>, bool) {
        let t0 = Instant::now();
        let (mut a, mut b) = (
            Sessions::new(SessionId(Uuid::from_u128(1))),
            Sessions::new(SessionId(Uuid::from_u128(2))),
        );
        let mut log = Log::default();
        let b_config = config_auth("b", t0, Some(acceptor_token));
        let mut dialer = Connection::dial(config_auth("a", t0, dialer_token), "b", &a, t0);
        let mut acc = Accepting::with_auth(
            t0 + Duration::from_secs(5),
            AcceptAuth {
                authenticator: b_config.auth.clone().unwrap(),
                node_id: b_config.node_id.clone(),
            },
        );
        // HELLO → challenge → response (or refusal) → proof + HELLO.
        let hello = transmit(&mut dialer, &mut a, t0);
        if let Err(e) = acc.handle_bytes(&hello) {
            return (Err(e), false);
        }
        let challenge = acc.take_transmit();
        assert!(!challenge.is_empty(), "a challenge");
        if let Err(e) = dialer.handle_bytes(&mut a, &challenge, t0, &mut log) {
            return (Err(e), false);
        }
        let response = transmit(&mut dialer, &mut a, t0);
        let info = match acc.handle_bytes(&response) {
            Ok(Some(info)) => info,
            Ok(None) => panic!("the response was complete"),
            Err(e) => return (Err(e), false),
        };
        let mut acceptor = Connection::accept(b_config, &info, &mut b, t0, &mut log).unwrap();
        let reply = transmit(&mut acceptor, &mut b, t0);
        let result = dialer.handle_bytes(&mut a, &reply, t0, &mut log);
        assert_eq!(result.is_ok(), dialer.is_established());
        (result, true)
    }

    #[test]
    fn auth_admits_only_holders_of_the_secret() {
        let secret = "a shared secret of some length";
        assert_eq!(auth_exchange(Some(secret), secret), (Ok(()), true));
        // The wrong secret: refused before the acceptor lets the HELLO through.
        let (result, through) = auth_exchange(Some("another secret entirely"), secret);
        assert!(
            matches!(result, Err(ProtocolError::Unauthenticated(_))),
            "{result:?}"
        );
        assert!(!through);
        // No secret: the HELLO does not offer AUTH, refused at once.
        let (result, through) = auth_exchange(None, secret);
        assert!(
            matches!(result, Err(ProtocolError::Unauthenticated(_))),
            "{result:?}"
        );
        assert!(!through);
    }

    #[test]
    fn a_recorded_response_does_not_pass_a_new_challenge() {
        let t0 = Instant::now();
        let secret = "a shared secret of some length";
        let b_config = config_auth("b", t0, Some(secret));
        let accepting = || {
            Accepting::with_auth(
                t0 + Duration::from_secs(5),
                AcceptAuth {
                    authenticator: b_config.auth.clone().unwrap(),
                    node_id: b_config.node_id.clone(),
                },
            )
        };
        // A real exchange, recorded.
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut dialer = Connection::dial(config_auth("a", t0, Some(secret)), "b", &a, t0);
        let hello = transmit(&mut dialer, &mut a, t0);
        let mut acc = accepting();
        acc.handle_bytes(&hello).unwrap();
        let challenge = acc.take_transmit();
        dialer
            .handle_bytes(&mut a, &challenge, t0, &mut Log::default())
            .unwrap();
        let response = transmit(&mut dialer, &mut a, t0);
        assert!(acc.handle_bytes(&response).unwrap().is_some());
        // Replayed by someone without the secret to a new connection: a new challenge, and
        // the old response fails it.
        let mut replayed = accepting();
        assert!(replayed.handle_bytes(&hello).unwrap().is_none());
        assert_ne!(replayed.take_transmit(), challenge, "a fresh nonce");
        assert_eq!(
            replayed.handle_bytes(&response),
            Err(ProtocolError::Unauthenticated(
                "the dialer's AUTH proof does not verify"
            ))
        );
    }

    #[test]
    fn a_dialer_with_a_secret_refuses_an_acceptor_without_one() {
        let t0 = Instant::now();
        let mut a = Sessions::new(SessionId(Uuid::from_u128(1)));
        let mut b = Sessions::new(SessionId(Uuid::from_u128(2)));
        let mut log = Log::default();
        let mut dialer = Connection::dial(
            config_auth("a", t0, Some("s3cret s3cret s3cret")),
            "b",
            &a,
            t0,
        );
        let hello = transmit(&mut dialer, &mut a, t0);
        let mut acc = Accepting::new(t0 + Duration::from_secs(5));
        let info = acc.handle_bytes(&hello).unwrap().unwrap();
        let mut acceptor =
            Connection::accept(config("b", t0), &info, &mut b, t0, &mut log).unwrap();
        let reply = transmit(&mut acceptor, &mut b, t0);
        let result = dialer.handle_bytes(&mut a, &reply, t0, &mut log);
        assert!(
            matches!(result, Err(ProtocolError::Unauthenticated(_))),
            "{result:?}"
        );
        assert!(!dialer.is_established());
    }
}
