//! The provided-buffer ring: receive buffers the kernel picks from as data arrives, so an idle
//! connection holds no buffer of its own.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use crate::shard::ring::Ring;

/// `count` buffers of `len` bytes registered with a ring as buffer group `group`.
///
/// The ring of entries and the buffers are anonymous mappings owned by this type. They must
/// outlive every operation that may select a buffer: the shard drops this only after its last
/// receive has completed (or leaks it, see `shard::run`).
pub(crate) struct BufRing {
    entries: NonNull<BufRingEntry>,
    entries_len: usize,
    bufs: NonNull<u8>,
    bufs_len: usize,
    buf_len: usize,
    count: u16,
    tail: u16,
    pub group: u16,
}

impl BufRing {
    /// Maps and registers the buffers, all initially available to the kernel.
    pub(crate) fn new(ring: &Ring, count: u16, buf_len: u32, group: u16) -> io::Result<BufRing> {
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let bufs_len = usize::from(count) * buf_len as usize;
        let entries = map_anonymous(entries_len)?.cast::<BufRingEntry>();
        let bufs = match map_anonymous(bufs_len) {
            Ok(bufs) => bufs,
            Err(e) => {
                // SAFETY: `entries` was mapped above with this length and is not registered.
                unsafe { libc::munmap(entries.as_ptr().cast(), entries_len) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            entries,
            entries_len,
            bufs,
            bufs_len,
            buf_len: buf_len as usize,
            count,
            tail: 0,
            group,
        };
        // SAFETY: the entries mapping is page-aligned, `count` entries long, and lives until
        // this BufRing is dropped, which happens after the ring stops using it.
        unsafe {
            ring.uring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )
        }?;
        for bid in 0..count {
            this.stage(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The bytes the kernel wrote into buffer `bid`.
    pub(crate) fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.count && len <= self.buf_len,
            "kernel returned a buffer we own"
        );
        // SAFETY: the buffer lies inside the mapping; the kernel finished writing it (its CQE
        // was reaped) and it is not handed back until `recycle`.
        unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(usize::from(bid) * self.buf_len), len)
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.stage(bid);
        self.publish();
    }

    fn stage(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` < count, inside the entries mapping; the kernel reads entries only
        // up to the published tail, and this one is beyond it until `publish`.
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        // SAFETY: as in `get`, the buffer lies inside the mapping.
        entry.set_addr(unsafe { self.bufs.as_ptr().add(usize::from(bid) * self.buf_len) } as u64);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, inside the mapping,
        // and the kernel reads it atomically.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were made by `new` with these lengths; the shard drops this
        // only once no operation can select a buffer any more.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.entries_len);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_len);
        }
    }
}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap success is not null"))
}
