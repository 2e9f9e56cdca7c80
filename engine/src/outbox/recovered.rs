//! The messages recovery found, as ranges: per peer, runs of consecutive records in a segment,
//! walked lazily as the shard takes them, so that nothing is materialized per message at start.

use bytes::Bytes;

use crate::outbox::record;
use crate::outbox::segment;
use crate::proto::Seq;

/// Consecutive records of one session lying back to back in one segment: messages
/// `seq_first..=seq_last`, from offset `at` to `end` (each record padded to its alignment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub seq_first: u64,
    pub seq_last: u64,
    /// The segment, by its index in the recovery's path list.
    pub index: u32,
    pub at: u32,
    pub end: u32,
}

impl Run {
    /// A run of the one record of `seq` at `at` taking `total` bytes before padding.
    pub(crate) fn new(seq: u64, index: u32, at: u32, total: u32) -> Run {
        Run {
            seq_first: seq,
            seq_last: seq,
            index,
            at,
            end: at + padded(total),
        }
    }

    /// Adds the record of `seq` at `at` if it continues this run (the next seq, right after
    /// the last record, in the same segment); says whether it did.
    pub(crate) fn extend(&mut self, seq: u64, index: u32, at: u32, total: u32) -> bool {
        if index != self.index || at != self.end || seq != self.seq_last + 1 {
            return false;
        }
        self.seq_last = seq;
        self.end = at + padded(total);
        true
    }
}

/// Appends the record of `seq` to `runs`: to the last run if it continues it, else as a new one.
pub(crate) fn push_record(runs: &mut Vec<Run>, seq: u64, index: u32, at: u32, total: u32) {
    if !runs
        .last_mut()
        .is_some_and(|run| run.extend(seq, index, at, total))
    {
        runs.push(Run::new(seq, index, at, total));
    }
}

/// One unacknowledged message found at start: its payload (a view into the segment), or `None`
/// when its record was lost to damage.
#[derive(Debug)]
pub(crate) struct RecoveredMessage {
    pub seq: Seq,
    pub payload: Option<Bytes>,
}

/// What a peer's runs add up to, for the recovery report and the outbox's accounting.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Messages with an intact record.
    pub found: u64,
    /// Messages without one: lost to damage.
    pub lost: u64,
    /// Record space of all of them (a lost one counted as an empty record).
    pub bytes: u64,
    /// Per segment index, the highest seq of this peer in it (0: none).
    pub marks: Vec<u64>,
}

/// A peer's unacknowledged messages `first..end` after recovery, yielded in order: each from
/// the run that holds it, or as lost where no run does. A run that holds a seq again (which an
/// intact outbox never writes) is skipped for it: the first record wins.
#[derive(Debug, Default)]
pub(crate) struct RecoveredMessages {
    runs: Vec<Run>,
    /// Segment views by index: `Some` while a run still to come reads from it.
    views: Vec<Option<Bytes>>,
    /// Runs still to come per segment index, to let a view go after its last run.
    runs_left: Vec<u32>,
    run: usize,
    /// The offset and seq of the next record of `runs[run]`.
    at: u32,
    at_seq: u64,
    next: u64,
    end: u64,
}

impl RecoveredMessages {
    /// Messages `first..end` from `runs` (sorted by `seq_first`), reading payloads through
    /// `views` (by segment index; those of segments no run reads are not kept).
    pub(crate) fn new(
        mut runs: Vec<Run>,
        views: &[Option<Bytes>],
        first: u64,
        end: u64,
    ) -> RecoveredMessages {
        runs.retain(|r| r.seq_last >= first && r.seq_first < end);
        let mut runs_left = vec![0; views.len()];
        for r in &runs {
            runs_left[r.index as usize] += 1;
        }
        let views = views
            .iter()
            .zip(&runs_left)
            .map(|(view, &n)| if n > 0 { view.clone() } else { None })
            .collect();
        let mut recovered = RecoveredMessages {
            runs,
            views,
            runs_left,
            run: 0,
            at: 0,
            at_seq: 0,
            next: first,
            end,
        };
        recovered.enter_run();
        recovered
    }

    /// What the messages add up to; `segments` is the number of segment indexes.
    pub(crate) fn tally(&self, segments: usize) -> Tally {
        let mut tally = Tally {
            marks: vec![0; segments],
            ..Tally::default()
        };
        // The highest seq already counted: a run's seqs at or below it are repeats.
        let mut covered = self.next.saturating_sub(1);
        for r in &self.runs {
            let mark = &mut tally.marks[r.index as usize];
            *mark = (*mark).max(r.seq_last);
            let last = r.seq_last.min(self.end - 1);
            let first = r.seq_first.max(covered + 1);
            if first > last {
                continue;
            }
            tally.found += last - first + 1;
            tally.bytes += if first == r.seq_first && last == r.seq_last {
                u64::from(r.end - r.at)
            } else {
                self.run_space(r, first, last)
            };
            covered = last;
        }
        tally.lost = self.end - self.next - tally.found;
        tally.bytes += tally.lost * record::space(0) as u64;
        tally
    }

    /// The record space of messages `first..=last` of run `r`, walked record by record.
    fn run_space(&self, r: &Run, first: u64, last: u64) -> u64 {
        let view = self.views[r.index as usize]
            .as_ref()
            .expect("a run's view is kept");
        let mut at = r.at;
        let mut bytes = 0;
        for seq in r.seq_first..=last {
            let used = record_space(view, at);
            if seq >= first {
                bytes += u64::from(used);
            }
            at += used;
        }
        bytes
    }

    /// Points the record cursor at the start of the current run, if any.
    fn enter_run(&mut self) {
        if let Some(r) = self.runs.get(self.run) {
            self.at = r.at;
            self.at_seq = r.seq_first;
        }
    }

    /// Moves past the current run, letting its segment's view go if no later run reads it.
    fn leave_run(&mut self) {
        let index = self.runs[self.run].index as usize;
        self.runs_left[index] -= 1;
        if self.runs_left[index] == 0 {
            self.views[index] = None;
        }
        self.run += 1;
        self.enter_run();
    }
}

impl Iterator for RecoveredMessages {
    type Item = RecoveredMessage;

    fn next(&mut self) -> Option<RecoveredMessage> {
        if self.next >= self.end {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let lost = RecoveredMessage {
            seq: Seq(seq),
            payload: None,
        };
        loop {
            let Some(&r) = self.runs.get(self.run) else {
                return Some(lost);
            };
            if seq > r.seq_last {
                self.leave_run();
                continue;
            }
            if seq < r.seq_first {
                return Some(lost);
            }
            let view = self.views[r.index as usize]
                .as_ref()
                .expect("a run's view is kept");
            while self.at_seq < seq {
                self.at += record_space(view, self.at);
                self.at_seq += 1;
            }
            let total = record_total(view, self.at);
            let payload = view.slice(segment::payload_range(self.at, total));
            self.at += padded(total);
            self.at_seq += 1;
            if seq == r.seq_last {
                self.leave_run();
            }
            return Some(RecoveredMessage {
                seq: Seq(seq),
                payload: Some(payload),
            });
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.end.saturating_sub(self.next)).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for RecoveredMessages {}

/// The `total_len` of the record at `at` (scanned intact).
fn record_total(view: &[u8], at: u32) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(view[at..at + 4].try_into().expect("a record header"))
}

/// The space the record at `at` takes, padding included.
fn record_space(view: &[u8], at: u32) -> u32 {
    padded(record_total(view, at))
}

/// The space a record of `total` bytes takes, padded to the record alignment.
fn padded(total: u32) -> u32 {
    total.next_multiple_of(record::RECORD_ALIGN as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::record::RECORD_HEADER_LEN;
    use crate::proto::SessionId;

    /// A fake segment holding records of `seqs` back to back, and their runs.
    fn segment(index: u32, seqs: &[(u64, usize)]) -> (Bytes, Vec<Run>) {
        let mut bytes = vec![0u8; 64];
        let mut runs = Vec::new();
        for &(seq, len) in seqs {
            let at = bytes.len();
            bytes.resize(at + record::space(len), 0);
            let payload = vec![seq as u8; len];
            record::write(&mut bytes[at..], 1, SessionId::NIL, Seq(seq), &payload);
            let total = (RECORD_HEADER_LEN + len) as u32;
            push_record(&mut runs, seq, index, at as u32, total);
        }
        (Bytes::from(bytes), runs)
    }

    fn collect(recovered: RecoveredMessages) -> Vec<(u64, Option<Vec<u8>>)> {
        recovered
            .map(|m| (m.seq.0, m.payload.map(|p| p.to_vec())))
            .collect()
    }

    #[test]
    fn runs_yield_their_records_and_gaps_are_lost() {
        let (a, mut runs) = segment(0, &[(3, 1), (4, 2), (5, 3)]);
        let (b, runs_b) = segment(1, &[(7, 4), (8, 0)]);
        runs.extend(runs_b);
        assert_eq!(runs.len(), 2, "one run per segment");
        let views = [Some(a), Some(b)];
        let recovered = RecoveredMessages::new(runs, &views, 2, 10);
        assert_eq!(recovered.len(), 8);
        let tally = recovered.tally(2);
        assert_eq!((tally.found, tally.lost), (5, 3));
        assert_eq!(tally.marks, [5, 8]);
        let expected_bytes: usize = [1, 2, 3, 4, 0]
            .iter()
            .map(|&l| record::space(l))
            .sum::<usize>()
            + 3 * record::space(0);
        assert_eq!(tally.bytes, expected_bytes as u64);
        assert_eq!(
            collect(recovered),
            [
                (2, None),
                (3, Some(vec![3])),
                (4, Some(vec![4; 2])),
                (5, Some(vec![5; 3])),
                (6, None),
                (7, Some(vec![7; 4])),
                (8, Some(vec![])),
                (9, None),
            ]
        );
    }

    #[test]
    fn a_repeated_seq_keeps_the_first_record_and_views_go_after_their_last_run() {
        let (a, mut runs) = segment(0, &[(1, 1), (2, 1), (3, 1)]);
        let (b, runs_b) = segment(1, &[(2, 5), (3, 5), (4, 5)]);
        runs.extend(runs_b);
        let views = [Some(a), Some(b)];
        let mut recovered = RecoveredMessages::new(runs, &views, 1, 5);
        let tally = recovered.tally(2);
        assert_eq!((tally.found, tally.lost), (4, 0));
        assert_eq!(
            tally.bytes,
            3 * record::space(1) as u64 + record::space(5) as u64
        );
        let first = recovered.by_ref().take(3).collect::<Vec<_>>();
        assert!(
            first
                .iter()
                .all(|m| m.payload.as_deref().is_some_and(|p| p.len() == 1))
        );
        assert!(recovered.views[0].is_none(), "segment 0 has no run left");
        let last = recovered.next().unwrap();
        assert_eq!(
            (last.seq, last.payload.unwrap().to_vec()),
            (Seq(4), vec![4; 5])
        );
        assert!(recovered.next().is_none());
        assert!(recovered.views.iter().all(Option::is_none));
    }

    #[test]
    fn runs_below_the_acknowledged_seq_are_skipped() {
        let (a, runs) = segment(0, &[(1, 1), (2, 1), (3, 1), (4, 1)]);
        let recovered = RecoveredMessages::new(runs, &[Some(a)], 3, 5);
        assert_eq!(recovered.tally(1).found, 2);
        assert_eq!(collect(recovered), [(3, Some(vec![3])), (4, Some(vec![4]))]);
    }
}
