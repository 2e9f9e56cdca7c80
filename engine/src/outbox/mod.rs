//! The durable outbox: every accepted message kept in memory-mapped segment files in the
//! sending process until the peer acknowledges it (DESIGN.md, "Durable outbox").
//!
//! Owns: the record format ([`record`]), segment files and their recovery scan ([`segment`]),
//! and the receiver's delivered watermarks ([`watermarks`]).
//! Invariants: a segment's blocks are allocated before it is mapped, so stores through the map
//! never meet a full disk; a record is written body first and length last, so a crash leaves
//! either nothing or a record whose checksum fails; a scan never returns a record whose
//! checksum fails. Must never depend on `shard` or the API: the shard calls in, with bytes.
//!
//! The per-shard store ([`store`]) ties them together: appends under a lock from the publishing
//! threads, releases and syncs from the shard, and recovery when the engine starts;
//! [`directory`] opens the whole directory (its lock and every shard's store) at start.

pub(crate) mod directory;
pub(crate) mod lock;
pub(crate) mod record;
pub(crate) mod recovered;
pub(crate) mod segment;
pub(crate) mod store;
pub(crate) mod watermarks;

#[cfg(test)]
mod model_tests;
