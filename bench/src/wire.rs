//! The bytes on the wire, the same for every baseline: each message is a frame of a 4-byte
//! big-endian payload length and the payload, which is tokio-util's `LengthDelimitedCodec`
//! in its default layout, so the std and tokio-uring baselines put exactly the bytes on the
//! wire that the tokio one does.
//!
//! ```text
//! 0               4                              4 + len
//! +---------------+------------------------------+
//! | len: u32, BE  | payload (len bytes)          |
//! +---------------+------------------------------+
//! ```
//!
//! Every connection opens with a HELLO: the client sends an empty frame (a zero length prefix)
//! and the server echoes it, before the run's clock starts, so that each connection has made a
//! round trip when the load begins, as ringwire's connections have finished their handshake.
//! (Without it, tokio-uring's very first echo on some of fan-in's 1000 connections took up to
//! two seconds, landing in the measured window.) In throughput mode the server answers data
//! with ACK frames whose payload is an 8-byte big-endian u64: every message received on that
//! connection so far (cumulative).
//!
//! [`RecvBuf`] parses frames out of a byte stream for the stacks that read into their own
//! buffer (std when busy-polling, tokio-uring).

use std::io;

use tokio_util::codec::LengthDelimitedCodec;

use crate::run::invalid;

/// The tokio codec for this framing, taking payloads up to [`PAYLOAD_LEN_MAX`].
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(PAYLOAD_LEN_MAX)
        .new_codec()
}

/// Appends one frame carrying `payload` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= PAYLOAD_LEN_MAX);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// How many `size`-byte messages a sender puts in one batch between looks at its stop flag
/// and window: [`BATCH_FRAMES_MAX`], or fewer so a batch stays within [`BATCH_LEN`] (but at
/// least one).
pub(crate) fn frames_per_batch(size: usize) -> u64 {
    (BATCH_LEN / (LEN_PREFIX + size)).clamp(1, BATCH_FRAMES_MAX as usize) as u64
}

/// Checks that `bytes` are the HELLO frame.
pub(crate) fn check_hello(bytes: &[u8]) -> io::Result<()> {
    if bytes == HELLO {
        Ok(())
    } else {
        Err(invalid("expected the empty HELLO frame"))
    }
}

/// The payload of an ACK covering `total` messages.
pub(crate) fn ack_payload(total: u64) -> [u8; ACK_LEN] {
    total.to_be_bytes()
}

/// The cumulative count an ACK payload carries.
pub(crate) fn parse_ack(payload: &[u8]) -> io::Result<u64> {
    let bytes: [u8; ACK_LEN] = payload
        .try_into()
        .map_err(|_| invalid("ack payload is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Bytes read from a connection and not yet parsed, in one reused buffer.
///
/// Read into [`RecvBuf::spare`] (or the owned buffer from [`RecvBuf::take`]), report the bytes
/// with [`RecvBuf::filled`], then call [`RecvBuf::next_frame`] until it returns `None` before
/// reading again. The buffer starts at [`READ_LEN`] and grows only to hold a frame larger than
/// it; a partial frame is moved to the front before the next read.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    /// Fully initialized, so safe code can read into any part of it.
    buf: Vec<u8>,
    /// The first byte not parsed yet.
    start: usize,
    /// One past the last byte read.
    end: usize,
}

impl RecvBuf {
    pub(crate) fn new() -> RecvBuf {
        RecvBuf {
            buf: vec![0; READ_LEN],
            start: 0,
            end: 0,
        }
    }

    /// The payload of the next complete frame, or `None` until more bytes arrive.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a length prefix over [`PAYLOAD_LEN_MAX`].
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<&[u8]>> {
        let unparsed = &self.buf[self.start..self.end];
        let Some(prefix) = unparsed.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > PAYLOAD_LEN_MAX {
            return Err(invalid("frame longer than the largest payload"));
        }
        if unparsed.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let payload = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
        self.start = payload.end;
        Ok(Some(&self.buf[payload]))
    }

    /// Free space to read into, after making room (never empty).
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        self.make_room();
        &mut self.buf[self.end..]
    }

    /// Hands out the buffer for an owned-buffer read at the returned offset; give it back with
    /// [`RecvBuf::restore`] before anything else.
    pub(crate) fn take(&mut self) -> (Vec<u8>, usize) {
        self.make_room();
        (std::mem::take(&mut self.buf), self.end)
    }

    /// Takes back the buffer lent by [`RecvBuf::take`].
    pub(crate) fn restore(&mut self, buf: Vec<u8>) {
        debug_assert!(buf.len() > self.end);
        self.buf = buf;
    }

    /// Accounts for `n` bytes just read into the spare space.
    pub(crate) fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// A position to pass to [`RecvBuf::parsed_since`], valid until the next read.
    pub(crate) fn mark(&self) -> usize {
        self.start
    }

    /// The raw frames (prefixes included) parsed since `mark`: what an echo sends back.
    pub(crate) fn parsed_since(&self, mark: usize) -> &[u8] {
        &self.buf[mark..self.start]
    }

    /// True when no partial frame is pending: the stream may end here cleanly.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Moves the unparsed bytes to the front and grows the buffer when the frame they begin is
    /// larger than it, so the next read has room.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let frame_len = self.buf[..self.end]
            .first_chunk::<LEN_PREFIX>()
            .map_or(0, |p| LEN_PREFIX + u32::from_be_bytes(*p) as usize)
            .min(LEN_PREFIX + PAYLOAD_LEN_MAX);
        let want = frame_len.max(self.end + 1);
        if want > self.buf.len() {
            self.buf.resize(want, 0);
        }
    }
}

/// The length prefix of every frame, in bytes.
pub(crate) const LEN_PREFIX: usize = 4;
/// The frame every connection opens with: an empty one.
pub(crate) const HELLO: [u8; LEN_PREFIX] = [0; LEN_PREFIX];
/// The largest payload a frame may carry: 16 MiB, `--size`'s limit for the baselines.
pub(crate) const PAYLOAD_LEN_MAX: usize = 16 << 20;
/// The payload length of an ACK frame.
pub(crate) const ACK_LEN: usize = 8;
/// Frames a sender batches at most (the tokio sender's feeds before a flush, std's writes
/// between looks at the stop flag).
pub(crate) const BATCH_FRAMES_MAX: u64 = 256;
/// Bytes a sender batches at most (256 KiB): the tokio-uring writer's buffer, and the bound
/// that keeps a batch of large messages short.
pub(crate) const BATCH_LEN: usize = 256 << 10;
/// Bytes asked for per read by the stacks that read into their own buffer (64 KiB).
pub(crate) const READ_LEN: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in `chunk`-sized reads and returns every payload parsed.
    fn parse_in_chunks(bytes: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut rb = RecvBuf::new();
        let mut payloads = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                let spare = rb.spare();
                let n = spare.len().min(piece.len());
                spare[..n].copy_from_slice(&piece[..n]);
                rb.filled(n);
                piece = &piece[n..];
                while let Some(p) = rb.next_frame().unwrap() {
                    payloads.push(p.to_vec());
                }
            }
        }
        assert!(rb.is_empty());
        payloads
    }

    #[test]
    fn frames_survive_any_read_boundary() {
        let sent: Vec<Vec<u8>> = [0, 1, 64, READ_LEN, 3 * READ_LEN + 7, 5]
            .iter()
            .map(|&len| (0..len).map(|i| (i * 7) as u8).collect())
            .collect();
        let mut bytes = Vec::new();
        for p in &sent {
            put_frame(&mut bytes, p);
        }
        for chunk in [1, 3, 4, 5, 100, READ_LEN - 1, READ_LEN + 1, bytes.len()] {
            assert_eq!(parse_in_chunks(&bytes, chunk), sent, "chunk {chunk}");
        }
    }

    #[test]
    fn echo_slices_are_the_raw_frames() {
        let mut bytes = Vec::new();
        put_frame(&mut bytes, b"hello");
        put_frame(&mut bytes, b"world!");
        let mut rb = RecvBuf::new();
        rb.spare()[..bytes.len()].copy_from_slice(&bytes);
        rb.filled(bytes.len());
        let mark = rb.mark();
        while rb.next_frame().unwrap().is_some() {}
        assert_eq!(rb.parsed_since(mark), &bytes[..]);
    }

    #[test]
    fn oversized_prefix_is_rejected() {
        let mut rb = RecvBuf::new();
        rb.spare()[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        rb.filled(4);
        assert_eq!(
            rb.next_frame().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn batches_stay_within_their_bounds() {
        assert_eq!(frames_per_batch(0), BATCH_FRAMES_MAX);
        assert_eq!(frames_per_batch(64), BATCH_FRAMES_MAX);
        assert_eq!(frames_per_batch(4 << 10), 63);
        assert_eq!(frames_per_batch(PAYLOAD_LEN_MAX), 1);
    }

    #[test]
    fn acks_round_trip() {
        assert_eq!(parse_ack(&ack_payload(1 << 40)).unwrap(), 1 << 40);
        assert!(parse_ack(&[0; 7]).is_err());
    }
}
