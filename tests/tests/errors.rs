//! Seed 002's errors by culprit that are not tested elsewhere: `PeerNotFound` from
//! `Engine::known_peer`, and `Timeout` from `Confirm::wait` (the message still goes out).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use ringwire::{Error, PeerConfig};
use ringwire_tests::{PATIENCE, Recorder, builder, payload, wait_until};

#[test]
fn an_unknown_peer_is_not_found_and_a_declared_one_is() {
    let engine = builder("node-a", 1).start().unwrap();
    match engine.known_peer("nobody") {
        Err(Error::PeerNotFound { node_id }) => assert_eq!(node_id, "nobody"),
        other => panic!(
            "expected PeerNotFound, got {:?}",
            other.map(|p| p.node_id().to_string())
        ),
    }
    let declared = engine.peer("somebody");
    let found = engine.known_peer("somebody").unwrap();
    assert_eq!(found.node_id(), declared.node_id());
    engine.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn a_confirm_wait_times_out_and_the_message_still_arrives() {
    // A port nobody listens on yet: the peer is dialed, and refused, until the node starts.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let a = builder("node-a", 1)
        .configure(|c| {
            c.backoff.initial = Duration::from_millis(20);
            c.backoff.max = Duration::from_millis(50);
        })
        .start()
        .unwrap();
    let peer = a
        .connect(PeerConfig::new("node-b", [addr.as_str()]))
        .unwrap();
    let confirm = peer.publish_confirmed(payload(0, 64));
    let id = confirm.id().expect("accepted");
    match confirm.wait(Duration::from_millis(200)) {
        Err(Error::Timeout { waited }) => assert_eq!(waited, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The node comes up; the message that timed out is delivered, and a new wait succeeds.
    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen(addr.as_str())
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    wait_until("the timed-out message delivered", || sink.total() == 1);
    let second = peer.publish_confirmed(payload(1, 64));
    let acked = second.wait(PATIENCE).unwrap();
    assert_eq!(acked.seq, id.seq + 1);
    sink.tally("node-a").assert_complete(2, "node-a");
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}
