//! Benchmarks and same-workload baselines for ringwire.
//!
//! The baselines run loadgen's four workloads (`throughput`, `latency`, `fanin`, `pingpong`;
//! see the `loadgen` crate) over the stacks a user would pick instead of ringwire, written
//! plainly the way a competent engineer would by hand, and report in loadgen's JSON schema so
//! that a ringwire run and its baselines sit side by side:
//!
//! - `std` (`src/std_stack.rs`): blocking sockets, a thread per connection; the raw-TCP
//!   reference (its throughput has no ACKs).
//! - `tokio` (`src/tokio_stack.rs`): `LengthDelimitedCodec`, a current-thread runtime per side.
//! - `tokio-uring` (`src/uring_stack.rs`): owned-buffer io_uring sockets, a runtime per side.
//! - `tokio-rustls`: the `tokio` stack with every connection inside tokio-rustls (TLS 1.3,
//!   mutual TLS, set up as ringwire's TLS is: `src/tls.rs`), the baseline for `loadgen --tls`.
//!
//! Each file opens with exactly what its baseline does per workload. Every stack puts the same
//! bytes on the wire (`src/wire.rs`: a 4-byte big-endian length, then the payload; each
//! connection opens with an empty HELLO frame echoed before the clock starts), embeds its
//! server in the process on 127.0.0.1, sets `TCP_NODELAY`, and is placed the way loadgen
//! places ringwire: the serving side on core 0, the load side (client connections and the
//! pacer) on `loadgen::workload::client_core(1)`. The acknowledged throughput of tokio and
//! tokio-uring follows ringwire's flow control (`src/flow.rs`: a 65,536-message window,
//! cumulative ACKs at least every 1024 messages). `src/run.rs` holds what they share:
//! counters, the start gate, loadgen's measurement window, the drain and the report.
//!
//! Run them with the `baseline` binary:
//! `baseline --stack std|tokio|tokio-uring|tokio-rustls --mode throughput|latency|fanin|pingpong
//! [loadgen flags]`.

mod flow;
mod run;
mod std_stack;
pub mod tls;
mod tokio_stack;
mod uring_stack;
mod wire;

pub use run::{Error, Outcome, Stack, run};
