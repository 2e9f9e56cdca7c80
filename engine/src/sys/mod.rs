//! Thin syscall wrappers: sockets, socket options, CPU affinity.
//!
//! Owns nothing but file descriptors handed to it. Each function makes one or two syscalls and
//! returns an `io::Result`; no policy lives here. Must never depend on any other module of the
//! crate.

pub(crate) mod socket;
