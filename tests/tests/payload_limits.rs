//! A peer's announced `body_len_max` is honoured: a message published before the limit was
//! known, and larger than it, is reported to the application and sent as LOST, so it never
//! holds up the messages behind it; once the limit is known, `publish` refuses larger payloads
//! at once.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ringwire::{Error, Handler, MessageId, Peer, PeerConfig};
use ringwire_tests::{PATIENCE, block_on, builder, payload, publish_patiently, wait_until};

/// What one node saw: payload numbers delivered, messages the peer said were lost, and its
/// own messages it could not deliver.
#[derive(Default)]
struct Seen {
    delivered: Mutex<Vec<(u64, u64)>>,
    lost: Mutex<Vec<u64>>,
    undeliverable: Mutex<Vec<(u64, String)>>,
}

impl Handler for Seen {
    fn on_message(&self, _peer: &Peer, id: MessageId, payload: &[u8]) {
        let n = u64::from_le_bytes(payload[..8].try_into().unwrap());
        self.delivered.lock().unwrap().push((id.seq, n));
    }

    fn on_lost(&self, _peer: &Peer, id: MessageId) {
        self.lost.lock().unwrap().push(id.seq);
    }

    fn on_undeliverable(&self, _peer: &Peer, id: MessageId, reason: &Error) {
        self.undeliverable
            .lock()
            .unwrap()
            .push((id.seq, reason.to_string()));
    }
}

#[test]
fn a_payload_larger_than_the_peer_accepts_is_reported_and_holds_nothing_up() {
    // Node b accepts frame bodies of 1 KiB: payloads of at most 1016 bytes.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (at_a, at_b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let a = builder("node-a", 1)
        .handler(Arc::clone(&at_a))
        .configure(|c| c.backoff.max = std::time::Duration::from_millis(200))
        .start()
        .unwrap();
    // Nothing listens yet: a publishes before it can know b's limit.
    let to_b = a.connect(PeerConfig::new("node-b", [addr])).unwrap();
    for n in 0..10 {
        publish_patiently(&to_b, payload(n, 64));
    }
    let big = to_b.publish_confirmed(payload(999, 4000));
    let big_id = big.id().expect("accepted: the limit is not known yet");
    for n in 10..20 {
        publish_patiently(&to_b, payload(n, 64));
    }
    let b = builder("node-b", 1)
        .listen(addr)
        .handler(Arc::clone(&at_b))
        .configure(|c| c.body_len_max = 1024)
        .start()
        .unwrap();

    wait_until("the small messages delivered", || {
        at_b.delivered.lock().unwrap().len() == 20
    });
    let delivered = at_b.delivered.lock().unwrap().clone();
    let numbers: Vec<u64> = delivered.iter().map(|&(_, n)| n).collect();
    assert_eq!(
        numbers,
        (0..20).collect::<Vec<_>>(),
        "every small one, once, in order"
    );
    let seqs: Vec<u64> = delivered.iter().map(|&(seq, _)| seq).collect();
    let expected: Vec<u64> = (1..=10).chain(12..=21).collect();
    assert_eq!(seqs, expected, "seq 11 was the large one");
    assert_eq!(big_id.seq, 11);
    wait_until("the peer told of the lost one", || {
        !at_b.lost.lock().unwrap().is_empty()
    });
    assert_eq!(*at_b.lost.lock().unwrap(), [11]);
    assert_eq!(b.stats().msgs_lost_by_peer, 1);

    // The sender was told which message and why, and its confirmation failed the same way.
    let undeliverable = at_a.undeliverable.lock().unwrap().clone();
    assert_eq!(undeliverable.len(), 1, "{undeliverable:?}");
    assert_eq!(undeliverable[0].0, 11);
    assert!(undeliverable[0].1.contains("4000"), "{undeliverable:?}");
    assert_eq!(a.stats().msgs_undeliverable, 1);
    match block_on(big) {
        Err(Error::PayloadTooLarge { len, len_max }) => assert_eq!((len, len_max), (4000, 1016)),
        other => panic!("the large message's confirmation: {other:?}"),
    }

    // Now that the limit is known, publish refuses at once; the limit's edge passes.
    match to_b.publish(Bytes::from(vec![0u8; 1017])) {
        Err(Error::PayloadTooLarge { len, len_max }) => assert_eq!((len, len_max), (1017, 1016)),
        other => panic!("a payload over the known limit: {other:?}"),
    }
    publish_patiently(&to_b, payload(20, 1016));
    wait_until("the edge-sized one delivered", || {
        at_b.delivered.lock().unwrap().len() == 21
    });
    assert_eq!(a.stats().protocol_errors + b.stats().protocol_errors, 0);
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}
