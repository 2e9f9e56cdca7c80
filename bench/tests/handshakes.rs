//! The `handshakes` binary completes mutual-TLS handshakes against both serving stacks and
//! reports them; how many it manages depends on the machine and is not checked.

use std::process::Command;

fn handshakes(stack: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_handshakes"))
        .args([
            "--stack",
            stack,
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--json",
            "-",
        ])
        .output()
        .expect("handshakes runs");
    assert!(
        out.status.success(),
        "handshakes --stack {stack}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn ringwire_completes_mutual_tls_handshakes() {
    let r = handshakes("ringwire");
    assert_eq!(r["stack"], "ringwire");
    assert!(r["handshakes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn tokio_rustls_completes_mutual_tls_handshakes() {
    let r = handshakes("tokio-rustls");
    assert!(r["handshakes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn an_unknown_stack_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_handshakes"))
        .args(["--stack", "carrier-pigeon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
