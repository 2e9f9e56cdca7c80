//! A flood of strangers against a node that requires credentials (mutual TLS): 5000
//! connections, each sending a well-formed plaintext HELLO with a fresh node id, get no peer
//! state, and the node's memory grows by at most 8 MiB. Alone in its binary, so that the
//! process's RSS is the node's (and this test's few buffers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use ringwire_tests::certs::OpensslCa;
use ringwire_tests::{PATIENCE, Recorder, builder, hello_frame, rss_bytes, wait_until};

const STRANGERS: usize = 5000;

#[test]
fn a_hello_flood_against_a_tls_node_leaves_no_state_and_little_memory() {
    let Some(ca) = OpensslCa::new("a_hello_flood_against_a_tls_node", "ca") else {
        return;
    };
    let sink = Arc::new(Recorder::default());
    let tls = ca.node("node-b", &["node-b"], &ca);
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(move |c| c.tls = Some(tls))
        .handler(Arc::clone(&sink))
        .start()
        .unwrap();
    let addr = b.local_addr().unwrap();
    // A first round warms up the allocator's pools and the kernel's socket caches; the bound
    // is on what the second round adds.
    flood(addr, 500, 0);
    let before = rss_bytes();
    flood(addr, STRANGERS, 500);
    wait_until("every stranger closed", || b.stats().connections == 0);
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("{STRANGERS} strangers grew the process by {grown} bytes of RSS");
    assert!(grown <= 8 << 20, "grew by {grown} bytes");
    let stats = b.stats();
    assert!(stats.peers.is_empty(), "{:?}", stats.peers);
    assert!(
        stats.tls_failures >= STRANGERS as u64,
        "{}",
        stats.tls_failures
    );
    assert_eq!(sink.total(), 0);
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// `count` connections, one after another, each sending a HELLO with a fresh node id and
/// reading until the node closes it.
fn flood(addr: std::net::SocketAddr, count: usize, first: usize) {
    let mut buf = [0u8; 4096];
    for i in first..first + count {
        let hello = hello_frame(&format!("stranger-{i}"));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        // The node may close before the whole HELLO is written: that is the point.
        let _ = stream.write_all(&hello);
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}
