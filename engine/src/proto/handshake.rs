//! The acceptor's side of the handshake, before the connection belongs to a peer
//! (docs/protocol.md, "Handshake").
//!
//! The dialer sends HELLO and then waits for the acceptor's HELLO before it sends anything
//! else. So an accepted connection carries exactly one frame until it is answered: the
//! acceptor reads it here, the shard finds (or creates) the peer it names, possibly on another
//! shard, and [`Connection::accept`](crate::proto::Connection::accept) answers it. Because
//! nothing may follow the HELLO, handing the socket to another shard never strands bytes.

use std::sync::Arc;
use std::time::Instant;

use crate::proto::auth::{AuthMessage, AuthNonces, Authenticator, NONCE_LEN, Prover, transcript};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{
    CAP_AUTH, Decoder, Frame, HELLO_BODY_LEN_MAX, Hello, Kind, Seq, SessionId,
};

/// An owned copy of a peer's HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    pub caps: u32,
    pub body_len_max: u32,
    pub tx_session: SessionId,
    pub tx_seq_first: Seq,
    pub rx_session: SessionId,
    pub rx_delivered: Seq,
    pub node_id: String,
    /// The nonces of the AUTH exchange the dialer passed, if the acceptor required one: the
    /// acceptor's own proof, sent before its HELLO, is computed over them.
    pub auth: Option<AuthNonces>,
}

impl From<&Hello<'_>> for HelloInfo {
    fn from(h: &Hello<'_>) -> HelloInfo {
        HelloInfo {
            caps: h.caps,
            body_len_max: h.body_len_max,
            tx_session: h.tx_session,
            tx_seq_first: h.tx_seq_first,
            rx_session: h.rx_session,
            rx_delivered: h.rx_delivered,
            node_id: h.node_id.to_owned(),
            auth: None,
        }
    }
}

/// What an acceptor that requires AUTH needs: the MAC, and its own node id for the transcript.
#[derive(Debug, Clone)]
pub struct AcceptAuth {
    pub authenticator: Arc<dyn Authenticator>,
    pub node_id: Arc<str>,
}

/// An accepted connection waiting for the dialer's HELLO (and, if AUTH is required, for the
/// dialer's proof).
///
/// Call [`Accepting::handle_bytes`] with everything received until it returns the HELLO, send
/// what [`Accepting::take_transmit`] returns after each call, and call
/// [`Accepting::handle_timeout`] when [`Accepting::deadline`] passes.
#[derive(Debug)]
pub struct Accepting {
    decoder: Decoder,
    deadline: Instant,
    auth: Option<AcceptAuth>,
    /// The HELLO, once read; with AUTH, it waits here for the dialer's proof.
    hello: Option<HelloInfo>,
    /// The challenge sent, once the HELLO asked for AUTH.
    nonce_a: Option<[u8; NONCE_LEN]>,
    /// Whether the HELLO (and proof) were handed out: nothing more may arrive.
    done: bool,
    /// Frames for the dialer (the AUTH challenge).
    transmit: Vec<u8>,
    /// The first error; every later call returns it again.
    failed: Option<ProtocolError>,
}

impl Accepting {
    /// Starts waiting; the HELLO must be complete by `deadline`.
    ///
    /// The first frame may be no longer than the longest HELLO ([`HELLO_BODY_LEN_MAX`]): a
    /// header announcing more is refused (`FrameTooLarge`) before any of its body is read, so a
    /// connection that has not said who it is holds at most one HELLO's bytes.
    pub fn new(deadline: Instant) -> Accepting {
        Accepting {
            decoder: Decoder::new(HELLO_BODY_LEN_MAX),
            deadline,
            auth: None,
            hello: None,
            nonce_a: None,
            done: false,
            transmit: Vec::new(),
            failed: None,
        }
    }

    /// Like [`Accepting::new`], for a node that requires AUTH: the HELLO is handed out only
    /// once the dialer has proven the shared secret; a dialer that does not offer AUTH is
    /// refused ([`ProtocolError::Unauthenticated`]).
    pub fn with_auth(deadline: Instant, auth: AcceptAuth) -> Accepting {
        Accepting {
            auth: Some(auth),
            ..Accepting::new(deadline)
        }
    }

    /// Feeds received bytes. Returns the HELLO once it is complete (and proven, with AUTH).
    ///
    /// # Errors
    ///
    /// Any frame other than a first HELLO (and, with AUTH, one AUTH response after the
    /// challenge), or anything after them, is a [`ProtocolError`], as is a HELLO that does not
    /// parse or a proof that does not verify.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<Option<HelloInfo>, ProtocolError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode(data);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Frames due to the dialer (the AUTH challenge), if any.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    fn decode(&mut self, data: &[u8]) -> Result<Option<HelloInfo>, ProtocolError> {
        let mut ready = None;
        let Accepting {
            decoder,
            auth,
            hello,
            nonce_a,
            done,
            transmit,
            ..
        } = self;
        decoder.decode(data, |frame| {
            let unexpected = |state| ProtocolError::UnexpectedFrame {
                kind: frame.kind(),
                state,
            };
            if *done || ready.is_some() {
                return Err(unexpected("awaiting the hello reply"));
            }
            match (frame, hello.is_some(), auth.as_ref()) {
                (Frame::Hello(h), false, None) => {
                    ready = Some(HelloInfo::from(&h));
                    Ok(())
                }
                (Frame::Hello(h), false, Some(auth)) => {
                    if h.caps & CAP_AUTH == 0 {
                        return Err(ProtocolError::Unauthenticated(
                            "this node requires AUTH, and the hello does not offer it",
                        ));
                    }
                    *hello = Some(HelloInfo::from(&h));
                    let nonce = auth.authenticator.nonce();
                    *nonce_a = Some(nonce);
                    AuthMessage::Challenge { nonce_a: nonce }.encode(transmit);
                    Ok(())
                }
                (Frame::Auth { body }, true, Some(auth)) => {
                    let AuthMessage::Response { nonce_d, proof } = AuthMessage::parse(body)? else {
                        return Err(unexpected("awaiting the AUTH response"));
                    };
                    let mut info = hello.take().expect("the hello came first");
                    let nonce_a = nonce_a.expect("a challenge was sent");
                    let transcript = transcript(
                        Prover::Dialer,
                        &nonce_a,
                        &nonce_d,
                        &info.node_id,
                        &auth.node_id,
                    );
                    if !auth.authenticator.verify(&transcript, &proof) {
                        return Err(ProtocolError::Unauthenticated(
                            "the dialer's AUTH proof does not verify",
                        ));
                    }
                    info.auth = Some(AuthNonces { nonce_a, nonce_d });
                    ready = Some(info);
                    Ok(())
                }
                (_, true, _) => Err(unexpected("awaiting the AUTH response")),
                _ => Err(unexpected("awaiting hello")),
            }
        })?;
        if ready.is_some() {
            self.done = true;
            if self.decoder.has_partial() {
                // Part of another frame came with it: the dialer did not wait for the answer,
                // and those bytes would be lost if the socket moved to another shard.
                return Err(ProtocolError::Malformed {
                    kind: Kind::Hello,
                    what: "bytes followed the hello before it was answered",
                });
            }
        } else if self.hello.is_some() && self.decoder.has_partial() {
            return Err(ProtocolError::Malformed {
                kind: Kind::Hello,
                what: "bytes followed the hello before the AUTH challenge",
            });
        }
        Ok(ready)
    }

    /// Fails the handshake once the deadline has passed.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::HandshakeTimeout`] at or after the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtocolError> {
        if now >= self.deadline {
            Err(ProtocolError::HandshakeTimeout)
        } else {
            Ok(())
        }
    }

    /// The stream ended: a half-received frame is reported as truncated.
    pub fn handle_eof(&self) -> Option<ProtocolError> {
        self.decoder
            .has_partial()
            .then_some(ProtocolError::TruncatedFrame)
    }

    /// When the handshake times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::frame::BODY_LEN_MAX_DEFAULT;

    fn hello_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        Frame::Hello(Hello {
            caps: 0,
            body_len_max: 1024,
            tx_session: SessionId::NIL,
            tx_seq_first: Seq(1),
            rx_session: SessionId::NIL,
            rx_delivered: Seq(0),
            node_id: "dialer",
        })
        .encode(&mut out);
        out
    }

    #[test]
    fn hello_split_anywhere_is_returned_once() {
        let bytes = hello_bytes();
        for cut in 0..bytes.len() {
            let mut acc = Accepting::new(Instant::now());
            assert_eq!(acc.handle_bytes(&bytes[..cut]).unwrap(), None);
            let hello = acc.handle_bytes(&bytes[cut..]).unwrap().unwrap();
            assert_eq!(hello.node_id, "dialer");
        }
    }

    #[test]
    fn anything_but_a_lone_hello_is_rejected() {
        let mut acc = Accepting::new(Instant::now());
        let mut ping = Vec::new();
        Frame::Ping { timestamp: 1 }.encode(&mut ping);
        assert!(matches!(
            acc.handle_bytes(&ping),
            Err(ProtocolError::UnexpectedFrame { .. })
        ));

        let mut acc = Accepting::new(Instant::now());
        let mut partial = hello_bytes();
        partial.extend_from_slice(&ping[..3]);
        assert!(matches!(
            acc.handle_bytes(&partial),
            Err(ProtocolError::Malformed { .. })
        ));

        let mut acc = Accepting::new(Instant::now());
        let mut both = hello_bytes();
        both.extend_from_slice(&ping);
        assert!(matches!(
            acc.handle_bytes(&both),
            Err(ProtocolError::UnexpectedFrame { .. })
        ));
    }

    #[test]
    fn a_first_frame_longer_than_any_hello_is_refused_at_its_header() {
        // A MSG header announcing 16 MiB: refused on its 8 bytes, nothing of the body read.
        let mut header = Vec::new();
        header.extend_from_slice(&(16u32 << 20).to_le_bytes());
        header.extend_from_slice(&[Kind::Msg as u8, 0, 0, 0]);
        let mut acc = Accepting::new(Instant::now());
        assert!(matches!(
            acc.handle_bytes(&header),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        // The longest HELLO (a 255-byte node id) still passes.
        let id = "n".repeat(255);
        let mut out = Vec::new();
        Frame::Hello(Hello {
            caps: 0,
            body_len_max: BODY_LEN_MAX_DEFAULT,
            tx_session: SessionId(uuid::Uuid::from_u128(1)),
            tx_seq_first: Seq(1),
            rx_session: SessionId::NIL,
            rx_delivered: Seq(0),
            node_id: &id,
        })
        .encode(&mut out);
        assert_eq!(out.len(), 8 + HELLO_BODY_LEN_MAX as usize);
        let mut acc = Accepting::new(Instant::now());
        assert_eq!(acc.handle_bytes(&out).unwrap().unwrap().node_id, id);
    }

    #[test]
    fn half_a_hello_times_out_or_truncates() {
        let t0 = Instant::now();
        let mut acc = Accepting::new(t0 + Duration::from_secs(1));
        acc.handle_bytes(&hello_bytes()[..20]).unwrap();
        assert_eq!(acc.handle_timeout(t0), Ok(()));
        assert_eq!(
            acc.handle_timeout(t0 + Duration::from_secs(1)),
            Err(ProtocolError::HandshakeTimeout)
        );
        assert_eq!(acc.handle_eof(), Some(ProtocolError::TruncatedFrame));
    }
}
