//! A shard's mailbox: control commands and the ready list of peers, and the park flag and
//! eventfd that wake the shard.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::PeerConfig;
use crate::proto::handshake::HelloInfo;
use crate::route::peer::PeerShared;
use crate::route::source::Source;
use crate::security::tls::TlsLink;
use crate::sync::{AtomicBool, EventFd, Ordering, SegQueue, fence};

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
        /// The connection's TLS state, if it is encrypted: it moves with the socket.
        tls: Option<Box<TlsLink>>,
    },
    /// Poll this source every turn, on this shard, until it is done.
    AddSource(Box<dyn Source>),
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
    eventfd: EventFd,
    /// The CPU the thread that last woke the shard ran on, plus one (0: none or unknown).
    /// A scheduling hint, not part of the wake-up handshake, so loom's model leaves it out.
    #[cfg(not(loom))]
    waker_cpu: std::sync::atomic::AtomicU32,
}

impl Mailbox {
    pub(crate) fn new() -> std::io::Result<Mailbox> {
        Ok(Mailbox {
            commands: SegQueue::new(),
            ready: SegQueue::new(),
            parked: CachePadded::new(AtomicBool::new(false)),
            eventfd: EventFd::new()?,
            #[cfg(not(loom))]
            waker_cpu: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Sends a control command and wakes the shard.
    pub(crate) fn send(&self, command: Command) {
        self.commands.push(command);
        self.wake();
    }

    /// Wakes the shard if, and only if, it is parked; at most one waker writes the eventfd.
    pub(crate) fn wake(&self) {
        // A store-load handshake with `park`: the caller pushed to `ready` or `commands` and
        // now loads `parked`; `park` stores `parked` and then loads the queues' lengths. With a
        // SeqCst fence between the store and the load on each side, either `park` sees the
        // push, or this load sees `parked` and writes the eventfd. The flag's accesses need no
        // ordering of their own: the CAS only elects the one waker, and the shard it wakes
        // sees the push because the kernel orders the eventfd's write before the read it
        // completes. A CAS, not a swap: a losing waker must not store `false` (see `notify`).
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed)
            && self
                .parked
                .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            #[cfg(not(loom))]
            self.waker_cpu.store(
                crate::sys::affinity::current_cpu().map_or(0, |cpu| cpu + 1),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.eventfd.signal();
        }
    }

    /// Whether the thread that woke the parked shard ran on the CPU the shard runs on now.
    /// Called by the shard once it is awake; forgets the waker.
    pub(crate) fn woken_from_this_cpu(&self) -> bool {
        #[cfg(not(loom))]
        {
            let waker = self.waker_cpu.swap(0, std::sync::atomic::Ordering::Relaxed);
            waker != 0 && crate::sys::affinity::current_cpu() == Some(waker - 1)
        }
        #[cfg(loom)]
        false
    }

    /// Called by the shard before it sleeps. Returns `false` (and stays awake) if work arrived.
    pub(crate) fn park(&self) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        // The shard's half of the handshake in `wake`.
        fence(Ordering::SeqCst);
        if !self.commands.is_empty() || !self.ready.is_empty() {
            self.parked.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Called by the shard when it wakes.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    pub(crate) fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Reads the eventfd as the shard's ring would: the wake-ups since the last read.
    #[cfg(all(test, loom))]
    pub(crate) fn take_wakes(&self) -> u64 {
        self.eventfd.take()
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
