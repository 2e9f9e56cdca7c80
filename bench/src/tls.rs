//! TLS for the `tokio-rustls` baseline: the `tokio` stack with every connection inside
//! tokio-rustls, set up as ringwire sets up its own TLS, so the two differ only in how they
//! drive rustls: TLS 1.3 only, the ring provider with AES-128-GCM preferred, mutual TLS
//! (the client presents a certificate the server verifies against the CA), no session tickets
//! or resumption. The certificates are made for the run by a throwaway CA (rcgen), in memory.

use std::io;
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

/// The name the server's certificate carries and the client checks.
pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a DNS name")
}

/// A CA, a server and a client certificate, and the configurations that use them.
pub(crate) fn setup() -> io::Result<Tls> {
    let fail = |e: &dyn std::fmt::Display| io::Error::other(format!("TLS setup: {e}"));
    let ca_key = KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "baseline CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = params.self_signed(&ca_key).map_err(|e| fail(&e))?;
    let leaf = |name: &str| -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(|e| fail(&e))?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(|e| fail(&e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(|e| fail(&e))?;
    let roots = Arc::new(roots);
    let provider = Arc::new(provider());

    let (chain, key) = leaf("localhost")?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| fail(&e))?;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| fail(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| fail(&e))?;
    server.send_tls13_tickets = 0;

    let (chain, key) = leaf("baseline-client")?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| fail(&e))?;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
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
