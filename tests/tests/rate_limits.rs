//! Per-peer rate limits over real sockets. Inbound: a peer over its budget is slowed (the node
//! stops reading from it), loses and duplicates nothing, and does not slow a second peer.
//! Outbound: `publish` beyond the budget returns `RateLimited` with the payload, and succeeds
//! again once the bucket has refilled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringwire::{Error, PeerConfig, RateLimit};
use ringwire_tests::{PATIENCE, Recorder, builder, payload, publish_patiently, wait_until};

#[test]
fn a_peer_over_its_inbound_limit_is_slowed_and_loses_nothing() {
    // Bursts of 200, 1000 messages a second per peer.
    let limit = RateLimit::new(200, 1000.0);
    const FAST: u64 = 5000;
    const QUIET: u64 = 300;
    let sink = Arc::new(Recorder::default());
    let node = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(move |c| c.inbound_rate_limit = Some(limit))
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = node.local_addr().unwrap();
    let fast = builder("fast", 1).start().unwrap();
    let quiet = builder("quiet", 1).start().unwrap();
    let to_node = fast.connect(PeerConfig::new("node-b", [addr])).unwrap();
    let started = Instant::now();
    for n in 0..FAST {
        publish_patiently(&to_node, payload(n, 64));
    }
    // The fast peer is being held back; a second peer starts now and is not.
    wait_until("the node paused the fast peer", || {
        node.stats().rate_limit_pauses > 0
    });
    let quiet_peer = quiet.connect(PeerConfig::new("node-b", [addr])).unwrap();
    for n in 0..QUIET {
        publish_patiently(&quiet_peer, payload(n, 64));
    }
    wait_until("the quiet peer delivered", || {
        sink.tally("quiet").count == QUIET
    });
    let fast_when_quiet_done = sink.tally("fast").count;
    wait_until("the fast peer delivered", || {
        sink.tally("fast").count == FAST
    });
    let elapsed = started.elapsed();
    eprintln!(
        "fast peer: {FAST} messages in {elapsed:?}; {fast_when_quiet_done} of them when the \
         quiet peer's {QUIET} were all in; {} pauses",
        node.stats().rate_limit_pauses
    );
    sink.tally("fast").assert_complete(FAST, "fast");
    sink.tally("quiet").assert_complete(QUIET, "quiet");
    // The bucket admits its burst and then 1000 a second, charged one receive buffer at a
    // time (the test engines read 64 KiB, at most 862 of these 76-byte frames): all but the
    // burst and the last buffer took at least that long.
    let last_buffer = 64 * 1024 / 76;
    let floor = Duration::from_secs_f64((FAST - 200 - last_buffer) as f64 / 1000.0);
    assert!(elapsed >= floor, "{elapsed:?} for {FAST} messages");
    assert!(
        fast_when_quiet_done < FAST,
        "the quiet peer finished while the fast one was still held back"
    );
    drop((fast, quiet));
    node.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn publish_beyond_the_outbound_limit_hands_the_payload_back() {
    let sink = Arc::new(Recorder::default());
    let node = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let sender = builder("node-a", 1)
        .configure(|c| c.outbound_rate_limit = Some(RateLimit::new(10, 20.0)))
        .start()
        .unwrap();
    let peer = sender
        .connect(PeerConfig::new("node-b", [node.local_addr().unwrap()]))
        .unwrap();
    let started = Instant::now();
    for n in 0..10 {
        peer.publish(payload(n, 64)).unwrap();
    }
    let refused = payload(10, 64);
    let retry_after = match peer.publish(refused.clone()) {
        Err(Error::RateLimited {
            payload,
            retry_after,
        }) => {
            assert_eq!(payload, refused, "the payload comes back");
            retry_after
        }
        other => panic!("expected RateLimited, got {other:?}"),
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(50));
    // A batch that needs more tokens than there are is refused whole.
    let mut batch = vec![payload(10, 64), payload(11, 64), payload(12, 64)];
    assert!(matches!(
        peer.publish_batch(&mut batch),
        Err(Error::RateLimited { .. })
    ));
    assert_eq!(batch.len(), 3, "the batch is untouched");
    // After the wait, it goes.
    std::thread::sleep(retry_after);
    let mut n = 10;
    while n < 20 {
        match peer.publish(payload(n, 64)) {
            Ok(_) => n += 1,
            Err(Error::RateLimited { retry_after, .. }) => std::thread::sleep(retry_after),
            Err(e) => panic!("{e}"),
        }
    }
    wait_until("everything delivered", || sink.total() == 20);
    sink.tally("node-a").assert_complete(20, "node-a");
    // 20 messages, 10 of them beyond the burst at 20 a second.
    assert!(started.elapsed() >= Duration::from_millis(450));
    sender.shutdown_graceful(PATIENCE).unwrap();
    node.shutdown_graceful(PATIENCE).unwrap();
}

#[test]
fn bad_limits_are_refused_at_start() {
    for limit in [
        RateLimit::new(0, 10.0),
        RateLimit::new(10, 0.0),
        RateLimit::new(1, f64::NAN),
    ] {
        let Err(err) = builder("node-a", 1)
            .configure(move |c| c.inbound_rate_limit = Some(limit))
            .start()
        else {
            panic!("{limit:?} accepted");
        };
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
}
