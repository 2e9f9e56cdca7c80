//! A peer's shard-local state: its sessions, its connection, and draining its publish queue
//! into its outbound session.

use crate::security::rate::TokenBucket;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Config;
use crate::error::Error;
use crate::net::dial::DialPlan;
use crate::outbox::record;
use crate::outbox::recovered::RecoveredMessages;
use crate::proto::frame::{Seq, SessionId};
use crate::proto::session::{FlowLimits, Sessions, TxSession};
use crate::route::PeerShared;
use crate::route::confirm::ConfirmSlot;
use crate::route::peer::Peer;
use crate::route::queue::Outgoing;

use super::State;
use super::conn::Phase;
use super::durable::restore_sessions;
use super::slots::{ConnId, PeerIndex};
use super::window::window_grain;
use super::{COMMAND_BUDGET, DRAIN_BUDGET};

pub(super) struct PeerState {
    pub(super) shared: Arc<PeerShared>,
    pub(super) handle: Peer,
    pub(super) sessions: Sessions,
    /// The peer's slot in the watermark table and the session stored in it.
    pub(super) rx_slot: Option<(usize, SessionId)>,
    /// The connection serving this peer (dialing, handshaking or established).
    pub(super) conn: Option<ConnId>,
    pub(super) established: bool,
    pub(super) dial: Option<DialPlan>,
    pub(super) redial_at: Option<Instant>,
    /// Confirmations of unacknowledged messages, in sequence order: the only per-message state,
    /// and only for messages published with `publish_confirmed`.
    pub(super) confirms: VecDeque<(Seq, Arc<ConfirmSlot>)>,
    /// Messages the outbox recovered at start and the session has not taken yet. They precede
    /// everything in the queue and are taken first, under the same flow limits, so a large
    /// backlog is not copied into memory all at once.
    pub(super) recovered: RecoveredMessages,
    /// A source published to this peer during the current turn (it is on `State::touched`).
    pub(super) touched: bool,
    /// The session's latest messages were published on this shard (by a source or a
    /// handler) rather than drained from the publish queue: see [`send_budget`].
    pub(super) local_producer: bool,
    /// The latest drain from the publish queue took messages of [`LARGE_PAYLOAD_LEN`] bytes
    /// or more on average: see [`send_budget`].
    pub(super) large_payloads: bool,
    /// `Config::inbound_rate_limit`'s bucket for this peer, if there is one.
    pub(super) inbound: Option<TokenBucket>,
}

impl PeerState {
    /// Whether messages wait to be taken into the session.
    pub(super) fn has_queued(&self) -> bool {
        self.recovered.len() > 0 || !self.shared.queue.is_empty()
    }
}

impl State {
    pub(super) fn ensure_peer(&mut self, shared: &Arc<PeerShared>) -> PeerIndex {
        if let Some(&index) = self.peer_by_key.get(&shared.key) {
            return index;
        }
        debug_assert_eq!(shared.shard, self.id);
        let mut sessions = Sessions::new(shared.tx_session);
        let mut rx_slot = None;
        let mut recovered = RecoveredMessages::default();
        if let Some(durable) = &mut self.durable {
            recovered = restore_sessions(durable, shared, &mut sessions, &mut rx_slot);
        }
        // Encoded as if the peer took everything this node offers, until its HELLO says.
        sessions.tx.set_encoding(self.proto_config.encoding());
        let index = self.peers.insert(PeerState {
            handle: Peer {
                shared: Arc::clone(shared),
                router: Arc::clone(&self.router),
            },
            sessions,
            rx_slot,
            shared: Arc::clone(shared),
            conn: None,
            established: false,
            dial: None,
            redial_at: None,
            confirms: VecDeque::new(),
            recovered,
            touched: false,
            local_producer: false,
            large_payloads: false,
            inbound: self
                .config
                .inbound_rate_limit
                .map(|limit| TokenBucket::new(limit, self.now)),
        });
        self.peer_by_key.insert(shared.key, index);
        if self.peers[index].has_queued() {
            self.drain_again.push(index);
        }
        index
    }

    /// Moves published messages from the ready peers' queues into their sessions.
    pub(super) fn drain_peers(&mut self) {
        let mut ready = std::mem::take(&mut self.drain_again);
        for _ in 0..COMMAND_BUDGET * 16 {
            let Some(shared) = self.mailbox.ready.pop() else {
                break;
            };
            // Cleared before popping so a publish racing with this drain schedules the peer
            // again (see `PeerShared::push`).
            shared.notified.store(false, crate::sync::Ordering::SeqCst);
            ready.push(self.ensure_peer(&shared));
        }
        for peer in ready {
            self.drain_peer(peer);
        }
    }

    pub(super) fn drain_peer(&mut self, peer: PeerIndex) {
        let Some(ps) = self.peers.get_mut(peer) else {
            return;
        };
        let tx = &mut ps.sessions.tx;
        let limits = flow_limits(&self.config, ps.established, false);
        // With an outbox, a message's weight is its record's space, released to the outbox
        // when the peer acknowledges it.
        let durable = self.durable.is_some();
        let weight = |len: usize| {
            if durable {
                record::space(len) as u64
            } else {
                0
            }
        };
        let mut count = 0;
        let mut bytes = 0;
        while count < DRAIN_BUDGET && tx.has_room(&limits) {
            let Some(message) = ps.recovered.next() else {
                break;
            };
            match message.payload {
                Some(payload) => {
                    bytes += payload.len();
                    tx.push(message.seq, &payload, weight(payload.len()));
                }
                None => tx.push_lost(message.seq, weight(0)),
            }
            count += 1;
        }
        // After a failed sync nothing written since the last good one may be confirmed, and a
        // record still in the queue may have been written after the failed sync's snapshot.
        let sync_failed = self.durable.as_ref().is_some_and(|d| d.outbox.has_failed());
        while count < DRAIN_BUDGET && tx.has_room(&limits) {
            let Some((position, outgoing)) = ps.shared.queue.pop() else {
                break;
            };
            let seq = Seq(position + 1);
            let Outgoing { payload, confirm } = outgoing;
            let weight = weight(payload.len());
            bytes += payload.len();
            push_payload(tx, seq, payload, weight);
            if let Some(confirm) = confirm {
                if sync_failed {
                    confirm.fail_sync();
                } else {
                    ps.confirms.push_back((seq, confirm));
                }
            }
            count += 1;
        }
        if count > 0 {
            let grain = window_grain(self.config.session_buffer_window);
            tx.handle_pushed(self.now, grain);
            ps.local_producer = false;
            ps.large_payloads = large_payloads(count, bytes);
            self.report_undeliverable(peer);
        }
        let ps = &mut self.peers[peer];
        let conn = ps.conn.filter(|_| ps.established);
        if count == DRAIN_BUDGET {
            self.drain_again.push(peer);
        }
        if count > 0 {
            self.arm_window(self.now);
            if let Some(conn) = conn {
                self.mark_dirty(conn);
            }
        }
    }

    pub(super) fn on_established(&mut self, peer: PeerIndex) {
        let ps = &mut self.peers[peer];
        ps.established = true;
        let len_max = ps.sessions.tx.peer_payload_len_max() as u64;
        ps.shared.payload_len_max.store(len_max, Ordering::Relaxed);
        if let Some(dial) = &mut ps.dial {
            dial.handle_established();
        }
        ps.shared
            .published
            .connected
            .store(true, crate::sync::Ordering::Relaxed);
        ps.shared
            .published
            .seq_acked
            .store(ps.sessions.tx.seq_acked().0, Ordering::Relaxed);
        if let Some(conn) = ps.conn
            && let Phase::Linked { proto, .. } = &self.conns[conn].phase
            && proto.lost_on_resume() > 0
        {
            // proto reports it; dropping it here would hide lost messages.
            tracing::warn!(
                peer = %ps.shared.node_id,
                lost = proto.lost_on_resume(),
                "peer had already dropped messages this node never delivered"
            );
        }
        self.report_undeliverable(peer);
        let ps = &mut self.peers[peer];
        self.counters.peers_connected += 1;
        self.counters.connects += 1;
        tracing::debug!(peer = %ps.shared.node_id, "connection established");
        self.handler.on_connected(&ps.handle);
        if let Some(conn) = ps.conn {
            self.mark_dirty(conn);
        }
        self.drain_again.push(peer);
    }
}

impl State {
    /// Tells the application about the messages to `peer` that its session sent as LOST because
    /// they are larger than the peer accepts, and fails their confirmations.
    pub(super) fn report_undeliverable(&mut self, peer: PeerIndex) {
        let ps = &mut self.peers[peer];
        let oversize = ps.sessions.tx.take_oversize();
        if oversize.is_empty() {
            return;
        }
        let len_max = ps.sessions.tx.peer_payload_len_max();
        for (seq, len) in oversize {
            self.counters.msgs_undeliverable += 1;
            tracing::warn!(peer = %ps.shared.node_id, seq = seq.0, len, len_max, "a message is larger than the peer accepts; it goes as lost");
            if let Ok(at) = ps.confirms.binary_search_by_key(&seq, |(s, _)| *s)
                && let Some((_, slot)) = ps.confirms.remove(at)
            {
                slot.fail_too_large(len, len_max);
            }
            let reason = Error::PayloadTooLarge { len, len_max };
            self.handler
                .on_undeliverable(&ps.handle, ps.shared.message_id(seq.0), &reason);
        }
    }
}

/// Bytes one send carries at most for a session whose messages are published on the shard
/// itself, or are large ([`LARGE_PAYLOAD_LEN`]): one loopback/GSO segment. A send larger than
/// that makes a congestion control that paces (BBR with no `fq` qdisc) arm a timer for the
/// rest, and the timer's softirq then sends it: at 1 KiB from a publishing thread, 256 KiB
/// sends spent some 60 ns a message more in interrupt and softirq handling than 64 KiB sends,
/// which ran 8–14 % faster. A source produces between the shard's sends, so sending each
/// turn's production in one piece also sends the frames while they are in cache: the shard
/// source ran 18–26 % faster with it.
///
/// Small messages drained from the publish queue keep `send_batch_bytes_max` sends: capped at
/// 64 KiB too, the thread publishers lost 7–16 % at 64 B (a send, a completion and a loop turn
/// per 964 messages instead of per 3855). At 256 B, 512 B and 4 KiB the cap measured neither
/// better nor worse.
const CAPPED_SEND_BYTES_MAX: usize = 64 << 10;

/// From this average payload length up, messages drained from the publish queue go out in
/// sends of at most [`CAPPED_SEND_BYTES_MAX`].
const LARGE_PAYLOAD_LEN: usize = 256;

/// Whether a drain of `count` messages holding `bytes` of payload makes the session's sends
/// the capped ones (see [`CAPPED_SEND_BYTES_MAX`]).
fn large_payloads(count: usize, bytes: usize) -> bool {
    bytes >= count * LARGE_PAYLOAD_LEN
}

/// The bytes one send of this session carries at most: smaller for messages published on the
/// shard and for large ones (see [`CAPPED_SEND_BYTES_MAX`]).
pub(super) fn send_budget(config: &Config, local_producer: bool, large_payloads: bool) -> usize {
    if local_producer || large_payloads {
        config.send_batch_bytes_max.min(CAPPED_SEND_BYTES_MAX)
    } else {
        config.send_batch_bytes_max
    }
}

/// The flow limits of a peer's session (see `FlowLimits`), for messages published on the
/// shard (`local_producer`) or drained from the publish queue.
pub(super) fn flow_limits(config: &Config, established: bool, local_producer: bool) -> FlowLimits {
    FlowLimits {
        unacked_count_max: config.unacked_count_max as u64,
        unacked_bytes_max: config.unacked_bytes_max,
        // Encoding far ahead only helps while there is a connection to send on; while the
        // peer is away the session takes up to its unacknowledged limits, as it would have
        // sent them. Queue-drained sessions encode as far ahead with capped sends as without,
        // so that a capped send is followed at once by the next.
        unsent_bytes_max: if established {
            UNSENT_SENDS * send_budget(config, local_producer, false)
        } else {
            usize::MAX
        },
    }
}

/// How many sends' worth of messages a session encodes ahead of the connection; the rest wait
/// in the publish queue until a send completes.
const UNSENT_SENDS: usize = 2;

/// Payloads at least this long are sent from the publisher's own `Bytes` instead of being copied
/// into the session's buffer: below it, the copy costs less than the extra iovec and segment.
const SHARED_PAYLOAD_LEN_MIN: usize = 16 << 10;

/// Encodes message `seq` into `tx`, keeping `payload` by reference if it is large
/// ([`SHARED_PAYLOAD_LEN_MIN`]), copying it otherwise.
pub(super) fn push_payload(tx: &mut TxSession, seq: Seq, payload: Bytes, weight: u64) {
    if payload.len() >= SHARED_PAYLOAD_LEN_MIN {
        tx.push_shared(seq, payload, weight);
    } else {
        tx.push(seq, &payload, weight);
    }
}
