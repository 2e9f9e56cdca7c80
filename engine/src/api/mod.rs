//! The paved path: [`Engine`], its builder, and (behind the `internals` feature) the types the
//! benches reach.
//!
//! Owns the engine's lifetime: it opens the outbox directory, binds the listeners, spawns the
//! shard threads and joins them. It reaches a shard only through `route` (commands into a
//! mailbox, messages into a peer queue); it never touches a ring or a connection.

pub(crate) mod builder;
pub(crate) mod engine;
#[cfg(feature = "internals")]
pub mod internals;

pub use builder::EngineBuilder;
pub use engine::Engine;
