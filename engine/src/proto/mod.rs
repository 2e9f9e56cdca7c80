//! The sans-IO protocol core: frames, handshake, sessions, acknowledgements and heartbeats.
//!
//! Everything here is a pure state machine. Bytes go in through `handle_*` methods, frames come
//! out through `poll_*` methods, and time (`now: Instant`) and randomness are passed in by the
//! caller. Nothing in this module opens a socket, reads a clock, spawns a thread or touches the
//! `shard`, `outbox`, `net` or `security` modules; the shard is the only caller, and the
//! deterministic tests drive the same code with a simulated clock.
//!
//! The wire format is specified in `docs/protocol.md`; each codec names the section it
//! implements. The module is public so that fuzz targets and tools can reach the decoder; it is
//! not part of the stable, paved API.
#![forbid(unsafe_code)]

pub mod ack;
pub mod auth;
pub mod connection;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod heartbeat;
pub mod id;
pub mod session;

pub use connection::{Connection, ConnectionConfig, Role};
pub use error::{GoAwayReason, ProtocolError};
pub use frame::{Decoder, Frame, Header, Hello, Kind, Seq, SessionId};
pub use session::{RxSession, TxSession};
