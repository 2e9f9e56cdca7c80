//! The shared secret of AUTH (seed 000's `AuthenticationToken`), and the HMAC-SHA256 that proves
//! it in proto's challenge-response (`proto/auth.rs`, docs/protocol.md "AUTH").

use std::fmt;
use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::proto::auth::{Authenticator, NONCE_LEN, PROOF_LEN};

/// A shared secret every node of a cluster holds (at least 16 bytes). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Vec<u8>);

impl AuthToken {
    /// The shortest token accepted: shorter ones are guessable.
    pub const LEN_MIN: usize = 16;

    /// A token of these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> AuthToken {
        AuthToken(bytes.into())
    }

    /// The token in `path`, without a trailing newline.
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn from_file(path: impl AsRef<Path>) -> std::io::Result<AuthToken> {
        let mut bytes = std::fs::read(path)?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(AuthToken(bytes))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthToken({} bytes, redacted)", self.0.len())
    }
}

/// HMAC-SHA256 keyed with the token; nonces from the operating system's random source.
pub(crate) struct HmacAuth {
    key: hmac::Key,
    random: SystemRandom,
}

impl HmacAuth {
    pub(crate) fn new(token: &AuthToken) -> HmacAuth {
        HmacAuth {
            key: hmac::Key::new(hmac::HMAC_SHA256, &token.0),
            random: SystemRandom::new(),
        }
    }
}

impl fmt::Debug for HmacAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacAuth")
    }
}

impl Authenticator for HmacAuth {
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = [0; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the operating system's random source failed");
        nonce
    }

    fn prove(&self, transcript: &[u8]) -> [u8; PROOF_LEN] {
        let tag = hmac::sign(&self.key, transcript);
        tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    fn verify(&self, transcript: &[u8], proof: &[u8]) -> bool {
        hmac::verify(&self.key, transcript, proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_under_the_same_token_and_transcript() {
        let a = HmacAuth::new(&AuthToken::new("correct horse battery staple"));
        let b = HmacAuth::new(&AuthToken::new("correct horse battery stapler"));
        let proof = a.prove(b"transcript");
        assert!(a.verify(b"transcript", &proof));
        assert!(!a.verify(b"transcripT", &proof));
        assert!(!b.verify(b"transcript", &proof));
        assert!(!a.verify(b"transcript", &proof[..31]));
        assert_ne!(a.nonce(), a.nonce());
        assert_eq!(
            format!("{:?}", AuthToken::new("secret")),
            "AuthToken(6 bytes, redacted)"
        );
    }
}
