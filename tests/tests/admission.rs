//! Bounded admission: a node keeps state for at most `peers_max` peers; one more stranger that
//! dials in is refused with a GOAWAY and gets no state, while the admitted peers go on, and
//! the peers the application declares itself are not limited.

use std::sync::Arc;

use bytes::Bytes;
use ringwire::PeerConfig;
use ringwire_tests::{PATIENCE, Recorder, builder, publish_patiently, wait_until};

#[test]
fn dialers_beyond_peers_max_are_refused_and_get_no_state() {
    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(|c| c.peers_max = 2)
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = b.local_addr().unwrap();
    let senders: Vec<_> = (0..3)
        .map(|i| builder(&format!("dialer-{i}"), 1).start().unwrap())
        .collect();
    // The third dials only once the first two are admitted: dialing all three at once would
    // let any two of them win the race for the two places.
    for s in &senders[..2] {
        let peer = s.connect(PeerConfig::new("node-b", [addr])).unwrap();
        publish_patiently(&peer, Bytes::from_static(b"admitted"));
    }
    wait_until("the first two delivered", || sink.total() == 2);
    let third = senders[2]
        .connect(PeerConfig::new("node-b", [addr]))
        .unwrap();
    publish_patiently(&third, Bytes::from_static(b"refused"));
    wait_until("the third dialer refused", || b.stats().peers_refused >= 1);
    let stats = b.stats();
    assert_eq!(stats.peers.len(), 2, "{:?}", stats.peers);
    assert_eq!(sink.total(), 2);
    assert_eq!(
        stats.protocol_errors, 0,
        "a refusal is not a protocol error"
    );
    // The application may still declare peers of its own beyond the limit.
    let _ = b.peer("declared-by-the-application");
    assert_eq!(b.stats().peers.len(), 3);
    for s in senders {
        drop(s);
    }
    b.shutdown_graceful(PATIENCE).unwrap();
}
