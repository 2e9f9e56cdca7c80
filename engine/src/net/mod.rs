//! Sans-IO connection policy: which endpoint to dial next, how long to back off, which of two
//! crossing connections to keep.
//!
//! Owns decisions, not sockets: every function takes time and randomness from the caller and
//! returns what to do; the shard executes it. Must never depend on `shard`, `route` or `api`.
//! Grows with the resilience issue (Happy-Eyeballs plans, failure detection, blacklists, pools).

pub(crate) mod backoff;
pub(crate) mod dial;
