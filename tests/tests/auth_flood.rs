//! A flood of strangers against a node that requires AUTH, in plaintext: 5000 connections, each
//! with a fresh node id, half offering AUTH and answering the challenge with a guess, half not
//! offering it. None gets peer state, and the node's memory grows by at most 8 MiB. Alone in
//! its binary, so that the process's RSS is the node's (and this test's few buffers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use ringwire::AuthToken;
use ringwire::proto::frame::{BODY_LEN_MAX_DEFAULT, CAP_AUTH, HEADER_LEN};
use ringwire::proto::{Frame, Hello, Seq, SessionId};
use ringwire_tests::{PATIENCE, Recorder, builder, rss_bytes, wait_until};

const STRANGERS: usize = 5000;

#[test]
fn a_hello_flood_against_a_node_that_requires_auth_leaves_no_state_and_little_memory() {
    let sink = Arc::new(Recorder::default());
    let b = builder("node-b", 1)
        .listen("127.0.0.1:0")
        .configure(|c| c.auth_token = Some(AuthToken::new("the cluster's shared secret")))
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
        stats.protocol_errors >= STRANGERS as u64,
        "{}",
        stats.protocol_errors
    );
    assert_eq!(sink.total(), 0);
    b.shutdown_graceful(PATIENCE).unwrap();
}

/// `count` connections, one after another, each sending a HELLO with a fresh node id (every
/// other one offering AUTH and answering the challenge with a made-up proof) and reading until
/// the node closes it.
fn flood(addr: std::net::SocketAddr, count: usize, first: usize) {
    let mut buf = [0u8; 4096];
    for i in first..first + count {
        let id = format!("stranger-{i}");
        let offers_auth = i % 2 == 0;
        let mut hello = Vec::new();
        Frame::Hello(Hello {
            caps: if offers_auth { CAP_AUTH } else { 0 },
            body_len_max: BODY_LEN_MAX_DEFAULT,
            tx_session: SessionId::NIL,
            tx_seq_first: Seq(1),
            rx_session: SessionId::NIL,
            rx_delivered: Seq::ZERO,
            node_id: &id,
        })
        .encode(&mut hello);
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = stream.write_all(&hello);
        if offers_auth {
            // The challenge (a 33-byte AUTH body), then a guess: a nonce and a proof of zeros.
            let mut challenge = [0u8; HEADER_LEN + 33];
            if stream.read_exact(&mut challenge).is_ok() {
                let mut guess = vec![2u8];
                guess.extend_from_slice(&[0u8; 64]);
                let mut frame = Vec::new();
                Frame::Auth { body: &guess }.encode(&mut frame);
                let _ = stream.write_all(&frame);
            }
        }
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}
