//! Dialing a peer: executes its `net::dial::DialPlan` (which endpoint, how long to wait).

use std::cmp::Reverse;
use std::time::Duration;

use crate::sys::socket;

use super::State;
use super::conn::Phase;
use super::link::Link;
use super::slots::PeerIndex;
use super::timer::Timer;

impl State {
    pub(super) fn start_dial(&mut self, peer: PeerIndex) {
        if self.shutdown.is_some() {
            return;
        }
        let ps = &mut self.peers[peer];
        if ps.conn.is_some() {
            return;
        }
        let Some(dial) = &mut ps.dial else { return };
        let addr = dial.next_endpoint();
        let fd = match socket::tcp_socket(&addr) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "socket creation failed");
                return self.schedule_redial(peer, Duration::ZERO);
            }
        };
        let link = match &self.tls {
            Some(tls) => match tls.dial(self.peers[peer].shared.node_id.as_str(), addr.ip()) {
                Ok(link) => Link::tls(link),
                Err(e) => {
                    self.counters.tls_failures += 1;
                    tracing::warn!(%addr, error = %e, "TLS setup for a dial failed");
                    return self.schedule_redial(peer, Duration::ZERO);
                }
            },
            None => Link::Plain,
        };
        let deadline = self.now + self.config.connect_timeout;
        let index = self.new_conn(fd, Phase::Connecting { peer, deadline });
        let conn = &mut self.conns[index];
        conn.link = link;
        conn.connect.queue(socket::RawAddr::new(addr));
        self.peers[peer].conn = Some(index);
    }

    pub(super) fn schedule_redial(&mut self, peer: PeerIndex, retry_after: Duration) {
        if self.shutdown.is_some() {
            return;
        }
        let unit = self.random_unit();
        let ps = &mut self.peers[peer];
        let Some(dial) = &mut ps.dial else { return };
        let delay = dial.handle_failure(&self.config.backoff, retry_after, unit);
        let at = self.now + delay;
        ps.redial_at = Some(at);
        self.timers.push(Reverse((at, Timer::Redial { peer })));
    }

    /// A uniform sample in [0, 1) for backoff jitter (splitmix64).
    pub(super) fn random_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
