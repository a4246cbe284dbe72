//! A priority lane of one queue: a chain of segments in one directory plus a
//! small shared state page, used by any number of processes at once.
//!
//! ```text
//! <lane dir>/state                 4096 bytes, mapped shared (layout below)
//! <lane dir>/<seq as 16 hex>.seg   segments 0, 1, 2, ... (see segment.rs)
//! ```
//!
//! # Invariants
//! - Producers append to the segment named by `write_seg`; the first writer to
//!   find it full creates the next one (formatted under a unique temporary
//!   name, then hard-linked into place: one file wins) and moves `write_seg` on with a compare-and-swap.
//! - Consumers claim records through the shared `next` position, oldest
//!   first: a claim is a compare-and-swap of the record's claim word from ready
//!   to claimed-by-owner, so each record is claimed by exactly one consumer in
//!   any process; `next` only moves forward.
//! - A restored record (its claimer let go, closed, died or its lease ran out)
//!   goes back to ready in place, flagged redelivered, and the shared restore
//!   mark (generation + lowest restored position, one word) makes consumers
//!   look there before `next`: restored records come before everything newer.
//!   A consumer clears the mark only with a compare-and-swap against the
//!   generation it scanned under, so a restore never slips past unseen.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicI64, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Release,
};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::segment::{AppendError, RecordMeta, Segment, SegmentError, Slot, HEADER_LEN};
use crate::state::StatePage;

/// A record's place: segment number and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Segment number.
    pub seq: u64,
    /// Offset in the segment.
    pub off: u64,
}

const OFF_BITS: u32 = 36;
const SEQ_BITS: u32 = 20;
const NO_POS: u64 = (1 << (OFF_BITS + SEQ_BITS)) - 1;

impl Pos {
    fn pack(self) -> u64 {
        (self.seq << OFF_BITS) | self.off
    }
    fn unpack(v: u64) -> Pos {
        Pos {
            seq: (v & NO_POS) >> OFF_BITS,
            off: v & ((1 << OFF_BITS) - 1),
        }
    }
}

/// Claim-word states (bits 0-1), the redelivered bit (2), and the owner:
/// process id in bits 32.., low bits of its start time in bits 3..32 (see
/// [`crate::owner`]), so a recycled pid is not mistaken for the claimer.
pub mod claim {
    /// Not delivered (or restored).
    pub const READY: u64 = 0;
    /// Delivered to the owner in bits 32..; not settled.
    pub const CLAIMED: u64 = 1;
    /// Acknowledged.
    pub const ACKED: u64 = 2;
    /// Rejected, expired or dropped (dead-lettered elsewhere if configured).
    pub const DEAD: u64 = 3;
    /// Delivered before and returned.
    pub const REDELIVERED: u64 = 4;

    /// The state bits.
    pub fn state(w: u64) -> u64 {
        w & 3
    }
    /// The owner (process id and start-time bits) of a claimed word.
    pub fn owner(w: u64) -> u64 {
        w & !7
    }
}

/// Offsets of the shared words in the state page.
mod at {
    pub(super) const WRITE_SEG: usize = 0;
    pub(super) const NEXT: usize = 64;
    pub(super) const RESTORE: usize = 128;
    // Ready = appended + restored - taken; each pair on its own cache line,
    // written by one side only (producers, restorers, consumers), so a
    // publish and a claim never bounce a counter line between them.
    pub(super) const APPENDED: usize = 192;
    pub(super) const APPENDED_BYTES: usize = 200;
    pub(super) const TAKEN: usize = 512;
    pub(super) const TAKEN_BYTES: usize = 520;
    pub(super) const RESTORED: usize = 576;
    pub(super) const RESTORED_BYTES: usize = 584;
    pub(super) const UNACKED: usize = 320;
    pub(super) const HEAD: usize = 384;
    pub(super) const LOW_SEG: usize = 448;
}

/// A record handed to a consumer.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Where it is.
    pub pos: Pos,
    /// The segment holding it (keeps the mapping alive).
    pub segment: Arc<Segment>,
    /// Its header.
    pub meta: RecordMeta,
    /// Delivered before.
    pub redelivered: bool,
}

/// Why a lane operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaneError {
    /// A segment could not be created or opened.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The state page or directory could not be used.
    #[error("lane {dir}: {source}")]
    Io {
        /// The lane directory.
        dir: String,
        /// The error.
        source: std::io::Error,
    },
    /// The record is larger than a segment.
    #[error("a record of {0} bytes does not fit in a segment")]
    TooLarge(u64),
}

/// A fresh, uniquely named temporary file for segment `seq` in `dir`.
fn new_tmp(dir: &Path, seq: u64) -> std::io::Result<(PathBuf, File)> {
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{}.tmp-{}-{}",
        seg_name(seq),
        std::process::id(),
        ATTEMPT.fetch_add(1, AcqRel)
    ));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)?;
    Ok((tmp, file))
}

fn no_space(dir: &Path, size: u64, e: std::io::Error) -> LaneError {
    LaneError::Io {
        dir: dir.display().to_string(),
        source: std::io::Error::new(
            e.kind(),
            format!("cannot allocate a {size}-byte segment (disk full or file too large?): {e}"),
        ),
    }
}

/// Formats an allocated temporary file as segment `seq` and links it into
/// place (whoever links first wins; the temporary name goes either way).
fn finish(dir: &Path, tmp: &Path, file: File, lane: u32, seq: u64) -> Result<(), LaneError> {
    let seg = Segment::format(tmp, file, lane, seq);
    let linked =
        seg.map(drop).and_then(
            |()| match std::fs::hard_link(tmp, dir.join(seg_name(seq))) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(source) => Err(SegmentError::Io {
                    path: dir.join(seg_name(seq)).display().to_string(),
                    source,
                }),
            },
        );
    let _ = std::fs::remove_file(tmp);
    // The new name must survive a power loss with the records synced into
    // the file (fdatasync of the file does not cover its directory entry).
    let synced = linked.and_then(|()| {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SegmentError::Io {
                path: dir.display().to_string(),
                source,
            })
    });
    Ok(synced?)
}

/// Creates segment `seq` of a lane from a runtime core: the `fallocate` goes
/// through the core's io_uring; formatting and linking are a few syscalls.
async fn prepare_segment(dir: &Path, lane: u32, seq: u64, size: u64) -> Result<(), LaneError> {
    if dir.join(seg_name(seq)).exists() {
        return Ok(());
    }
    let io = |source| LaneError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let (tmp, file) = new_tmp(dir, seq).map_err(io)?;
    let dup = Arc::new(file.try_clone().map_err(io)?);
    if let Err(e) = crate::alloc::ring_allocate(&dup, size).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(no_space(dir, size, e));
    }
    drop(dup);
    finish(dir, &tmp, file, lane, seq)
}

/// One lane, open in this process.
#[derive(Debug)]
pub struct Lane {
    dir: PathBuf,
    lane: u32,
    segment_size: u64,
    state: StatePage,
    segments: Mutex<HashMap<u64, Arc<Segment>>>,
    /// The uncommitted reservation at `next` this process is watching, and
    /// since when (for writers that died before writing their header).
    pending_since: Mutex<Option<(Pos, std::time::Instant)>>,
    /// The newest segment looked up (read without a lock).
    hot: arc_swap::ArcSwapOption<Segment>,
    /// Where segment space comes from.
    alloc: Arc<Allocator>,
    /// Highest segment this process asked to prepare in the background.
    prepared: AtomicU64,
    /// The consumers' `taken` counters as this process last read them.
    taken_seen: AtomicU64,
    taken_bytes_seen: AtomicU64,
}

fn seg_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

impl Lane {
    /// Opens (creating if needed) the lane in `dir`; segments are allocated
    /// with `fallocate(2)` by the writer that needs one.
    pub fn open(dir: &Path, lane: u32, segment_size: u64) -> Result<Lane, LaneError> {
        Self::open_with(dir, lane, segment_size, Allocator::direct())
    }

    /// Opens the lane in `dir`, allocating segments through `alloc` (on a
    /// runtime's io_uring, the next one prepared in the background).
    pub fn open_with(
        dir: &Path,
        lane: u32,
        segment_size: u64,
        alloc: Arc<Allocator>,
    ) -> Result<Lane, LaneError> {
        let io = |source| LaneError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let state = StatePage::open(&dir.join("state")).map_err(io)?;
        let l = Lane {
            dir: dir.to_owned(),
            lane,
            segment_size,
            state,
            segments: Mutex::new(HashMap::new()),
            pending_since: Mutex::new(None),
            hot: arc_swap::ArcSwapOption::empty(),
            alloc,
            prepared: AtomicU64::new(0),
            taken_seen: AtomicU64::new(0),
            taken_bytes_seen: AtomicU64::new(0),
        };
        // Make sure segment 0 exists; `next` starts at its first record.
        l.segment_or_create(0)?;
        let _ = l.word(at::NEXT).compare_exchange(
            0,
            Pos {
                seq: 0,
                off: HEADER_LEN,
            }
            .pack(),
            AcqRel,
            Acquire,
        );
        let _ = l.word(at::HEAD).compare_exchange(
            0,
            Pos {
                seq: 0,
                off: HEADER_LEN,
            }
            .pack(),
            AcqRel,
            Acquire,
        );
        let _ = l
            .word(at::RESTORE)
            .compare_exchange(0, NO_POS, AcqRel, Acquire);
        Ok(l)
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        self.state.u64_at(off)
    }

    fn signed(&self, off: usize) -> &AtomicI64 {
        self.state.i64_at(off)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(seg_name(seq))
    }

    /// The mapped segment `seq`, if its file exists.
    pub fn segment(&self, seq: u64) -> Result<Option<Arc<Segment>>, LaneError> {
        // Writers and readers mostly use the newest segment: no lock for it.
        if let Some(s) = self.hot.load().as_ref() {
            if s.header().seq == seq {
                return Ok(Some(s.clone()));
            }
        }
        if let Some(s) = self.segments.lock().get(&seq) {
            if self
                .hot
                .load()
                .as_ref()
                .is_none_or(|h| h.header().seq < seq)
            {
                self.hot.store(Some(s.clone()));
            }
            return Ok(Some(s.clone()));
        }
        let path = self.path(seq);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LaneError::Io {
                    dir: self.dir.display().to_string(),
                    source,
                })
            }
        };
        let seg = Arc::new(Segment::open(&path, file)?);
        self.segments.lock().insert(seq, seg.clone());
        Ok(Some(seg))
    }

    /// Segment `seq`, created if no process has created it yet.
    fn segment_or_create(&self, seq: u64) -> Result<Arc<Segment>, LaneError> {
        if let Some(s) = self.segment(seq)? {
            return Ok(s);
        }
        let (tmp, file) = new_tmp(&self.dir, seq).map_err(|source| LaneError::Io {
            dir: self.dir.display().to_string(),
            source,
        })?;
        if let Err(e) = self.alloc.allocate(&file, self.segment_size) {
            let _ = std::fs::remove_file(&tmp);
            return Err(no_space(&self.dir, self.segment_size, e));
        }
        finish(&self.dir, &tmp, file, self.lane, seq)?;
        let io = |source| LaneError::Io {
            dir: self.dir.display().to_string(),
            source,
        };
        self.segment(seq)?.ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("segment {seq} vanished after creation"),
            ))
        })
    }

    /// Appends a record; returns where it landed.
    /// `body_len` is what the lane's byte count grows by (the message body).
    pub fn append(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        ts: u64,
    ) -> Result<Pos, LaneError> {
        loop {
            let seq = self.word(at::WRITE_SEG).load(Acquire);
            // The newest segment without touching its reference count (which
            // this process's consumers would bounce between cores).
            let hot = self.hot.load();
            let owned;
            let seg = match hot.as_ref() {
                Some(s) if s.header().seq == seq => s,
                _ => {
                    owned = self.segment_or_create(seq)?;
                    &owned
                }
            };
            match seg.append(payload, body_len, writer, ts) {
                Ok(off) => {
                    if off > seg.header().capacity / 2 {
                        self.prepare(seq + 1);
                    }
                    self.word(at::APPENDED).fetch_add(1, AcqRel);
                    self.word(at::APPENDED_BYTES)
                        .fetch_add(u64::from(body_len), AcqRel);
                    return Ok(Pos { seq, off });
                }
                Err(AppendError::Full) => {
                    self.segment_or_create(seq + 1)?;
                    let _ =
                        self.word(at::WRITE_SEG)
                            .compare_exchange(seq, seq + 1, AcqRel, Acquire);
                    // A producer-only process lets go of retired segments here.
                    self.unmap_retired();
                }
                Err(AppendError::Stolen) => {}
                Err(AppendError::TooLarge(n)) => return Err(LaneError::TooLarge(n)),
            }
        }
    }

    /// Creates segment `seq` in the background on the allocator's runtime,
    /// once per segment per process, unless it exists.
    fn prepare(&self, seq: u64) {
        let Some(rt) = self.alloc.runtime() else {
            return;
        };
        if self.prepared.fetch_max(seq, AcqRel) >= seq || self.path(seq).exists() {
            return;
        }
        let (dir, lane, size) = (self.dir.clone(), self.lane, self.segment_size);
        drop(rt.spawn(0, move || async move {
            if let Err(e) = prepare_segment(&dir, lane, seq, size).await {
                // The writer that needs it tries again and reports the error.
                tracing::debug!(dir = %dir.display(), seq, error = %e, "background segment preparation failed");
            }
        }));
    }

    fn try_claim(
        &self,
        seg: &Arc<Segment>,
        pos: Pos,
        meta: RecordMeta,
        owner: u64,
        expect: u64,
    ) -> Option<Claimed> {
        let word = seg.claim_word(pos.off);
        let mine = claim::CLAIMED | (expect & claim::REDELIVERED) | claim::owner(owner);
        word.compare_exchange(expect, mine, AcqRel, Acquire).ok()?;
        self.word(at::TAKEN).fetch_add(1, AcqRel);
        self.word(at::TAKEN_BYTES)
            .fetch_add(u64::from(meta.body_len), AcqRel);
        self.signed(at::UNACKED).fetch_add(1, AcqRel);
        Some(Claimed {
            pos,
            segment: seg.clone(),
            meta,
            redelivered: expect & claim::REDELIVERED != 0,
        })
    }

    /// Walks records from `from` to `until` (exclusive), calling `f` on each
    /// (stops when `f` returns true); checksums are verified only if `verify`.
    fn walk_with(
        &self,
        from: Pos,
        until: Pos,
        verify: bool,
        mut f: impl FnMut(&Arc<Segment>, Pos) -> bool,
    ) -> Result<(), LaneError> {
        let mut pos = from;
        while pos < until {
            let Some(seg) = self.segment(pos.seq)? else {
                return Ok(());
            };
            let slot = if verify {
                seg.read(pos.off)
            } else {
                seg.skim(pos.off)
            };
            match slot {
                Slot::Record { len, .. } => {
                    if f(&seg, pos) {
                        return Ok(());
                    }
                    pos.off += len;
                }
                Slot::Padding { len } | Slot::Moved { len } => pos.off += len,
                Slot::Corrupt { .. } => pos.off = seg.next_valid(pos.off),
                Slot::Pending => return Ok(()),
                Slot::End => {
                    if pos.seq >= until.seq {
                        return Ok(());
                    }
                    pos = Pos {
                        seq: pos.seq + 1,
                        off: HEADER_LEN,
                    };
                }
            }
        }
        Ok(())
    }

    /// Claims the oldest ready record for `owner`: restored ones first, then
    /// the never-delivered ones in log order. `None` when nothing is ready.
    pub fn claim(&self, owner: u64) -> Result<Option<Claimed>, LaneError> {
        // Restored records, below `next`.
        loop {
            let mark = self.word(at::RESTORE).load(Acquire);
            let low = mark & NO_POS;
            if low == NO_POS {
                break;
            }
            let next = Pos::unpack(self.word(at::NEXT).load(Acquire));
            let mut got = None;
            self.walk_with(Pos::unpack(low), next, false, |seg, pos| {
                let w = seg.claim_word(pos.off).load(Acquire);
                if claim::state(w) == claim::READY {
                    if let Slot::Record { meta, .. } = seg.read(pos.off) {
                        got = self.try_claim(seg, pos, meta, owner, w);
                    }
                }
                got.is_some()
            })?;
            if got.is_some() {
                return Ok(got);
            }
            // Nothing restored is left: clear the mark unless a restore came in.
            let cleared = (mark & !NO_POS) | NO_POS;
            if self
                .word(at::RESTORE)
                .compare_exchange(mark, cleared, AcqRel, Acquire)
                .is_ok()
            {
                break;
            }
        }
        // Never-delivered records, at `next`.
        loop {
            let packed = self.word(at::NEXT).load(Acquire);
            let pos = Pos::unpack(packed);
            let Some(seg) = self.segment(pos.seq)? else {
                return Ok(None);
            };
            let advance = |to: Pos| {
                let _ = self
                    .word(at::NEXT)
                    .compare_exchange(packed, to.pack(), AcqRel, Acquire);
            };
            match seg.read(pos.off) {
                Slot::Record { len, meta } => {
                    let got = self.try_claim(&seg, pos, meta, owner, claim::READY);
                    advance(Pos {
                        seq: pos.seq,
                        off: pos.off + len,
                    });
                    if got.is_some() {
                        return Ok(got);
                    }
                }
                Slot::Padding { len } | Slot::Moved { len } => advance(Pos {
                    seq: pos.seq,
                    off: pos.off + len,
                }),
                Slot::Corrupt { .. } => advance(Pos {
                    seq: pos.seq,
                    off: seg.next_valid(pos.off),
                }),
                Slot::Pending => return Ok(None),
                Slot::End => {
                    let done = seg.is_sealed()
                        || pos.off + crate::segment::RECORD_HEADER_LEN > seg.header().capacity;
                    if done && self.segment(pos.seq + 1)?.is_some() {
                        advance(Pos {
                            seq: pos.seq + 1,
                            off: HEADER_LEN,
                        });
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Settles a claimed record: `to` is [`claim::ACKED`] or [`claim::DEAD`].
    /// False if `owner` no longer holds it.
    pub fn settle(&self, c: &Claimed, owner: u64, to: u64) -> bool {
        let word = c.segment.claim_word(c.pos.off);
        let cur = word.load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        let ok = word.compare_exchange(cur, to, AcqRel, Acquire).is_ok();
        if ok {
            self.signed(at::UNACKED).fetch_sub(1, AcqRel);
        }
        ok
    }

    /// Returns a claimed record to ready, flagged redelivered, ahead of
    /// everything newer. False if `owner` no longer holds it.
    pub fn restore(&self, c: &Claimed, owner: u64) -> bool {
        let word = c.segment.claim_word(c.pos.off);
        let cur = word.load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        // A ready record has no lease: the next claimer starts without one.
        c.segment.deadline_word(c.pos.off).store(0, Release);
        if word
            .compare_exchange(cur, claim::READY | claim::REDELIVERED, AcqRel, Acquire)
            .is_err()
        {
            return false;
        }
        self.signed(at::UNACKED).fetch_sub(1, AcqRel);
        self.word(at::RESTORED).fetch_add(1, AcqRel);
        self.word(at::RESTORED_BYTES)
            .fetch_add(u64::from(c.meta.body_len), AcqRel);
        self.mark_restored(c.pos);
        true
    }

    fn mark_restored(&self, pos: Pos) {
        let w = self.word(at::RESTORE);
        let mut cur = w.load(Acquire);
        loop {
            let gen = (cur >> (OFF_BITS + SEQ_BITS)).wrapping_add(1) & 0xff;
            let low = (cur & NO_POS).min(pos.pack());
            let new = (gen << (OFF_BITS + SEQ_BITS)) | low;
            match w.compare_exchange(cur, new, AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Sets the lease deadline of a record `owner` holds (`CLOCK_MONOTONIC`
    /// ns, see [`crate::owner::shared_now_ns`]; 0 = none). False if `owner`
    /// no longer holds it.
    pub fn set_deadline(&self, c: &Claimed, owner: u64, deadline: u64) -> bool {
        let cur = c.segment.claim_word(c.pos.off).load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        c.segment.deadline_word(c.pos.off).store(deadline, Release);
        true
    }

    /// Restores every claimed record whose owner `alive` says is gone, or
    /// whose lease deadline lies more than `grace` ns before `now` and whose
    /// owner is not `me` (this process's own leases are its engine's to
    /// expire; the grace leaves a live owner time to do so). Returns how many
    /// came back. Also moves `head` up to the first unsettled record.
    pub fn reclaim(
        &self,
        mut alive: impl FnMut(u64) -> bool,
        me: u64,
        now: u64,
        grace: u64,
    ) -> Result<usize, LaneError> {
        let head = self.word(at::HEAD).load(Acquire);
        let from = Pos::unpack(head);
        let until = Pos::unpack(self.word(at::NEXT).load(Acquire));
        let mut n = 0;
        // The first record still ready or claimed: `head` can move up to it.
        let mut first_open: Option<Pos> = None;
        self.walk_with(from, until, false, |seg, pos| {
            let word = seg.claim_word(pos.off);
            let cur = word.load(Acquire);
            let state = claim::state(cur);
            if first_open.is_none() && (state == claim::READY || state == claim::CLAIMED) {
                first_open = Some(pos);
            }
            if state != claim::CLAIMED {
                return false;
            }
            let owner = claim::owner(cur);
            let deadline = seg.deadline_word(pos.off).load(Acquire);
            let expired = owner != me && deadline != 0 && now > deadline.saturating_add(grace);
            if !expired && (owner == me || alive(owner)) {
                return false;
            }
            seg.deadline_word(pos.off).store(0, Release);
            let back = claim::READY | claim::REDELIVERED;
            if word.compare_exchange(cur, back, AcqRel, Acquire).is_ok() {
                if let Slot::Record { meta, .. } = seg.skim(pos.off) {
                    self.signed(at::UNACKED).fetch_sub(1, AcqRel);
                    self.word(at::RESTORED).fetch_add(1, AcqRel);
                    self.word(at::RESTORED_BYTES)
                        .fetch_add(u64::from(meta.body_len), AcqRel);
                }
                self.mark_restored(pos);
                n += 1;
            }
            false
        })?;
        let to = first_open.unwrap_or(until);
        if to > from {
            let _ = self
                .word(at::HEAD)
                .compare_exchange(head, to.pack(), AcqRel, Acquire);
        }
        Ok(n)
    }

    /// A reservation at `next` that never got committed blocks every consumer
    /// of the lane: turn it into padding when its writer is gone (its pid is
    /// in the record header and `alive` says no) or, if the writer died before
    /// even writing its header, when it has been pending longer than `max_age`
    /// as seen by this process. True if a hole was padded.
    pub fn unblock(
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
    pub fn retire(&self) -> Result<usize, LaneError> {
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
    pub fn recover(&self) -> Result<crate::recovery::Totals, LaneError> {
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
    fn unmap_retired(&self) {
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
    pub fn mapped_segments(&self) -> usize {
        self.segments.lock().len()
    }

    /// Ready records, their payload bytes, and claimed-not-settled records,
    /// across all processes.
    pub fn counts(&self) -> (u64, u64, u64) {
        // Taken last: it only grows, so a late read can only lower the result.
        let (made, made_b) = self.made_ready();
        let taken = self.word(at::TAKEN).load(Acquire);
        let taken_b = self.word(at::TAKEN_BYTES).load(Acquire);
        self.taken_seen.fetch_max(taken, AcqRel);
        self.taken_bytes_seen.fetch_max(taken_b, AcqRel);
        (
            made.saturating_sub(taken),
            made_b.saturating_sub(taken_b),
            self.signed(at::UNACKED).load(Acquire).max(0) as u64,
        )
    }

    /// Ready records and bytes, possibly overestimated (never under): the
    /// consumers' counters as this process last read them, so a publish checks
    /// a queue's limits without touching the lines consumers write. When the
    /// estimate reaches a limit, [`Lane::counts`] gives the exact figure (and
    /// refreshes the estimate).
    pub fn ready_at_most(&self) -> (u64, u64) {
        let (made, made_b) = self.made_ready();
        (
            made.saturating_sub(self.taken_seen.load(Acquire)),
            made_b.saturating_sub(self.taken_bytes_seen.load(Acquire)),
        )
    }

    /// Records (and body bytes) ever made ready: appended plus restored.
    fn made_ready(&self) -> (u64, u64) {
        let w = |o| self.word(o).load(Acquire);
        (
            w(at::APPENDED) + w(at::RESTORED),
            w(at::APPENDED_BYTES) + w(at::RESTORED_BYTES),
        )
    }
}
