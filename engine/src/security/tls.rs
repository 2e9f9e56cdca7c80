//! The TLS adapter: the one file that names rustls.
//!
//! [`TlsContext`] is loaded once per engine from the PEM files of a
//! [`TlsConfig`](super::TlsConfig) and makes a [`TlsLink`] for each connection: a server side for
//! accepted sockets, a client side for dials. A link is sans-IO, driven through rustls's
//! unbuffered API:
//!
//! ```text
//!   ciphertext from the ring ──► TlsLink::receive ──► plaintext for proto (take_plaintext)
//!   plaintext from proto ──► TlsLink::transmit ──► ciphertext for the send buffer
//! ```
//!
//! `receive` also queues what the handshake answers, which the next `transmit` sends first.
//! Plaintext that proto writes before the handshake is done waits in the link and goes out,
//! encrypted, right after it. TLS 1.3 only; no resumption, no early data, no session tickets.
//!
//! Chains are verified by rustls against the configured CA; node identity (is this
//! certificate the node it claims to be?) is checked by `identity.rs`: by the dialer inside
//! certificate verification, against the node id it dials; by the acceptor once the HELLO
//! names the dialer ([`TlsContext::check_dialer`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::identity;
use super::{NodeIdVerification, TlsConfig};

/// An engine's TLS settings, loaded: the server configuration every accepted connection uses,
/// and what each dial's client configuration is made from.
pub(crate) struct TlsContext {
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    /// Verifies a server's chain (any name); the node id is checked on top of it.
    chain_verifier: Arc<WebPkiServerVerifier>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verification: NodeIdVerification,
}

impl TlsContext {
    /// Reads the certificate chain, key and CA certificates of `config` and builds the
    /// configurations. The error names the file or setting at fault.
    pub(crate) fn load(config: &TlsConfig) -> Result<TlsContext, String> {
        let provider = Arc::new(provider());
        let read_certs = |what: &str, path: &std::path::Path| {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading the {what} {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "the {what} {} holds no PEM CERTIFICATE block",
                    path.display()
                ));
            }
            Ok(certs)
        };
        let cert_chain = read_certs("certificate chain", &config.cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&config.key_path)
            .map_err(|e| format!("reading the private key {}: {e}", config.key_path.display()))?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs("CA certificates", &config.ca_cert_path)? {
            roots.add(ca).map_err(|e| {
                format!(
                    "a CA certificate in {} is unusable: {e}",
                    config.ca_cert_path.display()
                )
            })?;
        }
        let roots = Arc::new(roots);
        let client_verifier = {
            let builder = WebPkiClientVerifier::builder_with_provider(
                Arc::clone(&roots),
                Arc::clone(&provider),
            );
            let builder = if config.require_client_auth {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| format!("building the client certificate verifier: {e}"))?
        };
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3 with the ring provider: {e}"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(cert_chain.clone(), key.clone_key())
            .map_err(|e| {
                format!(
                    "the certificate {} and the key {} do not go together: {e}",
                    config.cert_path.display(),
                    config.key_path.display()
                )
            })?;
        // Connections are long-lived and never resumed: tickets would be bytes for nothing.
        server.send_tls13_tickets = 0;
        let chain_verifier =
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| format!("building the server certificate verifier: {e}"))?;
        Ok(TlsContext {
            provider,
            server: Arc::new(server),
            chain_verifier,
            cert_chain,
            key,
            verification: config.node_id_verification,
        })
    }

    /// The server side of an accepted connection.
    pub(crate) fn accept(&self) -> Result<TlsLink, TlsFailure> {
        let conn = UnbufferedServerConnection::new(Arc::clone(&self.server))?;
        Ok(TlsLink::new(Side::Server(conn)))
    }

    /// The client side of a dial to `node_id` at `ip`: the server's certificate must chain to
    /// the CA and name `node_id` as configured.
    pub(crate) fn dial(&self, node_id: &str, ip: IpAddr) -> Result<TlsLink, TlsFailure> {
        let verifier = NodeVerifier {
            chain: Arc::clone(&self.chain_verifier),
            node_id: node_id.to_owned(),
            verification: self.verification,
        };
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.resumption = rustls::client::Resumption::disabled();
        // The name is the peer's address: node ids need not be DNS names, and the identity
        // check is `NodeVerifier`'s. An address sends no SNI.
        let conn =
            UnbufferedClientConnection::new(Arc::new(config), ServerName::IpAddress(ip.into()))?;
        Ok(TlsLink::new(Side::Client(conn)))
    }

    /// Whether the dialer on `link` (an accepted connection) may be `node_id`: its certificate
    /// names it as configured. A dialer without a certificate (allowed only when client
    /// authentication is not required) is not identified by one and passes.
    pub(crate) fn check_dialer(&self, link: &TlsLink, node_id: &str) -> Result<(), TlsFailure> {
        match link.peer_certificate() {
            Some(cert) => check_names(cert, node_id, self.verification),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("verification", &self.verification)
            .finish_non_exhaustive()
    }
}

/// One connection's TLS state and buffers.
pub(crate) struct TlsLink {
    side: Side,
    /// Received TLS bytes not yet processed (a partial record, usually nothing).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet handed to proto.
    plaintext: Vec<u8>,
    /// TLS records due to the peer (handshake messages, alerts), ahead of any application data.
    outgoing: Vec<u8>,
    /// Plaintext written before the handshake completed.
    backlog: Vec<u8>,
    /// The failure that ended the link: rustls is not called again after one.
    failed: Option<TlsFailure>,
    /// Whether any byte was received.
    received: bool,
}

enum Side {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

impl TlsLink {
    fn new(side: Side) -> TlsLink {
        TlsLink {
            side,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            backlog: Vec::new(),
            failed: None,
            received: false,
        }
    }

    /// Takes `wire`, bytes received from the socket: decrypts the complete records into the
    /// plaintext buffer ([`TlsLink::take_plaintext`]) and queues what the handshake answers for
    /// the next [`TlsLink::transmit`].
    ///
    /// # Errors
    ///
    /// A TLS failure (a bad certificate, a node id the certificate does not name, a corrupt
    /// record): the connection cannot go on.
    pub(crate) fn receive(&mut self, wire: &[u8]) -> Result<(), TlsFailure> {
        if let Some(failure) = &self.failed {
            return Err(failure.clone());
        }
        self.received |= !wire.is_empty();
        self.incoming.extend_from_slice(wire);
        let result = match &mut self.side {
            Side::Client(conn) => read(
                conn,
                &mut self.incoming,
                &mut self.plaintext,
                &mut self.outgoing,
            ),
            Side::Server(conn) => read(
                conn,
                &mut self.incoming,
                &mut self.plaintext,
                &mut self.outgoing,
            ),
        };
        if let Err(failure) = &result {
            self.failed = Some(failure.clone());
        }
        result
    }

    /// The bytes decrypted so far, for proto; hand the vector back with
    /// [`TlsLink::recycle`] to keep its allocation.
    pub(crate) fn take_plaintext(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.plaintext)
    }

    /// Returns a vector from [`TlsLink::take_plaintext`], its bytes consumed.
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.plaintext.is_empty() {
            buf.clear();
            self.plaintext = buf;
        }
    }

    /// Appends to `wire` the TLS records due (handshake messages first), then `control` and
    /// `data`, in that order, encrypted. Before the handshake is done the plaintext waits in
    /// the link and goes out, in order, once it is.
    ///
    /// # Errors
    ///
    /// A TLS failure: the connection cannot go on. After one (here or in
    /// [`TlsLink::receive`]) nothing new is encrypted, but what is still due, the alert that
    /// says why, goes into `wire`.
    pub(crate) fn transmit(
        &mut self,
        control: &[u8],
        data: &[Bytes],
        wire: &mut Vec<u8>,
    ) -> Result<(), TlsFailure> {
        // What reading queued (handshake answers, an alert) goes first; then everything is
        // encoded and encrypted straight into `wire`, with no copy in between.
        wire.append(&mut self.outgoing);
        if let Some(failure) = &self.failed {
            return Err(failure.clone());
        }
        let result = match &mut self.side {
            Side::Client(conn) => write(conn, wire, &mut self.backlog, control, data),
            Side::Server(conn) => write(conn, wire, &mut self.backlog, control, data),
        };
        if let Err(failure) = &result {
            self.failed = Some(failure.clone());
        }
        result
    }

    /// Ends a server link whose dialer spoke plaintext ringwire before any TLS byte: `answer`
    /// (a plaintext GOAWAY saying TLS is required) is what goes out, unencrypted, instead of
    /// a TLS alert the dialer could not read. Nothing the dialer sent is processed.
    /// Call only while [`TlsLink::is_fresh_server`].
    pub(crate) fn refuse_plaintext(&mut self, answer: &[u8]) -> TlsFailure {
        debug_assert!(self.is_fresh_server());
        let failure = TlsFailure::plaintext_peer();
        self.outgoing.clear();
        self.outgoing.extend_from_slice(answer);
        self.failed = Some(failure.clone());
        failure
    }

    /// Whether nothing has been received yet: the next bytes are the dialer's first.
    pub(crate) fn is_fresh_server(&self) -> bool {
        matches!(self.side, Side::Server(_))
            && self.failed.is_none()
            && self.incoming.is_empty()
            && self.is_handshaking()
            && !self.received
    }

    /// The failure that ended the link, if one did.
    pub(crate) fn failure(&self) -> Option<&TlsFailure> {
        self.failed.as_ref()
    }

    /// Whether the handshake is still under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    /// The peer's end-entity certificate (DER), once the handshake has verified it.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        self.common()
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref())
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.side {
            Side::Client(conn) => conn,
            Side::Server(conn) => conn,
        }
    }
}

impl fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLink")
            .field(
                "side",
                &match self.side {
                    Side::Client(_) => "client",
                    Side::Server(_) => "server",
                },
            )
            .field("handshaking", &self.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

/// Why a TLS connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFailure {
    reason: String,
    kind: TlsFailureKind,
}

/// The failures the application is told of by their own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailureKind {
    /// Anything else: a certificate that does not verify, a corrupt record.
    Other,
    /// The peer sent a plaintext ringwire HELLO to a TLS node.
    PlaintextPeer,
    /// The peer asked for a client certificate this side did not present (its alert
    /// `certificate_required`).
    CertificateRequired,
}

impl TlsFailure {
    pub(crate) fn other(reason: impl Into<String>) -> TlsFailure {
        TlsFailure {
            reason: reason.into(),
            kind: TlsFailureKind::Other,
        }
    }

    /// A peer that spoke plaintext ringwire to this TLS node.
    pub(crate) fn plaintext_peer() -> TlsFailure {
        TlsFailure {
            reason: "the peer sent a plaintext HELLO to a node that accepts only TLS".to_owned(),
            kind: TlsFailureKind::PlaintextPeer,
        }
    }

    pub(crate) fn kind(&self) -> TlsFailureKind {
        self.kind
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<rustls::Error> for TlsFailure {
    fn from(e: rustls::Error) -> TlsFailure {
        let kind = match e {
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                TlsFailureKind::CertificateRequired
            }
            _ => TlsFailureKind::Other,
        };
        TlsFailure {
            reason: format!("TLS: {e}"),
            kind,
        }
    }
}

/// The two unbuffered connection types, for code that drives either.
trait Process {
    type Data;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Process for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Process for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// Processes the complete records of `incoming` (dropping them from it): application data to
/// `plaintext`, handshake answers to `outgoing`. A close_notify from the peer ends the reading;
/// the socket's end of stream follows, and closes the connection.
fn read<C: Process>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> Result<(), TlsFailure> {
    let mut start = 0;
    let result = loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[start..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                start += discard;
                queue_alert(conn, &mut incoming[start..], outgoing);
                break Err(TlsFailure::from(e));
            }
        };
        let done = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    discard += record.discard;
                    plaintext.extend_from_slice(record.payload);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, outgoing)?;
                false
            }
            // What was encoded is in `outgoing`, and goes out with the next transmit, before
            // anything encrypted after this point.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            ConnectionState::PeerClosed => false,
            ConnectionState::BlockedHandshake
            | ConnectionState::WriteTraffic(_)
            | ConnectionState::Closed => true,
            _ => {
                start += discard;
                break Err(TlsFailure::other("TLS: unexpected connection state"));
            }
        };
        start += discard;
        if done {
            break Ok(());
        }
    };
    incoming.drain(..start);
    result
}

/// Appends the TLS records due to `wire`, then, once the handshake allows, encrypts the
/// backlog, `control` and `data` after them; before that, keeps the plaintext in `backlog`.
fn write<C: Process>(
    conn: &mut C,
    wire: &mut Vec<u8>,
    backlog: &mut Vec<u8>,
    control: &[u8],
    data: &[Bytes],
) -> Result<(), TlsFailure> {
    loop {
        let UnbufferedStatus { state, .. } = conn.process(&mut []);
        match state? {
            ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, wire)?,
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::WriteTraffic(mut traffic) => {
                let mut pieces = std::iter::once(&backlog[..])
                    .chain(std::iter::once(control))
                    .chain(data.iter().map(|b| &b[..]))
                    .filter(|piece| !piece.is_empty());
                pieces.try_for_each(|piece| {
                    encrypt_into(|out| traffic.encrypt(piece, out), piece.len(), wire)
                })?;
                backlog.clear();
                return Ok(());
            }
            ConnectionState::BlockedHandshake | ConnectionState::ReadTraffic(_) => {
                backlog.extend_from_slice(control);
                data.iter()
                    .for_each(|piece| backlog.extend_from_slice(piece));
                return Ok(());
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(TlsFailure::other("TLS: the connection is closed"));
            }
            _ => return Err(TlsFailure::other("TLS: unexpected connection state")),
        }
    }
}

/// After a failure rustls holds the alert that tells the peer why (a certificate it does not
/// trust, say): queues it in `outgoing`, which still goes out before the connection closes.
/// `incoming` is what is left of the received bytes after the failed call's discard.
///
/// One call only: rustls hands out what it has queued before it reads any input, and the one
/// fatal alert is one record; a second call would read the input again, fail again and try
/// to queue a second fatal alert.
fn queue_alert<C: Process>(conn: &mut C, incoming: &mut [u8], outgoing: &mut Vec<u8>) {
    let UnbufferedStatus { state, .. } = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
        // A failure to encode it leaves the connection to close without it.
        let _ = encode_into(&mut encode, outgoing);
    }
}

/// Appends a handshake record to `out`.
fn encode_into<Data>(
    encode: &mut EncodeTlsData<'_, Data>,
    out: &mut Vec<u8>,
) -> Result<(), TlsFailure> {
    let start = out.len();
    out.resize(start + HANDSHAKE_RECORD_GUESS, 0);
    let written = match encode.encode(&mut out[start..]) {
        Ok(written) => written,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            encode
                .encode(&mut out[start..])
                .map_err(|e| TlsFailure::other(format!("TLS: encoding a handshake record: {e}")))?
        }
        Err(e) => {
            return Err(TlsFailure::other(format!(
                "TLS: encoding a handshake record: {e}"
            )));
        }
    };
    out.truncate(start + written);
    Ok(())
}

/// Appends the records `encrypt` makes of `len` plaintext bytes to `out`.
fn encrypt_into(
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), TlsFailure> {
    let start = out.len();
    out.resize(
        start + len + RECORD_OVERHEAD * (len / RECORD_PLAINTEXT_MAX + 1),
        0,
    );
    let written = match encrypt(&mut out[start..]) {
        Ok(written) => written,
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            encrypt(&mut out[start..])
                .map_err(|e| TlsFailure::other(format!("TLS: encrypting: {e}")))?
        }
        Err(e) => return Err(TlsFailure::other(format!("TLS: encrypting: {e}"))),
    };
    out.truncate(start + written);
    Ok(())
}

/// Checks that `cert` names `node_id` as `verification` asks.
fn check_names(
    cert: &[u8],
    node_id: &str,
    verification: NodeIdVerification,
) -> Result<(), TlsFailure> {
    if identity::names_node(cert, node_id, verification) {
        return Ok(());
    }
    let field = match verification {
        NodeIdVerification::CommonName => "common name",
        _ => "DNS subject alternative name",
    };
    Err(TlsFailure::other(format!(
        "the peer's certificate does not name node id {node_id:?} as its {field} (it names {:?})",
        identity::presented_names(cert, verification)
    )))
}

/// The ring provider with AES-128-GCM preferred: as secure for this use as AES-256-GCM, with
/// 10 rounds instead of 14 (both sides are ringwire nodes, so this order decides).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite;
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Verifies a server's certificate for a dial: its chain (by webpki, against the CA, ignoring
/// the name it is issued for) and then that it names the node id dialed.
#[derive(Debug)]
struct NodeVerifier {
    chain: Arc<WebPkiServerVerifier>,
    node_id: String,
    verification: NodeIdVerification,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain, then the name: a name error means the chain is good. The
        // name here is the address dialed, which certificates do not carry; the node id is
        // what must match.
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        check_names(end_entity.as_ref(), &self.node_id, self.verification)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(IdentityError(e.reason)),
                )))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A certificate that does not name the node id: the error rustls reports for it.
#[derive(Debug)]
struct IdentityError(String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

/// Room reserved for a handshake record before asking rustls for its size.
const HANDSHAKE_RECORD_GUESS: usize = 4096;
/// Most plaintext a TLS record carries.
const RECORD_PLAINTEXT_MAX: usize = 16 << 10;
/// Bytes a TLS 1.3 record adds: header (5), content type (1) and AEAD tag (16).
const RECORD_OVERHEAD: usize = 22;

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    use super::*;

    /// A CA that signs node certificates, written as PEM files into a directory.
    pub(crate) struct TestCa {
        dir: PathBuf,
        name: String,
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> TestCa {
            let dir = std::env::temp_dir().join(format!(
                "ringwire-tls-{name}-{}-{:x}",
                std::process::id(),
                uuid::Uuid::new_v4().as_u128() as u32
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
            TestCa {
                dir,
                name: name.to_owned(),
                cert,
                key,
            }
        }

        /// A certificate with common name `cn` and DNS names `sans`, signed by this CA, and a
        /// configuration that uses it and trusts `trusted`.
        pub(crate) fn node(&self, cn: &str, sans: &[&str], trusted: &TestCa) -> TlsConfig {
            let key = KeyPair::generate().unwrap();
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let base = format!(
                "{}-{cn}-{:x}",
                self.name,
                uuid::Uuid::new_v4().as_u128() as u32
            );
            let cert_path = self.dir.join(format!("{base}.crt"));
            let key_path = self.dir.join(format!("{base}.key"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            TlsConfig::new(cert_path, key_path, trusted.ca_path())
        }

        pub(crate) fn ca_path(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        pub(crate) fn dir(&self) -> &Path {
            &self.dir
        }
    }

    impl Drop for TestCa {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Moves bytes between a client and a server link until neither has anything to say,
    /// sending `to_server` and `to_client` as application data; returns what each side read.
    fn converse(
        client: &mut TlsLink,
        server: &mut TlsLink,
        to_server: &[u8],
        to_client: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), TlsFailure> {
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        let (mut c_sent, mut s_sent) = (false, false);
        for _ in 0..16 {
            let mut wire = Vec::new();
            let data = if c_sent { &[][..] } else { to_server };
            client.transmit(data, &[], &mut wire)?;
            c_sent = true;
            server.receive(&wire)?;
            at_server.extend(server.take_plaintext());
            let mut wire = Vec::new();
            let data = if s_sent || server.is_handshaking() {
                &[][..]
            } else {
                to_client
            };
            s_sent |= !server.is_handshaking();
            server.transmit(data, &[], &mut wire)?;
            client.receive(&wire)?;
            at_client.extend(client.take_plaintext());
        }
        Ok((at_server, at_client))
    }

    fn localhost() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn mutual_tls_carries_data_both_ways_once_the_handshake_is_done() {
        let ca = TestCa::new("ca");
        let a = TlsContext::load(&ca.node("node-a", &["node-a"], &ca)).unwrap();
        let b = TlsContext::load(&ca.node("node-b", &["node-b"], &ca)).unwrap();
        let mut client = a.dial("node-b", localhost()).unwrap();
        let mut server = b.accept().unwrap();
        // Written before the handshake: kept, then sent encrypted after it.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (at_server, at_client) = converse(&mut client, &mut server, &big, b"pong").unwrap();
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(at_server, big);
        assert_eq!(at_client, b"pong");
        assert!(b.check_dialer(&server, "node-a").is_ok());
        let err = b.check_dialer(&server, "node-x").unwrap_err();
        assert!(
            err.reason.contains("node-x") && err.reason.contains("node-a"),
            "{err}"
        );
    }

    #[test]
    fn a_server_whose_certificate_does_not_name_the_dialed_node_is_refused() {
        let ca = TestCa::new("ca");
        let a = TlsContext::load(&ca.node("node-a", &["node-a"], &ca)).unwrap();
        let b = TlsContext::load(&ca.node("node-b", &["node-b"], &ca)).unwrap();
        let mut client = a.dial("node-c", localhost()).unwrap();
        let mut server = b.accept().unwrap();
        let err = converse(&mut client, &mut server, b"x", b"y").unwrap_err();
        assert!(err.reason.contains("node-c"), "{err}");
    }

    #[test]
    fn common_name_verification_reads_the_subject() {
        let ca = TestCa::new("ca");
        let mut config = ca.node("node-a", &[], &ca);
        config.node_id_verification = NodeIdVerification::CommonName;
        let a = TlsContext::load(&config).unwrap();
        let mut config = ca.node("node-b", &["not-node-b"], &ca);
        config.node_id_verification = NodeIdVerification::CommonName;
        let b = TlsContext::load(&config).unwrap();
        let mut client = a.dial("node-b", localhost()).unwrap();
        let mut server = b.accept().unwrap();
        converse(&mut client, &mut server, b"x", b"y").unwrap();
        assert!(b.check_dialer(&server, "node-a").is_ok());
        assert!(b.check_dialer(&server, "not-node-a").is_err());
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_either_way() {
        let ca = TestCa::new("ca");
        let other = TestCa::new("other");
        let good = TlsContext::load(&ca.node("node-a", &["node-a"], &ca)).unwrap();
        // Signed by the other CA, trusting ours.
        let stranger = TlsContext::load(&other.node("node-b", &["node-b"], &ca)).unwrap();
        let mut client = good.dial("node-b", localhost()).unwrap();
        let mut server = stranger.accept().unwrap();
        let err = converse(&mut client, &mut server, b"x", b"y").unwrap_err();
        assert!(err.reason.contains("TLS"), "{err}");
        let mut client = stranger.dial("node-a", localhost()).unwrap();
        let mut server = good.accept().unwrap();
        assert!(converse(&mut client, &mut server, b"x", b"y").is_err());
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let ca = TestCa::new("ca");
        let mut config = ca.node("node-a", &["node-a"], &ca);
        let missing = ca.dir().join("missing.pem");
        config.ca_cert_path = missing.clone();
        let err = TlsContext::load(&config).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        // A key that is not the certificate's.
        let mut config = ca.node("node-a", &["node-a"], &ca);
        config.key_path = ca.node("node-b", &["node-b"], &ca).key_path;
        let err = TlsContext::load(&config).unwrap_err();
        assert!(err.contains("do not go together"), "{err}");
        // Not PEM at all.
        let mut config = ca.node("node-a", &["node-a"], &ca);
        let junk = ca.dir().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        config.cert_path = junk;
        let err = TlsContext::load(&config).unwrap_err();
        assert!(err.contains("junk.pem"), "{err}");
    }

    #[test]
    fn garbage_instead_of_tls_is_a_failure_not_a_panic() {
        let ca = TestCa::new("ca");
        let b = TlsContext::load(&ca.node("node-b", &["node-b"], &ca)).unwrap();
        let mut server = b.accept().unwrap();
        // A plaintext ringwire HELLO header where a ClientHello should be.
        assert!(
            server
                .receive(b"RWIR\x01\x00\x00\x00garbage garbage")
                .is_err()
        );
        // The alert that says so is still there to send: a record of content type 21.
        let mut wire = Vec::new();
        assert!(server.transmit(b"more", &[], &mut wire).is_err());
        assert_eq!(wire.first(), Some(&21), "{wire:?}");
        assert_eq!(
            wire.len(),
            7,
            "the alert alone, nothing encrypted: {wire:?}"
        );
        // Feeding more after the failure neither panics nor succeeds.
        assert!(server.receive(b"more garbage").is_err());
    }

    #[test]
    fn a_refused_client_certificate_is_answered_with_an_alert() {
        let ca = TestCa::new("ca");
        let other = TestCa::new("other");
        let node = TlsContext::load(&ca.node("node-b", &["node-b"], &ca)).unwrap();
        let outsider = TlsContext::load(&other.node("node-a", &["node-a"], &ca)).unwrap();
        let mut client = outsider.dial("node-b", localhost()).unwrap();
        let mut server = node.accept().unwrap();
        let err = converse(&mut client, &mut server, b"x", b"y").unwrap_err();
        assert!(err.reason.contains("UnknownIssuer"), "{err}");
        let mut wire = Vec::new();
        assert!(server.transmit(&[], &[], &mut wire).is_err());
        let err = client.receive(&wire).unwrap_err();
        assert!(err.reason.contains("alert"), "the client hears why: {err}");
    }
}
