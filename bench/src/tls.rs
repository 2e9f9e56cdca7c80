//! TLS for the `tokio-rustls` baseline and the `handshakes` benchmark, set up as ringwire sets
//! up its own TLS so that the stacks differ only in how they drive rustls: TLS 1.3 only, the
//! ring provider with AES-128-GCM preferred, mutual TLS (the client presents a certificate
//! the server verifies against the CA), no session tickets or resumption. The certificates
//! are made for the run by a throwaway CA (rcgen).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Both ends of the baseline's TLS.
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

/// The name the baseline server's certificate carries and its client checks.
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER).expect("a DNS name")
}

const SERVER: &str = "localhost";

/// The baseline's acceptor and connector, from certificates made now.
pub(crate) fn setup() -> io::Result<Tls> {
    let certs = Certs::make(SERVER, "baseline-client").map_err(io::Error::other)?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(certs.server_config().map_err(io::Error::other)?)),
        connector: TlsConnector::from(Arc::new(certs.client_config().map_err(io::Error::other)?)),
    })
}

/// A throwaway CA, a server certificate and a client certificate, each naming its side (as
/// DNS subject alternative name), and the rustls configurations that use them.
pub struct Certs {
    ca: rcgen::Certificate,
    server: Leaf,
    client: Leaf,
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl Certs {
    /// Certificates for a server named `server` and a client named `client`.
    pub fn make(server: &str, client: &str) -> Result<Certs, String> {
        let fail = |e: rcgen::Error| format!("making certificates: {e}");
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "benchmark CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).map_err(fail)?;
        let leaf = |name: &str| -> Result<Leaf, String> {
            let key = KeyPair::generate().map_err(fail)?;
            let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(fail)?;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &ca, &ca_key).map_err(fail)?;
            Ok(Leaf { cert, key })
        };
        Ok(Certs {
            server: leaf(server)?,
            client: leaf(client)?,
            ca,
        })
    }

    /// Writes the server's certificate, its key and the CA certificate as PEM files into
    /// `dir`, for a ringwire node (`TlsConfig::new` takes them in this order).
    pub fn write_server_pem(
        &self,
        dir: &Path,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf), String> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok::<_, String>(path)
        };
        Ok((
            write("server.crt", self.server.cert.pem())?,
            write("server.key", self.server.key.serialize_pem())?,
            write("ca.crt", self.ca.pem())?,
        ))
    }

    /// The server's configuration: its certificate, client certificates required.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let provider = Arc::new(provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())?;
        let (chain, key) = self.server.der();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// The client's configuration: its certificate, the server's checked against the CA.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let (chain, key) = self.client.der();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(roots))
    }
}

impl Leaf {
    fn der(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        (vec![self.cert.der().clone()], key)
    }
}

/// ringwire's choice: the ring provider with AES-128-GCM first.
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
