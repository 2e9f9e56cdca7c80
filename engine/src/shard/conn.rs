//! A connection slot: the socket, which phase it is in, and which operations are in flight.
//!
//! A connection is freed only when no operation references it any more: its receive, send and
//! connect ops are all idle. Until then its buffers and address stay put.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::proto::Connection;
use crate::proto::handshake::Accepting;

use super::State;
use super::link::Link;
use super::op::{ConnectOp, RecvOp, SendBatch, SendOp};
use super::ring::{self, OpTag};
use super::slots::{ConnId, PeerIndex};

/// What a connection is doing.
#[derive(Debug)]
pub(crate) enum Phase {
    /// A dial in progress; `peer` is the shard-local peer index.
    Connecting { peer: PeerIndex, deadline: Instant },
    /// Accepted; waiting for the dialer's HELLO.
    Accepting(Accepting),
    /// Bound to a peer (handshaking or established).
    Linked { peer: PeerIndex, proto: Connection },
    /// Closing: no longer bound to a peer; waits for its operations to finish.
    Detached,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub fd: OwnedFd,
    pub generation: u32,
    pub phase: Phase,
    pub connect: ConnectOp,
    pub recv: RecvOp,
    pub send: SendOp,
    /// Carries bytes between the ring and proto (plaintext, or TLS later).
    pub link: Link,
    /// Frames gathered for the next send.
    pub out: SendBatch,
    /// Close once everything queued is sent.
    pub closing: bool,
    /// `shutdown(2)` was called.
    pub shut: bool,
    /// On the shard's service list for this turn.
    pub dirty: bool,
    /// The earliest timer queued for this connection.
    pub timer_at: Option<Instant>,
    /// Reading is paused until then: the peer is over its inbound rate limit.
    pub paused_until: Option<Instant>,
}

impl Conn {
    pub(crate) fn new(fd: OwnedFd, generation: u32, phase: Phase) -> Conn {
        Conn {
            fd,
            generation,
            phase,
            connect: ConnectOp::default(),
            recv: RecvOp::default(),
            send: SendOp::default(),
            link: Link::default(),
            out: SendBatch::default(),
            closing: false,
            shut: false,
            dirty: false,
            timer_at: None,
            paused_until: None,
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether any operation still references this connection.
    pub(crate) fn has_ops_in_flight(&self) -> bool {
        self.recv.state.is_busy() || self.send.state.is_busy() || self.connect.state.is_busy()
    }

    /// Whether nothing is left to send.
    pub(crate) fn is_flushed(&self) -> bool {
        !self.send.state.is_busy() && self.send.is_drained() && self.out.is_empty()
    }
}

impl State {
    /// Whether `tag` names a live connection of this generation (not a freed or reused slot).
    pub(super) fn is_current(&self, tag: OpTag) -> bool {
        self.conns
            .get(ConnId(tag.index as usize))
            .is_some_and(|conn| conn.generation == tag.generation)
    }

    pub(super) fn new_conn(&mut self, fd: OwnedFd, phase: Phase) -> ConnId {
        let generation = self.generation_next;
        self.generation_next = (self.generation_next + 1) & ring::GENERATION_MASK;
        let index = self.conns.insert(Conn::new(fd, generation, phase));
        self.counters.connections += 1;
        self.mark_dirty(index);
        index
    }

    pub(super) fn mark_dirty(&mut self, index: ConnId) {
        if let Some(conn) = self.conns.get_mut(index)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }
}
