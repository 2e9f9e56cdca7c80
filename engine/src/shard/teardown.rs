//! Quiescing the ring at exit before its buffers may be freed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode};

use crate::sys::socket;

use super::Shard;
use super::TEARDOWN_GRACE;
use super::ring::{OpKind, OpTag};
use super::slots::ConnId;

impl Shard {
    /// Quiesces the ring before its buffers may be freed: shuts every socket down, cancels what
    /// a shutdown does not end, and reaps until nothing is in flight. Returns `false` if some
    /// operation is still in flight after `TEARDOWN_GRACE`.
    pub(super) fn teardown(&mut self) -> bool {
        let mut cancels = Vec::new();
        for (index, conn) in self.st.conns.iter_mut() {
            socket::shutdown(conn.raw_fd());
            conn.shut = true;
            if conn.connect.state.cancel() {
                cancels.push(OpTag::new(OpKind::Connect, index.0, conn.generation));
            }
        }
        if self.accept.state.cancel() {
            cancels.push(OpTag::reserved(OpKind::Accept));
        }
        for target in cancels {
            let entry = opcode::AsyncCancel::new(target.encode())
                .build()
                .user_data(OpTag::reserved(OpKind::Cancel).encode());
            // SAFETY: a cancel references no memory.
            if unsafe { self.ring.push(&entry) }.is_err() {
                return false;
            }
        }
        if self.wake.state.is_busy() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to the shard's eventfd, completing the
            // armed read.
            unsafe { libc::write(self.st.mailbox.eventfd(), (&raw const one).cast(), 8) };
        }
        let deadline = Instant::now() + TEARDOWN_GRACE;
        loop {
            self.collect_cqes();
            for (user_data, res, flags) in std::mem::take(&mut self.cqes) {
                self.complete_quietly(user_data, res, flags);
            }
            let busy = self.wake.state.is_busy()
                || self.accept.state.is_busy()
                || self.st.conns.iter().any(|(_, c)| c.has_ops_in_flight());
            if !busy {
                return true;
            }
            if Instant::now() >= deadline
                || self
                    .ring
                    .submit(true, Some(Duration::from_millis(10)))
                    .is_err()
            {
                return false;
            }
        }
    }

    /// Records a completion during teardown without acting on its data.
    pub(super) fn complete_quietly(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(tag) = OpTag::decode(user_data) else {
            return;
        };
        let more = cqueue::more(flags);
        match tag.kind {
            OpKind::Wake => self.wake.state.complete(false),
            OpKind::Accept => {
                if res >= 0 {
                    // SAFETY: a new descriptor we own; dropping it closes it.
                    drop(unsafe { OwnedFd::from_raw_fd(res) });
                }
                self.accept.state.complete(more);
            }
            OpKind::Cancel => {}
            OpKind::Recv | OpKind::Send | OpKind::Connect => {
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.recycle(bid);
                }
                if !self.st.is_current(tag) {
                    return;
                }
                let conn = &mut self.st.conns[ConnId(tag.index as usize)];
                match tag.kind {
                    OpKind::Recv => conn.recv.state.complete(more),
                    OpKind::Send => drop(conn.send.complete(res)),
                    _ => drop(conn.connect.complete(res)),
                }
            }
        }
    }
}
