//! The shard's timers: connection deadlines and protocol timeouts, redials and the session
//! buffer window check, in one heap; stale entries are skipped when they fire.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use crate::sys::socket;

use super::CLOSE_GRACE;
use super::State;
use super::conn::Phase;
use super::slots::{ConnId, PeerIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Conn {
        index: ConnId,
        generation: u32,
    },
    Redial {
        peer: PeerIndex,
    },
    /// Look for unacknowledged messages older than the session buffer window.
    Window,
    /// Read again from a connection paused for its peer's inbound rate limit.
    Resume {
        index: ConnId,
        generation: u32,
    },
}

impl State {
    pub(super) fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn { index, generation } => {
                    let Some(conn) = self.conns.get_mut(index) else {
                        continue;
                    };
                    if conn.generation != generation || conn.timer_at != Some(at) {
                        continue;
                    }
                    conn.timer_at = None;
                    match &mut conn.phase {
                        Phase::Connecting { deadline, .. }
                            if now >= *deadline && conn.connect.state.is_busy() =>
                        {
                            // On Linux, shutdown(2) of a socket in SYN_SENT aborts the connect,
                            // so the in-flight connect completes with an error and redials.
                            tracing::debug!(conn = index.0, "connect timed out");
                            socket::shutdown(conn.raw_fd());
                            conn.shut = true;
                        }
                        Phase::Accepting(acc) => {
                            if let Err(err) = acc.handle_timeout(now) {
                                self.reject(index, &err);
                            }
                        }
                        Phase::Linked { proto, .. } => {
                            if let Err(err) = proto.handle_timeout(now) {
                                tracing::info!(conn = index.0, error = %err, "closing connection");
                                self.begin_close(index, Duration::ZERO);
                            }
                        }
                        _ => {}
                    }
                    self.mark_dirty(index);
                }
                Timer::Redial { peer } => {
                    let Some(ps) = self.peers.get_mut(peer) else {
                        continue;
                    };
                    if ps.redial_at != Some(at) {
                        continue;
                    }
                    ps.redial_at = None;
                    self.start_dial(peer);
                }
                Timer::Resume { index, generation } => {
                    if let Some(conn) = self.conns.get_mut(index)
                        && conn.generation == generation
                        && conn.paused_until == Some(at)
                    {
                        conn.paused_until = None;
                        self.mark_dirty(index);
                    }
                }
                Timer::Window => {
                    if self.window_timer == Some(at) {
                        self.window_timer = None;
                        self.check_window();
                    }
                }
            }
        }
    }

    pub(super) fn next_timer(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let shutdown = self
            .shutdown
            .as_ref()
            .and_then(|sd| match sd.closing_since {
                Some(since) => Some(since + CLOSE_GRACE),
                None => sd.drain_until,
            });
        [timer, shutdown, self.next_source_poll()]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) fn schedule_conn_timer(&mut self, index: ConnId) {
        let conn = &mut self.conns[index];
        let next = match &conn.phase {
            Phase::Connecting { deadline, .. } => Some(*deadline),
            Phase::Accepting(acc) => Some(acc.deadline()),
            Phase::Linked { proto, .. } => proto.poll_timeout(),
            Phase::Detached => None,
        };
        if let Some(at) = next
            && conn.timer_at.is_none_or(|current| at < current)
        {
            conn.timer_at = Some(at);
            self.timers.push(Reverse((
                at,
                Timer::Conn {
                    index,
                    generation: conn.generation,
                },
            )));
        }
    }
}
