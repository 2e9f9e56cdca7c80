//! The four security modes against every kind of client, over real sockets with certificates
//! made by `openssl`: only what a mode allows gets a session, and the rest are refused with an
//! error the dialer can read. Also `validate_security()`, which refuses contradictory or
//! incomplete configurations before anything starts.

use std::io::{Read, Write};

use rustls::pki_types::pem::PemObject;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwire::{Config, Engine, Error, NodeIdVerification, PeerConfig, SecurityMode, TlsConfig};
use ringwire_tests::certs::OpensslCa;
use ringwire_tests::{
    HandshakeFailures, PATIENCE, Recorder, builder, hello_frame, payload, publish_patiently,
};

/// What happened to one dialer.
#[derive(Debug)]
enum Outcome {
    /// Its message was delivered.
    Session,
    /// It was refused; the first error it was told of.
    Refused(String),
}

/// The kinds of client a node meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Plaintext,
    /// TLS with no client certificate (a raw rustls client: no ringwire dialer is one).
    TlsNoCert,
    /// Mutual TLS, the certificate naming the dialer's node id.
    Mtls,
    /// Mutual TLS, the certificate naming another node.
    MtlsMismatch,
    /// Mutual TLS, the certificate expired.
    MtlsExpired,
    /// Mutual TLS, the certificate from another CA.
    MtlsWrongCa,
}

const CLIENTS: [Client; 6] = [
    Client::Plaintext,
    Client::TlsNoCert,
    Client::Mtls,
    Client::MtlsMismatch,
    Client::MtlsExpired,
    Client::MtlsWrongCa,
];

struct Cas {
    ca: OpensslCa,
    other: OpensslCa,
}

/// A node in `mode` listening on loopback, and what it received.
fn node(mode: SecurityMode, cas: &Cas) -> (Engine, Arc<Recorder>) {
    let tls = match mode {
        SecurityMode::Strict => Some(cas.ca.node("node-b", &["node-b"], &cas.ca)),
        SecurityMode::Permissive => {
            let mut tls = cas.ca.node("node-b", &["node-b"], &cas.ca);
            tls.require_client_auth = false;
            Some(tls)
        }
        SecurityMode::Development | SecurityMode::Legacy => None,
    };
    let sink = Arc::new(Recorder::default());
    let engine = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(move |c| {
            c.tls = tls;
            c.security_mode = Some(mode);
        })
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    (engine, sink)
}

/// Dials `addr` as `client` and waits for the dialer's message to arrive, or for it to be
/// refused.
fn attempt(
    client: Client,
    mode: SecurityMode,
    addr: SocketAddr,
    sink: &Recorder,
    cas: &Cas,
) -> Outcome {
    let id = format!("{client:?}-{mode}").to_lowercase();
    if client == Client::TlsNoCert {
        return raw_tls_without_certificate(&id, addr, cas);
    }
    let tls = match client {
        Client::Plaintext => None,
        Client::Mtls => Some(cas.ca.node(&id, &[&id], &cas.ca)),
        Client::MtlsMismatch => Some(cas.ca.node("mallory", &["mallory"], &cas.ca)),
        Client::MtlsExpired => Some(cas.ca.expired_node(&id, &[&id], &cas.ca)),
        Client::MtlsWrongCa => Some(cas.other.node(&id, &[&id], &cas.ca)),
        Client::TlsNoCert => unreachable!(),
    };
    let told = Arc::new(HandshakeFailures::default());
    let dialer = builder(&id, 1)
        .configure(move |c| {
            c.tls = tls;
            // The mismatching dialer's certificate names someone else, on purpose.
            c.security_mode = Some(if c.tls.is_some() {
                SecurityMode::Permissive
            } else {
                SecurityMode::Development
            });
        })
        .handler(Arc::clone(&told))
        .start()
        .unwrap();
    let peer = dialer.connect(PeerConfig::new("node-b", [addr])).unwrap();
    publish_patiently(&peer, payload(0, 64));
    let start = Instant::now();
    let outcome = loop {
        if sink.tally(&id).count > 0 {
            break Outcome::Session;
        }
        if let Some(first) = told.first() {
            break Outcome::Refused(first);
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{id}: neither a session nor a refusal"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(dialer);
    outcome
}

/// A TLS client with no certificate of its own, which sends a HELLO once the handshake is
/// done: a session if the node answers with its HELLO.
fn raw_tls_without_certificate(id: &str, addr: SocketAddr, cas: &Cas) -> Outcome {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cas.ca.cert_path()).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("node-b").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let result = tls.write_all(&hello_frame(id)).and_then(|()| {
        let mut header = [0u8; 8];
        tls.read_exact(&mut header).map(|()| header)
    });
    match result {
        Ok(header) if header[4] == 1 => Outcome::Session,
        Ok(header) => Outcome::Refused(format!("answered with a frame of kind {}", header[4])),
        Err(e) => Outcome::Refused(format!("TLS client: {e}")),
    }
}

/// What each mode must do with each client: `None` for a session, or a fragment of the error
/// the dialer must be told.
fn expected(mode: SecurityMode, client: Client) -> Option<&'static str> {
    use Client::*;
    use SecurityMode::*;
    match (mode, client) {
        (Strict | Permissive, Plaintext) => {
            Some("TlsRequired: TLS required: node-b refused this node's plaintext HELLO")
        }
        (Strict, TlsNoCert) => Some("CertificateRequired"),
        (Strict | Permissive, Mtls) | (Permissive, TlsNoCert) => None,
        (Strict | Permissive, MtlsMismatch) => Some("unauthenticated"),
        (Strict | Permissive, MtlsExpired) => Some("CertificateExpired"),
        (Strict | Permissive, MtlsWrongCa) => Some("UnknownCA"),
        (Development | Legacy, Plaintext) => None,
        // A plaintext node reads a ClientHello as a frame it cannot take and closes; the TLS
        // dialer sees its handshake end.
        (Development | Legacy, _) => Some(""),
    }
}

#[test]
fn every_mode_against_every_kind_of_client() {
    let test = "every_mode_against_every_kind_of_client";
    let (Some(ca), Some(other)) = (OpensslCa::new(test, "ca"), OpensslCa::new(test, "other"))
    else {
        return;
    };
    let cas = Cas { ca, other };
    let mut failures = Vec::new();
    for mode in [
        SecurityMode::Strict,
        SecurityMode::Permissive,
        SecurityMode::Development,
        SecurityMode::Legacy,
    ] {
        let (node, sink) = node(mode, &cas);
        let addr = node.local_addr().unwrap();
        for client in CLIENTS {
            let outcome = attempt(client, mode, addr, &sink, &cas);
            eprintln!("{mode:>11} <- {client:?}: {outcome:?}");
            let ok = match (expected(mode, client), &outcome) {
                (None, Outcome::Session) => true,
                (Some(fragment), Outcome::Refused(why)) => why.contains(fragment),
                _ => false,
            };
            if !ok {
                failures.push(format!("{mode} <- {client:?}: {outcome:?}"));
            }
        }
        // Only the clients the mode admits left a trace.
        let admitted: Vec<String> = sink.tallies().into_keys().collect();
        for id in &admitted {
            let client = CLIENTS
                .iter()
                .find(|c| id.starts_with(&format!("{c:?}-").to_lowercase()));
            assert!(
                client.is_some_and(|c| expected(mode, *c).is_none()),
                "{mode}: a message from {id}"
            );
        }
        node.shutdown_graceful(PATIENCE).unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn validate_security_refuses_contradictions_before_start() {
    let Some(ca) = OpensslCa::new("validate_security_refuses_contradictions", "ca") else {
        return;
    };
    let tls = ca.node("node-a", &["node-a"], &ca);
    let with = |mode: Option<SecurityMode>, tls: Option<TlsConfig>| {
        let mut config = Config::new("node-a");
        config.security_mode = mode;
        config.tls = tls;
        config
    };
    let refused = |config: &Config| {
        let err = config.validate_security().unwrap_err();
        eprintln!("{:?} refused: {err}", config.security_mode);
        err
    };

    // What each mode needs.
    let err = refused(&with(Some(SecurityMode::Strict), None));
    assert!(matches!(err, Error::TlsRequired { .. }), "{err:?}");
    let err = refused(&with(Some(SecurityMode::Permissive), None));
    assert!(matches!(err, Error::TlsRequired { .. }), "{err:?}");
    let mut one_way = tls.clone();
    one_way.require_client_auth = false;
    let err = refused(&with(Some(SecurityMode::Strict), Some(one_way.clone())));
    assert!(matches!(err, Error::MtlsRequired { .. }), "{err:?}");
    let mut unchecked = tls.clone();
    unchecked.node_id_verification = NodeIdVerification::None;
    let err = refused(&with(Some(SecurityMode::Strict), Some(unchecked.clone())));
    assert!(matches!(err, Error::InvalidConfig(ref m) if m.contains("node_id_verification")));
    for plaintext in [SecurityMode::Development, SecurityMode::Legacy] {
        let err = refused(&with(Some(plaintext), Some(tls.clone())));
        assert!(matches!(err, Error::InvalidConfig(ref m) if m.contains("plaintext")));
    }
    // Files that do not load are refused by name.
    let mut missing = tls.clone();
    missing.ca_cert_path = ca.dir().join("no-such-ca.crt");
    let err = refused(&with(Some(SecurityMode::Strict), Some(missing)));
    assert!(matches!(err, Error::InvalidConfig(ref m) if m.contains("no-such-ca.crt")));

    // Consistent configurations pass, and the mode is inferred when not set.
    with(Some(SecurityMode::Strict), Some(tls.clone()))
        .validate_security()
        .unwrap();
    with(Some(SecurityMode::Permissive), Some(one_way.clone()))
        .validate_security()
        .unwrap();
    with(Some(SecurityMode::Permissive), Some(unchecked.clone()))
        .validate_security()
        .unwrap();
    with(Some(SecurityMode::Development), None)
        .validate_security()
        .unwrap();
    assert_eq!(
        with(None, Some(tls.clone())).security_mode(),
        SecurityMode::Strict
    );
    assert_eq!(
        with(None, Some(one_way)).security_mode(),
        SecurityMode::Permissive
    );
    assert_eq!(
        with(None, Some(unchecked)).security_mode(),
        SecurityMode::Permissive
    );
    assert_eq!(with(None, None).security_mode(), SecurityMode::Development);

    // The engine refuses to start on the same grounds.
    let Err(err) = builder("node-a", 1)
        .configure(|c| c.security_mode = Some(SecurityMode::Strict))
        .start()
    else {
        panic!("a strict node without TLS must not start");
    };
    assert!(matches!(err, Error::TlsRequired { .. }), "{err:?}");
}
