//! Connections on their way to a peer: accepted sockets and their HELLO, routing a HELLO to
//! the shard that owns the peer, adopting it there, and dials whose connect completed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::net::dial::crossing_keeps_ours;
use crate::proto::handshake::{AcceptAuth, Accepting, HelloInfo};
use crate::proto::{Connection, GoAwayReason, Role};
use crate::route::{Command, PeerShared};
use crate::sys::socket;

use super::State;
use super::conn::Phase;
use super::events::ShardEvents;
use super::link::Link;
use super::slots::ConnId;

impl State {
    pub(super) fn on_accept(&mut self, fd: OwnedFd) {
        if self.shutdown.is_some() {
            return;
        }
        if self.counters.connections as usize >= self.config.connections_max
            || self.accepting >= self.config.handshakes_max
        {
            return self.refuse_accepted(fd);
        }
        if let Err(e) = socket::set_nodelay(fd.as_raw_fd()) {
            tracing::warn!(error = %e, "TCP_NODELAY on an accepted socket failed");
        }
        let link = match &self.tls {
            Some(tls) => match tls.accept() {
                Ok(link) => Link::tls(link),
                Err(e) => {
                    self.counters.tls_failures += 1;
                    tracing::warn!(error = %e, "TLS setup for an accepted socket failed");
                    return;
                }
            },
            None => Link::Plain,
        };
        // The deadline covers the TLS handshake too: a dialer that never finishes it is
        // closed like one that never sends its HELLO.
        let deadline = self.now + self.config.handshake_timeout;
        let accepting = match &self.proto_config.auth {
            Some(authenticator) => Accepting::with_auth(
                deadline,
                AcceptAuth {
                    authenticator: Arc::clone(authenticator),
                    node_id: Arc::clone(&self.proto_config.node_id),
                },
            ),
            None => Accepting::new(deadline),
        };
        let index = self.new_conn(fd, Phase::Accepting(accepting));
        let conn = &mut self.conns[index];
        conn.link = link;
        conn.recv.wanted = true;
        self.accepting += 1;
    }

    /// An accepted connection beyond `connections_max` or `handshakes_max`: refused before
    /// anything of it is read. In plaintext it gets GOAWAY `Overloaded` with a retry-after
    /// (and holds a slot only until that is sent); under TLS, where nothing can be said before
    /// a handshake, it is closed.
    fn refuse_accepted(&mut self, fd: OwnedFd) {
        self.counters.connections_refused += 1;
        tracing::debug!(
            connections = self.counters.connections,
            handshakes = self.accepting,
            "refusing an accepted connection: connections_max or handshakes_max reached"
        );
        if self.tls.is_some() {
            return drop(fd);
        }
        let index = self.new_conn(fd, Phase::Detached);
        self.refuse(
            index,
            GoAwayReason::Overloaded,
            RETRY_AFTER_FULL_MS,
            "connections_max or handshakes_max reached",
        );
    }

    pub(super) fn on_connected(&mut self, index: ConnId) {
        let conn = &mut self.conns[index];
        let Phase::Connecting { peer, .. } = conn.phase else {
            return;
        };
        let ps = &self.peers[peer];
        let proto = Connection::dial(
            Arc::clone(&self.proto_config),
            ps.shared.node_id.as_str(),
            &ps.sessions,
            self.now,
        );
        conn.phase = Phase::Linked { peer, proto };
        conn.recv.wanted = true;
    }

    /// The dialer's HELLO arrived: adopt the connection here or hand it to the owning shard.
    pub(super) fn route_hello(&mut self, index: ConnId, hello: HelloInfo) {
        if hello.node_id == self.config.node_id {
            self.counters.protocol_errors += 1;
            let message = "hello claims this node's own id";
            return self.reject_with(index, GoAwayReason::WrongPeer, message);
        }
        // Before any peer state exists for it: is the dialer the node it claims to be?
        if let (Some(tls), Link::Tls(link)) = (&self.tls, &self.conns[index].link)
            && let Err(e) = tls.check_dialer(&link.link, &hello.node_id)
        {
            self.counters.tls_failures += 1;
            tracing::warn!(peer = %hello.node_id, error = %e, "refusing a dialer whose certificate does not name it");
            return self.reject_with(index, GoAwayReason::Unauthenticated, &e.to_string());
        }
        let Some(shared) = self.router.peer_shared_inbound(&hello.node_id) else {
            self.counters.peers_refused += 1;
            tracing::warn!(peer = %hello.node_id, peers_max = self.config.peers_max, "refusing a new peer: peers_max reached");
            let message = "peers_max reached";
            return self.refuse(
                index,
                GoAwayReason::Overloaded,
                RETRY_AFTER_FULL_MS,
                message,
            );
        };
        if shared.shard == self.id {
            return self.adopt(index, hello, shared);
        }
        // The single-shot receive that carried the HELLO has completed. Nothing else may be in
        // flight when the socket moves: a send the kernel still reads from would outlive the
        // buffers freed here. (Under TLS the acceptor's handshake flight went out well before
        // the dialer could answer it; this guards the case it did not.)
        if self.conns[index].has_ops_in_flight() {
            tracing::warn!(peer = %hello.node_id, "a connection with operations in flight cannot move to its owner shard; refusing it");
            let message = "the connection could not move to its owner shard";
            return self.refuse(
                index,
                GoAwayReason::Overloaded,
                RETRY_AFTER_FULL_MS,
                message,
            );
        }
        let conn = self.conns.remove(index);
        self.counters.connections -= 1;
        self.accepting -= 1;
        let mailbox = Arc::clone(&shared.mailbox);
        mailbox.send(Command::Adopt {
            fd: conn.fd,
            hello,
            peer: shared,
            tls: conn.link.into_tls(),
        });
    }

    pub(super) fn adopt(&mut self, index: ConnId, hello: HelloInfo, shared: Arc<PeerShared>) {
        let peer = self.ensure_peer(&shared);
        if let Some(existing) = self.peers[peer].conn {
            let ours = match &self.conns[existing].phase {
                Phase::Connecting { .. } => true,
                Phase::Linked { proto, .. } => proto.role() == Role::Dialer,
                _ => false,
            };
            // Both sides dialed each other: keep the connection dialed by the smaller node id.
            if ours && crossing_keeps_ours(&self.config.node_id, &hello.node_id) {
                return self.reject_with(
                    index,
                    GoAwayReason::Replaced,
                    "crossing dials; keeping ours",
                );
            }
            if let Phase::Linked { proto, .. } = &mut self.conns[existing].phase {
                proto.close(
                    &self.peers[peer].sessions,
                    GoAwayReason::Replaced,
                    "replaced by a newer connection",
                );
            }
            self.begin_close(existing, Duration::ZERO);
        }
        let ps = &mut self.peers[peer];
        let mut events = ShardEvents::new(
            &*self.handler,
            &ps.handle,
            &mut ps.rx_slot,
            &mut ps.confirms,
            &mut self.counters,
            self.durable.as_mut(),
        );
        let accepted = Connection::accept(
            Arc::clone(&self.proto_config),
            &hello,
            &mut ps.sessions,
            self.now,
            &mut events,
        );
        events.finish();
        match accepted {
            Ok(proto) => {
                let conn = &mut self.conns[index];
                if matches!(conn.phase, Phase::Accepting(_)) {
                    self.accepting -= 1;
                }
                conn.phase = Phase::Linked { peer, proto };
                conn.recv.wanted = true;
                ps.conn = Some(index);
                self.on_established(peer);
            }
            Err(err) => self.reject(index, &err),
        }
    }
}

/// How long a dialer refused for `peers_max` is asked to wait before it dials again.
const RETRY_AFTER_FULL_MS: u32 = 5_000;
