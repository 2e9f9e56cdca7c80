//! Sessions: per-direction sequencing, replay and dedup (docs/protocol.md, "Sessions").
//!
//! A [`TxSession`] holds every message its peer has not acknowledged, in sequence order, and a
//! cursor that says how many of them went out on the current connection. A [`RxSession`] holds
//! the delivered watermark: a MSG at or below it is a replay and is dropped, the next one is
//! delivered, and a gap is a protocol error because TCP is ordered. Both outlive connections;
//! [`TxSession::resume`] and [`RxSession::resume`] apply the resume points exchanged in HELLO.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::proto::error::ProtocolError;
use crate::proto::frame::{Seq, SessionId};

/// One unacknowledged message and the caller's token for it (a confirmation, say).
#[derive(Debug)]
pub struct TxEntry<T> {
    pub payload: Bytes,
    pub token: T,
}

/// What [`TxSession::poll_transmit`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit<'a> {
    Msg(Seq, &'a Bytes),
    Lost(Seq),
}

/// The sending half of a session.
#[derive(Debug)]
pub struct TxSession<T> {
    id: SessionId,
    acked: Seq,
    /// Sequence numbers `acked + 1 ..= acked + entries.len()`.
    entries: VecDeque<TxEntry<T>>,
    /// `entries[..cursor]` were written to the current connection.
    cursor: usize,
    payload_len: usize,
    /// Sequence numbers among `entries` whose content the sender lost (their outbox records
    /// were damaged), ascending: a LOST frame goes out in their place. Kept apart so that the
    /// common entry stays small.
    lost: VecDeque<Seq>,
}

impl<T> TxSession<T> {
    /// A new session that has sent nothing; its first message will be sequence 1.
    pub fn new(id: SessionId) -> TxSession<T> {
        TxSession::resuming(id, Seq::ZERO)
    }

    /// A session restored from saved state: everything up to `acked` was acknowledged, and
    /// the next message pushed must be `acked + 1`.
    pub fn resuming(id: SessionId, acked: Seq) -> TxSession<T> {
        TxSession {
            id,
            acked,
            entries: VecDeque::new(),
            cursor: 0,
            payload_len: 0,
            lost: VecDeque::new(),
        }
    }

    /// Appends the message with sequence number `seq`, which must be [`TxSession::seq_next`].
    ///
    /// # Panics
    ///
    /// If `seq` is out of order: sequence numbers are assigned by one queue, so a gap here is a
    /// bug that would otherwise corrupt the session.
    pub fn push(&mut self, seq: Seq, payload: Bytes, token: T) {
        assert_eq!(
            seq,
            self.seq_next(),
            "tx session {} pushed out of order",
            self.id
        );
        self.payload_len += payload.len();
        self.entries.push_back(TxEntry { payload, token });
    }

    /// Appends message `seq`, whose content the sender lost: it is transmitted as LOST and
    /// acknowledged like any other. Otherwise as [`TxSession::push`].
    pub fn push_lost(&mut self, seq: Seq, token: T) {
        self.push(seq, Bytes::new(), token);
        self.lost.push_back(seq);
    }

    /// Applies a cumulative ACK, handing every newly acknowledged entry to `on_acked`.
    ///
    /// # Errors
    ///
    /// An ACK beyond the last message sent on this connection is
    /// [`ProtocolError::AckBeyondSent`]. A stale ACK (at or below the current one) is ignored.
    pub fn handle_ack(
        &mut self,
        seq: Seq,
        mut on_acked: impl FnMut(Seq, TxEntry<T>),
    ) -> Result<(), ProtocolError> {
        let sent = self.acked.0 + self.cursor as u64;
        if seq.0 > sent {
            return Err(ProtocolError::AckBeyondSent { acked: seq.0, sent });
        }
        while self.acked < seq {
            let entry = self
                .entries
                .pop_front()
                .expect("acked <= sent <= acked + len");
            self.acked = self.acked.next();
            self.cursor -= 1;
            self.payload_len -= entry.payload.len();
            on_acked(self.acked, entry);
        }
        while self.lost.front().is_some_and(|&l| l <= self.acked) {
            self.lost.pop_front();
        }
        Ok(())
    }

    /// Starts a new connection from the resume point the peer sent in HELLO.
    ///
    /// If the peer knows this session, everything up to `peer_rx_delivered` is acknowledged and
    /// transmission restarts after it; otherwise everything unacknowledged is sent again.
    ///
    /// # Errors
    ///
    /// A resume point beyond the last sequence number this session ever assigned is
    /// [`ProtocolError::AckBeyondSent`].
    pub fn resume(
        &mut self,
        peer_rx_session: SessionId,
        peer_rx_delivered: Seq,
        on_acked: impl FnMut(Seq, TxEntry<T>),
    ) -> Result<(), ProtocolError> {
        self.cursor = self.entries.len();
        let result = if peer_rx_session == self.id {
            self.handle_ack(peer_rx_delivered, on_acked)
        } else {
            Ok(())
        };
        self.cursor = 0;
        result
    }

    /// The next message to write to the connection, advancing the cursor.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let entry = self.entries.get(self.cursor)?;
        self.cursor += 1;
        let seq = Seq(self.acked.0 + self.cursor as u64);
        Some(
            if !self.lost.is_empty() && self.lost.binary_search(&seq).is_ok() {
                Transmit::Lost(seq)
            } else {
                Transmit::Msg(seq, &entry.payload)
            },
        )
    }

    /// Forgets what was written to the connection that just closed.
    pub fn handle_disconnect(&mut self) {
        self.cursor = 0;
    }

    /// Removes and returns every unacknowledged entry (the engine is shutting down).
    pub fn drain(&mut self) -> impl Iterator<Item = TxEntry<T>> + '_ {
        self.cursor = 0;
        self.payload_len = 0;
        self.lost.clear();
        self.entries.drain(..)
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Visits the token of every unacknowledged message.
    pub fn for_each_token(&mut self, mut f: impl FnMut(&mut T)) {
        self.entries.iter_mut().for_each(|e| f(&mut e.token));
    }

    /// The highest acknowledged sequence number.
    pub fn seq_acked(&self) -> Seq {
        self.acked
    }

    /// The lowest sequence number still held (sent in HELLO as `tx_seq_first`).
    pub fn seq_first(&self) -> Seq {
        self.acked.next()
    }

    /// The sequence number the next pushed message must carry.
    pub fn seq_next(&self) -> Seq {
        Seq(self.acked.0 + self.entries.len() as u64 + 1)
    }

    /// Whether messages wait to be written to the connection.
    pub fn has_unsent(&self) -> bool {
        self.cursor < self.entries.len()
    }

    /// Number of unacknowledged messages.
    pub fn unacked_count(&self) -> usize {
        self.entries.len()
    }

    /// Payload bytes of the unacknowledged messages.
    pub fn unacked_payload_len(&self) -> usize {
        self.payload_len
    }
}

/// What [`RxSession::handle_msg`] decided about one MSG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next message: deliver it.
    Deliver,
    /// At or below the watermark: a replay of something already delivered.
    Duplicate,
}

/// The receiving half of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxSession {
    id: SessionId,
    delivered: Seq,
}

impl RxSession {
    /// A receiver that has heard from no session yet.
    pub fn new() -> RxSession {
        RxSession {
            id: SessionId::NIL,
            delivered: Seq::ZERO,
        }
    }

    /// A receiver restored from saved state.
    pub fn restore(id: SessionId, delivered: Seq) -> RxSession {
        RxSession { id, delivered }
    }

    /// Applies the sender's HELLO. A session this receiver does not know starts at the sender's
    /// `tx_seq_first`. Returns how many messages the sender has already dropped that this
    /// receiver never delivered (non-zero only when the receiver lost its state).
    pub fn resume(&mut self, peer_tx_session: SessionId, peer_tx_seq_first: Seq) -> u64 {
        let floor = Seq(peer_tx_seq_first.0.saturating_sub(1));
        if peer_tx_session != self.id {
            self.id = peer_tx_session;
            self.delivered = floor;
            return 0;
        }
        if self.delivered < floor {
            let lost = floor.0 - self.delivered.0;
            self.delivered = floor;
            return lost;
        }
        0
    }

    /// Decides what to do with MSG `seq`; a delivered message advances the watermark.
    ///
    /// # Errors
    ///
    /// A sequence number past the next expected one is [`ProtocolError::SequenceGap`].
    ///
    /// A LOST frame goes through here too: it advances the watermark like a delivery.
    pub fn handle_msg(&mut self, seq: Seq) -> Result<Delivery, ProtocolError> {
        // Compare before adding one: a peer's HELLO can put the watermark at u64::MAX.
        if seq <= self.delivered {
            return Ok(Delivery::Duplicate);
        }
        let expected = self.delivered.next();
        if seq == expected {
            self.delivered = seq;
            Ok(Delivery::Deliver)
        } else {
            Err(ProtocolError::SequenceGap {
                expected: expected.0,
                got: seq.0,
            })
        }
    }

    /// The session being received, or NIL.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The highest delivered sequence number.
    pub fn seq_delivered(&self) -> Seq {
        self.delivered
    }
}

/// Both halves of a peer pair's sessions: what outlives any one connection.
#[derive(Debug)]
pub struct Sessions<T> {
    pub tx: TxSession<T>,
    pub rx: RxSession,
}

impl<T> Sessions<T> {
    /// Fresh sessions with the given outbound id.
    pub fn new(tx_id: SessionId) -> Sessions<T> {
        Sessions {
            tx: TxSession::new(tx_id),
            rx: RxSession::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn tx_with(n: u64) -> TxSession<u64> {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        for i in 1..=n {
            tx.push(Seq(i), Bytes::from(vec![0; i as usize]), i);
        }
        tx
    }

    #[test]
    fn ack_releases_in_order_and_rejects_unsent() {
        let mut tx = tx_with(5);
        for _ in 0..3 {
            tx.poll_transmit().unwrap();
        }
        assert_eq!(
            tx.handle_ack(Seq(4), |_, _| ()),
            Err(ProtocolError::AckBeyondSent { acked: 4, sent: 3 })
        );
        let mut released = Vec::new();
        tx.handle_ack(Seq(2), |seq, e| released.push((seq.0, e.token)))
            .unwrap();
        assert_eq!(released, [(1, 1), (2, 2)]);
        tx.handle_ack(Seq(1), |_, _| panic!("stale ack releases nothing"))
            .unwrap();
        assert_eq!(tx.seq_first(), Seq(3));
        assert_eq!(tx.unacked_payload_len(), 3 + 4 + 5);
        assert_eq!(
            tx.poll_transmit().map(|t| match t {
                Transmit::Msg(s, _) | Transmit::Lost(s) => s,
            }),
            Some(Seq(4))
        );
    }

    #[test]
    fn resume_replays_after_the_peers_watermark() {
        let mut tx = tx_with(6);
        while tx.poll_transmit().is_some() {}
        tx.handle_disconnect();
        tx.resume(tx.id(), Seq(4), |_, _| ()).unwrap();
        assert_eq!(
            tx.poll_transmit().map(|t| match t {
                Transmit::Msg(s, _) | Transmit::Lost(s) => s,
            }),
            Some(Seq(5))
        );
        // A peer that lost its state gets everything unacknowledged again.
        tx.resume(SessionId::NIL, Seq(0), |_, _| ()).unwrap();
        assert_eq!(
            tx.poll_transmit().map(|t| match t {
                Transmit::Msg(s, _) | Transmit::Lost(s) => s,
            }),
            Some(Seq(5))
        );
        assert!(tx.resume(tx.id(), Seq(7), |_, _| ()).is_err());
    }

    #[test]
    fn a_lost_entry_is_transmitted_as_lost() {
        let mut tx: TxSession<()> = TxSession::resuming(SessionId(Uuid::from_u128(1)), Seq(10));
        assert_eq!(tx.seq_next(), Seq(11));
        tx.push(Seq(11), Bytes::from_static(b"a"), ());
        tx.push_lost(Seq(12), ());
        tx.push(Seq(13), Bytes::from_static(b"b"), ());
        assert!(matches!(
            tx.poll_transmit(),
            Some(Transmit::Msg(Seq(11), _))
        ));
        assert_eq!(tx.poll_transmit(), Some(Transmit::Lost(Seq(12))));
        assert!(matches!(
            tx.poll_transmit(),
            Some(Transmit::Msg(Seq(13), _))
        ));
        assert_eq!(tx.poll_transmit(), None);
        // Replayed after a reconnect, still LOST; forgotten once acknowledged.
        tx.handle_disconnect();
        tx.resume(tx.id(), Seq(11), |_, _| ()).unwrap();
        assert_eq!(tx.poll_transmit(), Some(Transmit::Lost(Seq(12))));
        tx.handle_ack(Seq(12), |_, _| ()).unwrap();
        assert!(tx.lost.is_empty());
    }

    #[test]
    fn receiver_dedups_and_rejects_gaps() {
        let sid = SessionId(Uuid::from_u128(9));
        let mut rx = RxSession::new();
        assert_eq!(rx.resume(sid, Seq(1)), 0);
        assert_eq!(rx.handle_msg(Seq(1)), Ok(Delivery::Deliver));
        assert_eq!(rx.handle_msg(Seq(1)), Ok(Delivery::Duplicate));
        assert_eq!(
            rx.handle_msg(Seq(3)),
            Err(ProtocolError::SequenceGap {
                expected: 2,
                got: 3
            })
        );
        // The same session resumes where it was; a new one starts at its first sequence.
        assert_eq!(rx.resume(sid, Seq(1)), 0);
        assert_eq!(rx.seq_delivered(), Seq(1));
        assert_eq!(rx.resume(SessionId(Uuid::from_u128(10)), Seq(50)), 0);
        assert_eq!(rx.seq_delivered(), Seq(49));
    }

    #[test]
    fn watermark_at_the_top_of_the_range_does_not_overflow() {
        let mut rx = RxSession::new();
        rx.resume(SessionId(Uuid::from_u128(9)), Seq(u64::MAX));
        assert_eq!(rx.handle_msg(Seq(u64::MAX)), Ok(Delivery::Deliver));
        assert_eq!(rx.handle_msg(Seq(u64::MAX)), Ok(Delivery::Duplicate));
    }
}
