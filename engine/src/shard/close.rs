//! Closing connections: end of stream, I/O errors, refusals with a GOAWAY, and detaching a
//! connection from its peer.

use std::time::Duration;

use crate::proto::connection::CloseCause;
use crate::proto::frame::Frame;
use crate::proto::{GoAwayReason, ProtocolError};
use crate::sys::socket;

use super::State;
use super::conn::Phase;
use super::slots::ConnId;

impl State {
    pub(super) fn on_eof(&mut self, index: ConnId) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        conn.recv.wanted = false;
        match &mut conn.phase {
            Phase::Accepting(acc) => match acc.handle_eof() {
                Some(err) => self.reject(index, &err),
                None => self.begin_close(index, Duration::ZERO),
            },
            Phase::Linked { proto, .. } => {
                proto.handle_eof();
                if let Some(CloseCause::Protocol(err)) = proto.close_cause() {
                    self.counters.protocol_errors += 1;
                    tracing::warn!(conn = index.0, error = %err, "stream ended inside a frame");
                }
                self.begin_close(index, Duration::ZERO);
            }
            Phase::Connecting { .. } | Phase::Detached => self.begin_close(index, Duration::ZERO),
        }
    }

    pub(super) fn on_io_error(&mut self, index: ConnId, errno: i32) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        tracing::debug!(conn = index.0, error = %std::io::Error::from_raw_os_error(errno), "connection i/o failed");
        conn.recv.wanted = false;
        conn.out.clear();
        if !conn.shut {
            conn.shut = true;
            socket::shutdown(conn.raw_fd());
        }
        self.begin_close(index, Duration::ZERO);
    }

    /// Answers a protocol error on a connection that belongs to no peer, and closes it.
    pub(super) fn reject(&mut self, index: ConnId, err: &ProtocolError) {
        self.counters.protocol_errors += 1;
        tracing::warn!(conn = index.0, error = %err, "protocol error; closing connection");
        self.reject_with(index, err.reason(), &err.to_string());
    }

    pub(super) fn reject_with(&mut self, index: ConnId, reason: GoAwayReason, message: &str) {
        self.refuse(index, reason, 0, message);
    }

    /// Answers a connection that belongs to no peer with a GOAWAY (asking the dialer to wait
    /// `retry_after_ms` before it comes back) and closes it.
    pub(super) fn refuse(
        &mut self,
        index: ConnId,
        reason: GoAwayReason,
        retry_after_ms: u32,
        message: &str,
    ) {
        let conn = &mut self.conns[index];
        let goaway = Frame::GoAway {
            reason,
            retry_after_ms,
            message,
        };
        conn.link
            .poll_transmit(&mut conn.out, |out, _| goaway.encode(out));
        conn.recv.wanted = false;
        self.begin_close(index, Duration::ZERO);
    }

    /// Detaches the connection from its peer and closes it once its queued bytes are sent.
    pub(super) fn begin_close(&mut self, index: ConnId, retry_after: Duration) {
        let now = self.now;
        let conn = &mut self.conns[index];
        conn.closing = true;
        conn.recv.wanted = false;
        let phase = std::mem::replace(&mut conn.phase, Phase::Detached);
        let peer = match phase {
            Phase::Linked { peer, mut proto } => {
                // Keep what the closing connection still has to say (a GOAWAY, a final ACK).
                let sessions = &mut self.peers[peer].sessions;
                conn.link.poll_transmit(&mut conn.out, |out, data| {
                    proto.poll_transmit(sessions, now, out, data, 0);
                });
                Some(peer)
            }
            Phase::Connecting { peer, .. } => Some(peer),
            Phase::Accepting(_) => {
                self.accepting -= 1;
                None
            }
            Phase::Detached => None,
        };
        self.mark_dirty(index);
        let Some(peer) = peer else { return };
        let ps = &mut self.peers[peer];
        if ps.conn != Some(index) {
            return;
        }
        ps.conn = None;
        ps.sessions.tx.handle_disconnect();
        if ps.established {
            ps.established = false;
            ps.shared
                .published
                .connected
                .store(false, crate::sync::Ordering::Relaxed);
            self.counters.peers_connected -= 1;
            self.handler.on_disconnected(&ps.handle);
        }
        self.schedule_redial(peer, retry_after);
    }
}
