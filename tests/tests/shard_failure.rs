//! A shard that fails does not fail silently: a handler that panics stops its shard, the
//! engine counts it in `stats().shards_failed`, and publishing to the peers it owned returns
//! `Error::ShardFailed` with the panic's message, while the engine's other shards go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ringwire::{Error, Handler, MessageId, Peer, PeerConfig};
use ringwire_tests::{PATIENCE, builder, publish_patiently, wait_until};

/// Counts messages, and panics on the one whose payload is `boom`.
#[derive(Default)]
struct Fragile {
    seen: AtomicU64,
}

impl Handler for Fragile {
    fn on_message(&self, _: &Peer, _: MessageId, payload: &[u8]) {
        assert!(payload != b"boom", "handler refused the boom message");
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_panicking_handler_fails_its_shard_visibly() {
    let fragile = Arc::new(Fragile::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .handler(Arc::clone(&fragile))
        .start()
        .unwrap();
    let a = builder("node-a", 1).start().unwrap();
    let to_b = a
        .connect(PeerConfig::new("node-b", [b.local_addr().unwrap()]))
        .unwrap();
    publish_patiently(&to_b, Bytes::from_static(b"fine"));
    wait_until("the first message", || {
        fragile.seen.load(Ordering::Relaxed) == 1
    });
    assert_eq!(b.stats().shards_failed, 0);

    publish_patiently(&to_b, Bytes::from_static(b"boom"));
    wait_until("node-b's shard reported failed", || {
        b.stats().shards_failed == 1
    });
    // The peer's shard is gone: publishing to it says so, with the panic's message.
    match b.peer("node-a").publish(Bytes::from_static(b"reply")) {
        Err(Error::ShardFailed { shard, reason }) => {
            assert_eq!(shard, 0);
            assert!(reason.contains("boom"), "{reason}");
        }
        other => panic!("expected ShardFailed, got {other:?}"),
    }
    // The other engine is unaffected: its publishes are accepted (they wait for node-b).
    assert!(to_b.publish(Bytes::from_static(b"later")).is_ok());
    assert_eq!(a.stats().shards_failed, 0);
    drop(b);
    a.shutdown_graceful(PATIENCE.min(std::time::Duration::from_millis(200)))
        .unwrap_err();
}
