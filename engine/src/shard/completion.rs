//! Reaping completions: each CQE is decoded from its `user_data` and handed to the state its
//! operation belongs to.

use std::os::fd::{FromRawFd, OwnedFd};

use io_uring::cqueue;

use super::CQE_BUDGET;
use super::Shard;
use super::ring::{OpKind, OpTag};
use super::slots::ConnId;

impl Shard {
    pub(super) fn reap(&mut self) {
        self.collect_cqes();
        let mut cqes = std::mem::take(&mut self.cqes);
        for &(user_data, res, flags) in &cqes {
            self.complete(user_data, res, flags);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    /// Copies up to `CQE_BUDGET` completions out of the ring, syncing its head once.
    pub(super) fn collect_cqes(&mut self) {
        let mut cq = self.ring.uring.completion();
        self.cqes.extend(
            cq.by_ref()
                .take(CQE_BUDGET)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    pub(super) fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some(tag) = OpTag::decode(user_data) else {
            tracing::error!(user_data, "completion with unknown user_data");
            return;
        };
        match tag.kind {
            OpKind::Wake => self.wake.state.complete(false),
            OpKind::Cancel => {}
            OpKind::Accept => {
                self.accept.state.complete(cqueue::more(flags));
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    self.st.on_accept(fd);
                } else if res != -libc::ECANCELED {
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-res), "accept failed");
                }
            }
            OpKind::Recv | OpKind::Send | OpKind::Connect if !self.st.is_current(tag) => {
                // Connections are freed only when all their ops are idle, so a completion for a
                // slot that was freed or reused is a bug; drop it rather than act on a stranger.
                tracing::error!(?tag, res, "completion for a connection that is gone");
                debug_assert!(false, "stale completion {tag:?}");
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs.recycle(bid);
                }
            }
            OpKind::Recv => {
                let index = ConnId(tag.index as usize);
                self.st.conns[index]
                    .recv
                    .state
                    .complete(cqueue::more(flags));
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res > 0 {
                        self.st.on_recv(index, self.bufs.get(bid, res as usize));
                    }
                    self.bufs.recycle(bid);
                }
                if res == 0 {
                    self.st.on_eof(index);
                } else if res < 0 && res != -libc::ENOBUFS {
                    self.st.on_io_error(index, -res);
                }
                self.st.mark_dirty(index);
            }
            OpKind::Send => {
                let index = ConnId(tag.index as usize);
                let conn = &mut self.st.conns[index];
                match conn.send.complete(res) {
                    Ok(sent) => self.st.counters.bytes_sent += sent as u64,
                    Err(errno) => {
                        conn.out.clear();
                        self.st.on_io_error(index, errno);
                    }
                }
                self.st.mark_dirty(index);
            }
            OpKind::Connect => {
                let index = ConnId(tag.index as usize);
                match self.st.conns[index].connect.complete(res) {
                    Ok(()) => self.st.on_connected(index),
                    Err(errno) => self.st.on_io_error(index, errno),
                }
                self.st.mark_dirty(index);
            }
        }
    }
}
