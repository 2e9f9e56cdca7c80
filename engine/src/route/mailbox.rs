//! A shard's mailbox: control commands and the ready list of peers, and the park flag and
//! eventfd that wake the shard.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;

use crate::PeerConfig;
use crate::proto::handshake::HelloInfo;
use crate::route::peer::PeerShared;
use crate::sync::{AtomicBool, Ordering};

/// A control command for a shard.
#[derive(Debug)]
pub(crate) enum Command {
    /// Dial (and keep redialing) this peer.
    Connect {
        peer: Arc<PeerShared>,
        config: PeerConfig,
    },
    /// An inbound connection whose HELLO names a peer this shard owns.
    Adopt {
        fd: OwnedFd,
        hello: HelloInfo,
        peer: Arc<PeerShared>,
    },
    /// Stop: drain unacknowledged messages until the deadline, then close everything.
    Shutdown {
        drain_until: Option<std::time::Instant>,
    },
}

/// The queues into one shard plus the flag and eventfd that wake it.
pub(crate) struct Mailbox {
    pub commands: SegQueue<Command>,
    pub ready: SegQueue<Arc<PeerShared>>,
    parked: CachePadded<AtomicBool>,
    eventfd: OwnedFd,
}

impl Mailbox {
    pub(crate) fn new() -> std::io::Result<Mailbox> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mailbox {
            commands: SegQueue::new(),
            ready: SegQueue::new(),
            parked: CachePadded::new(AtomicBool::new(false)),
            // SAFETY: `fd` is a fresh descriptor owned by nothing else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends a control command and wakes the shard.
    pub(crate) fn send(&self, command: Command) {
        self.commands.push(command);
        self.wake();
    }

    /// Wakes the shard if, and only if, it is parked; at most one waker writes the eventfd.
    pub(crate) fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local to an eventfd this mailbox owns. A failure
            // (counter overflow) cannot happen with one write per park and needs no handling.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Called by the shard before it sleeps. Returns `false` (and stays awake) if work arrived.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        if !self.commands.is_empty() || !self.ready.is_empty() {
            self.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called by the shard when it wakes.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    pub(crate) fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("commands", &self.commands.len())
            .field("ready", &self.ready.len())
            .finish()
    }
}
