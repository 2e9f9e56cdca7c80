//! The primitives that hand-written cross-thread code uses, in one place, so a `loom` build
//! (`--cfg loom`) swaps in loom's models without touching the code that uses them.
//!
//! Besides loom's atomics, fence, cell and spin hint, two stand-ins exist only for the model:
//! loom cannot see inside crossbeam's [`SegQueue`] (the mailbox's ready list and command
//! queue) nor into the kernel's eventfd, so under loom the first becomes a mutex-guarded
//! `VecDeque` whose emptiness check reads one atomic, as crossbeam's reads its indices, and the
//! second an atomic counter. Production builds use crossbeam and the real eventfd.

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use crossbeam_queue::SegQueue;
#[cfg(not(loom))]
pub(crate) use std::hint::spin_loop;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

/// `std`'s `UnsafeCell` with loom's closure-based API.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    // Loom's cell has it and loom builds use it; the non-loom queue allocates its cells
    // zeroed instead.
    #[allow(dead_code)]
    pub(crate) const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// The eventfd that wakes a parked shard: the shard's ring waits on a read of it.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct EventFd(std::os::fd::OwnedFd);

#[cfg(not(loom))]
impl EventFd {
    pub(crate) fn new() -> std::io::Result<EventFd> {
        use std::os::fd::FromRawFd;

        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, completing the shard's read if it waits.
    pub(crate) fn signal(&self) {
        use std::os::fd::AsRawFd;

        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd this value owns. A failure
        // (counter overflow) cannot happen with one write per park and needs no handling.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    pub(crate) fn as_raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

/// Under loom, crossbeam's `SegQueue`: the values behind a mutex, and their count in an atomic
/// that [`SegQueue::is_empty`] reads without the mutex, as crossbeam's reads its head and tail
/// indices. Taking the mutex there would synchronize with every push and hide a missing fence.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct SegQueue<T> {
    values: loom::sync::Mutex<std::collections::VecDeque<T>>,
    len: loom::sync::atomic::AtomicUsize,
}

#[cfg(loom)]
impl<T> SegQueue<T> {
    pub(crate) fn new() -> SegQueue<T> {
        SegQueue {
            values: loom::sync::Mutex::new(std::collections::VecDeque::new()),
            len: loom::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(crate) fn push(&self, value: T) {
        let mut values = self
            .values
            .lock()
            .expect("no model thread panics holding it");
        values.push_back(value);
        // SeqCst as crossbeam's tail CAS (loom models it as AcqRel).
        self.len.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn pop(&self) -> Option<T> {
        let mut values = self
            .values
            .lock()
            .expect("no model thread panics holding it");
        let value = values.pop_front()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(value)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }
}

/// Under loom, the eventfd: a counter the model reads back with [`EventFd::take`].
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct EventFd(AtomicU64);

#[cfg(loom)]
impl EventFd {
    pub(crate) fn new() -> std::io::Result<EventFd> {
        Ok(EventFd(AtomicU64::new(0)))
    }

    /// Release, as the kernel's lock orders a `write(2)` before the read it completes.
    pub(crate) fn signal(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// What a read of the eventfd returns: the count since the last read.
    #[cfg(test)]
    pub(crate) fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Acquire)
    }

    /// No descriptor exists under loom; the shard, the only user, does not run in a model.
    pub(crate) fn as_raw_fd(&self) -> i32 {
        -1
    }
}
