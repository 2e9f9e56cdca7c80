//! The outbox record: one accepted message as it lies in a segment file.
//!
//! ```text
//! offset  size  field
//!      0     4  total_len  header + payload bytes, little-endian; 0 = nothing written here;
//!                          0xFFFF_FFFF = end marker (see below)
//!      4     4  crc32c     CRC32C of bytes 8..total_len (session, seq, payload), seeded with
//!                          the segment's epoch
//!      8    16  session    the outbound session's UUID
//!     24     8  seq        the message's sequence number, little-endian
//!     32     …  payload
//! ```
//!
//! Records start on 8-byte boundaries; the gap to the next boundary is zero. An append writes an
//! end marker (an 8-byte word of ones) where the next record will go, then its own body, then
//! its `total_len` last, over the marker the previous append left: so a process killed
//! mid-append leaves the marker in place (a torn tail, recognized by the body behind it), and
//! a scan never reads past the last complete record. A reused segment is not zeroed: its epoch
//! goes up, and the checksum of every record is seeded with the epoch it was written in, so a
//! stale record from before the reuse never passes for a current one.

use crate::proto::{Seq, SessionId};
use crate::sys::crc::checksum_seeded;

/// Bytes before the payload.
pub(crate) const RECORD_HEADER_LEN: usize = 32;
/// Records start at multiples of this.
pub(crate) const RECORD_ALIGN: usize = 8;

/// A record read back from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub session: SessionId,
    pub seq: Seq,
    pub payload: &'a [u8],
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// `total_len` is zero: nothing was written here.
    Empty,
    /// The end marker: the next append goes here.
    End,
    /// `total_len` is below the header size or runs past the end of the space.
    BadLength,
    /// The checksum does not match the contents.
    BadChecksum,
}

/// The space a record with `payload_len` bytes of payload takes, padding included.
pub(crate) fn space(payload_len: usize) -> usize {
    (RECORD_HEADER_LEN + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// The end marker's word.
pub(crate) const END: u64 = u64::MAX;

/// Writes a record at the start of `dst`, which must hold [`space`]`(payload.len())` bytes, and
/// returns the bytes used. The length word goes in last. `epoch` seeds the checksum.
pub(crate) fn write(
    dst: &mut [u8],
    epoch: u32,
    session: SessionId,
    seq: Seq,
    payload: &[u8],
) -> usize {
    let total = RECORD_HEADER_LEN + payload.len();
    let used = space(payload.len());
    assert!(dst.len() >= used, "record space checked by the caller");
    let total_u32 = u32::try_from(total).expect("segments are far smaller than 4 GiB");
    dst[8..24].copy_from_slice(session.0.as_bytes());
    dst[24..32].copy_from_slice(&seq.0.to_le_bytes());
    let crc = copy_checksummed(epoch, &mut dst[8..used], payload);
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
    dst[0..4].copy_from_slice(&total_u32.to_le_bytes());
    used
}

/// Copies `payload` into `body` after its 24 header bytes (session and seq, already there),
/// zeroes the padding up to `body`'s end, and returns the CRC32C of the header bytes and the
/// payload seeded with `seed`. Small payloads take one pass that checksums each 8-byte word as
/// it copies it, instead of a copy, a fill and a second pass that reads it all back.
fn copy_checksummed(seed: u32, body: &mut [u8], payload: &[u8]) -> u32 {
    const HEADER: usize = RECORD_HEADER_LEN - 8;
    #[cfg(target_arch = "x86_64")]
    if payload.len() < 512 && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { copy_checksummed_sse42(seed, body, payload) };
    }
    let end = HEADER + payload.len();
    body[HEADER..end].copy_from_slice(payload);
    body[end..].fill(0);
    checksum_seeded(seed, &body[..end])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn copy_checksummed_sse42(seed: u32, body: &mut [u8], payload: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    const HEADER: usize = RECORD_HEADER_LEN - 8;
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    let (header, out) = body.split_at_mut(HEADER);
    let mut crc = u64::from(!seed);
    for at in (0..HEADER).step_by(8) {
        crc = _mm_crc32_u64(crc, word(&header[at..at + 8]));
    }
    let mut words = payload.chunks_exact(8);
    let mut outs = out.chunks_exact_mut(8);
    for (src, dst) in (&mut words).zip(&mut outs) {
        let w = word(src);
        crc = _mm_crc32_u64(crc, w);
        dst.copy_from_slice(&w.to_le_bytes());
    }
    let tail = words.remainder();
    let mut crc = crc as u32;
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        for &byte in tail {
            crc = _mm_crc32_u8(crc, byte);
        }
        outs.next()
            .expect("the body is padded to 8 bytes")
            .copy_from_slice(&last);
    }
    !crc
}

/// Reads the record written in `epoch` at the start of `src`; on success also returns the bytes
/// it takes.
pub(crate) fn read(src: &[u8], epoch: u32) -> Result<(Record<'_>, usize), Invalid> {
    let word = |at: usize| {
        src.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let Some(total) = word(0) else {
        return Err(Invalid::Empty);
    };
    let total = total as usize;
    if total == 0 {
        return Err(Invalid::Empty);
    }
    if total == u32::MAX as usize {
        return Err(Invalid::End);
    }
    if total < RECORD_HEADER_LEN || total > src.len() {
        return Err(Invalid::BadLength);
    }
    let crc = word(4).expect("total >= header");
    if checksum_seeded(epoch, &src[8..total]) != crc {
        return Err(Invalid::BadChecksum);
    }
    let session = uuid::Uuid::from_bytes(src[8..24].try_into().unwrap());
    let seq = u64::from_le_bytes(src[24..32].try_into().unwrap());
    let used = total.next_multiple_of(RECORD_ALIGN).min(src.len());
    Ok((
        Record {
            session: SessionId(session),
            seq: Seq(seq),
            payload: &src[RECORD_HEADER_LEN..total],
        },
        used,
    ))
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn session() -> SessionId {
        SessionId(Uuid::from_u128(0x1234_5678))
    }

    #[test]
    fn records_round_trip_with_padding() {
        for len in [
            0usize, 1, 7, 8, 9, 63, 64, 65, 479, 480, 481, 511, 512, 1000,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
            // Garbage where the padding goes: the write must zero it.
            let mut buf = vec![0xeeu8; space(len) + 16];
            let used = write(&mut buf, 0, session(), Seq(42), &payload);
            assert_eq!(used % RECORD_ALIGN, 0);
            assert_eq!(used, space(len));
            let (record, read_used) = read(&buf, 0).unwrap();
            assert_eq!(read_used, used);
            assert_eq!(record.session, session());
            assert_eq!(record.seq, Seq(42));
            assert_eq!(record.payload, &payload[..]);
            let total = RECORD_HEADER_LEN + len;
            assert!(buf[total..used].iter().all(|&b| b == 0), "padding of {len}");
            let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
            assert_eq!(crc, crc32c::crc32c(&buf[8..total]), "checksum of {len}");
            buf[used..used + 8].fill(0);
            assert_eq!(read(&buf[used..], 0), Err(Invalid::Empty));
        }
    }

    #[test]
    fn the_short_checksum_agrees_with_the_crate() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 88, 511, 512, 513, 1995] {
            for start in [0, 1, 5] {
                let slice = &data[start..start + len];
                assert_eq!(
                    checksum_seeded(0, slice),
                    crc32c::crc32c(slice),
                    "len {len} at {start}"
                );
                assert_eq!(
                    checksum_seeded(77, slice),
                    crc32c::crc32c_append(77, slice),
                    "seeded, len {len} at {start}"
                );
            }
        }
    }

    #[test]
    fn a_record_of_another_epoch_does_not_read_and_the_end_marker_does() {
        let mut buf = vec![0u8; 128];
        let used = write(&mut buf, 3, session(), Seq(1), b"stale or not");
        assert!(read(&buf, 3).is_ok());
        assert_eq!(read(&buf, 4), Err(Invalid::BadChecksum));
        buf[used..used + 8].copy_from_slice(&END.to_le_bytes());
        assert_eq!(read(&buf[used..], 3), Err(Invalid::End));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let payload = b"the payload of a durable message";
        let mut buf = vec![0u8; space(payload.len())];
        write(&mut buf, 0, session(), Seq(7), payload);
        let total = RECORD_HEADER_LEN + payload.len();
        for bit in 0..total * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(read(&bad, 0).is_err(), "flipping bit {bit} went unnoticed");
        }
    }

    #[test]
    fn lengths_outside_the_space_are_rejected() {
        let mut buf = vec![0u8; 64];
        buf[0..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(read(&buf, 0), Err(Invalid::BadLength));
        buf[0..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(read(&buf, 0), Err(Invalid::BadLength));
        assert_eq!(read(&buf[..3], 0), Err(Invalid::Empty));
    }
}
