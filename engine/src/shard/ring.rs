//! The shard's io_uring: ring setup, the one place SQEs are pushed, and `user_data` encoding.
//!
//! `user_data` packs the operation kind (8 bits), the connection's generation (24 bits) and
//! its slab index (32 bits). Generations make a late completion for a closed connection whose
//! slot was reused recognisable; kinds without a connection use index 0.

use std::io;
use std::time::Duration;

use io_uring::{IoUring, squeue, types};

/// The operations a shard submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpKind {
    /// The eventfd read that wakes a parked shard (reserved, no connection).
    Wake = 1,
    /// Multishot accept on the listener (reserved, no connection).
    Accept = 2,
    Recv = 3,
    Send = 4,
    Connect = 5,
    /// Cancellations; their completions are ignored.
    Cancel = 6,
}

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpTag {
    pub kind: OpKind,
    pub generation: u32,
    pub index: u32,
}

impl OpTag {
    pub(crate) fn new(kind: OpKind, index: usize, generation: u32) -> OpTag {
        OpTag {
            kind,
            generation: generation & GENERATION_MASK,
            index: index as u32,
        }
    }

    pub(crate) fn reserved(kind: OpKind) -> OpTag {
        OpTag {
            kind,
            generation: 0,
            index: 0,
        }
    }

    pub(crate) fn encode(self) -> u64 {
        (self.kind as u64) << 56 | u64::from(self.generation) << 32 | u64::from(self.index)
    }

    pub(crate) fn decode(user_data: u64) -> Option<OpTag> {
        let kind = match (user_data >> 56) as u8 {
            1 => OpKind::Wake,
            2 => OpKind::Accept,
            3 => OpKind::Recv,
            4 => OpKind::Send,
            5 => OpKind::Connect,
            6 => OpKind::Cancel,
            _ => return None,
        };
        Some(OpTag {
            kind,
            generation: (user_data >> 32) as u32 & GENERATION_MASK,
            index: user_data as u32,
        })
    }
}

/// Connection generations wrap at 24 bits.
pub(crate) const GENERATION_MASK: u32 = (1 << 24) - 1;

/// A shard's ring.
pub(crate) struct Ring {
    pub uring: IoUring,
    /// Number of io_uring_enter calls made (reported as `ring_enters`).
    pub enters: u64,
}

impl Ring {
    /// Builds a ring with single-issuer and deferred task-run where the kernel has them.
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        let tuned = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Flags pending deferred completions in the SQ ring, so a non-waiting submit knows
            // to enter the kernel with GETEVENTS to post them (the busy-poll loop relies on it).
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .setup_submit_all()
            .build(entries);
        let uring = match tuned {
            Ok(ring) => ring,
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 4)
                .build(entries)?,
        };
        Ok(Ring { uring, enters: 0 })
    }

    /// Queues an SQE, flushing the submission queue to the kernel first if it is full.
    ///
    /// # Safety
    ///
    /// Every buffer, address and file descriptor `entry` points to must stay valid, and
    /// unaliased by writes for buffers the kernel reads, until its final completion is reaped.
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller upholds the validity of what `entry` points to.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enters += 1;
            self.uring.submit()?;
        }
    }

    /// Submits queued SQEs and, if `wait` is set, waits for a completion or `timeout`.
    pub(crate) fn submit(&mut self, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        if !wait && self.uring.submission().is_empty() && !self.has_deferred_work() {
            return Ok(());
        }
        self.enters += 1;
        let result = match (wait, timeout) {
            (false, _) => self.uring.submit(),
            (true, None) => self.uring.submit_and_wait(1),
            (true, Some(timeout)) => {
                let ts = types::Timespec::new()
                    .sec(timeout.as_secs())
                    .nsec(timeout.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether deferred task work waits for an enter (completions not yet posted).
    fn has_deferred_work(&mut self) -> bool {
        // With DEFER_TASKRUN completions are only posted during io_uring_enter; an enter with
        // GETEVENTS and no wait runs them. The kernel flags pending work in the SQ ring.
        self.uring.submission().taskrun()
    }
}
