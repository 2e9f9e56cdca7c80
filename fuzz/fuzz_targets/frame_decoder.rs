//! Fuzzes the frame decoder (docs/protocol.md, "Framing" and "Frames").
//!
//! The first input byte picks where the rest is split in two, and both halves go through one
//! `Decoder`, as if they were two socket reads. Checked: nothing panics; the split stream yields
//! the same frames and the same result as the whole one; a failed decoder keeps returning its
//! error; and every decoded frame re-encodes to exactly the bytes it was decoded from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
use ringwire::proto::{Decoder, ProtocolError};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len() * usize::from(first) / usize::from(u8::MAX);
    let (whole_frames, whole_result) = decode(&[rest]);
    let (split_frames, split_result) = decode(&[&rest[..cut], &rest[cut..]]);
    assert_eq!(whole_frames, split_frames, "split at {cut}");
    assert_eq!(whole_result, split_result, "split at {cut}");
    assert!(
        rest.starts_with(&whole_frames),
        "decoded frames re-encode to the bytes they came from"
    );
});

/// Decodes `chunks` in order with one decoder; returns every frame re-encoded, back to back,
/// and the first error.
fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Result<(), ProtocolError>) {
    let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
    let mut frames = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        let outcome = decoder.decode(chunk, |frame| {
            frame.encode(&mut frames);
            Ok(())
        });
        match &result {
            Ok(()) => result = outcome,
            Err(err) => assert_eq!(outcome.as_ref(), Err(err), "a failed decoder stays failed"),
        }
    }
    (frames, result)
}
