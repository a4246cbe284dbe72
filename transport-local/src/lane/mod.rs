//! A priority lane of one queue: a chain of segments in one directory plus a
//! small shared state page, used by any number of processes at once.
//!
//! Files: `position.rs` (where a record is, and delivery tokens),
//! `layout.rs` (the state page and the claim word), `chain.rs` (segments
//! and appends), `claims.rs` (claim, settle, restore, reclaim), `upkeep.rs`
//! (unblocking, retention, recovery).
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

mod chain;
mod claims;
mod layout;
mod position;
mod upkeep;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::segment::{RecordMeta, Segment, SegmentError, HEADER_LEN};
use crate::shared_page::SharedPage;

use layout::at;
pub(crate) use layout::claim;
use position::NO_POS;
pub(crate) use position::{token, token_lane, Pos};

/// A record handed to a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// Where it is.
    pub(crate) pos: Pos,
    /// The segment holding it (keeps the mapping alive).
    pub(crate) segment: Arc<Segment>,
    /// Its header.
    pub(crate) meta: RecordMeta,
    /// Delivered before.
    pub(crate) redelivered: bool,
}

/// Why a lane operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LaneError {
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

/// One lane, open in this process.
#[derive(Debug)]
pub(crate) struct Lane {
    dir: PathBuf,
    lane: u32,
    segment_size: u64,
    state: SharedPage,
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

pub(super) fn seg_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

impl Lane {
    /// Opens (creating if needed) the lane in `dir`; segments are allocated
    /// with `fallocate(2)` by the writer that needs one.
    pub(crate) fn open(dir: &Path, lane: u32, segment_size: u64) -> Result<Lane, LaneError> {
        Self::open_with(dir, lane, segment_size, Allocator::direct())
    }

    /// Opens the lane in `dir`, allocating segments through `alloc` (on a
    /// runtime's io_uring, the next one prepared in the background).
    pub(crate) fn open_with(
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
        let state = SharedPage::open(&dir.join("state")).map_err(io)?;
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

    pub(super) fn word(&self, off: usize) -> &AtomicU64 {
        self.state.u64_at(off)
    }

    pub(super) fn signed(&self, off: usize) -> &AtomicI64 {
        self.state.i64_at(off)
    }

    pub(super) fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(seg_name(seq))
    }

    /// Ready records, their payload bytes, and claimed-not-settled records,
    /// across all processes.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
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
    pub(crate) fn ready_at_most(&self) -> (u64, u64) {
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
