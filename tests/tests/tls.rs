//! TLS over real sockets, with certificates made by `openssl`: mutual TLS carries every message
//! exactly once both ways, also across shards of the acceptor (the TLS state moves with the
//! socket); a dialer whose certificate does not name the node id it claims is refused before
//! the node keeps any state for it, and cannot disturb the real peer's stream; plaintext and
//! TLS never talk to each other.

use std::sync::Arc;

use bytes::Bytes;
use ringwire::{Engine, PeerConfig, TlsConfig};
use ringwire_tests::certs::OpensslCa;
use ringwire_tests::{
    HandshakeFailures, PATIENCE, Recorder, builder, payload, publish_patiently, wait_until,
};

const COUNT: u64 = 50_000;

fn tls_node(id: &str, shards: usize, tls: &TlsConfig, sink: &Arc<Recorder>) -> Engine {
    let tls = tls.clone();
    builder(id, shards)
        .listen("127.0.0.1:0")
        .configure(move |c| c.tls = Some(tls))
        .handler(Arc::clone(sink))
        .start()
        .unwrap()
}

#[test]
fn mutual_tls_delivers_exactly_once_both_ways() {
    let Some(ca) = OpensslCa::new("mutual_tls_delivers_exactly_once_both_ways", "ca") else {
        return;
    };
    let (at_a, at_b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    // An RSA key on one side, EC on the other: both kinds openssl makes.
    let b = tls_node("node-b", 2, &ca.node("node-b", &["node-b"], &ca), &at_b);
    let a = tls_node("node-a", 1, &ca.rsa_node("node-a", &["node-a"], &ca), &at_a);
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    let to_a = b.peer("node-a");
    std::thread::scope(|s| {
        s.spawn(|| (0..COUNT).for_each(|n| _ = publish_patiently(&to_b, payload(n, 100))));
        s.spawn(|| (0..COUNT).for_each(|n| _ = publish_patiently(&to_a, payload(n, 2000))));
    });
    wait_until("both directions delivered", || {
        at_b.total() == COUNT && at_a.total() == COUNT
    });
    at_b.tally("node-a").assert_complete(COUNT, "node-a");
    at_a.tally("node-b").assert_complete(COUNT, "node-b");
    assert_eq!(a.stats().tls_failures + b.stats().tls_failures, 0);
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// Six dialers into a two-shard node: the listener's shard is picked by the kernel, the owner
/// by the node id, so some connections finish their TLS handshake on one shard and move to the
/// other with their TLS state.
#[test]
fn tls_connections_accepted_on_the_wrong_shard_reach_their_owner() {
    let Some(ca) = OpensslCa::new("tls_connections_accepted_on_the_wrong_shard", "ca") else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let b = tls_node("node-b", 2, &ca.node("node-b", &["node-b"], &ca), &sink);
    let addr = b.local_addr().unwrap();
    let dialers: Vec<_> = (0..6)
        .map(|i| {
            let id = format!("dialer-{i}");
            let tls = ca.node(&id, &[&id], &ca);
            let engine = builder(&id, 1)
                .configure(move |c| c.tls = Some(tls))
                .start()
                .unwrap();
            let peer = engine.connect(PeerConfig::new("node-b", [addr])).unwrap();
            (engine, peer)
        })
        .collect();
    for (_, peer) in &dialers {
        (0..1000).for_each(|n| _ = publish_patiently(peer, payload(n, 64)));
    }
    wait_until("every dialer delivered", || sink.total() == 6 * 1000);
    for i in 0..6 {
        sink.tally(&format!("dialer-{i}"))
            .assert_complete(1000, &format!("dialer-{i}"));
    }
    for (engine, _) in dialers {
        engine.shutdown_graceful(PATIENCE).unwrap();
    }
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// A dialer with a certificate from the right CA, but for another node, claims the id of a
/// connected peer: it is refused (GOAWAY `Unauthenticated`) and gets nothing; the real peer's
/// stream goes on, every message exactly once.
#[test]
fn a_dialer_whose_certificate_names_another_node_is_refused() {
    let Some(ca) = OpensslCa::new("a_dialer_whose_certificate_names_another_node", "ca") else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let b = tls_node("node-b", 1, &ca.node("node-b", &["node-b"], &ca), &sink);
    let addr = b.local_addr().unwrap();
    let real = builder("node-a", 1)
        .configure({
            let tls = ca.node("node-a", &["node-a"], &ca);
            move |c| c.tls = Some(tls)
        })
        .start()
        .unwrap();
    let to_b = real.connect(PeerConfig::new("node-b", [addr])).unwrap();
    (0..COUNT / 2).for_each(|n| _ = publish_patiently(&to_b, payload(n, 64)));
    wait_until("the real peer connected", || sink.total() > 0);

    // The impostor's certificate is valid, and names "mallory".
    let told = Arc::new(HandshakeFailures::default());
    let impostor = builder("node-a", 1)
        .configure({
            let tls = ca.node("mallory", &["mallory"], &ca);
            move |c| c.tls = Some(tls)
        })
        .handler(Arc::clone(&told))
        .start()
        .unwrap();
    let fake = impostor.connect(PeerConfig::new("node-b", [addr])).unwrap();
    publish_patiently(
        &fake,
        Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xffinjected"),
    );
    wait_until("the impostor refused", || b.stats().tls_failures >= 1);
    wait_until("the impostor told why", || told.first().is_some());
    let why = told.first().unwrap();
    eprintln!("the impostor was told: {why}");
    assert!(
        why.starts_with("HandshakeFailed: handshake with node-b failed: ")
            && why.contains("unauthenticated")
            && why.contains("mallory"),
        "{why}"
    );
    (COUNT / 2..COUNT).for_each(|n| _ = publish_patiently(&to_b, payload(n, 64)));
    wait_until("the real stream delivered", || sink.total() == COUNT);
    sink.tally("node-a").assert_complete(COUNT, "node-a");
    assert_eq!(
        fake.seq_acked(),
        0,
        "nothing the impostor sent was acknowledged"
    );
    assert!(!ringwire_tests::cut::is_connected(&impostor, "node-b"));
    drop(impostor);
    real.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// A stranger to the node's peers, with a certificate that does not name it, gets no peer
/// state at all.
#[test]
fn a_refused_dialer_leaves_no_peer_state() {
    let Some(ca) = OpensslCa::new("a_refused_dialer_leaves_no_peer_state", "ca") else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let b = tls_node("node-b", 1, &ca.node("node-b", &["node-b"], &ca), &sink);
    let stranger = builder("stranger", 1)
        .configure({
            let tls = ca.node("someone-else", &["someone-else"], &ca);
            move |c| c.tls = Some(tls)
        })
        .start()
        .unwrap();
    let peer = stranger
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    publish_patiently(&peer, payload(0, 64));
    wait_until("the stranger refused", || b.stats().tls_failures >= 1);
    assert!(b.stats().peers.is_empty(), "{:?}", b.stats().peers);
    assert_eq!(sink.total(), 0);
    drop(stranger);
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// A certificate from another CA gets no session: the node refuses a dialer's, and a dialer
/// refuses the node's.
#[test]
fn a_certificate_from_another_ca_gets_no_session() {
    let Some(ca) = OpensslCa::new("a_certificate_from_another_ca_gets_no_session", "ca") else {
        return;
    };
    let Some(other) = OpensslCa::new("a_certificate_from_another_ca_gets_no_session", "other")
    else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let b = tls_node("node-b", 1, &ca.node("node-b", &["node-b"], &ca), &sink);
    let told = Arc::new(HandshakeFailures::default());
    let dial = |id: &str, tls: TlsConfig| {
        let engine = builder(id, 1)
            .configure(move |c| c.tls = Some(tls))
            .handler(Arc::clone(&told))
            .start()
            .unwrap();
        let peer = engine
            .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
            .unwrap();
        publish_patiently(&peer, payload(0, 64));
        engine
    };
    // Signed by the other CA, trusting the node's: the node refuses it.
    let outsider = dial("node-a", other.node("node-a", &["node-a"], &ca));
    wait_until("the node refused the outsider's certificate", || {
        b.stats().tls_failures >= 1
    });
    // Signed by the node's CA, trusting only the other: it refuses the node.
    let doubter = dial("node-e", ca.node("node-e", &["node-e"], &other));
    wait_until("the dialer refused the node's certificate", || {
        doubter.stats().tls_failures >= 1
    });
    // The dialers are told why: the outsider of the node's refusal (its connection ends in the
    // handshake), the doubter of the certificate it could not verify.
    wait_until("a dialer told why", || told.first().is_some());
    let reasons = told.all();
    assert!(
        reasons.iter().all(|r| r.starts_with("HandshakeFailed: ")),
        "{reasons:?}"
    );
    eprintln!("dialers were told: {reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("certificate")),
        "{reasons:?}"
    );
    assert!(b.stats().peers.is_empty(), "{:?}", b.stats().peers);
    assert_eq!(sink.total(), 0);
    drop((outsider, doubter));
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// Plaintext and TLS never exchange a message, whichever side dials.
#[test]
fn plaintext_and_tls_do_not_talk() {
    let Some(ca) = OpensslCa::new("plaintext_and_tls_do_not_talk", "ca") else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let tls_b = tls_node("node-b", 1, &ca.node("node-b", &["node-b"], &ca), &sink);
    let plain_a = builder("node-a", 1).start().unwrap();
    let peer = plain_a
        .connect(PeerConfig::new("node-b", [tls_b.local_addr().unwrap()]))
        .unwrap();
    publish_patiently(&peer, payload(0, 64));
    wait_until("the node refused the plaintext dialer", || {
        tls_b.stats().tls_failures >= 1
    });

    let plain_sink = Arc::new(Recorder::default());
    let plain_c = builder("node-c", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&plain_sink))
        .start()
        .unwrap();
    let tls_d = builder("node-d", 1)
        .configure({
            let tls = ca.node("node-d", &["node-d"], &ca);
            move |c| c.tls = Some(tls)
        })
        .start()
        .unwrap();
    let peer = tls_d
        .connect(PeerConfig::new("node-c", [plain_c.local_addr().unwrap()]))
        .unwrap();
    publish_patiently(&peer, payload(0, 64));
    wait_until("the TLS dialer gave up on the plaintext node", || {
        tls_d.stats().tls_failures >= 1
    });
    assert_eq!(sink.total() + plain_sink.total(), 0);
    drop((plain_a, tls_d));
    tls_b.shutdown_graceful(PATIENCE).unwrap();
    plain_c.shutdown_graceful(PATIENCE).unwrap();
}
