//! Sessions: per-direction sequencing, replay and dedup (docs/protocol.md, "Sessions").
//!
//! A [`TxSession`] holds every message its peer has not acknowledged, as the frames they were
//! encoded into: a message is written once, into the session's open buffer, and what was
//! written is sealed into [`Segment`]s that go to the socket as they are (no copy) and are
//! freed whole when a cumulative ACK passes their last sequence number. Nothing is kept per
//! message. A [`RxSession`] holds the delivered watermark: a MSG at or below it is a replay and
//! is dropped, the next one is delivered, and a gap is a protocol error because TCP is ordered.
//! Both outlive connections; [`TxSession::resume`] and [`RxSession::resume`] apply the resume
//! points exchanged in HELLO.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::error::ProtocolError;
use crate::proto::frame::{self, Seq, SessionId};

/// What a cumulative acknowledgement released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acked {
    /// The new acknowledged sequence number (everything up to it is acknowledged).
    pub through: Seq,
    /// Messages newly acknowledged.
    pub count: u64,
    /// The summed `weight`s of the messages whose segments were freed (see
    /// [`TxSession::push`]); a segment's weight is released when its last message is
    /// acknowledged.
    pub weight: u64,
}

/// Limits on what a session holds: the sans-IO half of flow control. A sender takes new
/// messages only while [`TxSession::has_room`] says so; a slow peer thereby pushes back on its
/// publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Messages unacknowledged (sent or not).
    pub unacked_count_max: u64,
    /// Payload bytes unacknowledged (sent or not).
    pub unacked_bytes_max: usize,
    /// Encoded bytes not yet handed to the connection. Messages are encoded shortly before
    /// they are sent, so the bytes the kernel copies are still in the cache; what waits
    /// longer waits in the publish queue, unencoded.
    pub unsent_bytes_max: usize,
}

/// What the peer accepts beyond plain MSG frames, besides MSG_BATCH: the optional flags a
/// session encodes with (see [`TxSession::set_encoding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoding {
    /// Each payload carries its CRC32C ([`frame::FLAG_CRC`]).
    pub crc: bool,
    /// Payloads at least this long are LZ4-compressed ([`frame::FLAG_LZ4`]) when that makes
    /// them shorter; `None`: never.
    pub lz4_min_size: Option<usize>,
}

impl Encoding {
    fn checksum_len(self) -> usize {
        if self.crc { frame::CHECKSUM_LEN } else { 0 }
    }

    fn compresses(self, len: usize) -> bool {
        self.lz4_min_size.is_some_and(|min| len >= min)
    }
}

/// Encoded frames of consecutive messages `first..=last`, as they go on the wire: `head`, then
/// `tail` (the payload of the last message when it was too large to copy, else empty).
#[derive(Debug, Clone)]
pub struct Segment {
    head: Bytes,
    tail: Bytes,
    first: Seq,
    last: Seq,
    weight: u64,
    payload_len: usize,
}

impl Segment {
    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// The bytes of the segment from `offset` on, as at most two slices.
    fn slices_from(&self, offset: usize) -> impl Iterator<Item = Bytes> {
        let head = (offset < self.head.len()).then(|| self.head.slice(offset..));
        let tail_offset = offset.saturating_sub(self.head.len());
        let tail = (tail_offset < self.tail.len()).then(|| self.tail.slice(tail_offset..));
        head.into_iter().chain(tail)
    }
}

/// The sending half of a session.
#[derive(Debug)]
pub struct TxSession {
    id: SessionId,
    acked: Seq,
    seq_next: Seq,
    /// Sealed frames of messages `acked + 1 ..`, in order; the front may hold acknowledged
    /// messages too, until its last one is acknowledged.
    segments: VecDeque<Segment>,
    /// Frames encoded since the last seal: messages `open_first .. seq_next`.
    open: BytesMut,
    open_first: Seq,
    /// Whether small messages are encoded into MSG_BATCH frames (the peer accepts them).
    batching: bool,
    /// Checksums and compression the peer accepts.
    encoding: Encoding,
    /// The MSG_BATCH frame at the end of `open` that takes further messages, if any.
    batch: Option<OpenBatch>,
    open_weight: u64,
    open_payload_len: usize,
    /// Transmission on the current connection: `segments[cursor]` from byte `cursor_offset` is
    /// the next to go, and every message up to `seq_sent` went out.
    cursor: usize,
    cursor_offset: usize,
    seq_sent: Seq,
    /// Bytes of `segments[cursor..]` not yet transmitted (kept so flow control is O(1)).
    unsent_sealed: usize,
    /// Payload bytes of the messages whose segments are not freed yet.
    payload_len: usize,
    /// Session buffer window: `(s, t)` means every message up to `s` was pushed by `t`; coarse,
    /// pruned as acknowledgements arrive.
    pushed_at: VecDeque<(Seq, Instant)>,
    /// The highest sequence number already reported as older than the window.
    window_reported: Seq,
    /// The largest payload the peer accepts, from its HELLO (unlimited until one arrives).
    peer_payload_len_max: usize,
    /// Messages encoded as LOST because the peer would refuse them: (seq, payload length).
    oversize: Vec<(Seq, usize)>,
}

impl TxSession {
    /// A new session that has sent nothing; its first message will be sequence 1.
    pub fn new(id: SessionId) -> TxSession {
        TxSession::resuming(id, Seq::ZERO)
    }

    /// A session restored from saved state: everything up to `acked` was acknowledged, and
    /// the next message pushed must be `acked + 1`.
    pub fn resuming(id: SessionId, acked: Seq) -> TxSession {
        TxSession {
            id,
            acked,
            seq_next: acked.next(),
            segments: VecDeque::new(),
            open: BytesMut::new(),
            open_first: acked.next(),
            batching: true,
            encoding: Encoding::default(),
            batch: None,
            open_weight: 0,
            open_payload_len: 0,
            cursor: 0,
            cursor_offset: 0,
            seq_sent: acked,
            unsent_sealed: 0,
            payload_len: 0,
            pushed_at: VecDeque::new(),
            window_reported: acked,
            peer_payload_len_max: usize::MAX,
            oversize: Vec::new(),
        }
    }

    /// Encodes message `seq` (which must be [`TxSession::seq_next`]), copying `payload`: into
    /// the open MSG_BATCH frame (or a new one) while [batching](TxSession::set_batching), as a
    /// MSG frame otherwise. `weight` is the caller's cost of holding it (say, its outbox record
    /// space), handed back in [`Acked::weight`] once it is released.
    ///
    /// # Panics
    ///
    /// If `seq` is out of order: sequence numbers are assigned by one queue, so a gap here is a
    /// bug that would otherwise corrupt the session.
    pub fn push(&mut self, seq: Seq, payload: &[u8], weight: u64) {
        self.check_next(seq);
        if payload.len() > self.peer_payload_len_max {
            return self.push_oversize(seq, payload.len(), weight);
        }
        let crc = self.checksums(payload.len());
        let sum_len = if crc { frame::CHECKSUM_LEN } else { 0 };
        let entry_len = frame::BATCH_ENTRY_PREFIX_LEN + sum_len + payload.len();
        if self.encoding.compresses(payload.len()) && self.push_compressed(seq, payload) {
            // Encoded.
        } else if self.batching && frame::BATCH_PREFIX_LEN + entry_len <= frame::BATCH_BODY_MAX {
            self.push_entry(seq, payload, entry_len);
        } else {
            self.close_batch();
            let mut head = frame::msg_head(seq, sum_len + payload.len());
            self.reserve(head.len() + sum_len + payload.len());
            if crc {
                head[5] = frame::FLAG_CRC;
                self.open.extend_from_slice(&head);
                self.open
                    .extend_from_slice(&frame::crc32c(payload).to_le_bytes());
            } else {
                self.open.extend_from_slice(&head);
            }
            self.open.extend_from_slice(payload);
        }
        self.open_weight += weight;
        self.open_payload_len += payload.len();
        self.seq_next = seq.next();
    }

    /// Encodes consecutive messages from `seq_first` on with `payloads`, as [`TxSession::push`]
    /// would one by one with no weight, but with the checks of the common case (another entry
    /// for the open MSG_BATCH frame) made once per message instead of once per step.
    ///
    /// # Panics
    ///
    /// As [`TxSession::push`].
    pub fn push_many<'p>(&mut self, seq_first: Seq, payloads: impl IntoIterator<Item = &'p [u8]>) {
        self.check_next(seq_first);
        let mut payloads = payloads.into_iter();
        loop {
            // The common case in locals, written back once per run of entries that fit.
            if let Some(batch) = &mut self.batch {
                let mut body_len = batch.body_len;
                let room = self.open.capacity() - self.open.len();
                let mut used = 0;
                let mut count = 0;
                let mut payload_len = 0;
                let mut rest = None;
                let encoding = self.encoding;
                let sum_len = encoding.checksum_len();
                for payload in payloads.by_ref() {
                    let entry_len = frame::BATCH_ENTRY_PREFIX_LEN + sum_len + payload.len();
                    if body_len + entry_len > frame::BATCH_BODY_MAX
                        || used + entry_len > room
                        || encoding.compresses(payload.len())
                    {
                        rest = Some(payload);
                        break;
                    }
                    body_len += entry_len;
                    used += entry_len;
                    count += 1;
                    payload_len += payload.len();
                    self.open.put_u32_le(payload.len() as u32);
                    if encoding.crc {
                        self.open.put_u32_le(frame::crc32c(payload));
                    }
                    self.open.extend_from_slice(payload);
                }
                batch.body_len = body_len;
                self.open_payload_len += payload_len;
                self.seq_next = Seq(self.seq_next.0 + count);
                match rest {
                    Some(payload) => self.push(self.seq_next, payload, 0),
                    None => return,
                }
            } else {
                match payloads.next() {
                    Some(payload) => self.push(self.seq_next, payload, 0),
                    None => return,
                }
            }
        }
    }

    /// Appends message `seq` to the open MSG_BATCH frame, starting one if there is none or it
    /// is full.
    fn push_entry(&mut self, seq: Seq, payload: &[u8], entry_len: usize) {
        let fits = self.batch.is_some_and(|batch| {
            batch.body_len + entry_len <= frame::BATCH_BODY_MAX
                && self.open.capacity() - self.open.len() >= entry_len
        });
        if !fits {
            self.close_batch();
            let mut head = frame::batch_head(seq);
            if self.encoding.crc {
                head[5] = frame::FLAG_CRC;
            }
            self.reserve(head.len() + entry_len);
            self.batch = Some(OpenBatch {
                at: self.open.len(),
                body_len: frame::BATCH_PREFIX_LEN,
            });
            self.open.extend_from_slice(&head);
        }
        let len = u32::try_from(payload.len()).expect("a batch entry fits in u32");
        self.open.extend_from_slice(&len.to_le_bytes());
        if self.encoding.crc {
            self.open
                .extend_from_slice(&frame::crc32c(payload).to_le_bytes());
        }
        self.open.extend_from_slice(payload);
        if let Some(batch) = &mut self.batch {
            batch.body_len += entry_len;
        }
    }

    /// Writes the final length of the open MSG_BATCH frame; later messages go into a new frame.
    fn close_batch(&mut self) {
        if let Some(batch) = self.batch.take() {
            frame::set_body_len(&mut self.open[batch.at..], batch.body_len);
        }
    }

    /// Like [`TxSession::push`], but keeps `payload` by reference instead of copying it: worth it
    /// for payloads far larger than a frame header. Always a MSG frame.
    pub fn push_shared(&mut self, seq: Seq, payload: Bytes, weight: u64) {
        self.check_next(seq);
        if payload.len() > self.peer_payload_len_max {
            return self.push_oversize(seq, payload.len(), weight);
        }
        if self.encoding.compresses(payload.len()) && self.push_compressed(seq, &payload) {
            self.open_weight += weight;
            self.open_payload_len += payload.len();
            self.seq_next = seq.next();
            return;
        }
        self.close_batch();
        let crc = self.checksums(payload.len());
        let sum_len = if crc { frame::CHECKSUM_LEN } else { 0 };
        let mut head = frame::msg_head(seq, sum_len + payload.len());
        self.reserve(head.len() + sum_len);
        if crc {
            head[5] = frame::FLAG_CRC;
            self.open.extend_from_slice(&head);
            self.open
                .extend_from_slice(&frame::crc32c(&payload).to_le_bytes());
        } else {
            self.open.extend_from_slice(&head);
        }
        self.open_weight += weight;
        self.open_payload_len += payload.len();
        self.seq_next = seq.next();
        self.seal(payload);
    }

    /// Encodes message `seq` as a MSG frame with its payload LZ4-compressed, if that makes it
    /// shorter; returns whether it did. The block is written straight into the open buffer.
    fn push_compressed(&mut self, seq: Seq, payload: &[u8]) -> bool {
        let sum_len = self.encoding.checksum_len();
        let head_len = frame::HEADER_LEN + frame::MSG_PREFIX_LEN + sum_len + frame::LZ4_PREFIX_LEN;
        let block_max = lz4_flex::block::get_maximum_output_size(payload.len());
        self.close_batch();
        self.reserve(head_len + block_max);
        let at = self.open.len();
        self.open.resize(at + head_len + block_max, 0);
        let block_len =
            match lz4_flex::block::compress_into(payload, &mut self.open[at + head_len..]) {
                // Worth it only if the frame comes out shorter than the plain one, and within
                // the peer's limit.
                Ok(len)
                    if frame::LZ4_PREFIX_LEN + len < payload.len()
                        && sum_len + frame::LZ4_PREFIX_LEN + len <= self.peer_payload_len_max =>
                {
                    len
                }
                _ => {
                    self.open.truncate(at);
                    return false;
                }
            };
        self.open.truncate(at + head_len + block_len);
        let raw_len = u32::try_from(payload.len()).expect("a payload fits in u32");
        let mut head = frame::msg_head(seq, sum_len + frame::LZ4_PREFIX_LEN + block_len);
        head[5] = frame::FLAG_LZ4
            | if self.encoding.crc {
                frame::FLAG_CRC
            } else {
                0
            };
        let out = &mut self.open[at..at + head_len];
        out[..head.len()].copy_from_slice(&head);
        if self.encoding.crc {
            out[head.len()..head.len() + 4].copy_from_slice(&frame::crc32c(payload).to_le_bytes());
        }
        out[head_len - 4..].copy_from_slice(&raw_len.to_le_bytes());
        true
    }

    /// Sets the checksums and compression to encode with: the node's own choice when the
    /// session is created, then what was negotiated with the peer of the connection being
    /// established (call before [`TxSession::resume`]). Held frames that use what the peer
    /// does not accept are re-encoded without it, so it gets none, whatever was encoded before
    /// it answered.
    pub fn set_encoding(&mut self, encoding: Encoding) {
        let dropped = (self.encoding.crc && !encoding.crc)
            || (self.encoding.lz4_min_size.is_some() && encoding.lz4_min_size.is_none());
        self.encoding = encoding;
        if dropped {
            self.reencode_held();
        } else if !self.open.is_empty() {
            // New frames follow the new encoding; the open batch keeps its flags.
            self.seal(Bytes::new());
        }
    }

    /// The encoding new messages get.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Re-encodes every held frame for the current batching and encoding.
    fn reencode_held(&mut self) {
        if !self.open.is_empty() {
            self.seal(Bytes::new());
        }
        for segment in &mut self.segments {
            if let Some(head) = reencode(&segment.head, self.batching, self.encoding) {
                segment.head = head;
            }
        }
        // The lengths changed: transmission starts over, as `resume` will say anyway.
        self.cursor = 0;
        self.cursor_offset = 0;
        self.unsent_sealed = self.segments.iter().map(Segment::len).sum();
    }

    /// Whether a MSG of `len` payload bytes gets its checksum: when the encoding says so and the
    /// checksum still fits the peer's frame limit (a payload within 4 bytes of the limit goes
    /// without: the flag is per frame).
    fn checksums(&self, len: usize) -> bool {
        self.encoding.crc && len + frame::CHECKSUM_LEN <= self.peer_payload_len_max
    }

    /// A message of `len` bytes the peer would refuse: a LOST frame instead, and a note for
    /// [`TxSession::take_oversize`].
    fn push_oversize(&mut self, seq: Seq, len: usize, weight: u64) {
        self.oversize.push((seq, len));
        self.push_lost(seq, weight);
    }

    /// Takes the peer's payload limit from the `body_len_max` its HELLO announced (call after
    /// [`TxSession::set_batching`], before [`TxSession::resume`]). Every held message larger
    /// than the limit is re-encoded as a LOST frame, and so is every later one: the peer would
    /// refuse its frame, and the replay after the refusal would meet the same fate, so the
    /// message would stop everything behind it for good. LOST lets the peer skip it. The
    /// messages so dropped wait in [`TxSession::take_oversize`] for the application to hear of.
    pub fn set_peer_body_len_max(&mut self, body_len_max: u32) {
        let max = (body_len_max as usize).saturating_sub(frame::MSG_PREFIX_LEN);
        self.peer_payload_len_max = max;
        if !self.open.is_empty() {
            self.seal(Bytes::new());
        }
        let mut removed = 0;
        let mut changed = false;
        for segment in &mut self.segments {
            let (r, c) = drop_oversize(segment, max, &mut self.oversize);
            removed += r;
            changed |= c;
        }
        if changed {
            self.payload_len -= removed;
            // The lengths changed: transmission starts over, as `resume` will say anyway.
            self.cursor = 0;
            self.cursor_offset = 0;
            self.unsent_sealed = self.segments.iter().map(Segment::len).sum();
        }
    }

    /// The largest payload the peer accepts (`usize::MAX` before its first HELLO).
    pub fn peer_payload_len_max(&self) -> usize {
        self.peer_payload_len_max
    }

    /// The messages encoded as LOST because they were larger than the peer accepts, since the
    /// last call: (sequence number, payload length), in order.
    pub fn take_oversize(&mut self) -> Vec<(Seq, usize)> {
        std::mem::take(&mut self.oversize)
    }

    /// Encodes message `seq`, whose content the sender lost (its outbox record was damaged), as
    /// a LOST frame; it is acknowledged like any other. Otherwise as [`TxSession::push`].
    pub fn push_lost(&mut self, seq: Seq, weight: u64) {
        self.check_next(seq);
        self.close_batch();
        let lost = frame::lost_frame(seq);
        self.reserve(lost.len());
        self.open.extend_from_slice(&lost);
        self.open_weight += weight;
        self.seq_next = seq.next();
    }

    /// Whether to encode small messages into MSG_BATCH frames, as negotiated with the peer of
    /// the connection being established (call before [`TxSession::resume`]). Turning it off
    /// re-encodes every held MSG_BATCH frame as MSG frames, so a peer that does not accept
    /// batches gets none, whatever was encoded before it answered.
    pub fn set_batching(&mut self, batching: bool) {
        self.batching = batching;
        if !batching {
            self.reencode_held();
        }
    }

    /// Applies a cumulative ACK.
    ///
    /// # Errors
    ///
    /// An ACK beyond the last message sent on this connection is
    /// [`ProtocolError::AckBeyondSent`]. A stale ACK (at or below the current one) is ignored.
    pub fn handle_ack(&mut self, seq: Seq) -> Result<Acked, ProtocolError> {
        if seq > self.seq_sent {
            return Err(ProtocolError::AckBeyondSent {
                acked: seq.0,
                sent: self.seq_sent.0,
            });
        }
        Ok(self.release_through(seq))
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
    ) -> Result<Acked, ProtocolError> {
        self.cursor = 0;
        self.cursor_offset = 0;
        self.unsent_sealed = self.segments.iter().map(Segment::len).sum();
        let mut acked = Acked {
            through: self.acked,
            ..Acked::default()
        };
        if peer_rx_session == self.id {
            let assigned = Seq(self.seq_next.0 - 1);
            if peer_rx_delivered > assigned {
                return Err(ProtocolError::AckBeyondSent {
                    acked: peer_rx_delivered.0,
                    sent: assigned.0,
                });
            }
            // Everything the peer delivered counts as sent: the ACK check allows it.
            self.seq_sent = self.seq_sent.max(peer_rx_delivered);
            acked = self.release_through(peer_rx_delivered);
        }
        self.handle_disconnect();
        Ok(acked)
    }

    /// Appends to `out` the bytes due on the connection, as slices of the held segments (no
    /// copy), until about `budget` bytes were added (a segment is not split to fit). Returns the
    /// number of messages they complete.
    pub fn poll_transmit(&mut self, budget: usize, out: &mut Vec<Bytes>) -> u64 {
        if !self.open.is_empty() {
            self.seal(Bytes::new());
        }
        let mut added = 0;
        let mut count = 0;
        while added < budget
            && let Some(segment) = self.segments.get(self.cursor)
        {
            added += segment.len() - self.cursor_offset;
            self.unsent_sealed -= segment.len() - self.cursor_offset;
            out.extend(segment.slices_from(self.cursor_offset));
            count += segment.last.0 - self.seq_sent.0;
            self.seq_sent = segment.last;
            self.cursor += 1;
            self.cursor_offset = 0;
        }
        count
    }

    /// Forgets what was written to the connection that just closed.
    pub fn handle_disconnect(&mut self) {
        self.cursor = 0;
        self.cursor_offset = 0;
        self.seq_sent = self.acked;
        self.unsent_sealed = self.segments.iter().map(Segment::len).sum();
        self.skip_acknowledged();
    }

    /// Drops every unacknowledged message (the engine is shutting down); returns how many.
    pub fn clear(&mut self) -> u64 {
        let count = self.unacked_count();
        self.segments.clear();
        self.open.clear();
        self.batch = None;
        self.open_first = self.seq_next;
        self.open_weight = 0;
        self.open_payload_len = 0;
        self.acked = Seq(self.seq_next.0 - 1);
        self.seq_sent = self.acked;
        self.cursor = 0;
        self.cursor_offset = 0;
        self.unsent_sealed = 0;
        self.payload_len = 0;
        self.pushed_at.clear();
        count
    }

    /// Records that every message pushed so far was pushed by `now`, for the session buffer
    /// window; marks closer than `grain` to the previous one are merged into it.
    pub fn handle_pushed(&mut self, now: Instant, grain: Duration) {
        let last = Seq(self.seq_next.0 - 1);
        if last <= self.acked {
            return;
        }
        match self.pushed_at.back_mut() {
            Some((seq, at)) if now < *at + grain => *seq = last,
            Some((seq, _)) if *seq == last => {}
            _ => self.pushed_at.push_back((last, now)),
        }
    }

    /// Unacknowledged messages pushed longer than `window` ago and not reported yet: the first
    /// one and how many. Each message is reported once.
    pub fn poll_window_exceeded(&mut self, now: Instant, window: Duration) -> Option<(Seq, u64)> {
        self.prune_pushed_at();
        let mut reported = None;
        while let Some(&(seq, at)) = self.pushed_at.front() {
            if at + window > now {
                break;
            }
            self.pushed_at.pop_front();
            let first = self.acked.max(self.window_reported).next();
            if first <= seq {
                self.window_reported = seq;
                let (start, count) = reported.unwrap_or((first, 0));
                reported = Some((start, count + seq.0 - first.0 + 1));
            }
        }
        reported
    }

    /// When the oldest unacknowledged, unreported message crosses `window`, if any.
    pub fn window_deadline(&self, window: Duration) -> Option<Instant> {
        self.pushed_at
            .iter()
            .find(|(seq, _)| *seq > self.acked)
            .map(|&(_, at)| at + window)
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The highest acknowledged sequence number.
    pub fn seq_acked(&self) -> Seq {
        self.acked
    }

    /// The lowest sequence number still held, or the next one when none is (sent in HELLO as
    /// `tx_seq_first`; never 0).
    pub fn seq_first(&self) -> Seq {
        self.acked.next()
    }

    /// The sequence number the next pushed message must carry.
    pub fn seq_next(&self) -> Seq {
        self.seq_next
    }

    /// Whether messages wait to be written to the connection.
    pub fn has_unsent(&self) -> bool {
        !self.open.is_empty() || self.cursor < self.segments.len()
    }

    /// Number of unacknowledged messages.
    pub fn unacked_count(&self) -> u64 {
        self.seq_next.0 - 1 - self.acked.0
    }

    /// Payload bytes of the unacknowledged messages (counted until their segment is freed).
    pub fn unacked_payload_len(&self) -> usize {
        self.payload_len + self.open_payload_len
    }

    /// Whether the session may take another message under `limits`.
    pub fn has_room(&self, limits: &FlowLimits) -> bool {
        self.unacked_count() < limits.unacked_count_max
            && self.unacked_payload_len() < limits.unacked_bytes_max
            && self.unsent_len() < limits.unsent_bytes_max
    }

    /// How many messages with payloads of `lens`, taken in order, the session admits under
    /// `limits`: as many as consecutive [`TxSession::has_room`] checks would, each made after
    /// pushing the messages before it.
    pub fn admits(&self, limits: &FlowLimits, lens: impl IntoIterator<Item = usize>) -> usize {
        let mut payload = self.unacked_payload_len();
        let mut unsent = self.unsent_len();
        let mut admitted = 0;
        for (count, len) in (self.unacked_count()..).zip(lens) {
            if count >= limits.unacked_count_max
                || payload >= limits.unacked_bytes_max
                || unsent >= limits.unsent_bytes_max
            {
                break;
            }
            payload += len;
            unsent += frame::msg_frame_len(len);
            admitted += 1;
        }
        admitted
    }

    /// Encoded bytes not yet handed to the connection.
    pub fn unsent_len(&self) -> usize {
        debug_assert_eq!(
            self.unsent_sealed,
            self.segments
                .range(self.cursor.min(self.segments.len())..)
                .map(Segment::len)
                .sum::<usize>()
                - self.cursor_offset,
            "unsent bytes tracked incrementally"
        );
        self.open.len() + self.unsent_sealed
    }

    /// Whether nothing is held: no unacknowledged message and no buffer kept for new ones.
    pub fn is_idle(&self) -> bool {
        self.segments.is_empty() && self.open.capacity() == 0
    }

    fn check_next(&self, seq: Seq) {
        assert_eq!(
            seq, self.seq_next,
            "tx session {} pushed out of order",
            self.id
        );
    }

    /// Makes room for `len` more bytes in the open buffer. Sealed bytes share its allocation,
    /// so a full buffer is sealed and a new one started rather than grown (growing would copy).
    fn reserve(&mut self, len: usize) {
        if self.open.capacity() - self.open.len() >= len {
            return;
        }
        if !self.open.is_empty() {
            self.seal(Bytes::new());
        }
        self.open = BytesMut::with_capacity(len.max(OPEN_LEN));
    }

    /// Moves the open frames (and `tail`, the last frame's external payload) into a segment.
    fn seal(&mut self, tail: Bytes) {
        self.close_batch();
        let head = self.open.split().freeze();
        let last = Seq(self.seq_next.0 - 1);
        debug_assert!(self.open_first <= last, "sealing an empty segment");
        self.payload_len += self.open_payload_len;
        self.unsent_sealed += head.len() + tail.len();
        self.segments.push_back(Segment {
            head,
            tail,
            first: self.open_first,
            last,
            weight: self.open_weight,
            payload_len: self.open_payload_len,
        });
        self.open_first = self.seq_next;
        self.open_weight = 0;
        self.open_payload_len = 0;
    }

    /// Acknowledges everything up to `seq` (at most the last assigned) and frees the segments
    /// it completes.
    fn release_through(&mut self, seq: Seq) -> Acked {
        let mut acked = Acked {
            through: self.acked.max(seq),
            ..Acked::default()
        };
        if seq <= self.acked {
            return acked;
        }
        acked.count = seq.0 - self.acked.0;
        self.acked = seq;
        if self.open_first <= seq {
            // Acknowledged before it was sealed (a resume point can be): seal it now so the
            // loop below frees it like any other segment.
            if !self.open.is_empty() {
                self.seal(Bytes::new());
            }
        }
        while let Some(front) = self.segments.front() {
            if front.last > seq {
                break;
            }
            let segment = self.segments.pop_front().expect("front exists");
            acked.weight += segment.weight;
            self.payload_len -= segment.payload_len;
            if self.cursor == 0 {
                // Freed before it went out on this connection (a resume point covered it).
                self.unsent_sealed -= segment.len() - self.cursor_offset;
                self.cursor_offset = 0;
            } else {
                self.cursor -= 1;
            }
        }
        if self.segments.is_empty() && self.open.is_empty() {
            // Idle: give the open buffer back, so an idle peer holds no memory.
            self.open = BytesMut::new();
            self.open_first = self.seq_next;
        }
        self.prune_pushed_at();
        acked
    }

    /// Moves the cursor past acknowledged messages at the front: to the first frame after
    /// `acked` (a replay need not resend what the peer already has).
    fn skip_acknowledged(&mut self) {
        let Some(front) = self.segments.get(self.cursor) else {
            return;
        };
        if front.first > self.acked || self.cursor_offset != 0 {
            return;
        }
        // Skip whole frames only: a MSG_BATCH that holds the first unacknowledged message goes
        // again from its start, and the peer drops the messages in it that it has.
        let mut offset = 0;
        let mut seq = front.first;
        loop {
            let count = frame::encoded_frame_messages(&front.head[offset..]);
            if seq.0 + count - 1 > self.acked.0 {
                break;
            }
            offset += frame::encoded_frame_len(&front.head[offset..]);
            seq = Seq(seq.0 + count);
        }
        self.cursor_offset = offset;
        self.unsent_sealed -= offset;
    }

    fn prune_pushed_at(&mut self) {
        while self
            .pushed_at
            .front()
            .is_some_and(|&(seq, _)| seq <= self.acked)
        {
            self.pushed_at.pop_front();
        }
    }
}

/// Capacity of a fresh open buffer: a few sends' worth, so small messages share allocations.
const OPEN_LEN: usize = 64 << 10;

/// A MSG_BATCH frame still taking messages: its header starts at `at` in the open buffer and
/// its body is `body_len` bytes so far (the header says less until the batch is closed).
#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    at: usize,
    body_len: usize,
}

/// `head` (frames as this node encoded them) re-encoded for a peer that takes MSG_BATCH frames
/// only if `batching`, and only the checksums and compression of `encoding`: each batch it does
/// not take becomes one MSG frame per entry, and each frame with a flag it does not take is
/// written without it (a block decompressed, a checksum dropped). `None` if nothing changes.
/// The last frame may continue past `head` (its payload in the segment's tail): it is an
/// uncompressed MSG, rewritten up to the end of `head`, and the tail follows it unchanged.
fn reencode(head: &Bytes, batching: bool, encoding: Encoding) -> Option<Bytes> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < head.len() {
        let len = frame::encoded_frame_len(&head[offset..]).min(head.len() - offset);
        frames.push(&head[offset..offset + len]);
        offset += len;
    }
    let refused = |f: &[u8]| {
        let flags = f[5];
        (f[4] == frame::Kind::MsgBatch as u8 && !batching)
            || (flags & frame::FLAG_CRC != 0 && !encoding.crc)
            || (flags & frame::FLAG_LZ4 != 0 && encoding.lz4_min_size.is_none())
    };
    if !frames.iter().any(|f| refused(f)) {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + head.len() / 2);
    for bytes in frames {
        if !refused(bytes) {
            out.extend_from_slice(bytes);
            continue;
        }
        if let Some((seq_first, entries)) = frame::encoded_batch(bytes) {
            if batching {
                // Only the checksums go.
                let at = out.len();
                out.extend_from_slice(&frame::batch_head(seq_first));
                for payload in entries.iter() {
                    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    out.extend_from_slice(payload);
                }
                let body_len = out.len() - at - frame::HEADER_LEN;
                frame::set_body_len(&mut out[at..], body_len);
            } else {
                for (seq, payload) in (seq_first.0..).map(Seq).zip(entries.iter()) {
                    write_msg(seq, payload, payload.len(), encoding.crc, &mut out);
                }
            }
            continue;
        }
        // A MSG (a LOST has no flags and is never refused).
        reencode_msg(bytes, encoding, &mut out);
    }
    Some(Bytes::from(out))
}

/// Replaces each MSG frame of `segment` whose payload is over `max` bytes with a LOST frame
/// (noting it in `oversize`), the payload kept by reference in its tail included, and rewrites
/// without its checksum or compression a MSG whose payload fits but whose frame does not.
/// Returns the payload bytes removed, and whether anything changed. MSG_BATCH entries are never
/// over `max`: batches go only to a peer whose limit holds the largest one.
fn drop_oversize(
    segment: &mut Segment,
    max: usize,
    oversize: &mut Vec<(Seq, usize)>,
) -> (usize, bool) {
    let head = &segment.head;
    let mut out: Option<Vec<u8>> = None;
    let mut removed = 0;
    let mut offset = 0;
    while offset < head.len() {
        // The last frame's payload may be the tail, past the end of the head.
        let frame_len = frame::encoded_frame_len(&head[offset..]);
        let len = frame_len.min(head.len() - offset);
        let bytes = &head[offset..offset + len];
        let is_msg = bytes[4] == frame::Kind::Msg as u8;
        let payload_len = is_msg.then(|| frame::encoded_msg_payload_len(bytes));
        match payload_len {
            Some(payload_len) if payload_len > max => {
                let seq = msg_seq(bytes);
                oversize.push((seq, payload_len));
                removed += payload_len;
                out.get_or_insert_with(|| head[..offset].to_vec())
                    .extend_from_slice(&frame::lost_frame(seq));
                if offset + len == head.len() && !segment.tail.is_empty() {
                    segment.tail = Bytes::new();
                }
            }
            Some(_) if frame_len - frame::HEADER_LEN > max + frame::MSG_PREFIX_LEN => {
                let out = out.get_or_insert_with(|| head[..offset].to_vec());
                reencode_msg(bytes, Encoding::default(), out);
            }
            _ => {
                if let Some(out) = &mut out {
                    out.extend_from_slice(bytes);
                }
            }
        }
        offset += len;
    }
    let changed = out.is_some();
    if let Some(out) = out {
        segment.head = Bytes::from(out);
        segment.payload_len -= removed;
    }
    (removed, changed)
}

/// The sequence number of the MSG frame `bytes` starts with.
fn msg_seq(bytes: &[u8]) -> Seq {
    Seq(u64::from_le_bytes(
        bytes[frame::HEADER_LEN..frame::HEADER_LEN + 8]
            .try_into()
            .expect("a MSG's seq"),
    ))
}

/// Appends to `out` the MSG frame `bytes` (as this node encoded it) re-encoded with
/// `encoding`, its block decompressed. `bytes` may end before the frame does (its payload
/// continues in the segment's tail): it is then an uncompressed MSG, rewritten without its
/// checksum (the rest of the payload cannot be read here to compute one).
fn reencode_msg(bytes: &[u8], encoding: Encoding, out: &mut Vec<u8>) {
    let flags = bytes[5];
    let body_len = frame::encoded_frame_len(bytes) - frame::HEADER_LEN;
    let seq = msg_seq(bytes);
    let mut at = frame::HEADER_LEN + frame::MSG_PREFIX_LEN;
    if flags & frame::FLAG_CRC != 0 {
        at += frame::CHECKSUM_LEN;
    }
    if flags & frame::FLAG_LZ4 != 0 {
        let raw_len = u32::from_le_bytes(
            bytes[at..at + frame::LZ4_PREFIX_LEN]
                .try_into()
                .expect("a length"),
        ) as usize;
        let payload = lz4_flex::block::decompress(&bytes[at + frame::LZ4_PREFIX_LEN..], raw_len)
            .expect("a block this node compressed");
        write_msg(seq, &payload, raw_len, encoding.crc, out);
    } else {
        let full_len = body_len - (at - frame::HEADER_LEN);
        let whole = bytes.len() == frame::HEADER_LEN + body_len;
        write_msg(seq, &bytes[at..], full_len, encoding.crc && whole, out);
    }
}

/// Appends a MSG frame for message `seq` whose payload is `full_len` bytes, of which `payload`
/// is the start (all of it, unless the rest follows in a segment's tail), with the payload's
/// checksum if `crc` (which needs the whole payload).
fn write_msg(seq: Seq, payload: &[u8], full_len: usize, crc: bool, out: &mut Vec<u8>) {
    let sum_len = if crc { frame::CHECKSUM_LEN } else { 0 };
    let mut head = frame::msg_head(seq, sum_len + full_len);
    if crc {
        head[5] = frame::FLAG_CRC;
    }
    out.extend_from_slice(&head);
    if crc {
        out.extend_from_slice(&frame::crc32c(payload).to_le_bytes());
    }
    out.extend_from_slice(payload);
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
pub struct Sessions {
    pub tx: TxSession,
    pub rx: RxSession,
}

impl Sessions {
    /// Fresh sessions with the given outbound id.
    pub fn new(tx_id: SessionId) -> Sessions {
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
    use crate::proto::frame::{Decoder, Frame};

    fn tx_with(n: u64) -> TxSession {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        for i in 1..=n {
            tx.push(Seq(i), &vec![0; i as usize], i);
        }
        tx
    }

    /// What the transmitted slices carry: (seq, Some(payload len)) per message of a MSG or
    /// MSG_BATCH frame, (seq, None) per LOST.
    fn decode(slices: &[Bytes]) -> Vec<(u64, Option<usize>)> {
        let mut decoder = Decoder::new(1 << 20);
        let mut frames = Vec::new();
        for slice in slices {
            decoder
                .decode(slice, |frame| {
                    match frame {
                        Frame::Msg { seq, payload } => frames.push((seq.0, Some(payload.len()))),
                        Frame::MsgBatch { seq_first, entries } => frames
                            .extend((seq_first.0..).zip(entries.iter().map(|p| Some(p.len())))),
                        Frame::Lost { seq } => frames.push((seq.0, None)),
                        other => panic!("unexpected {other:?}"),
                    }
                    Ok(())
                })
                .unwrap();
        }
        frames
    }

    fn transmit(tx: &mut TxSession) -> Vec<(u64, Option<usize>)> {
        let mut out = Vec::new();
        tx.poll_transmit(usize::MAX, &mut out);
        assert_eq!(tx.unsent_len(), 0, "everything went out");
        decode(&out)
    }

    #[test]
    fn ack_releases_whole_segments_and_rejects_unsent() {
        let mut tx = tx_with(3);
        assert_eq!(
            transmit(&mut tx),
            [(1, Some(1)), (2, Some(2)), (3, Some(3))]
        );
        for i in 4..=5 {
            tx.push(Seq(i), &vec![0; i as usize], i);
        }
        assert_eq!(
            tx.handle_ack(Seq(4)),
            Err(ProtocolError::AckBeyondSent { acked: 4, sent: 3 })
        );
        // Seqs 1 and 2 are acknowledged, but their segment holds 3 too: nothing is freed yet.
        let acked = tx.handle_ack(Seq(2)).unwrap();
        assert_eq!((acked.through, acked.count, acked.weight), (Seq(2), 2, 0));
        assert_eq!(tx.seq_first(), Seq(3));
        assert_eq!(tx.unacked_count(), 3);
        assert_eq!(tx.handle_ack(Seq(1)).unwrap().count, 0, "a stale ack");
        assert_eq!(transmit(&mut tx), [(4, Some(4)), (5, Some(5))]);
        let acked = tx.handle_ack(Seq(5)).unwrap();
        assert_eq!((acked.count, acked.weight), (3, 1 + 2 + 3 + 4 + 5));
        assert_eq!(tx.unacked_payload_len(), 0);
        assert!(tx.is_idle(), "an idle session keeps no buffer");
    }

    #[test]
    fn resume_replays_from_the_frame_after_the_peers_watermark() {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.set_batching(false);
        for i in 1..=6 {
            tx.push(Seq(i), &vec![0; i as usize], i);
        }
        transmit(&mut tx);
        tx.handle_disconnect();
        tx.resume(tx.id(), Seq(4)).unwrap();
        assert_eq!(transmit(&mut tx), [(5, Some(5)), (6, Some(6))]);
        // A peer that lost its state gets everything unacknowledged again.
        tx.resume(SessionId::NIL, Seq(0)).unwrap();
        assert_eq!(transmit(&mut tx), [(5, Some(5)), (6, Some(6))]);
        assert!(tx.resume(tx.id(), Seq(7)).is_err());
        // A resume point may acknowledge messages that were never sent on any connection.
        tx.push(Seq(7), b"x", 0);
        let acked = tx.resume(tx.id(), Seq(7)).unwrap();
        assert_eq!(acked.count, 3);
        assert_eq!(transmit(&mut tx), []);
        assert_eq!(tx.unacked_count(), 0);
    }

    #[test]
    fn a_resume_inside_a_batch_sends_the_whole_batch_again_and_the_receiver_drops_the_rest() {
        let mut tx = tx_with(3);
        transmit(&mut tx);
        for i in 4..=6 {
            tx.push(Seq(i), &vec![0; i as usize], i);
        }
        transmit(&mut tx);
        tx.handle_disconnect();
        // 1..=3 and 4..=6 went as two batches; the peer had delivered up to 4.
        tx.resume(tx.id(), Seq(4)).unwrap();
        let replay = transmit(&mut tx);
        assert_eq!(replay, [(4, Some(4)), (5, Some(5)), (6, Some(6))]);
        let mut rx = RxSession::restore(tx.id(), Seq(4));
        let delivered: Vec<_> = replay
            .iter()
            .filter(|&&(seq, _)| rx.handle_msg(Seq(seq)) == Ok(Delivery::Deliver))
            .map(|&(seq, _)| seq)
            .collect();
        assert_eq!(delivered, [5, 6]);
    }

    #[test]
    fn messages_larger_than_the_peer_accepts_become_lost_and_are_reported() {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.push(Seq(1), &[1; 10], 1);
        tx.push(Seq(2), &[2; 3000], 2);
        tx.push_shared(Seq(3), Bytes::from(vec![3; 70_000]), 3);
        tx.push(Seq(4), &[4; 10], 4);
        assert_eq!(transmit(&mut tx)[..2], [(1, Some(10)), (2, Some(3000))]);
        tx.handle_disconnect();
        // The peer announces 1 KiB bodies: no batches, and nothing over 1016 bytes of payload.
        tx.set_batching(false);
        tx.set_peer_body_len_max(1024);
        tx.resume(SessionId::NIL, Seq::ZERO).unwrap();
        assert_eq!(
            transmit(&mut tx),
            [(1, Some(10)), (2, None), (3, None), (4, Some(10))]
        );
        assert_eq!(tx.take_oversize(), [(Seq(2), 3000), (Seq(3), 70_000)]);
        assert_eq!(tx.take_oversize(), [], "reported once");
        assert_eq!(tx.unacked_payload_len(), 20);
        // Later messages: the same rule at push time; the limit's edge passes.
        tx.push(Seq(5), &[5; 1016], 5);
        tx.push(Seq(6), &[6; 1017], 6);
        tx.push_shared(Seq(7), Bytes::from(vec![7; 20_000]), 7);
        assert_eq!(transmit(&mut tx), [(5, Some(1016)), (6, None), (7, None)]);
        assert_eq!(tx.take_oversize(), [(Seq(6), 1017), (Seq(7), 20_000)]);
        // LOST frames are acknowledged like any other, and release their weight.
        let acked = tx.handle_ack(Seq(7)).unwrap();
        assert_eq!((acked.count, acked.weight), (7, 1 + 2 + 3 + 4 + 5 + 6 + 7));
        assert!(tx.is_idle());
    }

    #[test]
    fn without_batching_held_batches_are_re_encoded_as_msg_frames() {
        let mut tx = tx_with(3);
        tx.push_shared(Seq(4), Bytes::from(vec![9; 20]), 4);
        tx.push(Seq(5), &[5; 5], 5);
        let mut batched = Vec::new();
        tx.poll_transmit(usize::MAX, &mut batched);
        tx.handle_disconnect();
        tx.set_batching(false);
        tx.resume(SessionId::NIL, Seq::ZERO).unwrap();
        let mut slices = Vec::new();
        tx.poll_transmit(usize::MAX, &mut slices);
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let mut kinds = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            kinds.push(rest[4]);
            rest = &rest[frame::encoded_frame_len(rest)..];
        }
        assert_eq!(kinds, [frame::Kind::Msg as u8; 5]);
        assert_eq!(decode(&slices), decode(&batched), "the same messages");
        assert_eq!(
            decode(&slices),
            [
                (1, Some(1)),
                (2, Some(2)),
                (3, Some(3)),
                (4, Some(20)),
                (5, Some(5))
            ]
        );
        // New messages go as MSG frames too.
        tx.push(Seq(6), &[6], 6);
        let mut out = Vec::new();
        tx.poll_transmit(usize::MAX, &mut out);
        assert_eq!(out[0][4], frame::Kind::Msg as u8);
    }

    #[test]
    fn push_many_encodes_what_push_would_across_batch_and_buffer_limits() {
        // Sizes that fill batches (4 KiB bodies), need a MSG of their own (over 4 KiB) and
        // cross the open buffer's end (64 KiB).
        let lens: Vec<usize> = (0..400).map(|i| [0, 7, 64, 1000, 5000][i % 5]).collect();
        let payloads: Vec<Vec<u8>> = lens.iter().map(|&len| vec![len as u8; len]).collect();
        let mut one_by_one = TxSession::new(SessionId(Uuid::from_u128(1)));
        let mut many = TxSession::new(SessionId(Uuid::from_u128(1)));
        for (i, payload) in payloads.iter().enumerate() {
            one_by_one.push(Seq(i as u64 + 1), payload, 0);
        }
        many.push_many(Seq(1), payloads[..150].iter().map(Vec::as_slice));
        many.push_many(Seq(151), payloads[150..].iter().map(Vec::as_slice));
        assert_eq!(many.seq_next(), one_by_one.seq_next());
        assert_eq!(many.unacked_payload_len(), one_by_one.unacked_payload_len());
        let expected: Vec<_> = (1..).zip(lens.iter().map(|&l| Some(l))).collect();
        assert_eq!(transmit(&mut many), expected);
        assert_eq!(transmit(&mut one_by_one), expected);
    }

    #[test]
    fn shared_payloads_are_sent_without_a_copy() {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        let big = Bytes::from(vec![7u8; 100_000]);
        tx.push(Seq(1), b"a", 0);
        tx.push_shared(Seq(2), big.clone(), 0);
        tx.push(Seq(3), b"b", 0);
        let mut out = Vec::new();
        assert_eq!(tx.poll_transmit(usize::MAX, &mut out), 3);
        assert!(
            out.iter().any(|s| s.as_ptr() == big.as_ptr()),
            "the payload goes out as the caller's own bytes"
        );
        assert_eq!(
            decode(&out),
            [(1, Some(1)), (2, Some(100_000)), (3, Some(1))]
        );
    }

    #[test]
    fn the_budget_bounds_a_transmit_at_segment_granularity() {
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        // Each shared payload seals a segment: three segments of one message each.
        for i in 1..=3 {
            tx.push_shared(Seq(i), Bytes::from(vec![0; 100]), 0);
        }
        let mut out = Vec::new();
        assert_eq!(
            tx.poll_transmit(1, &mut out),
            1,
            "one segment, even over budget"
        );
        assert_eq!(decode(&out), [(1, Some(100))]);
        out.clear();
        assert_eq!(tx.poll_transmit(usize::MAX, &mut out), 2);
        assert_eq!(decode(&out), [(2, Some(100)), (3, Some(100))]);
        assert!(!tx.has_unsent());
    }

    #[test]
    fn a_lost_entry_is_transmitted_as_lost() {
        let mut tx = TxSession::resuming(SessionId(Uuid::from_u128(1)), Seq(10));
        assert_eq!(tx.seq_next(), Seq(11));
        tx.push(Seq(11), b"a", 0);
        tx.push_lost(Seq(12), 0);
        tx.push(Seq(13), b"b", 0);
        assert_eq!(
            transmit(&mut tx),
            [(11, Some(1)), (12, None), (13, Some(1))]
        );
        // Replayed after a reconnect, still LOST.
        tx.handle_disconnect();
        tx.resume(tx.id(), Seq(11)).unwrap();
        assert_eq!(transmit(&mut tx), [(12, None), (13, Some(1))]);
    }

    #[test]
    fn flow_limits_count_messages_and_bytes() {
        let limits = FlowLimits {
            unacked_count_max: 3,
            unacked_bytes_max: 10,
            unsent_bytes_max: usize::MAX,
        };
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        assert!(tx.has_room(&limits));
        tx.push(Seq(1), &[0; 4], 0);
        tx.push(Seq(2), &[0; 4], 0);
        assert!(tx.has_room(&limits));
        tx.push(Seq(3), &[0; 4], 0);
        assert!(!tx.has_room(&limits));

        let limits = FlowLimits {
            unsent_bytes_max: 32,
            ..FlowLimits {
                unacked_count_max: 100,
                unacked_bytes_max: 100,
                unsent_bytes_max: 0,
            }
        };
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.push(Seq(1), &[0; 4], 0);
        assert_eq!(
            tx.unsent_len(),
            24,
            "a batch header, a length and the payload"
        );
        assert_eq!(tx.admits(&limits, [4, 4, 4]), 1);
        tx.push(Seq(2), &[0; 4], 0);
        assert_eq!(tx.unsent_len(), 32, "another length and payload");
        assert!(!tx.has_room(&limits), "32 encoded bytes wait");
        assert_eq!(tx.admits(&limits, [4]), 0);
        tx.poll_transmit(usize::MAX, &mut Vec::new());
        assert_eq!(tx.unsent_len(), 0);
        assert!(tx.has_room(&limits), "sending makes room");
    }

    #[test]
    fn the_window_reports_each_old_message_once() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let grain = Duration::from_millis(100);
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.push(Seq(1), b"a", 0);
        tx.push(Seq(2), b"b", 0);
        tx.handle_pushed(t0, grain);
        tx.push(Seq(3), b"c", 0);
        tx.handle_pushed(t0 + Duration::from_secs(5), grain);
        assert_eq!(tx.window_deadline(window), Some(t0 + window));
        assert_eq!(
            tx.poll_window_exceeded(t0 + Duration::from_secs(9), window),
            None
        );
        assert_eq!(
            tx.poll_window_exceeded(t0 + Duration::from_secs(11), window),
            Some((Seq(1), 2))
        );
        assert_eq!(
            tx.poll_window_exceeded(t0 + Duration::from_secs(12), window),
            None
        );
        // An acknowledged message is never reported.
        transmit(&mut tx);
        tx.handle_ack(Seq(3)).unwrap();
        assert_eq!(
            tx.poll_window_exceeded(t0 + Duration::from_secs(60), window),
            None
        );
        assert_eq!(tx.window_deadline(window), None);
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

    /// Every payload the slices carry, decompressed, with the flags of its frame, decoding with
    /// a receiver that accepts `flags` (and verifies every checksum).
    fn payloads(slices: &[Bytes], flags: u8) -> Vec<(u64, Vec<u8>, u8)> {
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let mut decoder = Decoder::new(1 << 20);
        decoder.set_flags_allowed(flags);
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = frame::encoded_frame_len(rest);
            let frame_flags = rest[5];
            decoder
                .decode(&rest[..len], |frame| {
                    match frame {
                        Frame::Msg { seq, payload } => {
                            out.push((seq.0, payload.to_vec(), frame_flags));
                        }
                        Frame::MsgLz4 {
                            seq,
                            raw_len,
                            block,
                            checksum,
                        } => {
                            let payload =
                                lz4_flex::block::decompress(block, raw_len as usize).unwrap();
                            assert_eq!(checksum.map(|_| frame::crc32c(&payload)), checksum);
                            out.push((seq.0, payload, frame_flags));
                        }
                        Frame::MsgBatch { seq_first, entries } => out.extend(
                            (seq_first.0..)
                                .zip(entries.iter())
                                .map(|(seq, p)| (seq, p.to_vec(), frame_flags)),
                        ),
                        other => panic!("unexpected {other:?}"),
                    }
                    Ok(())
                })
                .unwrap();
            rest = &rest[len..];
        }
        out
    }

    fn text(len: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    const ALL: Encoding = Encoding {
        crc: true,
        lz4_min_size: Some(256),
    };

    #[test]
    fn checksums_and_compression_round_trip_for_every_path() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let sent: Vec<Vec<u8>> = vec![
            text(10),
            text(255),
            text(256),
            text(1024),
            noise.clone(),
            text(40_000),
            text(3),
        ];
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.set_encoding(ALL);
        tx.push(Seq(1), &sent[0], 0);
        tx.push_many(Seq(2), sent[1..5].iter().map(Vec::as_slice));
        tx.push_shared(Seq(6), Bytes::from(sent[5].clone()), 0);
        tx.push(Seq(7), &sent[6], 0);
        let mut slices = Vec::new();
        tx.poll_transmit(usize::MAX, &mut slices);
        let got = payloads(&slices, frame::FLAG_CRC | frame::FLAG_LZ4);
        let seqs: Vec<u64> = got.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        for ((_, payload, flags), want) in got.iter().zip(&sent) {
            assert_eq!(payload, want);
            assert!(flags & frame::FLAG_CRC != 0, "every frame is checksummed");
            // Compressed: long enough, and compressible (the noise is not).
            let compressible = want.len() >= 256 && *want != noise;
            assert_eq!(
                flags & frame::FLAG_LZ4 != 0,
                compressible,
                "{} bytes",
                want.len()
            );
        }
        let wire: usize = slices.iter().map(Bytes::len).sum();
        let raw: usize = sent.iter().map(Vec::len).sum();
        assert!(
            wire < raw / 2,
            "{wire} bytes on the wire for {raw} of payload"
        );
    }

    #[test]
    fn a_peer_without_checksums_or_compression_gets_frames_without_them() {
        for (batching, encoding) in [
            (true, Encoding::default()),
            (false, Encoding::default()),
            (
                true,
                Encoding {
                    crc: true,
                    lz4_min_size: None,
                },
            ),
            (
                false,
                Encoding {
                    crc: false,
                    lz4_min_size: Some(256),
                },
            ),
        ] {
            let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
            tx.set_encoding(ALL);
            let sent = [text(20), text(300), text(2000), text(30_000), text(7)];
            tx.push_many(Seq(1), sent[..3].iter().map(Vec::as_slice));
            tx.push_shared(Seq(4), Bytes::from(sent[3].clone()), 0);
            tx.push(Seq(5), &sent[4], 0);
            // Encoded before the peer answered; its HELLO then offers less.
            tx.set_batching(batching);
            tx.set_encoding(encoding);
            tx.resume(SessionId::NIL, Seq::ZERO).unwrap();
            let mut slices = Vec::new();
            tx.poll_transmit(usize::MAX, &mut slices);
            let mut allowed = 0;
            if encoding.crc {
                allowed |= frame::FLAG_CRC;
            }
            if encoding.lz4_min_size.is_some() {
                allowed |= frame::FLAG_LZ4;
            }
            let got = payloads(&slices, allowed);
            let want: Vec<(u64, Vec<u8>)> = (1..).zip(sent.iter().cloned()).collect();
            let got_payloads: Vec<(u64, Vec<u8>)> =
                got.iter().map(|(s, p, _)| (*s, p.clone())).collect();
            assert_eq!(got_payloads, want, "{batching} {encoding:?}");
            assert!(
                got.iter().all(|(_, _, f)| f & !allowed == 0),
                "{encoding:?}"
            );
            if !batching {
                assert!(
                    slices
                        .iter()
                        .all(|s| s.is_empty() || s[4] != frame::Kind::MsgBatch as u8)
                );
            }
        }
    }

    #[test]
    fn a_payload_at_the_peers_limit_goes_without_its_checksum() {
        let noise = |len: usize, tag: u8| -> Vec<u8> {
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ u64::from(tag);
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 40) as u8
                })
                .collect()
        };
        let mut tx = TxSession::new(SessionId(Uuid::from_u128(1)));
        tx.set_encoding(ALL);
        tx.set_batching(false);
        // Encoded with a checksum before the peer's limit was known.
        tx.push(Seq(1), &noise(1000, 1), 0);
        tx.push_shared(Seq(2), Bytes::from(noise(1000, 2)), 0);
        tx.set_peer_body_len_max(1008);
        tx.resume(SessionId::NIL, Seq::ZERO).unwrap();
        // After: at the limit without, below it with.
        tx.push(Seq(3), &noise(1000, 3), 0);
        tx.push(Seq(4), &noise(996, 4), 0);
        let mut slices = Vec::new();
        tx.poll_transmit(usize::MAX, &mut slices);
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let mut decoder = Decoder::new(1008);
        decoder.set_flags_allowed(frame::FLAG_CRC | frame::FLAG_LZ4);
        let mut got = Vec::new();
        decoder
            .decode(&bytes, |frame| {
                if let Frame::Msg { seq, payload } = frame {
                    got.push((seq.0, payload.len()));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(got, [(1, 1000), (2, 1000), (3, 1000), (4, 996)]);
        assert!(tx.take_oversize().is_empty());
        let flags: Vec<u8> = {
            let mut rest = &bytes[..];
            let mut flags = Vec::new();
            while !rest.is_empty() {
                flags.push(rest[5]);
                rest = &rest[frame::encoded_frame_len(rest)..];
            }
            flags
        };
        assert_eq!(flags, [0, 0, 0, frame::FLAG_CRC]);
    }
}
