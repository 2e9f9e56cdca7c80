//! Servicing the connections touched this turn: arming connects and receives, building and
//! submitting one send each, freeing the ones that are closed and quiet; and the one place that
//! pushes SQEs.

use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, squeue, types};

use crate::sys::socket;

use super::Shard;
use super::conn::Phase;
use super::ring::{OpKind, OpTag};

impl Shard {
    /// Submits each dirty connection's operations: connect, receive, one send; frees the
    /// connections that are closed and quiet.
    pub(super) fn service_all(&mut self) {
        let dirty = std::mem::take(&mut self.st.dirty);
        for &index in &dirty {
            if let Some(conn) = self.st.conns.get_mut(index) {
                conn.dirty = false;
                self.service(index);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.st.dirty.is_empty() {
            self.st.dirty = dirty;
        }
    }

    pub(super) fn service(&mut self, index: usize) {
        let now = self.st.now;
        let generation = self.st.conns[index].generation;
        let tag = |kind| OpTag::new(kind, index, generation).encode();
        let conn = &mut self.st.conns[index];
        let fd = types::Fd(conn.raw_fd());
        if conn.connect_queued {
            conn.connect_queued = false;
            let addr = conn.addr.as_ref().expect("a queued connect has an address");
            let entry = opcode::Connect::new(fd, addr.as_ptr(), addr.len())
                .build()
                .user_data(tag(OpKind::Connect));
            // SAFETY: the address is boxed in the connection, which is not freed while the
            // connect is in flight.
            self.push(&entry);
            self.st.conns[index].connect_in_flight = true;
        }
        let conn = &mut self.st.conns[index];
        if conn.recv_wanted && !conn.recv_armed && !conn.shut {
            let entry = match conn.phase {
                // One HELLO at most may arrive before the shard decides who owns the socket;
                // a single-shot receive leaves nothing in flight when it is handed over.
                Phase::Accepting(_) => opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                    .buf_group(self.bufs.group)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT),
                _ => opcode::RecvMulti::new(fd, self.bufs.group).build(),
            };
            conn.recv_armed = true;
            // SAFETY: the receive selects from the buffer ring, which outlives every operation.
            self.push(&entry.user_data(tag(OpKind::Recv)));
        }
        self.flush(index, now);
        let conn = &mut self.st.conns[index];
        if conn.closing && conn.is_flushed() && !conn.shut {
            conn.shut = true;
            socket::shutdown(conn.raw_fd());
        }
        let conn = &self.st.conns[index];
        if conn.closing && conn.shut && !conn.has_ops_in_flight() {
            self.st.conns.remove(index);
            self.st.counters.connections -= 1;
            return;
        }
        self.st.schedule_conn_timer(index);
    }

    /// Builds and submits one send if none is in flight.
    pub(super) fn flush(&mut self, index: usize, now: Instant) {
        let st = &mut self.st;
        let conn = &mut st.conns[index];
        if conn.send_in_flight || conn.shut {
            return;
        }
        if conn.sent >= conn.sending.len() {
            conn.sending.clear();
            conn.sent = 0;
            if let Phase::Linked { peer, proto } = &mut conn.phase {
                let sessions = &mut st.peers[*peer].sessions;
                let budget = st.config.send_batch_bytes_max;
                st.counters.msgs_sent +=
                    proto.poll_transmit(sessions, now, &mut conn.out, budget) as u64;
            }
            std::mem::swap(&mut conn.out, &mut conn.sending);
        }
        if conn.sent < conn.sending.len() {
            let pending = &conn.sending[conn.sent..];
            let entry = opcode::Send::new(
                types::Fd(conn.raw_fd()),
                pending.as_ptr(),
                pending.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(OpTag::new(OpKind::Send, index, conn.generation).encode());
            conn.send_in_flight = true;
            // SAFETY: `sending` is not touched until this send's completion is reaped, and the
            // connection is not freed while a send is in flight.
            self.push(&entry);
        }
    }

    /// Arms the listener's multishot accept and the eventfd read when they are not armed.
    pub(super) fn arm_reserved(&mut self) {
        if !self.wake_armed {
            let entry = opcode::Read::new(
                types::Fd(self.st.mailbox.eventfd()),
                (&raw mut *self.wake_buf).cast(),
                8,
            )
            .build()
            .user_data(OpTag::reserved(OpKind::Wake).encode());
            // SAFETY: `wake_buf` is boxed in the shard and outlives the read (teardown waits).
            self.push(&entry);
            self.wake_armed = true;
        }
        if self.st.shutdown.is_none()
            && !self.accept_armed
            && let Some(listener) = &self.listener
        {
            let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(OpTag::reserved(OpKind::Accept).encode());
            // SAFETY: accept references only the listener, owned by the shard.
            self.push(&entry);
            self.accept_armed = true;
        }
    }

    pub(super) fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the callers, each of which states what keeps the entry's
        // buffers alive until completion.
        if let Err(e) = unsafe { self.ring.push(entry) } {
            // Submission failing means the ring itself is broken; nothing sensible remains.
            panic!("io_uring submission failed: {e}");
        }
    }
}
