//! Upkeep of a lane, done by whichever process scans it: padding over a dead
//! writer's reservation, retention (deleting segments wholly settled),
//! recovery on open, and letting go of mappings of deleted segments.
//!
//! # Invariants
//! - Retention deletes only segments wholly before `head` (the first record
//!   still ready or claimed) and below `write_seg`: it follows the slowest
//!   consumer and never deletes an unsettled record.
//! - Recovery changes shared state only with exclusive access to the store.

use std::fs::{File, OpenOptions};
use std::sync::atomic::{Ordering::AcqRel, Ordering::Acquire, Ordering::Release};

use crate::segment::Slot;

use super::layout::at;
use super::{Lane, LaneError, Pos};

impl Lane {
    /// A reservation at `next` that never got committed blocks every consumer
    /// of the lane: turn it into padding when its writer is gone (its pid is
    /// in the record header and `alive` says no) or, if the writer died before
    /// even writing its header, when it has been pending longer than `max_age`
    /// as seen by this process. True if a hole was padded.
    pub(crate) fn unblock(
        &self,
        alive: impl Fn(u64) -> bool,
        max_age: std::time::Duration,
    ) -> Result<bool, LaneError> {
        let packed = self.word(at::NEXT).load(Acquire);
        let pos = Pos::unpack(packed);
        let Some(seg) = self.segment(pos.seq)? else {
            return Ok(false);
        };
        if seg.read(pos.off) != Slot::Pending {
            *self.pending_since.lock() = None;
            return Ok(false);
        }
        let raw = seg.raw(pos.off + 40, 8);
        let writer = <[u8; 8]>::try_from(raw.as_slice()).map_or(0, u64::from_le_bytes);
        let stuck = if writer != 0 {
            !alive(writer)
        } else {
            let mut since = self.pending_since.lock();
            match *since {
                Some((p, t)) if p == pos => t.elapsed() >= max_age,
                _ => {
                    *since = Some((pos, std::time::Instant::now()));
                    max_age.is_zero()
                }
            }
        };
        Ok(stuck && seg.pad_over(pos.off))
    }

    /// Retention: moves the head past settled records and deletes the
    /// segments wholly before it (every record acked, dead or padding). Other
    /// processes that still map a deleted segment keep a valid mapping.
    /// Returns how many segment files were deleted.
    pub(crate) fn retire(&self) -> Result<usize, LaneError> {
        // Advancing the head is part of the reclaim scan; nobody is dead here.
        self.reclaim(|_| true, 0, 0, 0)?;
        let head = Pos::unpack(self.word(at::HEAD).load(Acquire));
        let write = self.word(at::WRITE_SEG).load(Acquire);
        let mut deleted = 0;
        loop {
            let low = self.word(at::LOW_SEG).load(Acquire);
            if low >= head.seq || low >= write {
                self.unmap_retired();
                return Ok(deleted);
            }
            if self
                .word(at::LOW_SEG)
                .compare_exchange(low, low + 1, AcqRel, Acquire)
                .is_ok()
            {
                self.segments.lock().remove(&low);
                if self
                    .hot
                    .load()
                    .as_ref()
                    .is_some_and(|h| h.header().seq == low)
                {
                    self.hot.store(None);
                }
                match std::fs::remove_file(self.path(low)) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(LaneError::Io {
                            dir: self.dir.display().to_string(),
                            source,
                        })
                    }
                }
            }
        }
    }

    /// Recovery of every segment of the lane (the caller has exclusive access
    /// to the store): torn tails cut, dead writers' holes padded, corrupt
    /// records appended to `<lane>/quarantine` (offset, reason, length, bytes)
    /// and skipped from then on. Shared positions past a cut tail are moved
    /// back to it, so records appended there later are not skipped.
    pub(crate) fn recover(&self) -> Result<crate::recovery::Totals, LaneError> {
        use std::io::Write;
        let io = |source| LaneError::Io {
            dir: self.dir.display().to_string(),
            source,
        };
        let mut total = crate::recovery::Totals::default();
        let mut quarantine: Option<File> = None;
        let mut seq = self.word(at::LOW_SEG).load(Acquire);
        while let Some(seg) = self.segment(seq)? {
            let r = crate::recovery::recover(&seg, true, |off, bytes, reason| {
                let f = match &mut quarantine {
                    Some(f) => f,
                    None => quarantine.insert(
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(self.dir.join("quarantine"))?,
                    ),
                };
                writeln!(
                    f,
                    "segment {seq} offset {off} {reason} {} bytes",
                    bytes.len()
                )?;
                f.write_all(bytes)?;
                writeln!(f)?;
                f.sync_all()
            })
            .map_err(io)?;
            if r.cut_at.is_some() {
                let end = Pos { seq, off: r.end };
                for w in [at::NEXT, at::HEAD] {
                    let p = Pos::unpack(self.word(w).load(Acquire));
                    if p.seq == seq && p.off > end.off {
                        self.word(w).store(end.pack(), Release);
                    }
                }
            }
            total.add(&r);
            seq += 1;
        }
        // Have consumers look once from the head for ready records below
        // `next`: there are none unless the state page and the segments were
        // written back unevenly before a power loss (a claim lost, `next`
        // kept); this way such a record is delivered rather than stranded.
        let head = Pos::unpack(self.word(at::HEAD).load(Acquire));
        if head < Pos::unpack(self.word(at::NEXT).load(Acquire)) {
            self.mark_restored(head);
        }
        Ok(total)
    }

    /// Drops this process's mappings of segments that retention deleted (in
    /// any process): the disk space of a deleted file comes back only once
    /// every process has unmapped it. Bodies still held keep theirs alive.
    pub(super) fn unmap_retired(&self) {
        let low = self.word(at::LOW_SEG).load(Acquire);
        self.segments.lock().retain(|seq, _| *seq >= low);
        if self
            .hot
            .load()
            .as_ref()
            .is_some_and(|h| h.header().seq < low)
        {
            self.hot.store(None);
        }
    }

    /// Segments this process has mapped (for tests of retention).
    #[cfg(test)]
    pub(crate) fn mapped_segments(&self) -> usize {
        self.segments.lock().len()
    }
}
