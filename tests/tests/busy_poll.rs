//! A spinning shard (`idle_spin`) still sees completions while it spins. With deferred task
//! work, completions are only posted when the shard enters the kernel, so a spin loop that
//! never did waited out its whole spin before each message: here every round trip would take
//! ten seconds and the test would run out of patience long before the last echo.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ringwire::{Handler, MessageId, Peer, PeerConfig};
use ringwire_tests::{builder, wait_until};

/// Echoes every message back.
struct Echo;

impl Handler for Echo {
    fn on_message(&self, peer: &Peer, _: MessageId, payload: &[u8]) {
        peer.publish(Bytes::copy_from_slice(payload))
            .expect("one message in flight never fills the queue");
    }
}

/// Sends the next message each time the echo of the previous one arrives.
struct PingPong {
    echoes: AtomicU64,
    total: u64,
}

impl Handler for PingPong {
    fn on_message(&self, peer: &Peer, _: MessageId, _: &[u8]) {
        if self.echoes.fetch_add(1, Ordering::SeqCst) + 1 < self.total {
            peer.publish(Bytes::from_static(b"ping")).unwrap();
        }
    }
}

#[test]
fn spinning_shards_exchange_sequential_round_trips() {
    let spin = |c: &mut ringwire::Config| c.idle_spin = Duration::from_secs(10);
    let b = builder("spin-b", 1)
        .listen("127.0.0.1:0")
        .handler(Echo)
        .configure(spin)
        .start()
        .unwrap();
    let pong = Arc::new(PingPong {
        echoes: AtomicU64::new(0),
        total: 1000,
    });
    let a = builder("spin-a", 1)
        .handler(Arc::clone(&pong))
        .configure(spin)
        .start()
        .unwrap();
    let peer = a
        .connect(PeerConfig::new("spin-b", [b.local_addr().unwrap()]))
        .unwrap();
    peer.publish(Bytes::from_static(b"ping")).unwrap();
    wait_until("1000 sequential round trips", || {
        pong.echoes.load(Ordering::SeqCst) == 1000
    });
}
