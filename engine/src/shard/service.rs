//! Servicing the connections touched this turn: arming connects and receives, building and
//! submitting one send each, freeing the ones that are closed and quiet; and the one place that
//! pushes SQEs.

use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::squeue;

use crate::sys::socket;

use super::Shard;
use super::conn::Phase;
use super::ring::{OpKind, OpTag};
use super::slots::ConnId;

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

    pub(super) fn service(&mut self, index: ConnId) {
        let now = self.st.now;
        let generation = self.st.conns[index].generation;
        let tag = |kind| OpTag::new(kind, index.0, generation).encode();
        let conn = &mut self.st.conns[index];
        let fd = conn.raw_fd();
        if conn.connect.is_due() {
            let entry = conn.connect.submit(fd).user_data(tag(OpKind::Connect));
            self.push(&entry);
        }
        let conn = &mut self.st.conns[index];
        if conn.recv.is_due() && !conn.shut && conn.paused_until.is_none() {
            // One HELLO at most may arrive before the shard decides who owns the socket; a
            // single-shot receive leaves nothing in flight when it is handed over. Under an
            // inbound rate limit every receive is single-shot, so that reading stops where the
            // limit says.
            let single_shot = matches!(conn.phase, Phase::Accepting(_))
                || self.st.config.inbound_rate_limit.is_some();
            let entry = conn
                .recv
                .submit(fd, self.bufs.group, single_shot)
                .user_data(tag(OpKind::Recv));
            self.push(&entry);
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
    pub(super) fn flush(&mut self, index: ConnId, now: Instant) {
        let st = &mut self.st;
        let conn = &mut st.conns[index];
        if conn.send.state.is_busy() || conn.shut {
            return;
        }
        if conn.send.is_drained() {
            match &mut conn.phase {
                Phase::Linked { peer, proto } => {
                    let ps = &mut st.peers[*peer];
                    let sessions = &mut ps.sessions;
                    let budget =
                        super::peer::send_budget(&st.config, ps.local_producer, ps.large_payloads);
                    let sent = conn.link.poll_transmit(&mut conn.out, |out, data| {
                        proto.poll_transmit(sessions, now, out, data, budget)
                    });
                    st.counters.msgs_sent += sent;
                    if sent > 0 && ps.has_queued() {
                        // Sending made room for messages the session left in the queue.
                        st.drain_again.push(*peer);
                    }
                }
                // Nothing may be sent before the socket is connected.
                Phase::Connecting { .. } => {}
                // No proto yet, or none any more; a TLS link may still have records to send
                // (its side of the handshake, an alert).
                Phase::Accepting(_) | Phase::Detached => {
                    conn.link.poll_transmit(&mut conn.out, |_, _| ());
                }
            }
            conn.send.refill(&mut conn.out);
        }
        if !conn.send.is_drained() {
            let tag = OpTag::new(OpKind::Send, index.0, conn.generation).encode();
            let entry = conn.send.submit(conn.raw_fd()).user_data(tag);
            self.push(&entry);
        }
        let conn = &mut self.st.conns[index];
        if !conn.closing
            && let Some(failure) = conn.link.failure()
        {
            let failure = failure.clone();
            self.st.tls_failed(index, failure);
        }
    }

    /// Arms the listener's multishot accept and the eventfd read when they are not armed.
    pub(super) fn arm_reserved(&mut self) {
        if !self.wake.state.is_busy() {
            let entry = self
                .wake
                .submit(self.st.mailbox.eventfd())
                .user_data(OpTag::reserved(OpKind::Wake).encode());
            self.push(&entry);
        }
        if self.st.shutdown.is_none()
            && !self.accept.state.is_busy()
            && let Some(listener) = &self.listener
        {
            let entry = self
                .accept
                .submit(listener.as_raw_fd())
                .user_data(OpTag::reserved(OpKind::Accept).encode());
            self.push(&entry);
        }
    }

    /// Pushes an SQE built by one of the op types in `op`; the only call of `Ring::push`
    /// outside teardown's cancels.
    pub(super) fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: every entry comes from an op type's `submit`, which marked the op busy; an op
        // keeps the memory its entry points to (send buffer, connect address, wake counter)
        // unmoved and unwritten until its final completion, and a connection is freed only
        // when all its ops are idle (see `op`). Receives select from the buffer ring, which
        // outlives the ring's operations (teardown waits for them).
        if let Err(e) = unsafe { self.ring.push(entry) } {
            // Submission failing means the ring itself is broken; nothing sensible remains.
            panic!("io_uring submission failed: {e}");
        }
    }
}
