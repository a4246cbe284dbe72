//! The chain of segments: finding and mapping segment `seq`, creating the
//! write segment when it does not exist yet and the next one when it is full,
//! appending records.
//!
//! # Invariants
//! - A segment is created only at or above the lane's `write_seg` and
//!   `low_seg` as just read; one found below `low_seg` once made (retention
//!   deleted it between the look and the making: it moves `low_seg` before
//!   it deletes) is sealed and removed at once. A writer whose record
//!   landed in a segment it made, or in one that is no longer the write
//!   segment, and finds that readers had already moved past it (a stale
//!   view of a retired segment, made again) takes its record back and
//!   appends again.
//! - A writer whose view of the write segment is stale cannot append into a
//!   segment consumers have left: the consumer that moves `next` past the end
//!   of a segment below the write segment seals it first (and looks again if
//!   a record got in before the seal), so the writer finds it full and
//!   re-reads the write segment.
//! - A segment is fully allocated and its directory entry synced before any
//!   record in it can be confirmed.
//! - What a process maps: a process that only writes the lane keeps in its
//!   segment map the write segment and the one it just left, whatever the
//!   backlog; one that reads it (claims, upkeep scans) keeps what it mapped
//!   until retention deletes it. Anything that reads a record holds its own
//!   `Arc<Segment>`, so dropping a map entry never unmaps a segment in use;
//!   a segment looked up again is mapped again.

use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::Arc;

use crate::segment::{claim, AppendError, Segment};

use super::layout::at;
use super::{Lane, LaneError, Pos, MAX_SEQ};

/// Background preparations of segments in flight in this process (each
/// holds its file open), at most [`Preparing::MAX`].
struct Preparing;

static PREPARING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Preparing {
    const MAX: usize = 4;

    /// A slot, if fewer than `MAX` are taken; given back when dropped
    /// (the task ended, or was dropped unrun by a runtime shutting down).
    fn start() -> Option<Preparing> {
        if PREPARING.fetch_add(1, AcqRel) >= Self::MAX {
            PREPARING.fetch_sub(1, AcqRel);
            return None;
        }
        Some(Preparing)
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        PREPARING.fetch_sub(1, AcqRel);
    }
}

impl Lane {
    /// The mapped segment `seq`, if it exists.
    pub(crate) fn segment(&self, seq: u64) -> Result<Option<Arc<Segment>>, LaneError> {
        // Writers and readers mostly use the newest segment: no lock for it.
        #[cfg(not(loom))]
        for cached in [&self.hot, &self.behind] {
            if let Some(s) = cached.load().as_ref() {
                if s.header().seq == seq {
                    return Ok(Some(s.clone()));
                }
            }
        }
        if let Some(s) = self.segments.lock().get(&seq).cloned() {
            #[cfg(not(loom))]
            self.behind.store(Some(s.clone()));
            return Ok(Some(s));
        }
        let Some(seg) = self.storage.open_segment(seq)? else {
            return Ok(None);
        };
        self.segments.lock().insert(seq, seg.clone());
        #[cfg(not(loom))]
        if self
            .hot
            .load()
            .as_ref()
            .is_none_or(|h| h.header().seq < seq)
        {
            self.hot.store(Some(seg.clone()));
        }
        Ok(Some(seg))
    }

    /// Creates segment `seq` unless it exists, but only if it is not below
    /// the lane's write segment or low segment (a stale view would recreate a
    /// segment retention deleted). True if it exists afterwards.
    fn create(&self, seq: u64, record: u64) -> Result<bool, LaneError> {
        if seq < self.load(at::WRITE_SEG) || seq < self.load(at::LOW_SEG) {
            return Ok(false);
        }
        // Tests stall a writer here: its look at the positions goes stale.
        crate::failpoint!("lane::creating");
        self.storage.create_segment(
            self.lane,
            seq,
            segment_size_for(self.segment_size, seq, record),
        )?;
        // Tests stall a writer here, its segment made, not yet checked.
        crate::failpoint!("lane::created");
        // Retention deleted `seq` between the look above and the file made
        // here (it moves the low segment before it deletes): this is a
        // segment readers have left. Nothing may land in it, neither this
        // writer's record (killed before taking it back, it would stay
        // unread until a lone open) nor that of another writer with a stale
        // view that maps it meanwhile: sealed, and removed.
        if seq < self.load(at::LOW_SEG) {
            if let Some(seg) = self.segment(seq)? {
                seg.seal();
            }
            self.segments.lock().remove(&seq);
            self.uncache(|s| s == seq);
            self.storage.delete_segment(seq)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Appends a record; returns where it landed. `body_len` is what the
    /// lane's byte count grows by (the message body). (Tests; the store
    /// uses [`Lane::append_in`].)
    #[cfg(test)]
    pub(crate) fn append(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        ts: u64,
    ) -> Result<Pos, LaneError> {
        self.append_in(payload, body_len, writer, ts)
            .map(|(pos, _)| pos)
    }

    /// [`Lane::append`], also returning the segment written (to sync it):
    /// looked up again afterwards, it could be one this process let go of
    /// meanwhile, to be mapped again, and a failure to map it would fail a
    /// publish whose record was appended.
    pub(crate) fn append_in(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        ts: u64,
    ) -> Result<(Pos, Arc<Segment>), LaneError> {
        let mut created = false;
        // What a segment must hold besides its header for this record.
        let total = crate::segment::record_len(payload.len());
        // Appends taken back because readers were past them: a stale view
        // of a segment retention deleted takes one or two; more means the
        // shared positions themselves are wrong (a damaged page), and going
        // on would create segment after segment for nothing.
        let mut taken_back = 0u32;
        // Rounds where the write segment was missing and could not be made.
        let mut refused = 0u32;
        loop {
            let seq = self.load(at::WRITE_SEG);
            // Tests stall a writer here, holding a write segment that goes
            // stale before it maps it.
            crate::failpoint!("lane::write_segment_read");
            if seq > MAX_SEQ {
                return Err(LaneError::Exhausted { dir: self.name() });
            }
            let Some(seg) = self.segment(seq)? else {
                // The write segment does not exist yet (a new lane, or one
                // whose creation failed): make it.
                if self.create(seq, total)? {
                    created = true;
                } else {
                    // Refused: the write segment is below the low segment
                    // (or moved on meanwhile). Words that stay so are
                    // damaged; going on would loop for good.
                    refused += 1;
                    if refused > 64 {
                        return Err(LaneError::Inconsistent {
                            dir: self.name(),
                            detail: "its write segment is below its low segment and does not exist",
                        });
                    }
                }
                continue;
            };
            // Tests stall a writer here, holding a view that goes stale.
            crate::failpoint!("lane::write_segment_mapped");
            match seg.append_within(payload, body_len, writer, ts, self.segment_size) {
                Ok(off) => {
                    let pos = Pos { seq, off };
                    // A segment this call made, or one that is no longer the
                    // write segment (one load of a word written at each
                    // rotation only): readers may have left it already. (A
                    // writer that read the write segment before retention
                    // deleted it, and mapped it after another stale writer
                    // made it again, appended there unchecked: its record
                    // was confirmed and not read until a lone open.)
                    if (created || self.load(at::WRITE_SEG) != seq) && self.stale(&seg, pos) {
                        taken_back += 1;
                        if taken_back > 64 {
                            return Err(LaneError::Inconsistent {
                                dir: self.name(),
                                detail: "its read positions are past every segment it writes",
                            });
                        }
                        continue;
                    }
                    // Counted at once: a kill before the count leaves the
                    // figure one low until recovery, so nothing (a file
                    // look-up, a task sent to the runtime) comes between.
                    self.word(at::APPENDED).fetch_add(1, AcqRel);
                    self.word(at::APPENDED_BYTES)
                        .fetch_add(u64::from(body_len), AcqRel);
                    if off > seg.header().capacity / 2 && seq < MAX_SEQ {
                        self.prepare(seq + 1);
                    }
                    return Ok((pos, seg));
                }
                Err(AppendError::Full) => {
                    if seq >= MAX_SEQ {
                        return Err(LaneError::Exhausted { dir: self.name() });
                    }
                    created |= self.create(seq + 1, total)?;
                    // A rotation half done: the next segment is there, the
                    // lane not yet moved to it.
                    crate::failpoint!("lane::rotating");
                    let _ =
                        self.word(at::WRITE_SEG)
                            .compare_exchange(seq, seq + 1, AcqRel, Acquire);
                    // A process that only writes the lane needs only the
                    // write segment and the one it just left (writers still
                    // finishing there): it lets go of the others it mapped,
                    // retired or not. Kept, a producer ahead of its
                    // consumers held every segment it wrote mapped, and
                    // with `fsync=always` a descriptor open for each (5,000
                    // after 5 s with 64 KiB segments), until retention
                    // deleted them: a backlog ran a process out of
                    // descriptors or mappings. A process that also reads
                    // the lane keeps them until retention: its upkeep scan
                    // walks from the oldest unsettled record every 100 ms
                    // and would map them all again after each rotation.
                    if self.reads.load(std::sync::atomic::Ordering::Relaxed) {
                        self.unmap_retired();
                    } else {
                        self.let_go_below(seq);
                    }
                }
                Err(AppendError::Stolen) => {}
                Err(AppendError::TooLarge(n)) => return Err(LaneError::TooLarge(n)),
                Err(e @ AppendError::Damaged { .. }) => return Err(LaneError::Damaged(e)),
            }
        }
    }

    /// After appending into a segment this call created, or one that is no
    /// longer the write segment: true when readers
    /// had already moved past that place (the segment was one retention
    /// deleted, recreated from a stale view), in which case the record is
    /// taken back (killed before anyone claims it) and the caller appends
    /// again. A record somebody claimed meanwhile was delivered: kept.
    fn stale(&self, seg: &Segment, pos: Pos) -> bool {
        let passed = self.pos(at::NEXT) > pos || self.load(at::LOW_SEG) > pos.seq;
        if !passed {
            return false;
        }
        let word = seg.claim_word(pos.off);
        let dead = claim::Claim {
            state: claim::DEAD,
            redelivered: false,
            generation: 0,
            owner: 0,
        };
        word.compare_exchange(0, dead.encode(), AcqRel, Acquire)
            .is_ok()
    }

    /// Creates segment `seq` in the background on the allocator's runtime,
    /// once per segment per process, unless it exists.
    fn prepare(&self, seq: u64) {
        let (Some(alloc), Some(dir)) = (self.storage.allocator(), self.storage.dir()) else {
            return;
        };
        let Some(rt) = alloc.runtime() else {
            return;
        };
        // (Every append past the middle of a segment asks: a load first.)
        if self.prepared.load(Acquire) >= seq || self.prepared.fetch_max(seq, AcqRel) >= seq {
            return;
        }
        // A preparation holds files open while its `fallocate` runs: a
        // publisher spraying 256 lanes had 510 descriptors open at once
        // for them. Past a few at a time, a later append asks again.
        let Some(slot) = Preparing::start() else {
            let _ = self
                .prepared
                .compare_exchange(seq, seq - 1, AcqRel, Acquire);
            return;
        };
        if self.storage.exists(seq) {
            return;
        }
        let (dir, lane, size, state, cut) = (
            dir.to_owned(),
            self.lane,
            segment_size_for(self.segment_size, seq, 0),
            self.state.clone(),
            alloc.cut().cloned(),
        );
        drop(rt.spawn(0, move || async move {
            let _slot = slot;
            // Never below the write or low segment (see `create`); the
            // state page read as the store's operations read it (`cut.rs`).
            let below = {
                let _g = match cut.as_deref().map(crate::cut::CutFlag::enter) {
                    Some(Err(_)) => return,
                    g => g,
                };
                let write = state.u64_at(at::WRITE_SEG).load(Acquire);
                let low = state.u64_at(at::LOW_SEG).load(Acquire);
                seq < write || seq < low
            };
            if below {
                return;
            }
            if let Err(e) = super::prepare_segment(&dir, lane, seq, size).await {
                // The writer that needs it tries again and reports the error.
                tracing::debug!(dir = %dir.display(), seq, error = %e, "background segment preparation failed");
            }
        }));
    }

    /// Drops this process's mappings of segments that retention deleted (in
    /// any process): the disk space of a deleted file comes back only once
    /// every process has unmapped it. Bodies still held keep theirs alive.
    pub(crate) fn unmap_retired(&self) {
        self.let_go_below(0);
    }

    /// Drops this process's map entries of segments below `keep` (and its
    /// mappings of retired ones): a mapping lasts while anything else holds
    /// it (a record handed out, a sync under way, the lock-free caches).
    fn let_go_below(&self, keep: u64) {
        let low = self.load(at::LOW_SEG);
        self.segments.lock().retain(|seq, _| *seq >= keep.max(low));
        self.uncache(|seq| seq < low);
    }

    /// Lets go of the cached segments whose number `gone` names (retired:
    /// their mapping must not outlive them here).
    pub(crate) fn uncache(&self, gone: impl Fn(u64) -> bool) {
        #[cfg(not(loom))]
        for cached in [&self.hot, &self.behind] {
            if cached.load().as_ref().is_some_and(|h| gone(h.header().seq)) {
                cached.store(None);
            }
        }
        #[cfg(loom)]
        let _ = gone;
    }

    /// Segments this process has mapped (for tests of retention): those in
    /// its map and those only its lock-free caches still hold.
    #[cfg(test)]
    pub(crate) fn mapped_segments(&self) -> usize {
        let map = self.segments.lock();
        #[allow(unused_mut)]
        let mut n = map.len();
        #[cfg(not(loom))]
        for cached in [&self.hot, &self.behind] {
            if let Some(s) = cached.load().as_ref() {
                n += usize::from(!map.contains_key(&s.header().seq));
            }
        }
        n
    }
}

/// The first segment of a lane: a lane with a few messages (a priority
/// seldom used) takes this much disk, not a whole `segment_size`.
pub(crate) const FIRST_SEGMENT: u64 = 1 << 20;

/// The size of a lane's segment `seq` for a writer configured with
/// `largest`: 1 MiB for the first, doubling with each number up to
/// `largest` (a lane that is used a lot reaches it after six segments),
/// and in any case large enough for a record of `record` bytes (which the
/// writer checked fits in `largest` or in the segment it moves on from).
pub(crate) fn segment_size_for(largest: u64, seq: u64, record: u64) -> u64 {
    const PAGE: u64 = 4096;
    let grown = if seq < 40 {
        (FIRST_SEGMENT << seq).min(largest)
    } else {
        largest
    };
    let needed = crate::segment::HEADER_LEN.saturating_add(record);
    if needed <= grown {
        grown
    } else {
        needed.div_ceil(PAGE) * PAGE
    }
}
