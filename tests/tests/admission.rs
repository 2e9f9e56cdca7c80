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

/// Connections that never say who they are cannot pile up: beyond `handshakes_max` accepted
/// connections still in their handshake, the next is answered with GOAWAY `Overloaded` and a
/// retry-after, and closed. Once a waiting one completes its HELLO, room is made again.
#[test]
fn connections_beyond_handshakes_max_are_refused_with_a_retry_after() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use ringwire::proto::frame::BODY_LEN_MAX_DEFAULT;
    use ringwire::proto::{Decoder, Frame, GoAwayReason};

    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(|c| c.handshakes_max = 3)
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = b.local_addr().unwrap();
    // Silent connections, one at a time so that the node has taken each before the next.
    let mut silent = Vec::new();
    for i in 0..3 {
        silent.push(TcpStream::connect(addr).unwrap());
        wait_until("the node holding the silent connection", || {
            b.stats().connections == i + 1
        });
    }
    // One more: refused at once, with a reason and a retry-after.
    let mut refused = TcpStream::connect(addr).unwrap();
    refused.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reply = Vec::new();
    refused.read_to_end(&mut reply).unwrap();
    let mut frames = Vec::new();
    Decoder::new(BODY_LEN_MAX_DEFAULT)
        .decode(&reply, |frame| {
            if let Frame::GoAway {
                reason,
                retry_after_ms,
                ..
            } = frame
            {
                frames.push((reason, retry_after_ms));
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(frames.len(), 1, "{reply:?}");
    assert_eq!(frames[0].0, GoAwayReason::Overloaded);
    assert!(frames[0].1 > 0, "a retry-after");
    assert_eq!(b.stats().connections_refused, 1);
    assert!(b.stats().peers.is_empty());

    // A silent connection that says HELLO leaves the handshake, and a new one is taken again.
    silent[0]
        .write_all(&ringwire_tests::hello_frame("talker"))
        .unwrap();
    wait_until("the talker became a peer", || b.stats().peers.len() == 1);
    let _taken = TcpStream::connect(addr).unwrap();
    wait_until("the next connection taken", || b.stats().connections == 4);
    assert_eq!(b.stats().connections_refused, 1);
    drop(silent);
    b.shutdown_graceful(PATIENCE).unwrap();
}
