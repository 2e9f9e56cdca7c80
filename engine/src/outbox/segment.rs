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
//!     36    28  reserved  0
//!     64     …  records (see record.rs)
//! ```
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

use memmap2::MmapMut;

use crate::outbox::record::{self, Invalid, Record};
use crate::proto::{Seq, SessionId};

/// A mapped segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    id: u64,
    path: PathBuf,
    map: MmapMut,
    /// Where the next record goes.
    end: usize,
}

/// What opening an existing segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Offsets of the intact records, in file order.
    pub records: Vec<usize>,
    /// Regions between intact records that hold damaged bytes: (offset, length). The records
    /// lost in them are counted by the caller, from the sequence numbers around them.
    pub damaged: Vec<(usize, usize)>,
    /// Bytes of an incomplete last record (a write cut short by a crash), now erased.
    pub torn_tail: usize,
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
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let made = (|| {
            allocate(&file, len)?;
            // SAFETY: the file is ours (created exclusively above) and its length is fixed
            // from here on; nothing else maps or truncates it while the map lives.
            let mut map = unsafe { MmapMut::map_mut(&file)? };
            write_header(&mut map[..HEADER_LEN], id, len as u64);
            file.sync_all()?;
            Ok(map)
        })();
        match made {
            Ok(map) => Ok(Segment {
                id,
                path,
                map,
                end: HEADER_LEN,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Maps an existing segment and scans its records: intact records are listed, damaged
    /// regions reported, and a torn last record erased so appends can continue after the
    /// last intact one.
    pub(crate) fn open(path: &Path) -> Result<(Segment, Scan), OpenError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len <= HEADER_LEN as u64 || len > usize::MAX as u64 {
            return Err(OpenError::BadHeader("file shorter than a segment header"));
        }
        // SAFETY: as in `create`: the outbox owns its directory, and nothing else maps or
        // truncates a segment while it is open.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        let id = read_header(&map[..HEADER_LEN], len)?;
        let (scan, end) = scan(&mut map);
        Ok((
            Segment {
                id,
                path: path.to_owned(),
                map,
                end,
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
        self.end += record::write(&mut self.map[at..at + need], session, seq, payload);
        Some(at)
    }

    /// The record at `offset` (one returned by `append` or listed by the scan).
    pub(crate) fn record(&self, offset: usize) -> Option<Record<'_>> {
        record::read(self.map.get(offset..)?).ok().map(|(r, _)| r)
    }

    /// Writes the mapped pages back to the file and waits for the device (msync).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.map.flush()
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
}

/// The file name of segment `id`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Walks the records after the header. Returns what it found and where appends continue.
fn scan(map: &mut [u8]) -> (Scan, usize) {
    let mut found = Scan::default();
    let mut pos = HEADER_LEN;
    while pos < map.len() {
        match record::read(&map[pos..]) {
            Ok((_, used)) => {
                found.records.push(pos);
                pos += used;
            }
            Err(Invalid::Empty) => break,
            Err(Invalid::BadLength | Invalid::BadChecksum) => match resync(map, pos) {
                Some(next) => {
                    found.damaged.push((pos, next - pos));
                    pos = next;
                }
                None => {
                    // Nothing intact follows: the last append was cut short. Erase it so
                    // the next append starts on zeros.
                    let garbage = last_nonzero(&map[pos..]).map_or(0, |i| i + 1);
                    map[pos..pos + garbage].fill(0);
                    found.torn_tail = garbage;
                    break;
                }
            },
        }
    }
    (found, pos)
}

/// The next offset after `pos` where an intact record starts, if any.
fn resync(map: &[u8], pos: usize) -> Option<usize> {
    (pos + record::RECORD_ALIGN..map.len())
        .step_by(record::RECORD_ALIGN)
        .find(|&at| record::read(&map[at..]).is_ok())
}

fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|&b| b != 0)
}

/// Reserves the file's blocks so that stores through the map cannot hit a full disk.
fn allocate(file: &File, len: usize) -> io::Result<()> {
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

fn read_header(src: &[u8], file_len: u64) -> Result<u64, OpenError> {
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
    if u64_at(24) != file_len {
        return Err(OpenError::BadHeader("segment truncated or extended"));
    }
    Ok(u64_at(16))
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
            .map(|&at| seg.record(at).unwrap().seq.0)
            .collect()
    }

    #[test]
    fn appends_survive_reopening() {
        let dir = TempDir::new("reopen");
        let (path, offsets) = fill(&dir.0, 50);
        let (mut seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seg.id(), 1);
        assert_eq!(scan.records, offsets);
        assert_eq!((scan.damaged.len(), scan.torn_tail), (0, 0));
        let r = seg.record(offsets[9]).unwrap();
        assert_eq!((r.seq, r.payload), (Seq(10), &[10u8; 30][..]));
        // Appends continue after the last record.
        let at = seg.append(S, Seq(51), b"more").unwrap();
        seg.sync().unwrap();
        drop(seg);
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(*scan.records.last().unwrap(), at);
        assert_eq!(seqs(&seg, &scan), (1..=51).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_dropped_and_erased() {
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
        assert!(scan.torn_tail > 0);
        // The next append reuses the space, and a second recovery finds a clean file.
        assert_eq!(seg.append(S, Seq(20), b"again"), Some(last));
        drop(seg);
        let (seg, scan) = Segment::open(&path).unwrap();
        assert_eq!(seqs(&seg, &scan), (1..=20).collect::<Vec<_>>());
        assert_eq!(scan.torn_tail, 0);
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
        assert_eq!(scan.torn_tail, 0);
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

        std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
        assert!(
            matches!(Segment::open(&path), Err(OpenError::BadHeader(m)) if m.contains("truncated"))
        );

        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(Segment::open(&path), Err(OpenError::BadHeader(_))));

        let missing = Segment::open(&dir.0.join("missing.seg")).unwrap_err();
        assert!(matches!(&missing, OpenError::Io(e) if e.kind() == io::ErrorKind::NotFound));
        assert!(missing.to_string().contains("No such file"));
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
