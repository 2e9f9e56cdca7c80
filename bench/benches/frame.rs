//! MSG frame encode and decode (`ringwire::proto::frame`) at 64 B, 1 KiB and 64 KiB payloads.
//!
//! Every message crosses `encode_msg` on the sender's shard and `Decoder::decode` on the
//! receiver's, so these set the protocol's per-message CPU floor, apart from any I/O. Decode
//! runs over a ~256 KiB stream of back-to-back frames, once handed over whole (every frame
//! parsed in place) and once in 1500-byte chunks like MTU-sized TCP reads, where frames that
//! straddle two reads are copied into the decoder's partial buffer. The gap between the two is
//! the cost of split frames. Encode and chunked decode report bytes per second as well as
//! frames; whole-stream decode never reads a payload byte, so it reports frames only.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringwire::proto::frame::{self, BODY_LEN_MAX_DEFAULT};
use ringwire::proto::{Decoder, Frame, Seq};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame/encode_msg");
    for &(label, payload_len) in PAYLOADS {
        let payload = vec![0xA5; payload_len];
        let mut out = Vec::with_capacity(frame::msg_frame_len(payload_len));
        let mut seq = Seq(1);
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: frame::msg_frame_len(payload_len) as u64,
        });
        group.bench_function(label, |b| {
            b.iter(|| {
                // The shard appends to a reused send buffer; clearing keeps it from growing.
                out.clear();
                frame::encode_msg(black_box(seq), black_box(&payload), &mut out);
                seq = seq.next();
                black_box(&out);
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame/decode_msg");
    for &(label, payload_len) in PAYLOADS {
        let (stream, frame_count) = msg_stream(payload_len);
        // Whole frames are parsed in place and their payloads never read, so this cost is per
        // frame, not per byte: a bytes-per-second figure here would only mislead.
        group.throughput(Throughput::Elements(frame_count));
        group.bench_with_input(BenchmarkId::new("whole", label), &stream, |b, stream| {
            // The stream ends on a frame boundary, so one decoder serves every iteration.
            let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
            b.iter(|| {
                let decoded = decode_chunks(&mut decoder, black_box(stream), stream.len());
                debug_assert_eq!(decoded, frame_count);
            });
        });
        // Straddling frames are copied, so here bytes per second means something too.
        group.throughput(Throughput::ElementsAndBytes {
            elements: frame_count,
            bytes: stream.len() as u64,
        });
        group.bench_with_input(
            BenchmarkId::new("chunks_1500", label),
            &stream,
            |b, stream| {
                let mut decoder = Decoder::new(BODY_LEN_MAX_DEFAULT);
                b.iter(|| {
                    let decoded = decode_chunks(&mut decoder, black_box(stream), CHUNK_LEN);
                    debug_assert_eq!(decoded, frame_count);
                });
            },
        );
    }
    group.finish();
}

/// Back-to-back MSG frames of `payload_len` bytes filling about `STREAM_LEN` bytes (at least
/// four frames), and how many there are.
fn msg_stream(payload_len: usize) -> (Vec<u8>, u64) {
    let frame_count = STREAM_LEN
        .div_ceil(frame::msg_frame_len(payload_len))
        .max(4);
    let payload = vec![0x5A; payload_len];
    let mut stream = Vec::with_capacity(frame_count * frame::msg_frame_len(payload_len));
    for n in 1..=frame_count as u64 {
        frame::encode_msg(Seq(n), &payload, &mut stream);
    }
    (stream, frame_count as u64)
}

/// Feeds `stream` to `decoder` in `chunk_len`-byte pieces and returns the frames decoded.
fn decode_chunks(decoder: &mut Decoder, stream: &[u8], chunk_len: usize) -> u64 {
    let mut decoded = 0;
    for chunk in stream.chunks(chunk_len) {
        decoder
            .decode(chunk, |frame| {
                if let Frame::Msg { seq, payload } = frame {
                    black_box((seq, payload));
                    decoded += 1;
                }
                Ok(())
            })
            .expect("the stream holds only valid MSG frames");
    }
    decoded
}

/// Payload sizes: a small event, a typical record, and a bulk message.
const PAYLOADS: &[(&str, usize)] = &[("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)];
/// Target length of a decode stream: enough frames that per-frame cost dominates.
const STREAM_LEN: usize = 256 * 1024;
/// A read's worth of bytes with a 1500-byte MTU, to split frames at awkward offsets.
const CHUNK_LEN: usize = 1500;

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = encode, decode
}
criterion_main!(benches);
