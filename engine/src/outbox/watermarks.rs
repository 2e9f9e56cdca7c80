//! A small memory-mapped table of per-peer session state, keyed by node id. The receiver keeps
//! its delivered watermarks in one, so that deduplication survives a restart of the receiving
//! process; the sender keeps its outbound sessions in another (session id, acknowledged seq,
//! next seq), so that a restarted sender continues them.
//!
//! ```text
//! header (64 bytes)
//!      0     8  magic     "RWWMARKS"
//!      8     4  version   1
//!     12     4  slots     number of slots
//!     16     4  crc32c    of bytes 0..16
//!     20    44  reserved
//! slot i (336 bytes) at 64 + 336 * i
//!      0     1  active    which copy below is current: 0 (A) or 1 (B)
//!      1     1  node_len  length of the peer's node id; 0 = free slot
//!      8   255  node id   (UTF-8, zero-padded to 256)
//!    264    32  copy A    session UUID (16), seq a (8), seq b (8), little-endian
//!    296    32  copy B    likewise
//!    328     4  crc32c    of bytes 1..264 (node_len and node id)
//! ```
//!
//! A seq advances with one aligned 8-byte store into the active copy, which a killed process
//! cannot tear. A new session is written into the inactive copy first and becomes current with
//! a one-byte store of `active`, so a crash leaves either the old triple or the new one, never
//! the new session with the old seqs.
//!
//! The node ids are also indexed in memory, read once at open and kept in step by every claim:
//! finding a peer's slot takes one hash lookup, not a checksum of every slot (4096 of them for
//! each new peer, which a flood of HELLOs would have turned into seconds of shard time).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::MmapMut;

use crate::proto::{Seq, SessionId};

/// One table file.
#[derive(Debug)]
pub(crate) struct Watermarks {
    map: MmapMut,
    file: Arc<File>,
    slots: usize,
    index: Index,
}

/// What the table holds, as read at open and kept in step since: which slot holds which node
/// id, which slots are free, and how many failed their checksum.
#[derive(Debug, Default)]
struct Index {
    /// The node id of each claimed, intact slot.
    ids: Vec<Option<Box<str>>>,
    /// The slot of each node id (the lowest, should a crash have left one id in two slots).
    slot_of: HashMap<Box<str>, usize>,
    /// Free slots, the lowest last.
    free: Vec<usize>,
    /// Claimed slots that failed their checksum at open.
    damaged: usize,
}

/// A slot's current session and its two seqs (receiver: delivered, unused; sender: acknowledged,
/// next to assign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub session: SessionId,
    pub a: Seq,
    pub b: Seq,
}

impl Watermarks {
    /// Opens `path`, creating it with room for `slots` peers if it does not exist.
    ///
    /// # Errors
    ///
    /// I/O errors, and `InvalidData` for a file that is not a watermark file (wrong magic,
    /// version, header checksum or size).
    pub(crate) fn open(path: &Path, slots: usize) -> io::Result<Watermarks> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mut len = file.metadata()?.len() as usize;
        if len == 0 {
            // Allocated, not just sized: a store into a hole of a mapped file on a full disk
            // would be a SIGBUS.
            len = HEADER_LEN + slots * SLOT_LEN;
            if let Err(e) = crate::outbox::segment::allocate(&file, len) {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
        if len >= HEADER_LEN && is_uninitialized(&file)? {
            // New, or a crash came between allocating and writing the header: start empty.
            // SAFETY: the node owns its state file; nothing else maps or truncates it.
            let mut map = unsafe { MmapMut::map_mut(&file)? };
            map.fill(0);
            map[0..8].copy_from_slice(MAGIC);
            map[8..12].copy_from_slice(&VERSION.to_le_bytes());
            let slots = (len - HEADER_LEN) / SLOT_LEN;
            map[12..16].copy_from_slice(&(slots as u32).to_le_bytes());
            let crc = crc32c::crc32c(&map[0..16]);
            map[16..20].copy_from_slice(&crc.to_le_bytes());
            map.flush()?;
            return Ok(Watermarks::indexed(map, Arc::new(file), slots));
        }
        // SAFETY: as above.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        };
        if len < HEADER_LEN || &map[0..8] != MAGIC {
            return Err(invalid("not a watermark file"));
        }
        if crc32c::crc32c(&map[0..16]) != u32::from_le_bytes(map[16..20].try_into().unwrap()) {
            return Err(invalid("header checksum mismatch"));
        }
        if u32::from_le_bytes(map[8..12].try_into().unwrap()) != VERSION {
            return Err(invalid("unsupported version"));
        }
        let slots = u32::from_le_bytes(map[12..16].try_into().unwrap()) as usize;
        if len != HEADER_LEN + slots * SLOT_LEN {
            return Err(invalid("size does not match its slot count"));
        }
        Ok(Watermarks::indexed(map, Arc::new(file), slots))
    }

    /// The table over `map`, its slots read into the in-memory index.
    fn indexed(map: MmapMut, file: Arc<File>, slots: usize) -> Watermarks {
        let mut table = Watermarks {
            map,
            file,
            slots,
            index: Index::default(),
        };
        let mut index = Index {
            ids: Vec::with_capacity(slots),
            ..Index::default()
        };
        for slot in 0..slots {
            let id = table.read_node_id(slot);
            match &id {
                Some(id) => {
                    index.slot_of.entry((*id).into()).or_insert(slot);
                }
                None if table.slot(slot)[1] == 0 => index.free.push(slot),
                None => index.damaged += 1,
            }
            index.ids.push(id.map(Into::into));
        }
        index.free.reverse();
        table.index = index;
        table
    }

    /// The slot that holds `node_id`, if any.
    pub(crate) fn find(&self, node_id: &str) -> Option<usize> {
        self.index.slot_of.get(node_id).copied()
    }

    /// The slot that holds `node_id`, claiming a free one (with a nil session) if there is none.
    ///
    /// # Errors
    ///
    /// `StorageFull` when the peer is new and every slot is taken.
    pub(crate) fn find_or_claim(&mut self, node_id: &str) -> io::Result<usize> {
        match self.find(node_id) {
            Some(slot) => Ok(slot),
            None => self.claim(node_id),
        }
    }

    /// The node id in `slot`, unless the slot is free or failed its checksum at open.
    #[cfg(test)]
    pub(crate) fn node_id(&self, slot: usize) -> Option<&str> {
        self.index.ids[slot].as_deref()
    }

    /// The node id stored in `slot`, unless the slot is free or fails its checksum.
    fn read_node_id(&self, slot: usize) -> Option<&str> {
        let s = self.slot(slot);
        let len = usize::from(s[1]);
        let intact = len > 0
            && crc32c::crc32c(&s[1..COPY_A])
                == u32::from_le_bytes(s[CRC..CRC + 4].try_into().unwrap());
        if !intact {
            return None;
        }
        std::str::from_utf8(&s[NODE_ID..NODE_ID + len]).ok()
    }

    /// The current (session, a, b) of `slot`.
    pub(crate) fn get(&self, slot: usize) -> Entry {
        let s = self.slot(slot);
        let copy = COPY_A + COPY_LEN * usize::from(s[0] & 1);
        let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
        Entry {
            session: SessionId(uuid::Uuid::from_bytes(
                s[copy..copy + 16].try_into().unwrap(),
            )),
            a: Seq(u64_at(copy + 16)),
            b: Seq(u64_at(copy + 24)),
        }
    }

    /// Sets seq `a` of the current session of `slot`: one aligned store.
    pub(crate) fn set_a(&mut self, slot: usize, a: Seq) {
        self.store(slot, 16, a);
    }

    /// Sets seq `b` of the current session of `slot`: one aligned store.
    pub(crate) fn set_b(&mut self, slot: usize, b: Seq) {
        self.store(slot, 24, b);
    }

    /// Makes `entry` current in `slot`: in place if the session is the same, otherwise through
    /// the inactive copy, so a crash leaves the old entry or the new one whole.
    pub(crate) fn set(&mut self, slot: usize, entry: Entry) {
        let s = self.slot_mut(slot);
        let active = usize::from(s[0] & 1);
        let copy = COPY_A + COPY_LEN * active;
        if s[copy..copy + 16] == *entry.session.0.as_bytes() {
            s[copy + 16..copy + 24].copy_from_slice(&entry.a.0.to_le_bytes());
            s[copy + 24..copy + 32].copy_from_slice(&entry.b.0.to_le_bytes());
            return;
        }
        let other = COPY_A + COPY_LEN * (1 - active);
        s[other..other + 16].copy_from_slice(entry.session.0.as_bytes());
        s[other + 16..other + 24].copy_from_slice(&entry.a.0.to_le_bytes());
        s[other + 24..other + 32].copy_from_slice(&entry.b.0.to_le_bytes());
        s[0] = (1 - active) as u8;
    }

    /// Every claimed, intact slot.
    pub(crate) fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots).filter(|&i| self.index.ids[i].is_some())
    }

    /// A handle for syncing the file from outside whatever lock guards this table.
    pub(crate) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    fn store(&mut self, slot: usize, field: usize, seq: Seq) {
        let s = self.slot_mut(slot);
        let at = COPY_A + COPY_LEN * usize::from(s[0] & 1) + field;
        s[at..at + 8].copy_from_slice(&seq.0.to_le_bytes());
    }

    /// Writes the file back to disk (msync); a process crash alone loses nothing without it.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// Claims a free slot for `node_id`, with a nil session.
    ///
    /// # Errors
    ///
    /// `StorageFull` when every slot is taken.
    pub(crate) fn claim(&mut self, node_id: &str) -> io::Result<usize> {
        let Some(free) = self.index.free.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("all {} watermark slots are taken", self.slots),
            ));
        };
        self.write_node_id(free, node_id);
        Ok(free)
    }

    /// Gives the claimed `slot` to `node_id`, with a nil session. A crash part way leaves the
    /// slot free, never a mix of the two peers.
    pub(crate) fn reassign(&mut self, slot: usize, node_id: &str) {
        self.write_node_id(slot, node_id);
    }

    /// Slots that were claimed but failed their checksum at open (their peer's state is
    /// lost). They stay out of use.
    pub(crate) fn damaged(&self) -> usize {
        self.index.damaged
    }

    /// Writes `node_id` into `slot` with a nil session: the length byte last, so the slot
    /// stays free (length 0) until the id and its checksum are whole.
    fn write_node_id(&mut self, slot: usize, node_id: &str) {
        assert!(!node_id.is_empty() && node_id.len() <= NODE_ID_MAX);
        let s = self.slot_mut(slot);
        // Free the slot (length 0) before anything of the old entry is overwritten.
        s[1] = 0;
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
        s.fill(0);
        s[NODE_ID..NODE_ID + node_id.len()].copy_from_slice(node_id.as_bytes());
        let mut checked = [0u8; COPY_A - 1];
        checked.copy_from_slice(&s[1..COPY_A]);
        checked[0] = node_id.len() as u8;
        let crc = crc32c::crc32c(&checked);
        s[CRC..CRC + 4].copy_from_slice(&crc.to_le_bytes());
        // Nothing above may be moved after the store that makes the slot claimed.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
        s[1] = node_id.len() as u8;
        let index = &mut self.index;
        if let Some(old) = index.ids[slot].take()
            && index.slot_of.get(&old) == Some(&slot)
        {
            index.slot_of.remove(&old);
        }
        let id: Box<str> = node_id.into();
        index.slot_of.entry(id.clone()).or_insert(slot);
        index.ids[slot] = Some(id);
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.map[HEADER_LEN + i * SLOT_LEN..HEADER_LEN + (i + 1) * SLOT_LEN]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.map[HEADER_LEN + i * SLOT_LEN..HEADER_LEN + (i + 1) * SLOT_LEN]
    }
}

/// Whether the file's header is all zeros (never written).
fn is_uninitialized(file: &File) -> io::Result<bool> {
    let mut header = [0u8; HEADER_LEN];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut header, 0)?;
    Ok(header.iter().all(|&b| b == 0))
}

const MAGIC: &[u8; 8] = b"RWWMARKS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const SLOT_LEN: usize = 336;
const NODE_ID: usize = 8;
const NODE_ID_MAX: usize = 255;
const COPY_A: usize = 264;
const COPY_LEN: usize = 32;
const CRC: usize = 328;

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "ringwire-wm-{name}-{}-{:x}",
            std::process::id(),
            Uuid::new_v4().as_u128() as u32
        ))
    }

    fn entry(session: u128, a: u64, b: u64) -> Entry {
        Entry {
            session: SessionId(Uuid::from_u128(session)),
            a: Seq(a),
            b: Seq(b),
        }
    }

    #[test]
    fn entries_survive_reopening_and_sessions_switch_whole() {
        let path = temp_path("reopen");
        {
            let mut w = Watermarks::open(&path, 4).unwrap();
            assert_eq!(w.find("node-a"), None);
            let a = w.find_or_claim("node-a").unwrap();
            assert_eq!(w.get(a), entry(0, 0, 0));
            w.set(a, entry(1, 10, 0));
            w.set_a(a, Seq(11));
            let b = w.find_or_claim("node-b").unwrap();
            w.set(b, entry(1, 3, 4));
            w.set(b, entry(2, 1, 2));
            w.set_b(b, Seq(7));
            w.sync().unwrap();
        }
        let mut w = Watermarks::open(&path, 4).unwrap();
        let (a, b) = (w.find("node-a").unwrap(), w.find("node-b").unwrap());
        assert_eq!(w.get(a), entry(1, 11, 0));
        assert_eq!(w.get(b), entry(2, 1, 7));
        assert_eq!(w.find("node-c"), None);
        assert_eq!(w.slots().count(), 2);
        assert_eq!(w.node_id(b), Some("node-b"));
        w.set(b, entry(1, 5, 5));
        assert_eq!(w.get(b), entry(1, 5, 5));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_reassigned_slot_is_found_under_its_new_id_only_also_after_reopening() {
        let path = temp_path("reassign");
        {
            let mut w = Watermarks::open(&path, 3).unwrap();
            let a = w.find_or_claim("node-a").unwrap();
            let b = w.find_or_claim("node-b").unwrap();
            w.reassign(a, "node-c");
            assert_eq!((w.find("node-a"), w.find("node-c")), (None, Some(a)));
            assert_eq!(w.node_id(a), Some("node-c"));
            assert_eq!(w.find_or_claim("node-a").unwrap(), 2, "the free slot");
            assert_eq!(w.find("node-b"), Some(b));
        }
        let w = Watermarks::open(&path, 3).unwrap();
        assert_eq!(w.find("node-c"), Some(0));
        assert_eq!(w.find("node-b"), Some(1));
        assert_eq!(w.find("node-a"), Some(2));
        assert_eq!(w.slots().collect::<Vec<_>>(), [0, 1, 2]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_table_refuses_new_peers_only() {
        let path = temp_path("full");
        let mut w = Watermarks::open(&path, 2).unwrap();
        w.find_or_claim("a").unwrap();
        w.find_or_claim("b").unwrap();
        let err = w.find_or_claim("c").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(w.find_or_claim("a").unwrap(), 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_damaged_slot_or_header_is_not_trusted() {
        let path = temp_path("damage");
        {
            let mut w = Watermarks::open(&path, 2).unwrap();
            let slot = w.find_or_claim("node-a").unwrap();
            w.set(slot, entry(7, 9, 0));
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + NODE_ID] ^= 0x20; // "node-a" → "Node-a", checksum now wrong
        std::fs::write(&path, &bytes).unwrap();
        let w = Watermarks::open(&path, 2).unwrap();
        assert_eq!(w.find("node-a"), None);
        assert_eq!(w.find("Node-a"), None);
        assert_eq!(w.slots().count(), 0);

        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Watermarks::open(&path, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).unwrap();
    }
}
