//! Upkeep of a lane, done by whichever process scans it: padding over a dead
//! or stalled writer's reservation, retention (deleting segments wholly
//! settled), and recovery on open with exclusive access.
//!
//! # Invariants
//! - A reservation is padded over exactly (its own length, from its state
//!   word), so padding never covers anyone else's record; a writer that was
//!   only stalled loses the commit race and publishes again.
//! - Retention deletes only segments wholly before `head` (the first record
//!   still ready or claimed) and below `write_seg`: it follows the slowest
//!   consumer and never deletes an unsettled record or the write segment.
//!   It does not take `head` on trust: a segment is deleted only after a
//!   walk over it finds every record settled (a damaged state page can put
//!   `head` anywhere), and numbers with no segment file are passed in one
//!   step.
//! - Recovery changes shared state only with exclusive access; it rebuilds
//!   every shared word of the lane from the segments (positions, counters),
//!   so a lost or damaged state page cannot strand or invent messages.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};

use crate::recovery::Totals;
use crate::segment::claim::{Claim, CLAIMED, READY};
use crate::segment::{SegmentError, Slot, HEADER_LEN};

use super::layout::at;
use super::{Lane, LaneError, Pos, NO_POS};

impl Lane {
    /// A reservation at `next` that never got committed blocks every consumer
    /// of the lane: turn it into padding when its writer is gone (the writer
    /// named in its header and `alive` says no) or when it has been pending
    /// longer than its wait since any process first saw it: `named_wait` when
    /// its header names a writer that `alive` says is there (a live writer
    /// stopped, or copying a large record), `unnamed_wait` when it names none
    /// (its writer died in the few instructions between reserving and
    /// writing its header, or is stopped there). A writer only stalled
    /// publishes again. True if a reservation was padded.
    ///
    /// When a reservation was first seen pending is kept in its own deadline
    /// word (milliseconds of the host's monotonic clock, tagged with claim
    /// generation 0, which no claim has), so the wait does not start again
    /// with every consumer process that comes and goes.
    pub(crate) fn unblock(
        &self,
        alive: impl Fn(u64) -> bool,
        named_wait: std::time::Duration,
        unnamed_wait: std::time::Duration,
    ) -> Result<bool, LaneError> {
        let pos = self.pos(at::NEXT);
        let Some(seg) = self.segment(pos.seq)? else {
            return Ok(false);
        };
        if !matches!(seg.read(pos.off), Slot::Pending { .. }) {
            return Ok(false);
        }
        let writer = seg.pending_writer(pos.off);
        let gone = writer.is_some_and(|w| !alive(w));
        let max_age = if writer.is_some() {
            named_wait
        } else {
            unnamed_wait
        };
        let stuck = gone || max_age.is_zero() || {
            let word = seg.deadline_word(pos.off);
            let now_ms = crate::clock::shared_now_ns() / 1_000_000;
            let seen = match word.load(Acquire) {
                0 => match word.compare_exchange(0, now_ms << 16, AcqRel, Acquire) {
                    Ok(_) => now_ms << 16,
                    Err(other) => other,
                },
                w => w,
            };
            now_ms.saturating_sub(seen >> 16) >= max_age.as_millis() as u64
        };
        Ok(stuck && seg.pad(pos.off))
    }

    /// Retention: moves the head past settled records and deletes the
    /// segments wholly before it (every record acked, dead or padding). Other
    /// processes that still map a deleted segment keep a valid mapping.
    /// Returns how many segment files were deleted.
    pub(crate) fn retire(&self) -> Result<usize, LaneError> {
        // Advancing the head is part of the reclaim scan; nobody is dead here.
        self.reclaim(|_| true, 0, 0, 0)?;
        let head = self.pos(at::HEAD);
        let write = self.load(at::WRITE_SEG);
        let mut deleted = 0;
        let end = head.seq.min(write);
        loop {
            let low = self.load(at::LOW_SEG);
            if low >= end {
                self.unmap_retired();
                return Ok(deleted);
            }
            // Numbers with no segment file are passed in one step: a damaged
            // word can put the head billions of numbers past the low
            // segment, and stepping one by one (an unlink each) was a hang.
            // A record still ready or claimed (or one being written): the
            // head said otherwise, so it is wrong; keep the segment.
            if !self.settled(low)? {
                self.unmap_retired();
                return Ok(deleted);
            }
            let to = if end - low > 64 {
                self.storage
                    .next_segment(low)?
                    .map_or(end, |next| next.min(end))
            } else {
                low + 1
            };
            if self
                .word(at::LOW_SEG)
                .compare_exchange(low, to, AcqRel, Acquire)
                .is_ok()
            {
                self.segments.lock().remove(&low);
                self.uncache(|seq| seq == low);
                self.storage.delete_segment(low)?;
                deleted += 1;
            }
        }
    }

    /// Whether segment `seq` holds nothing a consumer still needs: no file,
    /// or every record in it acked or dead (padding and moved records
    /// aside). A claim word that does not read as a claim counts as not
    /// settled: recovery sorts it out.
    fn settled(&self, seq: u64) -> Result<bool, LaneError> {
        let Some(seg) = self.segment(seq)? else {
            return Ok(true);
        };
        let mut off = Pos::start(seq).off;
        loop {
            match seg.skim(off) {
                Slot::Record { len, .. } => {
                    let open = Claim::decode(seg.claim_word(off).load(Acquire))
                        .is_none_or(|k| k.state == READY || k.state == CLAIMED);
                    if open {
                        return Ok(false);
                    }
                    off += len;
                }
                Slot::Padding { len } | Slot::Moved { len } => off += len,
                Slot::Corrupt { .. } => off = seg.next_valid(off),
                Slot::Pending { .. } => return Ok(false),
                Slot::End => return Ok(true),
            }
        }
    }

    /// Recovery with exclusive access to the store (no other process has it
    /// open): every segment is checked (torn tails cut in the last one,
    /// older ones padded to their end, dead writers' holes padded, corrupt
    /// records copied to `<lane>/quarantine` and skipped), every claim is
    /// returned to ready (its owner has ended: all processes have), and every
    /// shared word of the lane is rebuilt from the segments: the write and
    /// low segments, `head` and `next` at the first ready record, no restore
    /// mark, and the counters recounted.
    pub(crate) fn recover(&self) -> Result<Totals, LaneError> {
        let mut total = Totals::default();
        let mut seqs = self.storage.list_segments()?;
        // A file that is not a readable segment at all (truncated, a bad
        // magic, a directory or other non-file put in its place) is set
        // aside whole: the rest of the store must open.
        seqs.retain(|&seq| match self.segment(seq) {
            Err(LaneError::Segment(
                e @ (SegmentError::BadMagic { .. }
                | SegmentError::Inconsistent { .. }
                | SegmentError::NotAFile { .. }),
            )) => {
                match self.storage.set_aside(seq) {
                    Ok(to) => tracing::error!(lane = %self.name(), seq, error = %e, moved_to = %to, "damaged segment set aside; its records are not delivered"),
                    Err(io) => tracing::error!(lane = %self.name(), seq, error = %e, move_error = %io, "damaged segment could not be moved aside; it is skipped"),
                }
                total.segments_set_aside += 1;
                false
            }
            _ => true,
        });
        // The write segment is the last one holding anything once
        // recovered: a writer makes the next segment ahead of need (at half
        // of the current one), and that empty file, taken for the last, had
        // the real write segment padded to its end: half a segment lost at
        // every lone open (one-shot publishers left every segment half
        // empty). Whether a segment holds anything is not read off its first
        // slot: a power cut can lose a segment's first record and keep later
        // ones (a disk writes its cache back in any order), and the segment
        // before, taken for the write segment, kept consumers from them until
        // the next lone open. So segments are recovered from the newest
        // down, each as the write segment, until one holds anything; empty
        // ones after it are treated as it is (nothing in them to pad).
        let mut write_index = None;
        for (i, &seq) in seqs.iter().enumerate().rev() {
            let Some(seg) = self.segment(seq)? else {
                continue;
            };
            let last = write_index.is_none();
            let r = crate::recovery::recover(&seg, true, last, |off, bytes, reason| {
                self.storage.quarantine(seq, off, reason, bytes)
            })
            .map_err(|source| LaneError::Io {
                dir: self.name(),
                source,
            })?;
            total.add(&r);
            if last && r.end > HEADER_LEN {
                write_index = Some(i);
            }
        }
        // Nothing anywhere: the last segment is the write segment, and the
        // empty ones below it are done, as any segment below it is.
        let write_index = write_index.unwrap_or_else(|| {
            let last = seqs.len().saturating_sub(1);
            for &seq in &seqs[..last] {
                if let Ok(Some(seg)) = self.segment(seq) {
                    seg.pad_to_end(HEADER_LEN);
                }
            }
            last
        });
        let (Some(&low), Some(&high)) = (seqs.first(), seqs.last()) else {
            // No segment: an empty lane (its first one was never made, or
            // retention deleted all of them). Keep the positions consistent.
            let write = self.load(at::WRITE_SEG).max(self.load(at::LOW_SEG));
            self.reset(write, write, Pos::start(write), 0, 0);
            return Ok(total);
        };
        // Walk everything: claims back to ready, the first ready record, the
        // counts. The walk passes a missing segment to the low segment when
        // below it: set that first, from the segments there are (a damaged
        // word past a gap skipped the segments between).
        self.word(at::LOW_SEG).store(low, Release);
        let mut first_ready: Option<Pos> = None;
        let (mut ready, mut bytes) = (0u64, 0u64);
        let end = Pos::start(high + 1);
        self.walk(Pos::start(low), end, false, |seg, pos, meta| {
            let word = seg.claim_word(pos.off);
            let w = word.load(Acquire);
            let k = match Claim::decode(w) {
                Some(k) => k,
                None => {
                    self.set_aside(seg, pos, w);
                    return false;
                }
            };
            let is_ready = match k.state {
                READY => true,
                CLAIMED => {
                    let back = Claim {
                        state: READY,
                        redelivered: true,
                        generation: k.generation,
                        owner: 0,
                    };
                    word.store(back.encode(), Release);
                    seg.deadline_word(pos.off).store(0, Release);
                    total.claims_restored += 1;
                    true
                }
                _ => false,
            };
            if is_ready {
                first_ready.get_or_insert(pos);
                ready += 1;
                bytes += u64::from(meta.body_len);
            }
            false
        })?;
        let start = first_ready.unwrap_or(end);
        // `end` is past the last segment; park the cursors at the start of
        // the segment after it only if that one exists, else at the last
        // segment's end position (its first free offset).
        let write = seqs[write_index];
        let start = if first_ready.is_none() {
            let seg = self.segment(write)?;
            Pos {
                seq: write,
                off: seg.map_or(HEADER_LEN, |s| s.reserved_to()),
            }
        } else {
            start
        };
        self.reset(write, low, start, ready, bytes);
        Ok(total)
    }

    /// Sets every shared word (recovery with exclusive access only).
    fn reset(&self, write: u64, low: u64, start: Pos, ready: u64, bytes: u64) {
        let w = |off, v| self.word(off).store(v, Release);
        w(at::WRITE_SEG, write);
        w(at::LOW_SEG, low);
        w(at::NEXT, start.pack());
        w(at::HEAD, start.pack());
        w(at::RESTORE_LOW, NO_POS);
        w(at::APPENDED, ready);
        w(at::APPENDED_BYTES, bytes);
        w(at::TAKEN, 0);
        w(at::TAKEN_BYTES, 0);
        w(at::RESTORED, 0);
        w(at::RESTORED_BYTES, 0);
        w(at::UNACKED, 0);
        self.taken_seen.store(0, Release);
        self.taken_bytes_seen.store(0, Release);
    }
}
