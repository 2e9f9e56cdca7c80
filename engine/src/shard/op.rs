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

use bytes::Bytes;
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

/// The bytes of one send, in wire order: control frames, then slices of the session's held
/// frames (sent from where they are, without a copy).
#[derive(Debug, Default)]
pub(super) struct SendBatch {
    pub(super) control: Vec<u8>,
    pub(super) data: Vec<Bytes>,
}

impl SendBatch {
    pub(super) fn len(&self) -> usize {
        self.control.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.control.is_empty() && self.data.iter().all(Bytes::is_empty)
    }

    pub(super) fn clear(&mut self) {
        self.control.clear();
        self.data.clear();
    }
}

/// A connection's send: one `sendmsg` over the pieces of a [`SendBatch`], resubmitted from
/// where it stopped until every byte went out.
#[derive(Debug)]
pub(super) struct SendOp {
    pub(super) state: OpState,
    batch: SendBatch,
    len: usize,
    sent: usize,
    /// What the kernel reads while the op is in flight: the message header (boxed, so it does
    /// not move) and the iovecs it points to, which point into `batch`.
    msg: Box<libc::msghdr>,
    iov: Vec<libc::iovec>,
}

impl Default for SendOp {
    fn default() -> SendOp {
        SendOp {
            state: OpState::Idle,
            batch: SendBatch::default(),
            len: 0,
            sent: 0,
            // SAFETY: msghdr is plain data for which all zeroes is a valid (empty) value.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            iov: Vec::new(),
        }
    }
}

impl SendOp {
    /// Whether every byte handed to this op was sent.
    pub(super) fn is_drained(&self) -> bool {
        self.sent >= self.len
    }

    /// Takes `next` as the bytes to send (leaving it empty, with the old buffers' capacity),
    /// so the two batches alternate without allocating.
    ///
    /// # Panics
    ///
    /// If the op is in flight or not drained: the kernel may be reading the batch.
    pub(super) fn refill(&mut self, next: &mut SendBatch) {
        assert!(
            self.state == OpState::Idle && self.is_drained(),
            "send buffer replaced while in use"
        );
        self.batch.clear();
        std::mem::swap(&mut self.batch, next);
        self.len = self.batch.len();
        self.sent = 0;
    }

    /// The SQE for the unsent rest, and marks it in flight. The batch, the iovecs and the
    /// message header are neither moved nor written until [`SendOp::complete`].
    pub(super) fn submit(&mut self, fd: RawFd) -> squeue::Entry {
        self.state.submit();
        self.iov.clear();
        let mut skip = self.sent;
        let pieces =
            std::iter::once(&self.batch.control[..]).chain(self.batch.data.iter().map(|b| &b[..]));
        for piece in pieces {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            let rest = &piece[skip..];
            skip = 0;
            self.iov.push(libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            });
            if self.iov.len() == IOV_MAX {
                break;
            }
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        opcode::SendMsg::new(types::Fd(fd), &raw const *self.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }

    /// Applies the send's completion: the bytes sent, or the errno (the unsent rest is dropped).
    pub(super) fn complete(&mut self, res: i32) -> Result<usize, i32> {
        self.state.complete(false);
        if res >= 0 {
            self.sent += res as usize;
            if self.is_drained() {
                // Release the held frames now rather than at the next refill.
                self.batch.data.clear();
            }
            Ok(res as usize)
        } else {
            self.batch.clear();
            self.len = 0;
            self.sent = 0;
            Err(-res)
        }
    }
}

/// At most this many iovecs per `sendmsg` (the kernel's `UIO_MAXIOV`); the rest goes in the
/// next one.
const IOV_MAX: usize = 1024;

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

    fn batch(control: &[u8], data: &[&'static [u8]]) -> SendBatch {
        SendBatch {
            control: control.to_vec(),
            data: data.iter().map(|d| Bytes::from_static(d)).collect(),
        }
    }

    #[test]
    fn a_partial_send_resumes_inside_the_right_piece() {
        let mut op = SendOp::default();
        let mut next = batch(b"ctl", &[b"hello", b"world"]);
        op.refill(&mut next);
        assert!(next.is_empty());
        let _ = op.submit(0);
        assert_eq!(op.iov.len(), 3);
        assert_eq!(op.complete(5), Ok(5));
        assert!(!op.is_drained());
        let _ = op.submit(0);
        // Two bytes into "hello", then "world".
        assert_eq!(op.iov.len(), 2);
        assert_eq!(op.iov[0].iov_len, 3);
        // SAFETY: the iovec points into the batch's live "hello" bytes.
        let first = unsafe { std::slice::from_raw_parts(op.iov[0].iov_base.cast::<u8>(), 3) };
        assert_eq!(first, b"llo");
        assert_eq!(op.complete(8), Ok(8));
        assert!(op.is_drained());
        op.refill(&mut next);
        assert!(op.is_drained(), "an empty batch is drained at once");
    }

    #[test]
    #[should_panic(expected = "send buffer replaced while in use")]
    fn a_send_buffer_is_never_replaced_in_flight() {
        let mut op = SendOp::default();
        let mut next = batch(b"x", &[]);
        op.refill(&mut next);
        let _ = op.submit(0);
        op.refill(&mut next);
    }

    #[test]
    fn a_failed_send_drops_the_rest() {
        let mut op = SendOp::default();
        let mut next = batch(b"abc", &[b"def"]);
        op.refill(&mut next);
        let _ = op.submit(0);
        assert_eq!(op.complete(-libc::EPIPE), Err(libc::EPIPE));
        assert!(op.is_drained());
        assert!(!op.state.is_busy());
    }
}
