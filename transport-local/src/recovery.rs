//! Recovery of a segment on open: walk the records from the start, verify each
//! checksum, cut a torn tail, move corrupt records in the middle aside, and pad
//! over holes left by dead writers, so that everything that was committed
//! intact stays readable.
//!
//! # Invariants
//! - Nothing committed intact is cut or skipped; a corrupt record is skipped
//!   only after its bytes were handed to the quarantine callback.
//! - Only the lane's last segment can get its tail cut (and appended to
//!   again); a segment below it is done: whatever follows its last record is
//!   padded, never reopened for writers.
//! - Tail cutting and padding change shared state, so they run only with
//!   exclusive access to the store (`exclusive = true`, no other process has
//!   it open); without it recovery only reports.

use crate::segment::{Segment, Slot, HEADER_LEN, RECORD_HEADER_LEN};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecoveryReport {
    /// Intact records.
    pub(crate) records: u64,
    /// Padding records skipped.
    pub(crate) padding: u64,
    /// Holes of dead writers turned into padding.
    pub(crate) holes_padded: u64,
    /// Corrupt records moved aside: (offset, reason).
    pub(crate) moved: Vec<(u64, &'static str)>,
    /// Where the tail was cut (torn records dropped), if it was.
    pub(crate) cut_at: Option<u64>,
    /// End of the valid records.
    pub(crate) end: u64,
}

/// What recovery of many segments found and did, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Segments walked.
    pub segments: u64,
    /// Intact records.
    pub records: u64,
    /// Corrupt records moved aside by this recovery.
    pub moved: u64,
    /// Segments whose torn tail was cut.
    pub tails_cut: u64,
    /// Holes of dead writers turned into padding.
    pub holes_padded: u64,
    /// Claims of processes that had ended, returned to their queues.
    pub claims_restored: u64,
    /// Segment files that could not be opened at all (truncated, not a
    /// segment), moved to their lane's `damaged/` directory so the rest of
    /// the store opens.
    pub segments_set_aside: u64,
}

impl Totals {
    /// Adds one segment's report.
    pub(crate) fn add(&mut self, r: &RecoveryReport) {
        self.segments += 1;
        self.records += r.records;
        self.moved += r.moved.iter().filter(|m| m.1 != MOVED_EARLIER).count() as u64;
        self.tails_cut += u64::from(r.cut_at.is_some());
        self.holes_padded += r.holes_padded;
    }

    /// Sums two totals.
    pub(crate) fn merge(&mut self, o: Totals) {
        self.segments += o.segments;
        self.records += o.records;
        self.moved += o.moved;
        self.tails_cut += o.tails_cut;
        self.holes_padded += o.holes_padded;
        self.claims_restored += o.claims_restored;
        self.segments_set_aside += o.segments_set_aside;
    }
}

/// The reason recorded for a record moved aside by an earlier recovery.
pub(crate) const MOVED_EARLIER: &str = "moved aside earlier";

/// Recovers `seg`; `last` says it is its lane's last segment (the one writers
/// append to). `quarantine(offset, bytes, reason)` receives the bytes of
/// each corrupt record before it is marked moved; an error from it stops
/// recovery (nothing is skipped unless its bytes were saved).
pub(crate) fn recover(
    seg: &Segment,
    exclusive: bool,
    last: bool,
    mut quarantine: impl FnMut(u64, &[u8], &'static str) -> std::io::Result<()>,
) -> std::io::Result<RecoveryReport> {
    let mut r = RecoveryReport::default();
    let cap = seg.header().capacity;
    // How far anything may have been reserved: the tail hint, unless a
    // damaged (lowered) tail hides records the walk finds after it.
    let reserved = seg.reserved_to();
    let mut off = HEADER_LEN;
    loop {
        match seg.read(off) {
            Slot::End => {
                // A free word before the tail: a hole whose reservation never
                // reached the disk (a power loss with fsync=never). Bridge it
                // if an intact record follows.
                if off < reserved && exclusive {
                    let next = seg.next_valid(off);
                    if next < reserved && next > off {
                        seg.mark_padding(off, next - off);
                        r.holes_padded += 1;
                        off = next;
                        continue;
                    }
                }
                break;
            }
            Slot::Record { len, .. } => {
                r.records += 1;
                off += len;
            }
            Slot::Moved { len } => {
                r.moved.push((off, MOVED_EARLIER));
                off += len;
            }
            Slot::Padding { len } => {
                r.padding += 1;
                off += len;
            }
            Slot::Pending { len } => {
                if !exclusive {
                    break;
                }
                // Every writer is gone: nothing after a pending reservation
                // in the last segment means a torn tail; anything else is a
                // dead writer's hole, padded over exactly.
                let next = seg.next_valid(off);
                if last && next >= reserved.max(off + len) {
                    break;
                }
                if seg.pad(off) {
                    r.holes_padded += 1;
                }
                off += len;
            }
            Slot::Corrupt { len, reason } => {
                let next = seg.next_valid(off);
                if exclusive && last && next >= reserved {
                    // Nothing intact after it: a torn tail.
                    break;
                }
                // Trust the committed length only if it could be a record's.
                let sane = len >= RECORD_HEADER_LEN && len % 8 == 0 && off + len <= next;
                let span = if sane { len } else { next - off };
                if !exclusive && !sane {
                    // Without exclusive access a bad length cannot be repaired.
                    r.moved.push((off, reason));
                    break;
                }
                if span == 0 {
                    break;
                }
                quarantine(off, &seg.raw(off, span), reason)?;
                if exclusive || sane {
                    seg.mark_moved(off, span);
                }
                r.moved.push((off, reason));
                off += span;
            }
        }
        if off >= cap {
            break;
        }
    }
    if exclusive {
        if last {
            if off < reserved {
                r.cut_at = Some(off);
            }
            seg.clear_from(off)?;
        } else if off < cap {
            seg.pad_to_end(off);
        }
    }
    r.end = off;
    Ok(r)
}
