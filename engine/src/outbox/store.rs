//! One shard's outbox: its segment files, the table of its outbound sessions, appends from any
//! publishing thread, releases from the shard, syncing, and recovery at start.
//!
//! Appends take the outbox's lock: a record must be in the map before `publish` returns, so a
//! process crash right after cannot lose it. The lock also makes every peer queue of the shard
//! single-producer while it is held, which is what lets `publish` check the queue, write the
//! record with the queue's next sequence number and push it as one step.
//!
//! Directory layout (`outbox_dir/shard-<k>/`): `<id>.seg` segment files and `sessions`, a
//! [`Watermarks`] table whose seq `a` is the peer's acknowledged seq and `b` the next seq to
//! assign.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::outbox::lock::{SpinGuard, SpinLock};
use crate::outbox::record;
use crate::outbox::recovered::{self, RecoveredMessages, Run};
use crate::outbox::segment::{HEADER_LEN, OpenError, Scan, Segment};
use crate::outbox::watermarks::{Entry, Watermarks};
use crate::proto::{Seq, SessionId};

/// Peers one shard's session table holds.
pub(crate) const PEERS_MAX: usize = 4096;

/// Why an append failed.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The shard's outbox limit is reached, or the disk has no room for another segment.
    Full { disk: bool },
    /// The peer's share of the outbox (`outbox_peer_bytes_max`) is used up.
    PeerFull,
    /// A sync failed earlier: nothing written since the last good sync may be confirmed.
    Failed,
    /// Creating a segment failed for another reason.
    Io(io::Error),
}

/// A peer's outbound session as the outbox knows it.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    /// The peer's hold on its slot in the session table (none if the table was full).
    pub claim: Arc<SlotClaim>,
    pub session: SessionId,
    pub acked: Seq,
    /// The sequence number the next publish gets.
    pub next: Seq,
}

/// A peer's hold on a slot of the session table.
///
/// The table has [`PEERS_MAX`] slots and peers come and go, so a slot is not a peer's for
/// life: when the table is full and another peer needs one, the outbox takes back the slot of
/// a peer with nothing unacknowledged (its seqs say so and no record of it is owed) and clears
/// that peer's claim. Nothing is lost: the peer's next publish claims a slot again for the
/// same session, its acknowledged seq the last one it published. A peer whose slot was taken
/// and that publishes nothing more starts a new session after a restart, which is safe for the
/// same reason: its peer holds everything it sent.
///
/// Changed only under the outbox lock; the shard reads it without, when it reports
/// acknowledgements. That read cannot race a reclaim: a peer with an acknowledgement not yet
/// released still has something unacknowledged in the outbox's eyes.
#[derive(Debug)]
pub(crate) struct SlotClaim(AtomicU32);

const NO_SLOT: u32 = u32::MAX;

impl SlotClaim {
    /// A claim that holds no slot yet.
    fn unclaimed() -> SlotClaim {
        SlotClaim(AtomicU32::new(NO_SLOT))
    }

    /// The slot, if the peer holds one.
    pub(crate) fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            NO_SLOT => None,
            slot => Some(slot as usize),
        }
    }

    fn set(&self, slot: Option<usize>) {
        self.0
            .store(slot.map_or(NO_SLOT, |s| s as u32), Ordering::Relaxed);
    }
}

/// What recovery found and did, for the API, the metrics and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: u64,
    /// Intact records found.
    pub records: u64,
    /// Of those, records still unacknowledged: replayed when their peer connects.
    pub unacked: u64,
    /// Bytes of segment files scanned.
    pub bytes_scanned: u64,
    /// Incomplete last records (writes cut short by a crash), dropped. Their `publish` never
    /// returned, so no accepted message is among them.
    pub torn_tails: u64,
    /// Damaged regions found between intact records or in cut-short files.
    pub damaged_regions: u64,
    /// Accepted, unacknowledged messages whose records were damaged or missing: never
    /// delivered, and reported to the peer as lost.
    pub lost: u64,
    /// Segment files that could not be used at all (bad header), renamed to `*.bad`.
    pub bad_segments: u64,
    /// Time the scan took.
    pub duration: Duration,
}

impl RecoveryReport {
    pub(crate) fn add(&mut self, other: &RecoveryReport) {
        self.segments += other.segments;
        self.records += other.records;
        self.unacked += other.unacked;
        self.bytes_scanned += other.bytes_scanned;
        self.torn_tails += other.torn_tails;
        self.damaged_regions += other.damaged_regions;
        self.lost += other.lost;
        self.bad_segments += other.bad_segments;
        self.duration = self.duration.max(other.duration);
    }
}

/// What a shard gets back from opening its outbox.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Unacknowledged messages by the peer's session-table slot, in sequence order from
    /// `acked + 1`.
    pub messages: HashMap<usize, RecoveredMessages>,
    pub report: RecoveryReport,
}

/// One shard's outbox.
#[derive(Debug)]
pub(crate) struct ShardOutbox {
    dir: PathBuf,
    segment_len: usize,
    segments_max: usize,
    peer_bytes_max: u64,
    failed: AtomicBool,
    inner: SpinLock<Inner>,
}

/// Trimming works on sequence numbers, not on records: each segment remembers, per peer, the
/// highest seq it holds (its *marks*), and it is free once every peer in it has acknowledged
/// up to its mark. So nothing per message travels with the queued and unacknowledged messages,
/// and an ACK costs the outbox one store per peer per turn.
#[derive(Debug)]
struct Inner {
    /// By index; an index stays the segment's while it lives.
    segments: Vec<Option<Held>>,
    active: Option<usize>,
    /// Empty, reset segments ready to become active.
    spare: Vec<usize>,
    /// No longer active, waiting for their peers to acknowledge their marks.
    sealed: Vec<usize>,
    /// Fully acknowledged, waiting to be reset (or for their payload views to go).
    drained: Vec<usize>,
    id_next: u64,
    sessions: Watermarks,
    /// By session-table slot: the segment the peer last appended to (`NO_SEGMENT` if it has
    /// not since that segment was sealed) and the seq appended there last; sealed segments
    /// carry the same in their `marks`.
    current: Vec<(u32, u64)>,
    /// By slot: the acknowledged seq.
    acked: Vec<u64>,
    /// By slot: record space of the peer's unacknowledged messages.
    peer_bytes: Vec<u64>,
    /// By slot: the claim of the peer of this process that holds it, cleared if it is taken.
    owners: Vec<Option<Arc<SlotClaim>>>,
}

const NO_SEGMENT: u32 = u32::MAX;

#[derive(Debug)]
struct Held {
    segment: Segment,
    /// (slot, highest seq of that peer in this segment), complete once sealed.
    marks: Vec<(u32, u64)>,
    /// Bytes up to which it is known to be on disk.
    synced: usize,
}

/// The lock that appends hold; see the module docs.
pub(crate) struct Appender<'a> {
    outbox: &'a ShardOutbox,
    inner: SpinGuard<'a, Inner>,
}

impl ShardOutbox {
    /// Opens (creating if needed) the outbox in `dir` and recovers what it holds.
    ///
    /// # Errors
    ///
    /// I/O errors on the directory or the session table. Damaged segments are not errors: they
    /// are reported in [`RecoveryReport`].
    pub(crate) fn open(
        dir: &Path,
        segment_len: usize,
        bytes_max: usize,
        peer_bytes_max: usize,
    ) -> io::Result<(ShardOutbox, Recovered)> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)?;
        let sessions = Watermarks::open(&dir.join("sessions"), PEERS_MAX)?;
        let damaged = sessions.damaged();
        if damaged > 0 {
            // Their sessions' unacknowledged records have no peer to go to.
            tracing::error!(dir = %dir.display(), slots = damaged, "damaged outbox session-table slots");
        }
        let mut report = RecoveryReport::default();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        paths.sort();

        let targets: HashMap<SessionId, (usize, Seq)> = sessions
            .slots()
            .map(|slot| {
                let e = sessions.get(slot);
                (e.session, (slot, e.a))
            })
            .collect();
        let (opened, mut found) = scan_all(&paths, &targets);
        // By path index; `None` for an unusable file.
        let mut segments = Vec::with_capacity(paths.len());
        let mut id_next = 0;
        for (path, opened) in paths.iter().zip(opened) {
            report.segments += 1;
            let (segment, scan, counts) = match opened {
                Ok(opened) => opened,
                Err(OpenError::BadHeader(why)) => {
                    tracing::error!(path = %path.display(), why, "unusable outbox segment; renamed to .bad");
                    report.bad_segments += 1;
                    std::fs::rename(path, path.with_extension("bad"))?;
                    segments.push(None);
                    continue;
                }
                Err(OpenError::Io(e)) => return Err(e),
            };
            report.bytes_scanned += segment.len() as u64;
            report.torn_tails += u64::from(scan.torn_tail || counts.torn_behind_end);
            report.damaged_regions += scan.damaged.len() as u64;
            report.records += counts.records;
            for (at, len) in &scan.damaged {
                tracing::error!(path = %path.display(), offset = at, len, "damaged records in outbox segment");
            }
            if counts.orphans > 0 {
                // Sessions whose slots were taken back once everything in them was
                // acknowledged (see `SlotClaim`); a damaged slot is reported below.
                tracing::debug!(path = %path.display(), records = counts.orphans, "outbox records of retired sessions");
            }
            id_next = id_next.max(segment.id() + 1);
            segments.push(Some(Held {
                synced: segment.end(),
                segment,
                marks: Vec::new(),
            }));
        }

        let mut sessions = sessions;
        let views: Vec<Option<Bytes>> = segments
            .iter()
            .map(|h| h.as_ref().map(|h| h.segment.view()))
            .collect();
        let mut messages = HashMap::new();
        let mut peer_bytes = vec![0; PEERS_MAX];
        let mut acked = vec![0; PEERS_MAX];
        for slot in sessions.slots().collect::<Vec<_>>() {
            let entry = sessions.get(slot);
            acked[slot] = entry.a.0;
            let mut runs = found.remove(&slot).unwrap_or_default();
            // Runs in path order, one or a few per segment (appends are in seq order), usually
            // already in order; the stable sort keeps the first of two runs that start alike.
            if !runs.is_sorted_by_key(|r| r.seq_first) {
                runs.sort_by_key(|r| r.seq_first);
            }
            let seq_max = runs.iter().map(|r| r.seq_last).max().unwrap_or(0);
            let next = entry.b.0.max(seq_max + 1).max(entry.a.0 + 1);
            if next != entry.b.0 {
                sessions.set_b(slot, Seq(next));
            }
            let recovered = RecoveredMessages::new(runs, &views, entry.a.0 + 1, next);
            let tally = recovered.tally(segments.len());
            report.unacked += tally.found;
            report.lost += tally.lost;
            for (index, &mark) in tally.marks.iter().enumerate() {
                if mark > 0
                    && let Some(held) = segments[index].as_mut()
                {
                    held.marks.push((slot as u32, mark));
                }
            }
            if recovered.len() > 0 {
                messages.insert(slot, recovered);
                peer_bytes[slot] = tally.bytes;
            }
        }
        drop(views);
        if report.lost > 0 {
            tracing::error!(
                lost = report.lost,
                "outbox recovery: accepted messages lost to damage"
            );
        }
        sessions.sync()?;

        let segment_len = segment_len.max(HEADER_LEN + record::RECORD_ALIGN);
        let outbox = ShardOutbox {
            dir: dir.to_owned(),
            segment_len,
            segments_max: (bytes_max / segment_len).max(1),
            peer_bytes_max: peer_bytes_max as u64,
            failed: AtomicBool::new(false),
            inner: SpinLock::new(Inner {
                sealed: (0..segments.len()).collect(),
                drained: Vec::new(),
                segments,
                active: None,
                spare: Vec::new(),
                id_next,
                sessions,
                current: vec![(NO_SEGMENT, 0); PEERS_MAX],
                acked,
                peer_bytes,
                owners: vec![None; PEERS_MAX],
            }),
        };
        // Recovered segments are never appended to again; those whose marks are all
        // acknowledged are reset now (or once the last view of them goes) and become spares.
        outbox.lock_inner().trim();
        outbox.recycle();
        report.duration = started.elapsed();
        Ok((outbox, Recovered { messages, report }))
    }

    /// The outbound session for `node_id`: the persisted one, or a new one (stored at once).
    /// If the session table has no slot for a new peer, not even one taken back from an idle
    /// peer, the session is new and unclaimed: the peer's first publish tries again.
    pub(crate) fn session(&self, node_id: &str) -> SessionState {
        let mut inner = self.lock_inner();
        let claim = Arc::new(SlotClaim::unclaimed());
        if let Some(slot) = inner.sessions.find(node_id) {
            let mut entry = inner.sessions.get(slot);
            if entry.session == SessionId::NIL {
                entry = Entry {
                    session: SessionId(uuid::Uuid::new_v4()),
                    a: Seq::ZERO,
                    b: Seq(1),
                };
                inner.sessions.set(slot, entry);
            }
            inner.own(slot, &claim);
            return SessionState {
                claim,
                session: entry.session,
                acked: entry.a,
                next: entry.b,
            };
        }
        let session = SessionId(uuid::Uuid::new_v4());
        if let Err(e) = inner.claim(node_id, &claim, session, Seq(1)) {
            tracing::warn!(peer = node_id, error = %e, "no outbox session slot yet; the peer's publishes will try again");
        }
        SessionState {
            claim,
            session,
            acked: Seq::ZERO,
            next: Seq(1),
        }
    }

    /// Takes the append lock.
    pub(crate) fn appender(&self) -> Appender<'_> {
        Appender {
            outbox: self,
            inner: self.lock_inner(),
        }
    }

    /// Whether a sync has failed: the outbox then refuses appends and confirmations for good.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The shard's acknowledgements of a turn: per peer slot, the new acknowledged seq and the
    /// record space it released. Segments whose marks are all acknowledged are reset and reused.
    pub(crate) fn release(&self, acked: &[(usize, Seq, u64)]) {
        let mut inner = self.lock_inner();
        for &(slot, seq, bytes) in acked {
            inner.sessions.set_a(slot, seq);
            inner.acked[slot] = inner.acked[slot].max(seq.0);
            inner.peer_bytes[slot] = inner.peer_bytes[slot].saturating_sub(bytes);
        }
        inner.trim();
        let drained = !inner.drained.is_empty();
        drop(inner);
        if drained {
            self.recycle();
        }
    }

    /// Writes everything appended so far to disk (fdatasync of each file written since the last
    /// sync). Called by the shard only, outside the append lock. A failure is permanent: see
    /// [`ShardOutbox::has_failed`].
    pub(crate) fn sync(&self) -> io::Result<()> {
        if self.has_failed() {
            return Err(io::Error::other("an earlier outbox sync failed"));
        }
        let (files, marks) = {
            let inner = self.lock_inner();
            let mut files: Vec<Arc<File>> = vec![inner.sessions.file()];
            let mut marks = Vec::new();
            for (index, held) in inner.segments.iter().enumerate() {
                if let Some(held) = held
                    && held.synced < held.segment.end()
                {
                    files.push(held.segment.file());
                    marks.push((index, held.segment.id(), held.segment.end()));
                }
            }
            (files, marks)
        };
        for file in &files {
            if let Err(e) = file.sync_data() {
                // fsyncgate: the kernel may have dropped the dirty pages and a later sync may
                // "succeed" without them. Never confirm anything written since the last good
                // sync: fail the outbox for good.
                self.failed.store(true, Ordering::Release);
                tracing::error!(error = %e, dir = %self.dir.display(), "outbox sync failed; outbox stops confirming");
                return Err(e);
            }
        }
        let mut inner = self.lock_inner();
        for (index, id, end) in marks {
            if let Some(held) = inner.segments[index].as_mut()
                && held.segment.id() == id
            {
                held.synced = held.synced.max(end);
            }
        }
        Ok(())
    }

    /// Whether anything was appended since the last sync.
    pub(crate) fn is_dirty(&self) -> bool {
        let inner = self.lock_inner();
        inner
            .segments
            .iter()
            .flatten()
            .any(|h| h.synced < h.segment.end())
    }

    fn lock_inner(&self) -> SpinGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Renews drained segments whose payload views are gone and makes them spares (a truncated
    /// segment is deleted instead). Renewing is two stores (see `Segment::renew`): nothing is
    /// zeroed.
    fn recycle(&self) {
        let mut guard = self.lock_inner();
        let inner = &mut *guard;
        let mut waiting = Vec::new();
        for index in std::mem::take(&mut inner.drained) {
            let Some(held) = inner.segments[index].as_mut() else {
                continue;
            };
            if inner.active == Some(index) || inner.spare.contains(&index) {
                continue;
            }
            if held.segment.is_shared() {
                waiting.push(index);
                continue;
            }
            if held.segment.is_truncated() {
                let path = held.segment.path().to_owned();
                inner.segments[index] = None;
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "removing a drained segment failed");
                }
                continue;
            }
            held.segment.renew();
            held.synced = HEADER_LEN;
            held.marks.clear();
            inner.spare.push(index);
        }
        inner.drained = waiting;
    }
}

impl Appender<'_> {
    /// Appends a record of the peer in session-table `slot`; `Ok` means it is in the map (and
    /// survives a crash of this process).
    pub(crate) fn append(
        &mut self,
        slot: usize,
        session: SessionId,
        seq: Seq,
        payload: &[u8],
    ) -> Result<(), AppendError> {
        if self.outbox.has_failed() {
            return Err(AppendError::Failed);
        }
        let space = record::space(payload.len());
        if space > self.outbox.segment_len - HEADER_LEN {
            return Err(AppendError::Full { disk: false });
        }
        if self.inner.peer_bytes[slot] + space as u64 > self.outbox.peer_bytes_max {
            return Err(AppendError::PeerFull);
        }
        let inner = &mut *self.inner;
        let index = match inner.active {
            Some(index)
                if inner.segments[index]
                    .as_ref()
                    .is_some_and(|h| h.segment.free() >= space) =>
            {
                index
            }
            _ => {
                let index = self.next_segment()?;
                let inner = &mut *self.inner;
                if let Some(old) = inner.active.replace(index) {
                    inner.seal(old);
                }
                index
            }
        };
        let inner = &mut *self.inner;
        let held = inner.segments[index].as_mut().expect("active segment");
        held.segment
            .append(session, seq, payload)
            .expect("free space checked");
        inner.peer_bytes[slot] += space as u64;
        let current = &mut inner.current[slot];
        if current.0 == index as u32 {
            current.1 = seq.0;
        } else {
            *current = (index as u32, seq.0);
        }
        Ok(())
    }

    /// The peer's slot in the session table: the one its claim holds, or one claimed now (a
    /// free slot, or one taken back from an idle peer) for `session`, whose next seq is
    /// `next`: every earlier one is acknowledged, since a peer loses its slot only then.
    /// `None` when every slot belongs to a peer with something unacknowledged.
    pub(crate) fn slot(
        &mut self,
        claim: &Arc<SlotClaim>,
        node_id: &str,
        session: SessionId,
        next: Seq,
    ) -> Option<usize> {
        if let Some(slot) = claim.get() {
            return Some(slot);
        }
        match self.inner.claim(node_id, claim, session, next) {
            Ok(slot) => Some(slot),
            Err(e) => {
                tracing::warn!(peer = node_id, error = %e, "no outbox session slot");
                None
            }
        }
    }

    /// Records the next seq a peer's session will assign: one store into the session table.
    pub(crate) fn set_next(&mut self, slot: usize, next: Seq) {
        self.inner.sessions.set_b(slot, next);
    }

    /// A spare segment, or a new one if the limit allows and the disk has room.
    fn next_segment(&mut self) -> Result<usize, AppendError> {
        let inner = &mut *self.inner;
        if let Some(index) = inner.spare.pop() {
            return Ok(index);
        }
        let count = inner.segments.iter().flatten().count();
        if count >= self.outbox.segments_max {
            return Err(AppendError::Full { disk: false });
        }
        let id = inner.id_next;
        let segment = match Segment::create(&self.outbox.dir, id, self.outbox.segment_len) {
            Ok(segment) => segment,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                return Err(AppendError::Full { disk: true });
            }
            Err(e) => return Err(AppendError::Io(e)),
        };
        inner.id_next += 1;
        let held = Held {
            synced: segment.end(),
            segment,
            marks: Vec::new(),
        };
        let index = match inner.segments.iter().position(Option::is_none) {
            Some(free) => {
                inner.segments[free] = Some(held);
                free
            }
            None => {
                inner.segments.push(Some(held));
                inner.segments.len() - 1
            }
        };
        Ok(index)
    }
}

impl std::fmt::Debug for Appender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender").finish_non_exhaustive()
    }
}

impl Inner {
    /// `index` stops being active: the peers' current seqs in it become its marks.
    fn seal(&mut self, index: usize) {
        let marks = &mut self.segments[index].as_mut().expect("sealed segment").marks;
        for (slot, current) in self.current.iter_mut().enumerate() {
            if current.0 == index as u32 {
                marks.push((slot as u32, current.1));
                current.0 = NO_SEGMENT;
            }
        }
        self.sealed.push(index);
    }

    /// Gives `claim` a slot for `node_id` with `session`, every seq before `next` acknowledged:
    /// a free slot, or failing that one taken back from an idle peer.
    fn claim(
        &mut self,
        node_id: &str,
        claim: &Arc<SlotClaim>,
        session: SessionId,
        next: Seq,
    ) -> io::Result<usize> {
        let slot = match self.sessions.claim(node_id) {
            Ok(slot) => slot,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                let Some(idle) = self.idle_slot() else {
                    return Err(e);
                };
                self.take_back(idle);
                self.sessions.reassign(idle, node_id);
                idle
            }
            Err(e) => return Err(e),
        };
        let acked = Seq(next.0 - 1);
        self.sessions.set(
            slot,
            Entry {
                session,
                a: acked,
                b: next,
            },
        );
        self.acked[slot] = acked.0;
        self.peer_bytes[slot] = 0;
        self.current[slot] = (NO_SEGMENT, 0);
        self.own(slot, claim);
        Ok(slot)
    }

    fn own(&mut self, slot: usize, claim: &Arc<SlotClaim>) {
        claim.set(Some(slot));
        self.owners[slot] = Some(Arc::clone(claim));
    }

    /// A slot whose peer has nothing unacknowledged: all its seqs acknowledged, no record
    /// space owed.
    fn idle_slot(&self) -> Option<usize> {
        self.sessions.slots().find(|&slot| {
            let entry = self.sessions.get(slot);
            entry.a.0 + 1 >= entry.b.0 && self.peer_bytes[slot] == 0
        })
    }

    /// Takes `slot` back from its peer: clears the peer's claim and forgets the slot's marks
    /// (all acknowledged), so the segments that held its records trim as if it had none.
    fn take_back(&mut self, slot: usize) {
        if let Some(owner) = self.owners[slot].take() {
            owner.set(None);
        }
        self.current[slot] = (NO_SEGMENT, 0);
        for held in self.segments.iter_mut().flatten() {
            held.marks.retain(|&(s, _)| s as usize != slot);
        }
        self.trim();
    }

    /// Moves sealed segments whose marks are all acknowledged to `drained`.
    fn trim(&mut self) {
        let (segments, acked) = (&self.segments, &self.acked);
        let (free, kept): (Vec<usize>, Vec<usize>) = self.sealed.iter().partition(|&&index| {
            segments[index].as_ref().is_none_or(|held| {
                held.marks
                    .iter()
                    .all(|&(slot, mark)| acked[slot as usize] >= mark)
            })
        });
        self.sealed = kept;
        self.drained.extend(free);
    }
}

/// What one segment's scan counted.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    records: u64,
    /// Records of sessions the table does not know.
    orphans: u64,
    /// Behind the end marker lies the start of a record of a known session that was never
    /// acknowledged: an append cut short by a crash.
    torn_behind_end: bool,
}

type Opened = Result<(Segment, Scan, Counts), OpenError>;

/// Opens and scans `paths`, spread over the machine's cores in contiguous chunks. Returns each
/// file's result in `paths` order, and per session-table slot the unacknowledged records
/// (those above the slot's acknowledged seq) as runs, in path order.
fn scan_all(
    paths: &[PathBuf],
    targets: &HashMap<SessionId, (usize, Seq)>,
) -> (Vec<Opened>, HashMap<usize, Vec<Run>>) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len())
        .max(1);
    let chunk = paths.len().div_ceil(threads).max(1);
    let mut opened = Vec::with_capacity(paths.len());
    let mut parts: Vec<Vec<Vec<Run>>> = Vec::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| scope.spawn(move || scan_chunk(part, c * chunk, targets)))
            .collect();
        for worker in workers {
            let (results, by_slot) = worker.join().expect("segment scan panicked");
            opened.extend(results);
            parts.push(by_slot);
        }
    });
    let mut found = HashMap::new();
    for slot in 0..PEERS_MAX {
        let runs: Vec<Run> = parts
            .iter_mut()
            .flat_map(|part| std::mem::take(&mut part[slot]))
            .collect();
        if !runs.is_empty() {
            found.insert(slot, runs);
        }
    }
    (opened, found)
}

/// Scans a contiguous run of `paths`; the records found are returned by slot (a vector of
/// `PEERS_MAX` vectors) as runs of consecutive records, in file order: a peer whose records lie
/// back to back takes one entry per segment, not one per message.
fn scan_chunk(
    paths: &[PathBuf],
    first_index: usize,
    targets: &HashMap<SessionId, (usize, Seq)>,
) -> (Vec<Opened>, Vec<Vec<Run>>) {
    let mut by_slot: Vec<Vec<Run>> = (0..PEERS_MAX).map(|_| Vec::new()).collect();
    let results = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let index = (first_index + i) as u32;
            let mut counts = Counts::default();
            // Records come in runs of one session: look each session up once per run.
            let mut run: Option<(SessionId, Option<(usize, Seq)>)> = None;
            let opened = Segment::open_with(path, |r| {
                counts.records += 1;
                let target = match run {
                    Some((session, target)) if session == r.session => target,
                    _ => {
                        let target = targets.get(&r.session).copied();
                        run = Some((r.session, target));
                        target
                    }
                };
                let Some((slot, acked)) = target else {
                    counts.orphans += 1;
                    return;
                };
                if r.seq <= acked {
                    return; // acknowledged before the restart
                }
                recovered::push_record(&mut by_slot[slot], r.seq.0, index, r.at, r.total);
            });
            let (segment, scan) = opened?;
            counts.torn_behind_end = !segment.is_truncated()
                && segment
                    .header_at(segment.end())
                    .is_some_and(|(session, seq)| {
                        targets.get(&session).is_some_and(|&(_, acked)| seq > acked)
                    });
            Ok((segment, scan, counts))
        })
        .collect();
    (results, by_slot)
}

/// The directory of shard `shard`'s outbox under `root`.
pub(crate) fn shard_dir(root: &Path, shard: usize) -> PathBuf {
    root.join(format!("shard-{shard}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ringwire-slots-{}-{:x}",
            std::process::id(),
            uuid::Uuid::new_v4().as_u128() as u64
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    const SEGMENT_LEN: usize = 1 << 20;

    fn open(dir: &Path) -> (ShardOutbox, Recovered) {
        ShardOutbox::open(dir, SEGMENT_LEN, 64 << 20, 1 << 20).unwrap()
    }

    /// Appends the peer's message `seq` as `publish` does: claim, record, next seq.
    fn publish(outbox: &ShardOutbox, id: &str, state: &SessionState, seq: Seq) -> Option<usize> {
        let mut appender = outbox.appender();
        let slot = appender.slot(&state.claim, id, state.session, seq)?;
        appender
            .append(slot, state.session, seq, id.as_bytes())
            .unwrap();
        appender.set_next(slot, seq.next());
        Some(slot)
    }

    fn ack(outbox: &ShardOutbox, state: &SessionState, seq: Seq, id: &str) {
        let slot = state
            .claim
            .get()
            .expect("a peer with unacknowledged messages has a slot");
        outbox.release(&[(slot, seq, record::space(id.len()) as u64)]);
    }

    #[test]
    fn a_full_session_table_takes_slots_back_only_from_idle_peers() {
        let dir = temp_dir();
        let (outbox, _) = open(&dir.0);
        let ids: Vec<String> = (0..PEERS_MAX).map(|i| format!("peer-{i}")).collect();
        let states: Vec<SessionState> = ids.iter().map(|id| outbox.session(id)).collect();
        assert!(states.iter().all(|s| s.claim.get().is_some()));
        // Every peer sends message 1; all but the first half are acknowledged.
        for (id, state) in ids.iter().zip(&states) {
            publish(&outbox, id, state, Seq(1)).unwrap();
        }
        let busy = PEERS_MAX / 2;
        for (id, state) in ids.iter().zip(&states).skip(busy) {
            ack(&outbox, state, Seq(1), id);
        }

        // A newcomer gets an idle peer's slot; that peer's claim is cleared, nobody else's.
        let late = outbox.session("late");
        let taken = late.claim.get().expect("an idle slot is taken back");
        publish(&outbox, "late", &late, Seq(1)).unwrap();
        let lost: Vec<usize> = (0..PEERS_MAX)
            .filter(|&i| states[i].claim.get().is_none())
            .collect();
        assert_eq!(lost.len(), 1, "one peer lost its slot");
        let victim = lost[0];
        assert!(victim >= busy, "only an idle peer loses its slot");
        assert!(states.iter().all(|s| s.claim.get() != Some(taken)));

        // The victim publishes again: it claims a slot (another idle peer's) for the same
        // session and continues its sequence.
        let slot = publish(&outbox, &ids[victim], &states[victim], Seq(2)).unwrap();
        let entry = outbox.lock_inner().sessions.get(slot);
        assert_eq!(
            (entry.session, entry.a, entry.b),
            (states[victim].session, Seq(1), Seq(3))
        );
        assert_eq!(
            states.iter().filter(|s| s.claim.get().is_none()).count(),
            1,
            "the victim's claim cost another idle peer its slot"
        );

        // Once every slot holds something unacknowledged, nothing is taken back.
        for (i, (id, state)) in ids.iter().zip(&states).enumerate().skip(busy) {
            if i != victim && state.claim.get().is_some() {
                publish(&outbox, id, state, Seq(2)).unwrap();
            }
        }
        let stranger = outbox.session("stranger");
        assert_eq!(stranger.claim.get(), None, "no idle peer is left");
        assert_eq!(publish(&outbox, "stranger", &stranger, Seq(1)), None);
        drop(outbox);

        // After a restart every unacknowledged message is there, under its peer's session.
        let (outbox, recovered) = open(&dir.0);
        assert_eq!(recovered.report.lost, 0);
        assert_eq!(recovered.report.unacked, PEERS_MAX as u64);
        for (id, state) in ids.iter().zip(&states) {
            if state.claim.get().is_none() {
                continue;
            }
            let again = outbox.session(id);
            assert_eq!(again.session, state.session, "{id} keeps its session");
            let unacked = recovered
                .messages
                .get(&again.claim.get().unwrap())
                .map_or(0, RecoveredMessages::len);
            assert_eq!(unacked, 1, "{id} has one message to resend");
        }
        assert_eq!(outbox.session("late").session, late.session);
    }
}
