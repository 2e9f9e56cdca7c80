//! Thin syscall wrappers: sockets, socket options, CPU affinity; and CRC32C with the CPU's
//! instruction (`crc.rs`), the other place the crate needs `unsafe` for speed.
//!
//! Owns nothing but file descriptors handed to it. Each function makes one or two syscalls and
//! returns an `io::Result`; no policy lives here. Must never depend on any other module of the
//! crate.

/// Calls `libc::$fn`, mapping -1 to the thread's last OS error.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every call site passes pointers to live, correctly sized locals.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 { Err(std::io::Error::last_os_error()) } else { Ok(res) }
    }};
}

pub(crate) mod affinity;
pub(crate) mod crc;
pub(crate) mod socket;
