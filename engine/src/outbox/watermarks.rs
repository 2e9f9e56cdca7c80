//! The receiver's delivered watermarks, in a small memory-mapped file, so that deduplication
//! survives a restart of the receiving process: after it, the peer's replay of messages the
//! handler already saw is recognised and dropped.
//!
//! ```text
//! header (64 bytes)
//!      0     8  magic     "RWWMARKS"
//!      8     4  version   1
//!     12     4  slots     number of slots
//!     16     4  crc32c    of bytes 0..16
//!     20    44  reserved
//! slot i (320 bytes) at 64 + 320 * i
//!      0     1  active    which copy below is current: 0 (A) or 1 (B)
//!      1     1  node_len  length of the peer's node id; 0 = free slot
//!      8   255  node id   (UTF-8, zero-padded to 256)
//!    264    24  copy A    session UUID (16), delivered seq (8, little-endian)
//!    288    24  copy B    likewise
//!    312     4  crc32c    of bytes 1..264 (node_len and node id)
//! ```
//!
//! A delivered seq advances with one aligned 8-byte store into the active copy, which a
//! killed process cannot tear. A new session from the peer is written into the inactive copy
//! first and becomes current with a one-byte store of `active`, so a crash leaves either the old
//! pair or the new one, never the new session with the old watermark.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use memmap2::MmapMut;

use crate::proto::{Seq, SessionId};

/// The watermark file of one node.
#[derive(Debug)]
pub(crate) struct Watermarks {
    map: MmapMut,
    slots: usize,
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
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            file.set_len((HEADER_LEN + slots * SLOT_LEN) as u64)?;
            // SAFETY: the node owns its state file; nothing else maps or truncates it.
            let mut map = unsafe { MmapMut::map_mut(&file)? };
            map[0..8].copy_from_slice(MAGIC);
            map[8..12].copy_from_slice(&VERSION.to_le_bytes());
            map[12..16].copy_from_slice(&(slots as u32).to_le_bytes());
            let crc = crc32c::crc32c(&map[0..16]);
            map[16..20].copy_from_slice(&crc.to_le_bytes());
            map.flush()?;
            return Ok(Watermarks { map, slots });
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
        Ok(Watermarks { map, slots })
    }

    /// The last known session of `node_id` and the seq delivered in it.
    pub(crate) fn get(&self, node_id: &str) -> Option<(SessionId, Seq)> {
        let slot = self.find(node_id)?;
        let s = self.slot(slot);
        let copy = COPY_A + SESSION_LEN * usize::from(s[0] & 1);
        let session = uuid::Uuid::from_bytes(s[copy..copy + 16].try_into().unwrap());
        let seq = u64::from_le_bytes(s[copy + 16..copy + 24].try_into().unwrap());
        Some((SessionId(session), Seq(seq)))
    }

    /// Records that `seq` of `session` from `node_id` was delivered.
    ///
    /// # Errors
    ///
    /// `StorageFull` when the peer is new and every slot is taken.
    pub(crate) fn set(&mut self, node_id: &str, session: SessionId, seq: Seq) -> io::Result<()> {
        assert!(!node_id.is_empty() && node_id.len() <= NODE_ID_MAX);
        let slot = match self.find(node_id) {
            Some(slot) => slot,
            None => self.claim(node_id)?,
        };
        let s = self.slot_mut(slot);
        let active = usize::from(s[0] & 1);
        let copy = COPY_A + SESSION_LEN * active;
        if s[copy..copy + 16] == *session.0.as_bytes() {
            s[copy + 16..copy + 24].copy_from_slice(&seq.0.to_le_bytes());
            return Ok(());
        }
        // A new session: fill the other copy, then switch to it.
        let other = COPY_A + SESSION_LEN * (1 - active);
        s[other..other + 16].copy_from_slice(session.0.as_bytes());
        s[other + 16..other + 24].copy_from_slice(&seq.0.to_le_bytes());
        s[0] = (1 - active) as u8;
        Ok(())
    }

    /// Writes the file back to disk (msync); a process crash alone loses nothing without it.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.map.flush()
    }

    fn find(&self, node_id: &str) -> Option<usize> {
        (0..self.slots).find(|&i| {
            let s = self.slot(i);
            let len = usize::from(s[1]);
            len == node_id.len()
                && &s[NODE_ID..NODE_ID + len] == node_id.as_bytes()
                && crc32c::crc32c(&s[1..COPY_A])
                    == u32::from_le_bytes(s[CRC..CRC + 4].try_into().unwrap())
        })
    }

    fn claim(&mut self, node_id: &str) -> io::Result<usize> {
        let Some(free) = (0..self.slots).find(|&i| self.slot(i)[1] == 0) else {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("all {} watermark slots are taken", self.slots),
            ));
        };
        let s = self.slot_mut(free);
        s.fill(0);
        s[NODE_ID..NODE_ID + node_id.len()].copy_from_slice(node_id.as_bytes());
        s[1] = node_id.len() as u8;
        let crc = crc32c::crc32c(&s[1..COPY_A]);
        s[CRC..CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(free)
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.map[HEADER_LEN + i * SLOT_LEN..HEADER_LEN + (i + 1) * SLOT_LEN]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.map[HEADER_LEN + i * SLOT_LEN..HEADER_LEN + (i + 1) * SLOT_LEN]
    }
}

const MAGIC: &[u8; 8] = b"RWWMARKS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const SLOT_LEN: usize = 320;
const NODE_ID: usize = 8;
const NODE_ID_MAX: usize = 255;
const COPY_A: usize = 264;
const SESSION_LEN: usize = 24;
const CRC: usize = 312;

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

    #[test]
    fn watermarks_survive_reopening_and_sessions_switch_whole() {
        let path = temp_path("reopen");
        let (s1, s2) = (SessionId(Uuid::from_u128(1)), SessionId(Uuid::from_u128(2)));
        {
            let mut w = Watermarks::open(&path, 4).unwrap();
            assert_eq!(w.get("node-a"), None);
            w.set("node-a", s1, Seq(10)).unwrap();
            w.set("node-a", s1, Seq(11)).unwrap();
            w.set("node-b", s1, Seq(3)).unwrap();
            w.set("node-b", s2, Seq(1)).unwrap();
            w.sync().unwrap();
        }
        let mut w = Watermarks::open(&path, 4).unwrap();
        assert_eq!(w.get("node-a"), Some((s1, Seq(11))));
        assert_eq!(w.get("node-b"), Some((s2, Seq(1))));
        assert_eq!(w.get("node-c"), None);
        w.set("node-b", s1, Seq(5)).unwrap();
        assert_eq!(w.get("node-b"), Some((s1, Seq(5))));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_table_refuses_new_peers_only() {
        let path = temp_path("full");
        let s = SessionId(Uuid::from_u128(7));
        let mut w = Watermarks::open(&path, 2).unwrap();
        w.set("a", s, Seq(1)).unwrap();
        w.set("b", s, Seq(1)).unwrap();
        let err = w.set("c", s, Seq(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        w.set("a", s, Seq(2)).unwrap();
        assert_eq!(w.get("a"), Some((s, Seq(2))));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_damaged_slot_or_header_is_not_trusted() {
        let path = temp_path("damage");
        let s = SessionId(Uuid::from_u128(7));
        Watermarks::open(&path, 2)
            .unwrap()
            .set("node-a", s, Seq(9))
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + NODE_ID] ^= 0x20; // "node-a" → "Node-a", checksum now wrong
        std::fs::write(&path, &bytes).unwrap();
        let w = Watermarks::open(&path, 2).unwrap();
        assert_eq!(w.get("node-a"), None);
        assert_eq!(w.get("Node-a"), None);

        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Watermarks::open(&path, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).unwrap();
    }
}
