//! Received bytes: through the connection's link, then into the HELLO reader of an accepted
//! socket or the peer's connection state machine.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::Error;
use crate::proto::connection::CloseCause;
use crate::proto::frame::Seq;
use crate::proto::frame::{self, Frame};
use crate::proto::{GoAwayReason, ProtocolError};
use crate::route::stage::{self, Staged};
use crate::security::tls::{TlsFailure, TlsFailureKind};

use super::State;
use super::conn::Phase;
use super::events::ShardEvents;
use super::link::Link;
use super::peer::push_payload;
use super::slots::{ConnId, PeerIndex};

/// Which error a failed handshake is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandshakeCause {
    /// [`Error::TlsRequired`]: the node dialed wants TLS.
    TlsRequired,
    /// [`Error::MtlsRequired`]: the node dialed wants a client certificate.
    MtlsRequired,
    /// [`Error::HandshakeFailed`].
    Other,
}

impl State {
    /// Bytes arrived on the socket: through the connection's link, into proto.
    pub(super) fn on_recv(&mut self, index: ConnId, wire: &[u8]) {
        let conn = &mut self.conns[index];
        if conn.link.failure().is_some() {
            // The link failed and the connection is closing: what still arrives is dropped.
            return;
        }
        let Link::Tls(tls) = &mut conn.link else {
            return self.on_data(index, wire);
        };
        if tls.link.is_fresh_server() && frame::is_plaintext_hello(wire) {
            // Never read, never answered in kind: the dialer is told, in the only language it
            // speaks, that this node wants TLS.
            let mut answer = Vec::new();
            Frame::GoAway {
                reason: GoAwayReason::TlsRequired,
                retry_after_ms: 0,
                message: "this node accepts only TLS",
            }
            .encode(&mut answer);
            let failure = tls.link.refuse_plaintext(&answer);
            return self.tls_failed(index, failure);
        }
        if let Err(e) = tls.link.receive(wire) {
            return self.tls_failed(index, e);
        }
        // Proto reads the plaintext while the link stays in place: what proto answers (a
        // GOAWAY, say) is encrypted like anything else.
        let plaintext = tls.link.take_plaintext();
        let generation = conn.generation;
        if !plaintext.is_empty() {
            self.on_data(index, &plaintext);
        }
        // The connection may have moved to another shard (its HELLO named a peer owned there),
        // and its slot may have been reused since: the buffer goes back only to the same one.
        if let Some(conn) = self.conns.get_mut(index)
            && conn.generation == generation
            && let Link::Tls(tls) = &mut conn.link
        {
            tls.link.recycle(plaintext);
        }
    }

    /// The connection's TLS link failed: no frame can be sent on it any more, so it closes
    /// without a GOAWAY (the peer sees the TLS alert, if rustls sent one, or the close).
    pub(super) fn tls_failed(&mut self, index: ConnId, failure: TlsFailure) {
        self.counters.tls_failures += 1;
        let conn = &mut self.conns[index];
        let peer = match &conn.phase {
            Phase::Linked { peer, .. } | Phase::Connecting { peer, .. } => Some(*peer),
            _ => None,
        };
        let node_id = peer.map(|p| self.peers[p].shared.node_id.to_string());
        tracing::warn!(conn = index.0, peer = node_id, error = %failure, "TLS failed; closing connection");
        if let Some(peer) = peer {
            let cause = match failure.kind() {
                TlsFailureKind::CertificateRequired => HandshakeCause::MtlsRequired,
                _ => HandshakeCause::Other,
            };
            self.handshake_failed(peer, cause, failure.to_string());
        }
        self.begin_close(index, Duration::ZERO);
    }

    /// Tells the application that a connection to `peer` failed before it could carry
    /// messages, and why.
    pub(super) fn handshake_failed(
        &mut self,
        peer: PeerIndex,
        cause: HandshakeCause,
        reason: String,
    ) {
        let ps = &self.peers[peer];
        let node_id = ps.shared.node_id.to_string();
        let error = match cause {
            HandshakeCause::TlsRequired => Error::TlsRequired {
                reason: format!("{node_id} refused this node's plaintext HELLO: {reason}"),
            },
            HandshakeCause::MtlsRequired => Error::MtlsRequired {
                reason: format!("{node_id} asked for a client certificate: {reason}"),
            },
            HandshakeCause::Other => Error::HandshakeFailed {
                peer: node_id,
                reason,
            },
        };
        self.handler.on_handshake_failed(&ps.handle, &error);
    }

    fn on_data(&mut self, index: ConnId, data: &[u8]) {
        let now = self.now;
        let mut staged = None;
        let mut refused = None;
        let conn = &mut self.conns[index];
        match &mut conn.phase {
            Phase::Accepting(acc) => match acc.handle_bytes(data) {
                Ok(None) => {
                    // The AUTH challenge, if the HELLO asked for one.
                    let challenge = acc.take_transmit();
                    if !challenge.is_empty() {
                        conn.link.poll_transmit(&mut conn.out, |out, _| {
                            out.extend_from_slice(&challenge);
                        });
                        self.mark_dirty(index);
                    }
                }
                Ok(Some(hello)) => self.route_hello(index, hello),
                Err(err) => self.reject(index, &err),
            },
            Phase::Linked { peer, proto } => {
                let peer = *peer;
                let ps = &mut self.peers[peer];
                let was_established = proto.is_established();
                let mut events = ShardEvents::new(
                    &*self.handler,
                    &ps.handle,
                    &mut ps.rx_slot,
                    &mut ps.confirms,
                    &mut self.counters,
                    self.durable.as_mut(),
                );
                // Publishes from the handler's callbacks to peers of this shard are staged and
                // encoded right after (route/stage.rs).
                stage::open(self.id, std::mem::take(&mut self.staged));
                let received_before = events.received();
                let result = proto.handle_bytes(&mut ps.sessions, data, now, &mut events);
                let received = events.received() - received_before;
                events.finish();
                // Over its inbound rate limit, the peer is not read from until the debt is paid
                // back; everything received so far was processed, so nothing is lost.
                if let Some(bucket) = &mut ps.inbound
                    && let Some(wait) = bucket.charge(received, now)
                {
                    let at = now + wait;
                    conn.paused_until = Some(at);
                    self.counters.rate_limit_pauses += 1;
                    self.timers.push(std::cmp::Reverse((
                        at,
                        super::timer::Timer::Resume {
                            index,
                            generation: conn.generation,
                        },
                    )));
                }
                staged = Some(stage::close());
                ps.shared
                    .published
                    .seq_delivered
                    .store(ps.sessions.rx.seq_delivered().0, Ordering::Relaxed);
                ps.shared
                    .published
                    .seq_acked
                    .store(ps.sessions.tx.seq_acked().0, Ordering::Relaxed);
                if let Some(rtt) = proto.srtt() {
                    let rtt_ns = rtt.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
                    ps.shared.published.srtt_ns.store(rtt_ns, Ordering::Relaxed);
                }
                if let Err(err) = &result {
                    self.counters.protocol_errors += 1;
                    tracing::warn!(peer = %ps.shared.node_id, error = %err, "protocol error; closing connection");
                    if !was_established && matches!(err, ProtocolError::Unauthenticated(_)) {
                        refused = Some((HandshakeCause::Other, err.to_string()));
                    }
                }
                let established = proto.is_established();
                let retry_after = match proto.close_cause() {
                    Some(CloseCause::GoAwayReceived {
                        reason,
                        retry_after_ms,
                        message,
                    }) => {
                        tracing::info!(peer = %ps.shared.node_id, ?reason, message, "peer sent goaway");
                        if *reason == GoAwayReason::Unauthenticated {
                            refused = Some((
                                HandshakeCause::Other,
                                format!("refused as unauthenticated: {message}"),
                            ));
                        } else if *reason == GoAwayReason::TlsRequired {
                            refused = Some((HandshakeCause::TlsRequired, message.clone()));
                        }
                        Some(Duration::from_millis(u64::from(*retry_after_ms)))
                    }
                    Some(_) => Some(Duration::ZERO),
                    None => None,
                };
                if ps.has_queued() {
                    self.drain_again.push(peer);
                }
                if !was_established && established {
                    self.on_established(peer);
                }
                if let Some((cause, reason)) = refused {
                    self.handshake_failed(peer, cause, reason);
                }
                if let Some(retry_after) = retry_after {
                    self.begin_close(index, retry_after);
                }
            }
            Phase::Connecting { .. } | Phase::Detached => {}
        }
        if let Some(staged) = staged {
            self.push_staged(staged);
        }
    }

    /// Encodes the messages a handler staged into their peers' sessions, in order, and queues
    /// the connections for a send, as for a source's publishes. Keeps the vector for the next
    /// stage.
    fn push_staged(&mut self, mut staged: Vec<Staged>) {
        for Staged {
            shared,
            seq,
            payload,
        } in staged.drain(..)
        {
            let index = self.ensure_peer(&shared);
            let ps = &mut self.peers[index];
            push_payload(&mut ps.sessions.tx, Seq(seq), payload, 0);
            ps.local_producer = true;
            if !ps.touched {
                ps.touched = true;
                self.touched.push(index);
            }
        }
        self.staged = staged;
        self.finish_local_publishes();
    }
}
