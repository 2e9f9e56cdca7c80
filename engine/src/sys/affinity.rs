//! CPU affinity of the calling thread.

use std::io;
use std::mem;

/// Pins the calling thread to `core`.
pub(crate) fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `core` is reduced modulo the available cores by the caller, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(core, &mut set) };
    syscall!(sched_setaffinity(
        0,
        mem::size_of::<libc::cpu_set_t>(),
        &raw const set
    ))
    .map(drop)
}

/// The CPU the calling thread runs on (it may move right after, unless pinned); `None` where
/// the kernel cannot tell. (The loom model of the mailbox leaves out its only user.)
#[cfg(not(loom))]
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}
