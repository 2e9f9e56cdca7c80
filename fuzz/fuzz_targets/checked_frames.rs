//! Fuzzes the decoding of checksummed and compressed frames (docs/protocol.md, "CRC" and
//! "LZ4"): a decoder that accepts both flags, and the decompression an established connection
//! applies to each LZ4 block, under a small payload limit.
//!
//! Checked: nothing panics; splitting the input in two changes neither the frames nor the
//! result; decompression never allocates past the limit, and what it returns is exactly the
//! announced length and, with a checksum, matches it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire::proto::connection::decompress;
use ringwire::proto::frame::{FLAG_CRC, FLAG_LZ4, crc32c};
use ringwire::proto::{Decoder, Frame, ProtocolError};

/// The payload limit: small, so that bombs announcing more are exercised.
const LEN_MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len() * usize::from(first) / usize::from(u8::MAX);
    let whole = decode(&[rest]);
    let split = decode(&[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole, split, "split at {cut}");
});

/// What each frame decoded to (its kind and seq, and for a compressed one the outcome of
/// decompressing it), and the first error.
fn decode(chunks: &[&[u8]]) -> (Vec<String>, Result<(), ProtocolError>) {
    let mut decoder = Decoder::new(LEN_MAX as u32 + 64);
    decoder.set_flags_allowed(FLAG_CRC | FLAG_LZ4);
    let mut seen = Vec::new();
    let mut scratch = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        let outcome = decoder.decode(chunk, |frame| {
            seen.push(match frame {
                Frame::MsgLz4 {
                    seq,
                    raw_len,
                    block,
                    checksum,
                } => {
                    let outcome = decompress(&mut scratch, seq, raw_len, block, checksum, LEN_MAX)
                        .map(<[u8]>::to_vec);
                    assert!(scratch.len() <= LEN_MAX, "grew past the limit");
                    if raw_len as usize > LEN_MAX {
                        assert!(outcome.is_err(), "a bomb decompressed");
                    }
                    if let Ok(payload) = &outcome {
                        assert_eq!(payload.len(), raw_len as usize);
                        if let Some(sum) = checksum {
                            assert_eq!(crc32c(payload), sum);
                        }
                    }
                    format!("lz4 {seq} {outcome:?}")
                }
                other => format!("{:?}", other),
            });
            Ok(())
        });
        match &result {
            Ok(()) => result = outcome,
            Err(_) => assert_eq!(outcome, result, "a failed decoder keeps its error"),
        }
    }
    (seen, result)
}
