//! io_uring operations, one small type each: what must stay valid while the operation is in
//! flight, where it stands in its lifecycle, and how its SQE is built.
//!
//! Building an SQE is safe: it only copies pointers into an entry. Pushing it is the unsafe step,
//! and happens in one place, `Shard::push`, whose callers rely on the invariant every type here
//! keeps: **while an operation is not [`OpState::Idle`], the memory its SQE points to is neither
//! moved, freed nor written.** A cancelled operation stays in [`OpState::Cancelling`], keeping its
//! buffer and fd, until its final completion is reaped; the owning connection is not freed before
//! every operation is idle (`Conn::has_ops_in_flight`).
//!
//! Multishot operations (receive, accept) stay in flight until a completion arrives without
//! `IORING_CQE_F_MORE`.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use crate::sys::socket::RawAddr;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum OpState {
    /// Not submitted, or its final completion was reaped.
    #[default]
    Idle,
    /// Submitted; its final completion has not been reaped.
    InFlight,
    /// An `AsyncCancel` targets it; its final completion has not been reaped.
    Cancelling,
}

impl OpState {
    /// Records that the operation's SQE was pushed.
    fn submit(&mut self) {
        debug_assert_eq!(*self, OpState::Idle, "operation submitted twice");
        *self = OpState::InFlight;
    }

    /// Records a completion; `more` is `IORING_CQE_F_MORE` (a multishot operation goes on).
    pub(super) fn complete(&mut self, more: bool) {
        if !more {
            *self = OpState::Idle;
        }
    }

    /// Marks an in-flight operation as cancelled; returns whether a cancel must be submitted.
    pub(super) fn cancel(&mut self) -> bool {
        if *self == OpState::InFlight {
            *self = OpState::Cancelling;
            true
        } else {
            false
        }
    }

    /// Whether the kernel may still touch the operation's memory.
    pub(super) fn is_busy(self) -> bool {
        self != OpState::Idle
    }
}

/// A connection's receive: multishot from the shard's provided-buffer ring, or single-shot while
/// the connection may still be handed to another shard.
#[derive(Debug, Default)]
pub(super) struct RecvOp {
    pub(super) state: OpState,
    /// Whether the connection wants to receive (until EOF, an error or closing).
    pub(super) wanted: bool,
}

impl RecvOp {
    /// Whether a receive should be submitted now.
    pub(super) fn is_due(&self) -> bool {
        self.wanted && self.state == OpState::Idle
    }

    /// The receive's SQE, and marks it in flight. It references no memory of its own: the kernel
    /// picks a buffer from `group`, which outlives every operation of the shard.
    pub(super) fn submit(&mut self, fd: RawFd, group: u16, single_shot: bool) -> squeue::Entry {
        self.state.submit();
        let fd = types::Fd(fd);
        if single_shot {
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(fd, group).build()
        }
    }
}

/// A connection's send: the bytes of one send in flight, `buf[sent..]` still to go.
#[derive(Debug, Default)]
pub(super) struct SendOp {
    pub(super) state: OpState,
    buf: Vec<u8>,
    sent: usize,
}

impl SendOp {
    /// Whether every byte handed to this op was sent.
    pub(super) fn is_drained(&self) -> bool {
        self.sent >= self.buf.len()
    }

    /// Replaces the drained buffer with `next` (which is left empty, with the old buffer's
    /// capacity), so the two buffers alternate without allocating.
    ///
    /// # Panics
    ///
    /// If the op is in flight or not drained: the kernel may be reading the buffer.
    pub(super) fn refill(&mut self, next: &mut Vec<u8>) {
        assert!(
            self.state == OpState::Idle && self.is_drained(),
            "send buffer replaced while in use"
        );
        self.buf.clear();
        self.sent = 0;
        std::mem::swap(&mut self.buf, next);
    }

    /// The SQE for the unsent rest, and marks it in flight. `buf` is neither moved nor written
    /// until [`SendOp::complete`].
    pub(super) fn submit(&mut self, fd: RawFd) -> squeue::Entry {
        self.state.submit();
        let pending = &self.buf[self.sent..];
        opcode::Send::new(types::Fd(fd), pending.as_ptr(), pending.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }

    /// Applies the send's completion: the bytes sent, or the errno (the unsent rest is dropped).
    pub(super) fn complete(&mut self, res: i32) -> Result<usize, i32> {
        self.state.complete(false);
        if res >= 0 {
            self.sent += res as usize;
            Ok(res as usize)
        } else {
            self.buf.clear();
            self.sent = 0;
            Err(-res)
        }
    }
}

/// A dial's connect: the address the kernel reads until the connect completes.
#[derive(Debug, Default)]
pub(super) struct ConnectOp {
    pub(super) state: OpState,
    /// Set when a connect is due; kept (boxed, so it does not move) while it is in flight.
    addr: Option<Box<RawAddr>>,
    queued: bool,
}

impl ConnectOp {
    /// Asks for a connect to `addr` at the next service of the connection.
    pub(super) fn queue(&mut self, addr: RawAddr) {
        debug_assert_eq!(self.state, OpState::Idle);
        self.addr = Some(Box::new(addr));
        self.queued = true;
    }

    /// Whether a connect is queued and not yet submitted.
    pub(super) fn is_due(&self) -> bool {
        self.queued
    }

    /// The connect's SQE, and marks it in flight; the boxed address stays until
    /// [`ConnectOp::complete`].
    pub(super) fn submit(&mut self, fd: RawFd) -> squeue::Entry {
        self.queued = false;
        self.state.submit();
        let addr = self.addr.as_ref().expect("a queued connect has an address");
        opcode::Connect::new(types::Fd(fd), addr.as_ptr(), addr.len()).build()
    }

    /// Applies the connect's completion: `Ok` once connected, or the errno.
    pub(super) fn complete(&mut self, res: i32) -> Result<(), i32> {
        self.state.complete(false);
        self.addr = None;
        if res == 0 { Ok(()) } else { Err(-res) }
    }
}

/// The read of the shard's eventfd that wakes it from `io_uring_enter`; the 8-byte counter it
/// reads into is boxed so it does not move with the shard.
#[derive(Debug, Default)]
pub(super) struct WakeOp {
    pub(super) state: OpState,
    buf: Box<u64>,
}

impl WakeOp {
    /// The read's SQE, and marks it in flight; `buf` lives as long as the shard, which does not
    /// free it before teardown saw this op idle.
    pub(super) fn submit(&mut self, eventfd: RawFd) -> squeue::Entry {
        self.state.submit();
        opcode::Read::new(types::Fd(eventfd), (&raw mut *self.buf).cast(), 8).build()
    }
}

/// The listener's multishot accept. Descriptors that arrive after it was cancelled are closed by
/// whoever reaps them.
#[derive(Debug, Default)]
pub(super) struct AcceptOp {
    pub(super) state: OpState,
}

impl AcceptOp {
    /// The accept's SQE, and marks it in flight; it references only the listener.
    pub(super) fn submit(&mut self, listener: RawFd) -> squeue::Entry {
        self.state.submit();
        opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multishot_op_stays_busy_until_its_last_completion() {
        let mut state = OpState::Idle;
        state.submit();
        state.complete(true);
        assert!(state.is_busy());
        assert!(state.cancel());
        assert_eq!(state, OpState::Cancelling);
        state.complete(true);
        assert!(
            state.is_busy(),
            "a cancelled op keeps its memory until the final CQE"
        );
        state.complete(false);
        assert!(!state.is_busy());
        assert!(!state.cancel(), "nothing to cancel when idle");
    }

    #[test]
    fn send_buffers_alternate_and_keep_the_unsent_rest() {
        let mut op = SendOp::default();
        let mut out = b"hello world".to_vec();
        op.refill(&mut out);
        assert!(out.is_empty());
        let _ = op.submit(0);
        assert_eq!(op.complete(5), Ok(5));
        assert!(!op.is_drained());
        let _ = op.submit(0);
        assert_eq!(op.complete(6), Ok(6));
        assert!(op.is_drained());
        out.extend_from_slice(b"next");
        op.refill(&mut out);
        assert!(out.capacity() >= 11, "the old buffer comes back for reuse");
    }

    #[test]
    #[should_panic(expected = "send buffer replaced while in use")]
    fn a_send_buffer_is_never_replaced_in_flight() {
        let mut op = SendOp::default();
        let mut out = b"x".to_vec();
        op.refill(&mut out);
        let _ = op.submit(0);
        op.refill(&mut out);
    }

    #[test]
    fn a_failed_send_drops_the_rest() {
        let mut op = SendOp::default();
        let mut out = b"abc".to_vec();
        op.refill(&mut out);
        let _ = op.submit(0);
        assert_eq!(op.complete(-libc::EPIPE), Err(libc::EPIPE));
        assert!(op.is_drained());
        assert!(!op.state.is_busy());
    }
}
