//! CRC32C, for the outbox's records and the end-to-end checksum of MSG payloads
//! (docs/protocol.md, "CRC"). Pure computation; no syscall.

/// CRC32C of `data`. Payloads are mostly small, where one `crc32` instruction per 8 bytes in a
/// plain loop beats the `crc32c` crate's three-stream kernel (about 9 ns against 20 ns for a
/// 64-byte payload on the development machine); large ones go to the crate.
///
/// `seed` continues a CRC (as `crc32c::crc32c_append` does); 0 gives the plain CRC32C.
pub(crate) fn checksum_seeded(seed: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() < 512 && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { checksum_sse42(seed, data) };
    }
    crc32c::crc32c_append(seed, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn checksum_sse42(seed: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    let mut crc = u64::from(!seed);
    for word in words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    let mut crc = crc as u32;
    for &byte in tail {
        crc = _mm_crc32_u8(crc, byte);
    }
    !crc
}
