//! Shutting a shard down: draining until every peer acknowledged or the deadline passed, then
//! closing every connection.

use std::time::{Duration, Instant};

use crate::outbox::recovered::RecoveredMessages;
use crate::proto::GoAwayReason;

use super::CLOSE_GRACE;
use super::State;
use super::conn::Phase;
use super::slots::ConnId;

pub(super) struct Shutdown {
    pub(super) drain_until: Option<Instant>,
    /// When connections were told to close; the loop ends when they are gone or after
    /// `CLOSE_GRACE`.
    pub(super) closing_since: Option<Instant>,
}

impl State {
    /// Whether shutdown has closed every connection.
    pub(super) fn is_closed(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|sd| sd.closing_since.is_some())
            && self.conns.is_empty()
    }

    /// Moves the shutdown along; returns `true` when the loop should end.
    pub(super) fn advance_shutdown(&mut self) -> bool {
        let now = self.now;
        let Some(sd) = &mut self.shutdown else {
            return false;
        };
        if let Some(since) = sd.closing_since {
            return self.conns.is_empty() || now >= since + CLOSE_GRACE;
        }
        let drained = self
            .peers
            .iter()
            .all(|(_, p)| p.sessions.tx.unacked_count() == 0 && !p.has_queued());
        if !drained && sd.drain_until.is_some_and(|until| now < until) {
            return false;
        }
        sd.closing_since = Some(now);
        let indices: Vec<ConnId> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            if let Phase::Linked { peer, proto } = &mut self.conns[index].phase {
                proto.close(
                    &self.peers[*peer].sessions,
                    GoAwayReason::Normal,
                    "shutting down",
                );
            }
            self.begin_close(index, Duration::ZERO);
        }
        self.sources.clear();
        for (_, ps) in self.peers.iter_mut() {
            ps.dial = None;
            ps.sessions.tx.clear();
            ps.recovered = RecoveredMessages::default();
            for (_, confirm) in ps.confirms.drain(..) {
                confirm.fail();
            }
            while let Some((_, outgoing)) = ps.shared.queue.pop() {
                if let Some(confirm) = outgoing.confirm {
                    confirm.fail();
                }
            }
        }
        self.conns.is_empty()
    }
}

impl State {
    /// The shard stopped on a failure: fails every pending confirmation, queued or sent, and
    /// drops the sources, so nobody waits on a shard that will not run again.
    pub(super) fn fail_all(&mut self) {
        self.sources.clear();
        for (_, ps) in self.peers.iter_mut() {
            for (_, confirm) in ps.confirms.drain(..) {
                confirm.fail();
            }
            while let Some((_, outgoing)) = ps.shared.queue.pop() {
                if let Some(confirm) = outgoing.confirm {
                    confirm.fail();
                }
            }
        }
    }
}
