//! A connection slot: the socket, which phase it is in, and which operations are in flight.
//!
//! A connection is freed only when no operation references it any more: its receive is not
//! armed, no send or connect is in flight. Until then its buffers and address stay put.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::proto::Connection;
use crate::proto::handshake::Accepting;
use crate::sys::socket::RawAddr;

use super::State;
use super::ring;

/// What a connection is doing.
#[derive(Debug)]
pub(crate) enum Phase {
    /// A dial in progress; `peer` is the shard-local peer index.
    Connecting { peer: usize, deadline: Instant },
    /// Accepted; waiting for the dialer's HELLO.
    Accepting(Accepting),
    /// Bound to a peer (handshaking or established).
    Linked { peer: usize, proto: Connection },
    /// Closing: no longer bound to a peer; waits for its operations to finish.
    Detached,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub generation: u32,
    pub phase: Phase,
    /// Where a dial connects to; the kernel reads it until the connect completes.
    pub addr: Option<Box<RawAddr>>,
    pub connect_queued: bool,
    pub connect_in_flight: bool,
    pub recv_wanted: bool,
    pub recv_armed: bool,
    pub send_in_flight: bool,
    /// Frames being built for the next send.
    pub out: Vec<u8>,
    /// The send in flight: `sending[sent..]` is still to go.
    pub sending: Vec<u8>,
    pub sent: usize,
    /// Close once everything queued is sent.
    pub closing: bool,
    /// `shutdown(2)` was called.
    pub shut: bool,
    /// On the shard's service list for this turn.
    pub dirty: bool,
    /// The earliest timer queued for this connection.
    pub timer_at: Option<Instant>,
}

impl Conn {
    pub(crate) fn new(fd: OwnedFd, generation: u32, phase: Phase) -> Conn {
        Conn {
            fd,
            generation,
            phase,
            addr: None,
            connect_queued: false,
            connect_in_flight: false,
            recv_wanted: false,
            recv_armed: false,
            send_in_flight: false,
            out: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            closing: false,
            shut: false,
            dirty: false,
            timer_at: None,
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether any operation still references this connection.
    pub(crate) fn has_ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_in_flight || self.connect_in_flight
    }

    /// Whether nothing is left to send.
    pub(crate) fn is_flushed(&self) -> bool {
        !self.send_in_flight && self.sent >= self.sending.len() && self.out.is_empty()
    }
}

impl State {
    pub(super) fn new_conn(&mut self, fd: OwnedFd, phase: Phase) -> usize {
        let generation = self.generation_next;
        self.generation_next = (self.generation_next + 1) & ring::GENERATION_MASK;
        let index = self.conns.insert(Conn::new(fd, generation, phase));
        self.counters.connections += 1;
        self.mark_dirty(index);
        index
    }

    pub(super) fn mark_dirty(&mut self, index: usize) {
        if let Some(conn) = self.conns.get_mut(index)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }
}
