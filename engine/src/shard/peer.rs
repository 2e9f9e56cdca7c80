//! A peer's shard-local state: its sessions, its connection, and draining its publish queue
//! into its outbound session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::net::dial::DialPlan;
use crate::proto::frame::{Seq, SessionId};
use crate::proto::session::Sessions;
use crate::route::PeerShared;
use crate::route::confirm::ConfirmSlot;
use crate::route::peer::Peer;

use super::State;
use super::conn::Phase;
use super::durable::restore_sessions;
use super::slots::{ConnId, PeerIndex};
use super::window::window_grain;
use super::{COMMAND_BUDGET, DRAIN_BUDGET};

/// What a session keeps with each unacknowledged message: its confirmation, if any.
#[derive(Debug)]
pub(super) struct Token {
    pub(super) confirm: Option<Arc<ConfirmSlot>>,
}

pub(super) struct PeerState {
    pub(super) shared: Arc<PeerShared>,
    pub(super) handle: Peer,
    pub(super) sessions: Sessions<Token>,
    /// The peer's slot in the watermark table and the session stored in it.
    pub(super) rx_slot: Option<(usize, SessionId)>,
    /// The connection serving this peer (dialing, handshaking or established).
    pub(super) conn: Option<ConnId>,
    pub(super) established: bool,
    pub(super) dial: Option<DialPlan>,
    pub(super) redial_at: Option<Instant>,
    /// Session buffer window bookkeeping: (s, t) means every seq up to `s` was taken from the
    /// queue by `t`. Coarse (see `window_grain`), pruned as ACKs arrive.
    pub(super) taken_at: VecDeque<(Seq, Instant)>,
    /// Highest seq already reported as older than the window.
    pub(super) window_reported: Seq,
}

impl State {
    pub(super) fn ensure_peer(&mut self, shared: &Arc<PeerShared>) -> PeerIndex {
        if let Some(&index) = self.peer_by_key.get(&shared.key) {
            return index;
        }
        debug_assert_eq!(shared.shard, self.id);
        let mut sessions = Sessions::new(shared.tx_session);
        let mut rx_slot = None;
        let mut taken_at = VecDeque::new();
        if let Some(durable) = &mut self.durable {
            let now = self.now;
            restore_sessions(
                durable,
                shared,
                &mut sessions,
                &mut rx_slot,
                &mut taken_at,
                now,
            );
        }
        if let Some(&(_, taken)) = taken_at.front() {
            self.arm_window(taken);
        }
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
            taken_at,
            window_reported: Seq::ZERO,
        });
        self.peer_by_key.insert(shared.key, index);
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
        // After a failed sync nothing written since the last good one may be confirmed, and a
        // record still in the queue may have been written after the failed sync's snapshot.
        let sync_failed = self.durable.as_ref().is_some_and(|d| d.outbox.has_failed());
        let mut count = 0;
        while count < DRAIN_BUDGET
            && tx.unacked_count() < self.config.unacked_count_max
            && tx.unacked_payload_len() < self.config.unacked_bytes_max
        {
            let Some((position, mut outgoing)) = ps.shared.queue.pop() else {
                break;
            };
            if sync_failed && let Some(confirm) = outgoing.confirm.take() {
                confirm.fail_sync();
            }
            let token = Token {
                confirm: outgoing.confirm,
            };
            tx.push(Seq(position + 1), outgoing.payload, token);
            count += 1;
        }
        if count > 0 {
            let seq = Seq(tx.seq_next().0 - 1);
            let now = self.now;
            let fresh = ps
                .taken_at
                .back()
                .is_none_or(|&(_, t)| now >= t + window_grain(self.config.session_buffer_window));
            match ps.taken_at.back_mut() {
                Some(last) if !fresh => last.0 = seq,
                _ => ps.taken_at.push_back((seq, now)),
            }
        }
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
