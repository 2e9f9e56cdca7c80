//! A hundred peers publish to one node at once, with payloads of 0 B, 1 B, 64 KiB and the
//! largest a frame can carry: every message arrives exactly once, in order, intact in length.

use std::sync::Arc;

use bytes::Bytes;
use ringwire::{Config, PeerConfig};
use ringwire_tests::{PATIENCE, Recorder, builder, payload, publish_patiently, wait_until};

const PEERS: usize = 100;
const NUMBERED: u64 = 50;

#[test]
fn a_hundred_peers_with_every_payload_size() {
    let started = std::time::Instant::now();
    let sink = Arc::new(Recorder::default());
    let node = builder("sink", 2)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = node.local_addr().unwrap();
    let payload_len_max = Config::new("x").payload_len_max();
    // One allocation shared by every sender: `publish` takes `Bytes` and never copies it.
    let largest = payload(NUMBERED, payload_len_max);

    let senders: Vec<_> = (0..PEERS)
        .map(|i| builder(&format!("peer-{i:03}"), 2).start().unwrap())
        .collect();
    std::thread::scope(|s| {
        for sender in &senders {
            let largest = largest.clone();
            s.spawn(move || {
                let peer = sender.connect(PeerConfig::new("sink", [addr])).unwrap();
                publish_patiently(&peer, Bytes::new());
                publish_patiently(&peer, Bytes::from_static(b"x"));
                for n in 0..NUMBERED {
                    let len = if n % 2 == 0 { 64 * 1024 } else { 64 };
                    publish_patiently(&peer, payload(n, len));
                }
                publish_patiently(&peer, largest);
            });
        }
    });

    let per_peer = NUMBERED + 3;
    wait_until("every peer's messages", || {
        sink.total() == PEERS as u64 * per_peer
    });
    let bytes_numbered: u64 = (0..NUMBERED)
        .map(|n| if n % 2 == 0 { 64 * 1024 } else { 64 })
        .sum();
    let tallies = sink.tallies();
    assert_eq!(tallies.len(), PEERS);
    for (peer, tally) in tallies {
        assert_eq!(tally.count, per_peer, "{peer}");
        assert_eq!(
            tally.bytes,
            1 + bytes_numbered + payload_len_max as u64,
            "{peer}"
        );
        assert_eq!(tally.next, NUMBERED + 1, "{peer}");
        assert_eq!(tally.out_of_order, 0, "{peer}");
        assert_eq!(tally.seq_errors, 0, "{peer}");
    }
    assert_eq!(node.stats().protocol_errors, 0);
    eprintln!("delivered after {:?}", started.elapsed());
    for sender in senders {
        sender.shutdown_graceful(PATIENCE).unwrap();
    }
    eprintln!("shut down after {:?}", started.elapsed());
}
