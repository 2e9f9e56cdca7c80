//! One segment: a fixed-size file, preallocated and memory-mapped, holding records back to
//! back after a 64-byte header.
//!
//! ```text
//! offset  size  field
//!      0     8  magic     "RWOUTBOX"
//!      8     4  version   1, little-endian
//!     12     4  reserved  0
//!     16     8  id        the segment's number within its shard, little-endian
//!     24     8  len       the file's length in bytes
//!     32     4  crc32c    of bytes 0..32
//!     36     4  reserved  0
//!     40     8  epoch     u32 epoch, then its complement: one 8-byte store, so never torn
//!     48    16  reserved  0
//!     64     …  records (see record.rs)
//! ```
//!
//! The epoch goes up each time the segment is reused; it seeds the checksum of the records
//! written in it, so the records of earlier uses, left in place rather than zeroed, never pass
//! the scan.
//!
//! The file's blocks are allocated (`fallocate`) before it is mapped, so writing through the
//! map never needs the filesystem to find space: a full disk is an error when a segment is
//! created, never a SIGBUS when a record is appended.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::MmapRaw;

#[cfg(test)]
use crate::outbox::record::Record;
use crate::outbox::record::{self, Invalid};
use crate::proto::{Seq, SessionId};

/// A mapped segment file.
///
/// The map is shared (`Arc`) so that recovered payloads can be handed out as [`Bytes`] that
/// point into it, and synced from outside the outbox's lock. Bytes below `end` are written once
/// and then only read until the segment is recycled, which requires that no such view is alive
/// ([`Segment::is_shared`]); bytes at and above `end` are touched only through `&mut self`.
#[derive(Debug)]
pub(crate) struct Segment {
    id: u64,
    path: PathBuf,
    file: Arc<File>,
    map: Arc<MmapRaw>,
    /// Where the next record goes.
    end: usize,
    /// Seeds the checksum of the records of the current use (see the module docs).
    epoch: u32,
    /// Shorter on disk than its header says: scanned, but never appended to.
    truncated: bool,
}

/// An intact record found by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub session: SessionId,
    pub seq: Seq,
    /// Offsets and sizes fit in 32 bits: segments are far smaller than 4 GiB.
    pub at: u32,
    /// The record's `total_len`: header and payload, without padding.
    pub total: u32,
}

/// What opening an existing segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The intact records, in file order.
    pub records: Vec<Scanned>,
    /// Regions between intact records that hold damaged bytes: (offset, length). The records
    /// lost in them are counted by the caller, from the sequence numbers around them.
    pub damaged: Vec<(usize, usize)>,
    /// An incomplete last record: an append cut short by a crash (its body behind the end
    /// marker), or a last record whose checksum fails with nothing intact after it.
    pub torn_tail: bool,
}

/// Why a segment could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(io::Error),
    /// The header is not a valid segment header (wrong magic, version, checksum or length).
    BadHeader(&'static str),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "{e}"),
            OpenError::BadHeader(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl Segment {
    /// Creates `dir/<id>.seg` with `len` bytes allocated on disk, and maps it.
    ///
    /// # Errors
    ///
    /// Any I/O error; `ENOSPC` when the filesystem cannot hold the whole segment. The file is
    /// removed again when creation fails after it was made.
    pub(crate) fn create(dir: &Path, id: u64, len: usize) -> io::Result<Segment> {
        assert!(len > HEADER_LEN && len.is_multiple_of(record::RECORD_ALIGN));
        assert!(
            u32::try_from(len).is_ok(),
            "segments are smaller than 4 GiB"
        );
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let made = (|| {
            allocate(&file, len)?;
            let map = MmapRaw::map_raw(&file)?;
            let mut header = [0u8; HEADER_LEN + 8];
            write_header(&mut header, id, len as u64);
            header[40..48].copy_from_slice(&epoch_word(0).to_le_bytes());
            header[HEADER_LEN..].copy_from_slice(&record::END.to_le_bytes());
            // SAFETY: the map is fresh and private to this function, and longer than this.
            unsafe {
                std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_mut_ptr(), header.len());
            }
            file.sync_all()?;
            Ok(map)
        })();
        match made {
            Ok(map) => Ok(Segment {
                id,
                path,
                file: Arc::new(file),
                map: Arc::new(map),
                end: HEADER_LEN,
                epoch: 0,
                truncated: false,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Maps an existing segment and scans its records: intact records are listed, damaged
    /// regions reported, and a torn last record dropped so appends can continue after the
    /// last intact one.
    #[cfg(test)]
    pub(crate) fn open(path: &Path) -> Result<(Segment, Scan), OpenError> {
        let mut records = Vec::new();
        let (segment, mut scan) = Segment::open_with(path, |r| records.push(r))?;
        scan.records = records;
        Ok((segment, scan))
    }

    /// Like [`Segment::open`], handing each intact record to `found` in file order instead of
    /// collecting them (the returned `Scan` has no `records`): recovery of a large outbox
    /// keeps only what it needs of each.
    pub(crate) fn open_with(
        path: &Path,
        found: impl FnMut(Scanned),
    ) -> Result<(Segment, Scan), OpenError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len <= HEADER_LEN as u64 || len > usize::MAX as u64 {
            return Err(OpenError::BadHeader("file shorter than a segment header"));
        }
        let map = MmapRaw::map_raw(&file)?;
        // SAFETY: the outbox owns its directory, nothing else maps or truncates a segment while
        // it is open, and this map is not shared yet.
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let (id, header_len, epoch) = read_header(&bytes[..HEADER_LEN])?;
        let truncated = header_len > len;
        if header_len < len {
            return Err(OpenError::BadHeader("segment longer than its header says"));
        }
        let (scan, end) = scan(bytes, epoch, truncated, found);
        Ok((
            Segment {
                id,
                path: path.to_owned(),
                file: Arc::new(file),
                map: Arc::new(map),
                end: if truncated { bytes.len() } else { end },
                epoch,
                truncated,
            },
            scan,
        ))
    }

    /// Appends a record; `None` if it does not fit in the space left.
    pub(crate) fn append(&mut self, session: SessionId, seq: Seq, payload: &[u8]) -> Option<usize> {
        let need = record::space(payload.len());
        if need > self.map.len() - self.end {
            return None;
        }
        let at = self.end;
        if at + need + record::RECORD_ALIGN <= self.map.len() {
            // The next append's place gets the end marker before this record's length word
            // lands (see record.rs).
            // SAFETY: inside the map, above `end`, 8-aligned (records and the map are).
            unsafe {
                self.map
                    .as_mut_ptr()
                    .add(at + need)
                    .cast::<u64>()
                    .write(record::END);
            }
        }
        // SAFETY: `at..at + need` is inside the map and at or above `end`: no view or reader
        // refers to it, and `&mut self` excludes other writers.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(at), need) };
        self.end += record::write(dst, self.epoch, session, seq, payload);
        Some(at)
    }

    /// The record at `offset` (one returned by `append` or listed by the scan).
    #[cfg(test)]
    pub(crate) fn record(&self, offset: usize) -> Option<Record<'_>> {
        record::read(self.written().get(offset..)?, self.epoch)
            .ok()
            .map(|(r, _)| r)
    }

    /// The bytes written so far as one [`Bytes`] pointing into the map, without a copy; slice
    /// it at a scanned record's payload ([`payload_range`]) to hand the payload out. The segment
    /// is not recycled while any such view is alive.
    pub(crate) fn view(&self) -> Bytes {
        Bytes::from_owner(View {
            map: Arc::clone(&self.map),
            start: 0,
            len: self.end,
        })
    }

    /// The payload of the record at `offset` as [`Bytes`] pointing into the map.
    #[cfg(test)]
    pub(crate) fn payload(&self, offset: usize) -> Option<Bytes> {
        let record = self.record(offset)?;
        let start = record.payload.as_ptr() as usize - self.map.as_ptr() as usize;
        Some(self.view().slice(start..start + record.payload.len()))
    }

    /// Whether views handed out by [`Segment::view`] are still alive.
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.map) > 1
    }

    /// Starts the segment over for reuse: a new epoch, and the end marker at the first record.
    /// The old records stay in place; the new epoch makes them unreadable. Two stores, however
    /// large the segment.
    ///
    /// # Panics
    ///
    /// If payload views are alive ([`Segment::is_shared`]): appends would overwrite what they
    /// show. A truncated segment is deleted, not reused.
    pub(crate) fn renew(&mut self) {
        assert!(!self.is_shared(), "renewed while payload views are alive");
        assert!(
            !self.truncated,
            "a truncated segment is deleted, not reused"
        );
        self.epoch = self.epoch.wrapping_add(1);
        // SAFETY: both words are inside the map and 8-aligned; no view is alive and `&mut self`
        // excludes other writers. The marker goes first: a crash between the two leaves an
        // empty segment of the old epoch, whose records were all acknowledged anyway.
        unsafe {
            let base = self.map.as_mut_ptr();
            base.add(HEADER_LEN).cast::<u64>().write(record::END);
            base.add(40).cast::<u64>().write(epoch_word(self.epoch));
        }
        self.end = HEADER_LEN;
    }

    /// The session and seq in the header of what lies at `at`, if anything does: a scan that
    /// stopped at an end marker asks this to tell a torn record behind the marker from stale
    /// or no data.
    pub(crate) fn header_at(&self, at: usize) -> Option<(SessionId, Seq)> {
        if at + record::RECORD_HEADER_LEN > self.map.len() {
            return None;
        }
        // SAFETY: inside the map; bytes at and above `end` are only written through
        // `&mut self`.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(at), record::RECORD_HEADER_LEN)
        };
        let session = uuid::Uuid::from_bytes(bytes[8..24].try_into().expect("16 bytes"));
        let seq = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
        Some((SessionId(session), Seq(seq)))
    }

    /// A handle that writes this segment's pages back to disk (fdatasync) from any thread.
    pub(crate) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Offset where the next record goes.
    pub(crate) fn end(&self) -> usize {
        self.end
    }

    /// Whether the file was found shorter than its header says.
    pub(crate) fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The bytes written so far.
    #[cfg(test)]
    fn written(&self) -> &[u8] {
        // SAFETY: bytes below `end` are complete records, never written again while `&self`
        // can be held (see the type's docs).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.end) }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of record space still free.
    pub(crate) fn free(&self) -> usize {
        self.map.len() - self.end
    }

    /// The file's length.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Where the payload of the record at `at` with `total_len` `total` lies in the segment.
pub(crate) fn payload_range(at: u32, total: u32) -> std::ops::Range<usize> {
    at as usize + record::RECORD_HEADER_LEN..at as usize + total as usize
}

/// A range of a segment map, owned by a [`Bytes`].
struct View {
    map: Arc<MmapRaw>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range is a complete record's payload, inside the map, which this view
        // keeps mapped; the segment is not reset while a view is alive.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start), self.len) }
    }
}

/// The file name of segment `id`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Walks the records of `epoch` after the header. Returns what it found and where the next
/// append would go.
///
/// It stops at the end marker (or, in a never-used area, at a zero length). A bad length or
/// checksum is damage: the scan looks for the next intact record at 8-byte steps and reports
/// the region between; with none after it, the last record was cut short (a torn tail) — or,
/// in a truncated file (`truncated`), cut by the end of the file (damage). Stale records of
/// earlier epochs never pass, so they are neither delivered nor mistaken for a resync point.
fn scan(map: &[u8], epoch: u32, truncated: bool, mut each: impl FnMut(Scanned)) -> (Scan, usize) {
    let mut found = Scan::default();
    let mut pos = HEADER_LEN;
    while pos < map.len() {
        match record::read(&map[pos..], epoch) {
            Ok((r, used)) => {
                each(Scanned {
                    session: r.session,
                    seq: r.seq,
                    at: pos as u32,
                    total: (record::RECORD_HEADER_LEN + r.payload.len()) as u32,
                });
                pos += used;
            }
            Err(Invalid::End) => break,
            Err(Invalid::Empty | Invalid::BadLength | Invalid::BadChecksum) => {
                let never_written = map[pos..].iter().all(|&b| b == 0);
                if never_written {
                    break;
                }
                match resync(map, pos, epoch) {
                    Some(next) => {
                        found.damaged.push((pos, next - pos));
                        pos = next;
                    }
                    None if truncated => {
                        found.damaged.push((pos, map.len() - pos));
                        break;
                    }
                    None => {
                        found.torn_tail = true;
                        break;
                    }
                }
            }
        }
    }
    (found, pos)
}

/// The next offset after `pos` where an intact record of `epoch` starts, if any.
fn resync(map: &[u8], pos: usize, epoch: u32) -> Option<usize> {
    (pos + record::RECORD_ALIGN..map.len())
        .step_by(record::RECORD_ALIGN)
        .find(|&at| record::read(&map[at..], epoch).is_ok())
}

/// The header word holding `epoch`: the epoch, then its complement.
fn epoch_word(epoch: u32) -> u64 {
    u64::from(epoch) | (u64::from(!epoch) << 32)
}

/// Reserves the file's blocks so that stores through the map cannot hit a full disk.
pub(crate) fn allocate(file: &File, len: usize) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor with in-range arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // A filesystem without fallocate: write the zeros ourselves, which allocates them.
        file.set_len(0)?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0;
        while written < len {
            let n = zeros.len().min(len - written);
            std::os::unix::fs::FileExt::write_all_at(file, &zeros[..n], written as u64)?;
            written += n;
        }
        return Ok(());
    }
    Err(err)
}

fn write_header(dst: &mut [u8], id: u64, len: u64) {
    dst[0..8].copy_from_slice(MAGIC);
    dst[8..12].copy_from_slice(&VERSION.to_le_bytes());
    dst[16..24].copy_from_slice(&id.to_le_bytes());
    dst[24..32].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&dst[0..32]);
    dst[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// The segment's id, the file length its header records, and its epoch.
fn read_header(src: &[u8]) -> Result<(u64, u64, u32), OpenError> {
    let u64_at = |at: usize| u64::from_le_bytes(src[at..at + 8].try_into().unwrap());
    if &src[0..8] != MAGIC {
        return Err(OpenError::BadHeader("not an outbox segment (bad magic)"));
    }
    if crc32c::crc32c(&src[0..32]) != u32::from_le_bytes(src[32..36].try_into().unwrap()) {
        return Err(OpenError::BadHeader("segment header checksum mismatch"));
    }
    if u32::from_le_bytes(src[8..12].try_into().unwrap()) != VERSION {
        return Err(OpenError::BadHeader("unsupported segment version"));
    }
    let word = u64_at(40);
    let epoch = word as u32;
    if (word >> 32) as u32 != !epoch {
        return Err(OpenError::BadHeader("segment epoch damaged"));
    }
    Ok((u64_at(16), u64_at(24), epoch))
}

const MAGIC: &[u8; 8] = b"RWOUTBOX";
const VERSION: u32 = 1;
/// Bytes before the first record.
pub(crate) const HEADER_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "ringwire-segment-{name}-{}-{:x}",
                std::process::id(),
                Uuid::new_v4().as_u128() as u32
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const S: SessionId = SessionId(Uuid::from_u128(9));

    fn fill(dir: &Path, count: u64) -> (PathBuf, Vec<usize>) {
        let mut seg = Segment::create(dir, 1, 64 * 1024).unwrap();
        let offsets = (1..=count)
            .map(|i| {
                seg.append(S, Seq(i), &vec![i as u8; i as usize * 3])
                    .unwrap()
            })
            .collect();
        (seg.path().to_owned(), offsets)
    }

    fn seqs(seg: &Segment, scan: &Scan) -> Vec<u64> {
        scan.records
            .iter()
            .map(|r| {
                assert_eq!(seg.record(r.at as usize).unwrap().seq, r.seq);
                r.seq.0
            })
            .collect()
    }

    fn offsets(scan: &Scan) -> Vec<usize> {
        scan.records.iter().map(|r| r.at as usize).collect()
    }

    #[test]
    fn appends_survive_reopening() {
        let dir = TempDir::new("reopen");
        let (path, written) = fill(&dir.0, 50);
        let (mut seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seg.id(), 1);
        assert_eq!(offsets(&scan), written);
        assert_eq!((scan.damaged.len(), scan.torn_tail), (0, false));
        let r = seg.record(written[9]).unwrap();
        assert_eq!((r.seq, r.payload), (Seq(10), &[10u8; 30][..]));
        // Appends continue after the last record.
        let at = seg.append(S, Seq(51), b"more").unwrap();
        seg.file().sync_data().unwrap();
        drop(seg);
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(scan.records.last().unwrap().at as usize, at);
        assert_eq!(seqs(&seg, &scan), (1..=51).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_dropped_and_overwritten() {
        let dir = TempDir::new("torn");
        let (path, offsets) = fill(&dir.0, 20);
        // A crash in the middle of the last append: its length word made it, its body did not.
        let last = offsets[19];
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[last + 40..last + 60].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        let (mut seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), (1..=19).collect::<Vec<_>>());
        assert!(scan.damaged.is_empty());
        assert!(scan.torn_tail);
        // The next append reuses the space, and a second recovery finds a clean file.
        assert_eq!(seg.append(S, Seq(20), b"again"), Some(last));
        drop(seg);
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), (1..=20).collect::<Vec<_>>());
        assert!(!scan.torn_tail);
    }

    #[test]
    fn damage_in_the_middle_is_reported_and_skipped() {
        let dir = TempDir::new("flip");
        let (path, offsets) = fill(&dir.0, 30);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[9] + 40] ^= 0x10; // a payload bit of record 10
        bytes[offsets[20] + 1] ^= 0x01; // the length word of record 21
        std::fs::write(&path, &bytes).unwrap();

        let (seg, scan) = Segment::open(&path).unwrap();
        let expected: Vec<u64> = (1..=30).filter(|&s| s != 10 && s != 21).collect();
        assert_eq!(seqs(&seg, &scan), expected);
        assert_eq!(
            scan.damaged,
            [
                (offsets[9], offsets[10] - offsets[9]),
                (offsets[20], offsets[21] - offsets[20])
            ]
        );
        assert!(!scan.torn_tail);
    }

    #[test]
    fn bad_headers_are_refused() {
        let dir = TempDir::new("header");
        let (path, _) = fill(&dir.0, 3);
        let bytes = std::fs::read(&path).unwrap();

        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        assert!(
            matches!(Segment::open(&path), Err(OpenError::BadHeader(m)) if m.contains("magic"))
        );

        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &longer).unwrap();
        assert!(
            matches!(Segment::open(&path), Err(OpenError::BadHeader(m)) if m.contains("longer"))
        );

        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(Segment::open(&path), Err(OpenError::BadHeader(_))));

        let missing = Segment::open(&dir.0.join("missing.seg")).unwrap_err();
        assert!(matches!(&missing, OpenError::Io(e) if e.kind() == io::ErrorKind::NotFound));
        assert!(missing.to_string().contains("No such file"));
    }

    #[test]
    fn a_truncated_segment_keeps_what_remains_and_is_never_appended_to() {
        let dir = TempDir::new("truncated");
        let (path, offsets) = fill(&dir.0, 40);
        let bytes = std::fs::read(&path).unwrap();
        // Cut the file in the middle of record 30.
        std::fs::write(&path, &bytes[..offsets[29] + 20]).unwrap();
        let (mut seg, scan) = Segment::open(&path).unwrap();
        assert!(seg.is_truncated());
        assert_eq!(seqs(&seg, &scan), (1..=29).collect::<Vec<_>>());
        assert_eq!(scan.damaged, [(offsets[29], 20)]);
        assert_eq!(seg.append(S, Seq(41), b"x"), None);
        assert_eq!(seg.payload(offsets[3]).unwrap(), vec![4u8; 12]);
    }

    #[test]
    fn payload_views_keep_the_segment_from_being_reset() {
        let dir = TempDir::new("views");
        let (path, offsets) = fill(&dir.0, 3);
        let (mut seg, _) = Segment::open(&path).unwrap();
        let view = seg.payload(offsets[1]).unwrap();
        assert!(seg.is_shared());
        assert_eq!(view, vec![2u8; 6]);
        drop(view);
        assert!(!seg.is_shared());
        seg.renew();
        assert_eq!(seg.end(), HEADER_LEN);
        drop(seg);
        let (_, scan) = Segment::open(&path).unwrap();
        assert!(scan.records.is_empty());
    }

    #[test]
    fn a_tail_with_a_zero_length_word_is_torn() {
        let dir = TempDir::new("zerolen");
        let (path, offsets) = fill(&dir.0, 5);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[4]..offsets[4] + 4].fill(0); // killed before the length word landed
        std::fs::write(&path, &bytes).unwrap();
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), (1..=4).collect::<Vec<_>>());
        assert!(scan.torn_tail && scan.damaged.is_empty());
        assert_eq!(seg.end(), offsets[4]);
    }

    #[test]
    fn a_renewed_segment_hides_its_old_records_without_zeroing_them() {
        let dir = TempDir::new("renew");
        let (path, _) = fill(&dir.0, 30);
        let (mut seg, _) = Segment::open(&path).unwrap();
        seg.renew();
        for i in 1..=3 {
            seg.append(S, Seq(100 + i), &[7; 40]).unwrap();
        }
        drop(seg);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes[1000..2000].iter().any(|&b| b != 0),
            "old records stay in place"
        );
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), [101, 102, 103]);
        assert_eq!((scan.damaged.len(), scan.torn_tail), (0, false));
        // Damage among the new records still resyncs, past them and not into the old ones.
        let mut bad = bytes.clone();
        let second = scan.records[1].at as usize;
        bad[second + 40] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), [101, 103]);
        assert_eq!(scan.damaged.len(), 1);
        // Damage to the last new record: the old records behind it do not pass for a resync
        // point (they would, intact as they are, without the epoch): a torn tail, no more.
        let mut bad = bytes.clone();
        let third = scan.records[1].at as usize;
        bad[third + 40] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), [101, 102]);
        assert_eq!((scan.damaged.len(), scan.torn_tail), (0, true));
    }

    #[test]
    fn a_cut_short_append_leaves_the_end_marker_and_its_body_behind_it() {
        let dir = TempDir::new("cut");
        let (path, offsets) = fill(&dir.0, 3);
        let mut seg = Segment::open(&path).unwrap().0;
        let next = seg.append(S, Seq(4), b"whole").unwrap();
        drop(seg);
        // A crash after the body of message 4 but before its length word: put the marker back.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[next..next + 8].copy_from_slice(&record::END.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), [1, 2, 3]);
        assert_eq!(seg.end(), next);
        assert_eq!(seg.header_at(next), Some((S, Seq(4))));
        assert_eq!(offsets.len(), 3);
    }

    #[test]
    fn a_full_segment_refuses_the_record_that_does_not_fit() {
        let dir = TempDir::new("full");
        let mut seg = Segment::create(&dir.0, 2, HEADER_LEN + 256).unwrap();
        assert!(seg.append(S, Seq(1), &[1; 100]).is_some());
        assert_eq!(seg.free(), 256 - 136);
        assert_eq!(seg.append(S, Seq(2), &[2; 100]), None);
        assert!(seg.append(S, Seq(2), &[2; 88]).is_some());
        assert_eq!(seg.free(), 0);
    }

    #[test]
    fn creating_twice_fails() {
        let dir = TempDir::new("twice");
        let _seg = Segment::create(&dir.0, 3, 8192).unwrap();
        let err = Segment::create(&dir.0, 3, 8192).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }
}
