//! The smallest useful ringwire program: two nodes on loopback, one message, one confirmation.
//!
//! Run with `cargo run -p ringwire --example hello`.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use ringwire::{Engine, Handler, MessageId, Peer, PeerConfig};

/// Prints what arrives and passes it on to `main`.
struct Print(mpsc::SyncSender<String>);

impl Handler for Print {
    fn on_message(&self, peer: &Peer, id: MessageId, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload).into_owned();
        println!(
            "node-b got {text:?} from {} (seq {})",
            peer.node_id(),
            id.seq
        );
        let _ = self.0.try_send(text);
    }
}

fn main() -> Result<(), ringwire::Error> {
    let (tx, rx) = mpsc::sync_channel(1);
    let b = Engine::builder()
        .node_id("node-b")
        .listen("127.0.0.1:0")
        .handler(Print(tx))
        .start()?;
    let a = Engine::builder().node_id("node-a").start()?;

    let peer = a.connect(PeerConfig::new(
        "node-b",
        [b.local_addr().expect("b listens")],
    ))?;
    let confirm = a.publish_confirmed(&peer, Bytes::from_static(b"hello, b"));
    // Any executor can drive the confirmation; a tiny blocking one keeps this example lean.
    let id = block_on(confirm)?;
    println!(
        "node-b acknowledged message {} of session {}",
        id.seq, id.session
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("hello, b")
    );

    a.shutdown_graceful(Duration::from_secs(5))?;
    b.shutdown_graceful(Duration::from_secs(5))
}

/// Polls a future to completion on this thread, parking between wake-ups.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
