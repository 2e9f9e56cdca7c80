//! AUTH: proving a shared secret by challenge-response before any state exists for a dialer
//! (docs/protocol.md, "AUTH").
//!
//! ```text
//!   dialer                                             acceptor
//!     │ ── HELLO (caps AUTH) ──────────────────────────► │ no peer state yet
//!     │ ◄───────────────────── AUTH CHALLENGE nonce_a ── │
//!     │ ── AUTH RESPONSE nonce_d, proof_d ─────────────► │ verifies proof_d
//!     │ ◄────────────────────── AUTH PROOF proof_a ───── │ then routes the HELLO
//!     │ verifies proof_a                                 │
//!     │ ◄──────────────────────────────────── HELLO ──── │
//! ```
//!
//! Each proof is an HMAC of a transcript that names the step, both nonces and both node ids,
//! keyed with the shared secret: a recorded exchange does not verify against a fresh nonce,
//! and a proof for one pair of nodes does not verify for another. The MAC itself comes from
//! an [`Authenticator`] (`security/` implements it with HMAC-SHA256), which also supplies the
//! nonces: this module stays free of cryptography and randomness.

use std::fmt;

use crate::proto::error::ProtocolError;
use crate::proto::frame::Kind;

/// Length of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a proof.
pub const PROOF_LEN: usize = 32;

/// The MAC and the nonces of the AUTH exchange.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// A fresh, unpredictable nonce.
    fn nonce(&self) -> [u8; NONCE_LEN];
    /// The MAC of `transcript` under the shared secret.
    fn prove(&self, transcript: &[u8]) -> [u8; PROOF_LEN];
    /// Whether `proof` is the MAC of `transcript`, compared in constant time.
    fn verify(&self, transcript: &[u8], proof: &[u8]) -> bool;
}

/// Which side a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prover {
    Dialer,
    Acceptor,
}

/// What both sides feed the MAC: a label, the prover, both nonces and both node ids, each id
/// preceded by its length so that no two pairs of ids give the same bytes.
pub fn transcript(
    prover: Prover,
    nonce_a: &[u8; NONCE_LEN],
    nonce_d: &[u8; NONCE_LEN],
    dialer_id: &str,
    acceptor_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 2 * NONCE_LEN + dialer_id.len() + acceptor_id.len());
    out.extend_from_slice(b"ringwire auth v1 ");
    out.extend_from_slice(match prover {
        Prover::Dialer => b"dialer  ",
        Prover::Acceptor => b"acceptor",
    });
    out.extend_from_slice(nonce_a);
    out.extend_from_slice(nonce_d);
    for id in [dialer_id, acceptor_id] {
        out.push(u8::try_from(id.len()).expect("node ids are at most 255 bytes"));
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// One AUTH frame's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMessage {
    /// Acceptor → dialer, after the dialer's HELLO: prove you hold the secret, with this.
    Challenge { nonce_a: [u8; NONCE_LEN] },
    /// Dialer → acceptor: the dialer's nonce and its proof.
    Response {
        nonce_d: [u8; NONCE_LEN],
        proof: [u8; PROOF_LEN],
    },
    /// Acceptor → dialer, before its HELLO: the acceptor's proof.
    Proof { proof: [u8; PROOF_LEN] },
}

const CHALLENGE: u8 = 1;
const RESPONSE: u8 = 2;
const PROOF: u8 = 3;

impl AuthMessage {
    /// Parses an AUTH body.
    ///
    /// # Errors
    ///
    /// An unknown step or a body of the wrong length is [`ProtocolError::Malformed`].
    pub fn parse(body: &[u8]) -> Result<AuthMessage, ProtocolError> {
        let malformed = |what| ProtocolError::Malformed {
            kind: Kind::Auth,
            what,
        };
        let (&step, rest) = body.split_first().ok_or(malformed("empty"))?;
        let array = |bytes: &[u8]| -> [u8; 32] { bytes.try_into().expect("checked length") };
        match (step, rest.len()) {
            (CHALLENGE, NONCE_LEN) => Ok(AuthMessage::Challenge {
                nonce_a: array(rest),
            }),
            (RESPONSE, 64) => Ok(AuthMessage::Response {
                nonce_d: array(&rest[..NONCE_LEN]),
                proof: array(&rest[NONCE_LEN..]),
            }),
            (PROOF, PROOF_LEN) => Ok(AuthMessage::Proof { proof: array(rest) }),
            (CHALLENGE | RESPONSE | PROOF, _) => Err(malformed("wrong length for its step")),
            _ => Err(malformed("unknown step")),
        }
    }

    /// The AUTH body.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 64);
        match self {
            AuthMessage::Challenge { nonce_a } => {
                out.push(CHALLENGE);
                out.extend_from_slice(nonce_a);
            }
            AuthMessage::Response { nonce_d, proof } => {
                out.push(RESPONSE);
                out.extend_from_slice(nonce_d);
                out.extend_from_slice(proof);
            }
            AuthMessage::Proof { proof } => {
                out.push(PROOF);
                out.extend_from_slice(proof);
            }
        }
        out
    }

    /// Appends the whole AUTH frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        crate::proto::frame::Frame::Auth { body: &self.body() }.encode(out);
    }
}

/// The nonces of a verified exchange, which the acceptor's proof is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthNonces {
    pub nonce_a: [u8; NONCE_LEN],
    pub nonce_d: [u8; NONCE_LEN],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bodies_are_malformed() {
        for m in [
            AuthMessage::Challenge { nonce_a: [1; 32] },
            AuthMessage::Response {
                nonce_d: [2; 32],
                proof: [3; 32],
            },
            AuthMessage::Proof { proof: [4; 32] },
        ] {
            assert_eq!(AuthMessage::parse(&m.body()), Ok(m));
        }
        for bad in [&[][..], &[1; 32], &[9; 33], &[2; 33], &[3; 34]] {
            assert!(AuthMessage::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transcripts_differ_by_prover_nonces_and_ids() {
        let t = |p, a: u8, d: u8, x: &str, y: &str| transcript(p, &[a; 32], &[d; 32], x, y);
        let base = t(Prover::Dialer, 1, 2, "a", "b");
        for other in [
            t(Prover::Acceptor, 1, 2, "a", "b"),
            t(Prover::Dialer, 9, 2, "a", "b"),
            t(Prover::Dialer, 1, 9, "a", "b"),
            t(Prover::Dialer, 1, 2, "ab", ""),
            t(Prover::Dialer, 1, 2, "b", "a"),
        ] {
            assert_ne!(base, other);
        }
    }
}
