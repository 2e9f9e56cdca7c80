//! Heartbeats measure the round trip on both sides, and an idle connection stays up.

use std::time::Duration;

use ringwire::PeerConfig;
use ringwire_tests::{builder, wait_until};

#[test]
fn pings_yield_an_rtt_on_both_sides_of_an_idle_connection() {
    let fast = |c: &mut ringwire::Config| {
        c.heartbeat.interval = Duration::from_millis(20);
        c.heartbeat.timeout = Duration::from_secs(30);
    };
    let b = builder("node-b", 2)
        .listen("127.0.0.1:0")
        .configure(fast)
        .start()
        .unwrap();
    let a = builder("node-a", 2).configure(fast).start().unwrap();
    a.connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();

    let has_rtt = |engine: &ringwire::Engine| {
        engine
            .stats()
            .peers
            .iter()
            .any(|p| p.connected && p.rtt.is_some_and(|rtt| rtt > Duration::ZERO))
    };
    wait_until("an RTT sample at a", || has_rtt(&a));
    wait_until("an RTT sample at b", || has_rtt(&b));
    // Only heartbeats flowed, and the first connection is still the one in use.
    assert_eq!(a.stats().connects, 1);
    assert_eq!(a.stats().protocol_errors + b.stats().protocol_errors, 0);
}
