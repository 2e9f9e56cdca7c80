//! A million messages each way at once over real loopback sockets, both engines with two
//! shards: every one delivered exactly once and in order.

use std::sync::Arc;

use ringwire::PeerConfig;
use ringwire_tests::{PATIENCE, Recorder, builder, payload, publish_patiently, wait_until};

const COUNT: u64 = 1_000_000;

#[test]
fn a_million_each_way_exactly_once_in_order() {
    let at_b = Arc::new(Recorder::default());
    let at_a = Arc::new(Recorder::default());
    let b = builder("node-b", 2)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&at_b))
        .start()
        .unwrap();
    let a = builder("node-a", 2)
        .handler(Arc::clone(&at_a))
        .start()
        .unwrap();
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    let to_a = b.peer("node-a");

    std::thread::scope(|s| {
        s.spawn(|| (0..COUNT).for_each(|n| _ = publish_patiently(&to_b, payload(n, 64))));
        s.spawn(|| (0..COUNT).for_each(|n| _ = publish_patiently(&to_a, payload(n, 64))));
    });
    wait_until("both directions delivered", || {
        at_b.total() == COUNT && at_a.total() == COUNT
    });

    for (recorder, from) in [(&at_b, "node-a"), (&at_a, "node-b")] {
        recorder.tally(from).assert_complete(COUNT, from);
    }
    // Everything is acknowledged, so a graceful shutdown drains at once.
    a.shutdown_graceful(PATIENCE).unwrap();
    b.shutdown_graceful(PATIENCE).unwrap();
}
