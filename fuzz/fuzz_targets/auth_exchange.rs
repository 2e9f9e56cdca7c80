//! Fuzzes both sides of the AUTH exchange (docs/protocol.md, "AUTH") with hostile bytes: an
//! acceptor that requires AUTH reading a dialer's frames, and a dialer holding a secret reading
//! an acceptor's. The first input byte splits the rest between the two.
//!
//! Checked: nothing panics; the acceptor hands out a HELLO only with the nonces of a verified
//! proof, and never before its challenge was sent; the dialer is never established by a peer
//! that did not prove the secret (no fuzz input can forge the HMAC).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringwire::proto::ack::AckPolicy;
use ringwire::proto::auth::{Authenticator, NONCE_LEN, PROOF_LEN};
use ringwire::proto::connection::Events;
use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
use ringwire::proto::handshake::{AcceptAuth, Accepting};
use ringwire::proto::heartbeat::HeartbeatConfig;
use ringwire::proto::session::{Acked, Sessions};
use ringwire::proto::{Connection, ConnectionConfig, Seq, SessionId};

/// A MAC no input can produce: a keyed hash of the transcript under a secret the fuzzer never
/// sees (a fixed pseudo-random function, not cryptography, is enough for that).
#[derive(Debug)]
struct Secret;

impl Authenticator for Secret {
    fn nonce(&self) -> [u8; NONCE_LEN] {
        [7; NONCE_LEN]
    }
    fn prove(&self, transcript: &[u8]) -> [u8; PROOF_LEN] {
        let mut state = 0x243f_6a88_85a3_08d3u64;
        let mut out = [0u8; PROOF_LEN];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            for &b in transcript {
                state = (state ^ u64::from(b)).wrapping_mul(0x100_0000_01b3).rotate_left(i as u32 + 5);
            }
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        out
    }
    fn verify(&self, transcript: &[u8], proof: &[u8]) -> bool {
        proof == self.prove(transcript)
    }
}

struct NoEvents;

impl Events for NoEvents {
    fn on_message(&mut self, _: SessionId, _: Seq, _: &[u8]) {}
    fn on_acked(&mut self, _: Acked) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len() * usize::from(first) / usize::from(u8::MAX);
    let (to_acceptor, to_dialer) = rest.split_at(cut);
    let t0 = Instant::now();
    let auth: Arc<dyn Authenticator> = Arc::new(Secret);

    // The acceptor's side.
    let mut acc = Accepting::with_auth(
        t0 + Duration::from_secs(5),
        AcceptAuth {
            authenticator: Arc::clone(&auth),
            node_id: "acceptor".into(),
        },
    );
    let mut challenged = false;
    for chunk in to_acceptor.chunks(7) {
        match acc.handle_bytes(chunk) {
            Ok(Some(hello)) => {
                assert!(challenged, "a HELLO handed out before any challenge");
                assert!(hello.auth.is_some(), "a HELLO handed out without a proof");
            }
            Ok(None) => {}
            Err(_) => break,
        }
        challenged |= !acc.take_transmit().is_empty();
    }

    // The dialer's side.
    let config = Arc::new(ConnectionConfig {
        node_id: "dialer".into(),
        body_len_max: BODY_LEN_MAX_DEFAULT,
        batch: true,
        crc: true,
        lz4_min_size: Some(256),
        auth: Some(auth),
        handshake_timeout: Duration::from_secs(5),
        heartbeat: HeartbeatConfig::default(),
        ack: AckPolicy::default(),
        epoch: t0,
    });
    let mut sessions = Sessions::new(SessionId(uuid::Uuid::from_u128(1)));
    let mut dialer = Connection::dial(config, "acceptor", &sessions, t0);
    let _ = dialer.handle_bytes(&mut sessions, to_dialer, t0, &mut NoEvents);
    assert!(!dialer.is_established(), "established without the peer's proof");
});
