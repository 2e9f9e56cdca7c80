//! Security: the only code that will name rustls (the TLS adapter on the shard's link layer),
//! node identity checks, AUTH and rate limits.
//!
//! Empty until the security issue lands; it is declared now so the layout, and the seam in
//! `shard::link` where TLS plugs in, are in place. Must never depend on `shard`, `route` or
//! `api`: like `proto`, it takes bytes and time from the caller.
