//! AUTH over real sockets: nodes sharing a secret exchange messages exactly once; a dialer that
//! claims a connected peer's id without the secret (a wrong one, or none) is refused before the
//! node keeps any state for it, is told why, and the real peer's stream loses and duplicates
//! nothing; a dialer with a secret refuses a node without one.

use std::sync::Arc;

use bytes::Bytes;
use ringwire::{AuthToken, Error, PeerConfig, SecurityMode};
use ringwire_tests::{
    HandshakeFailures, PATIENCE, Recorder, builder, payload, publish_patiently, wait_until,
};

const COUNT: u64 = 20_000;
const SECRET: &str = "the cluster's shared secret, 32+";

fn with_secret(secret: Option<&str>) -> impl FnOnce(&mut ringwire::Config) + Send + 'static {
    let token = secret.map(AuthToken::new);
    move |c| c.auth_token = token
}

#[test]
fn impostors_without_the_secret_are_refused_and_the_real_stream_goes_on() {
    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 2)
        .listen("127.0.0.1:0")
        .configure(with_secret(Some(SECRET)))
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = b.local_addr().unwrap();
    let real = builder("node-a", 1)
        .configure(with_secret(Some(SECRET)))
        .start()
        .unwrap();
    let to_b = real.connect(PeerConfig::new("node-b", [addr])).unwrap();
    (0..COUNT / 2).for_each(|n| _ = publish_patiently(&to_b, payload(n, 64)));
    wait_until("the real peer connected", || sink.total() > 0);

    for (name, secret) in [
        ("a wrong secret", Some("not the cluster's secret at all")),
        ("no secret", None),
    ] {
        let told = Arc::new(HandshakeFailures::default());
        let impostor = builder("node-a", 1)
            .configure(with_secret(secret))
            .handler(Arc::clone(&told))
            .start()
            .unwrap();
        let fake = impostor.connect(PeerConfig::new("node-b", [addr])).unwrap();
        publish_patiently(
            &fake,
            Bytes::from_static(b"\xff\xff\xff\xff\xff\xff\xff\xffinjected"),
        );
        wait_until("the impostor told why", || told.first().is_some());
        let why = told.first().unwrap();
        eprintln!("the impostor with {name} was told: {why}");
        assert!(
            why.contains("unauthenticated") || why.contains("AUTH"),
            "{why}"
        );
        assert_eq!(
            fake.seq_acked(),
            0,
            "nothing the impostor sent was acknowledged"
        );
        drop(impostor);
    }
    (COUNT / 2..COUNT).for_each(|n| _ = publish_patiently(&to_b, payload(n, 64)));
    wait_until("the real stream delivered", || sink.total() == COUNT);
    sink.tally("node-a").assert_complete(COUNT, "node-a");
    assert_eq!(b.stats().peers.len(), 1, "{:?}", b.stats().peers);
    real.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn a_dialer_with_a_secret_refuses_a_node_without_one() {
    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let told = Arc::new(HandshakeFailures::default());
    let a = builder("node-a", 1)
        .configure(with_secret(Some(SECRET)))
        .handler(Arc::clone(&told))
        .start()
        .unwrap();
    let peer = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    publish_patiently(&peer, payload(0, 64));
    wait_until("the dialer refused the node", || told.first().is_some());
    let why = told.first().unwrap();
    eprintln!("the dialer said: {why}");
    assert!(why.contains("without proving the shared secret"), "{why}");
    assert_eq!(sink.total(), 0, "nothing was delivered to an unproven node");
    drop(a);
    b.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn weak_or_contradictory_secrets_are_refused_before_start() {
    let short = builder("node-a", 1)
        .configure(with_secret(Some("short")))
        .start();
    assert!(matches!(short, Err(Error::InvalidConfig(ref m)) if m.contains("at least 16")));
    let legacy = builder("node-a", 1)
        .configure(|c| {
            c.auth_token = Some(AuthToken::new(SECRET));
            c.security_mode = Some(SecurityMode::Legacy);
        })
        .start();
    assert!(matches!(legacy, Err(Error::InvalidConfig(ref m)) if m.contains("legacy")));
}
