//! CRC32C, for the outbox's records and the end-to-end checksum of MSG payloads
//! (docs/protocol.md, "CRC"). Pure computation; no syscall.
//!
//! The `crc32` instruction takes 8 bytes a cycle but has a latency of 3, so one stream over a
//! buffer runs at a third of its speed. Medium buffers (a few hundred bytes to 64 KiB, most
//! payloads) are therefore cut in three streams computed together, and the three CRCs joined
//! with one carry-less multiplication each (Intel's "Fast CRC Computation for iSCSI
//! Polynomial Using CRC32 Instruction"): about three times faster than one stream at 1 KiB.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU64, Ordering};

/// CRC32C of `data`.
///
/// `seed` continues a CRC (as `crc32c::crc32c_append` does); 0 gives the plain CRC32C.
pub(crate) fn checksum_seeded(seed: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        if data.len() < THREE_WAY_MIN {
            // SAFETY: the CPU has SSE4.2, checked just above.
            return unsafe { checksum_sse42(seed, data) };
        }
        if data.len() <= THREE_WAY_MAX && std::arch::is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has SSE4.2 and PCLMULQDQ, checked just above.
            return unsafe { checksum_three_way(seed, data) };
        }
    }
    crc32c::crc32c_append(seed, data)
}

/// Below this, one stream: the join would cost more than it saves.
#[cfg(target_arch = "x86_64")]
const THREE_WAY_MIN: usize = 192;
/// Above this, the `crc32c` crate, whose long blocks amortize their joins better.
#[cfg(target_arch = "x86_64")]
const THREE_WAY_MAX: usize = 64 << 10;
/// The reflected CRC32C polynomial.
#[cfg(target_arch = "x86_64")]
const POLY: u32 = 0x82F6_3B78;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn checksum_sse42(seed: u32, data: &[u8]) -> u32 {
    !stream(u64::from(!seed), data) as u32
}

/// Continues the CRC register `crc` over `data`, 8 bytes an instruction, then the rest a byte
/// at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn stream(mut crc: u64, data: &[u8]) -> u64 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    for word in words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    let mut crc = crc as u32;
    for &byte in tail {
        crc = _mm_crc32_u8(crc, byte);
    }
    u64::from(crc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn checksum_three_way(seed: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u64;
    let block = data.len() / 24 * 8;
    let (a, rest) = data.split_at(block);
    let (b, rest) = rest.split_at(block);
    let (c, tail) = rest.split_at(block);
    let word = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    };
    let (mut ca, mut cb, mut cc) = (u64::from(!seed), 0u64, 0u64);
    for at in (0..block).step_by(8) {
        ca = _mm_crc32_u64(ca, word(a, at));
        cb = _mm_crc32_u64(cb, word(b, at));
        cc = _mm_crc32_u64(cc, word(c, at));
    }
    // By linearity: the register after a|b|c is a's moved past 2 blocks of zeros, xor b's
    // moved past one, xor c's.
    let (k1, k2) = shift_constants(block);
    let crc = shift(ca, k2) ^ shift(cb, k1) ^ cc;
    !stream(crc, tail) as u32
}

/// `crc` (a register value) moved past the zero bytes that `k` stands for: multiplied by
/// `k` = x^(8n − 33) mod P with one carry-less multiplication, then reduced by the `crc32`
/// instruction, which multiplies by x^32 mod P (the product of two reflected values comes out
/// shifted by one more).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn shift(crc: u64, k: u32) -> u64 {
    use std::arch::x86_64::{
        _mm_clmulepi64_si128, _mm_crc32_u64, _mm_cvtsi64_si128, _mm_cvtsi128_si64,
    };
    let product = _mm_clmulepi64_si128(
        _mm_cvtsi64_si128(crc as i64),
        _mm_cvtsi64_si128(i64::from(k)),
        0x00,
    );
    _mm_crc32_u64(0, _mm_cvtsi128_si64(product) as u64)
}

/// The constants that move a register past one and two blocks of `block` bytes (a multiple
/// of 8), computed once per block size and kept.
#[cfg(target_arch = "x86_64")]
fn shift_constants(block: usize) -> (u32, u32) {
    static CACHE: [AtomicU64; THREE_WAY_MAX / 24 + 1] =
        [const { AtomicU64::new(0) }; THREE_WAY_MAX / 24 + 1];
    let slot = &CACHE[block / 8];
    let cached = slot.load(Ordering::Relaxed);
    if cached != 0 {
        return ((cached >> 32) as u32, cached as u32);
    }
    let bits = 8 * block as u64;
    let (k1, k2) = (x_pow_mod(bits - 33), x_pow_mod(2 * bits - 33));
    // Neither is zero (x is invertible modulo P), so zero means "not computed yet".
    slot.store((u64::from(k1) << 32) | u64::from(k2), Ordering::Relaxed);
    (k1, k2)
}

/// x^n mod P, reflected (bit 31 is x^0), by squaring.
#[cfg(target_arch = "x86_64")]
fn x_pow_mod(mut n: u64) -> u32 {
    let mut result = 1u32 << 31;
    let mut base = 1u32 << 30;
    while n > 0 {
        if n & 1 == 1 {
            result = mul_mod(result, base);
        }
        base = mul_mod(base, base);
        n >>= 1;
    }
    result
}

/// a·b mod P, both reflected (bit j is x^(31−j)), by Horner's rule over b's coefficients.
#[cfg(target_arch = "x86_64")]
fn mul_mod(a: u32, b: u32) -> u32 {
    let mut product = 0u32;
    for j in 0..32 {
        // product·x, then + a if b has x^(31−j).
        product = (product >> 1) ^ if product & 1 == 1 { POLY } else { 0 };
        if (b >> j) & 1 == 1 {
            product ^= a;
        }
    }
    product
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_agrees_with_the_crate() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut lens: Vec<usize> = (0..600).collect();
        lens.extend([
            1000, 1023, 1024, 1025, 4095, 4096, 20_000, 65_535, 65_536, 65_537,
        ]);
        lens.extend([100_000, 200_000]);
        for len in lens {
            for offset in [0, 3] {
                let slice = &data[offset..offset + len.min(data.len() - offset)];
                for seed in [0, 0xdead_beef] {
                    assert_eq!(
                        checksum_seeded(seed, slice),
                        crc32c::crc32c_append(seed, slice),
                        "len {len} offset {offset} seed {seed:#x}"
                    );
                }
            }
        }
        assert_eq!(
            checksum_seeded(0, b"123456789"),
            0xE306_9283,
            "the check value"
        );
    }
}
