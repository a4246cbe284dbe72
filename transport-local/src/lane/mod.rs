//! A priority lane of one queue: a chain of segments in one directory plus a
//! small shared state page, used by any number of processes at once.
//!
//! Files: `position.rs` (where a record is, and delivery tokens),
//! `layout.rs` (the state page), `storage.rs` (segment files, or modelled
//! memory for the loom models in `model.rs`), `chain.rs` (segments and
//! appends), `claims.rs` (claim, settle, restore, reclaim), `upkeep.rs`
//! (unblocking, retention, recovery).
//!
//! ```text
//! <lane dir>/state                 4096 bytes, mapped shared (layout.rs)
//! <lane dir>/<seq as 16 hex>.seg   segments (segment.rs)
//! <lane dir>/quarantine            corrupt records set aside by recovery
//! ```
//!
//! # Invariants
//! - Producers append to the segment named by `write_seg`; the first writer
//!   to find it full makes sure the next exists and moves `write_seg` on with
//!   a compare-and-swap. A segment below `write_seg` is full by construction
//!   (the writer that moved `write_seg` padded its tail first), so readers
//!   treat any segment below `write_seg` as done at its end. A record too
//!   large for the write segment, but not for the writer's `segment_size`,
//!   seals it the same way; segments of a lane differ in size (each header
//!   says its own: 1 MiB first, doubling, or what a record needs).
//! - No segment is created below `write_seg` or below `low_seg`: a writer
//!   whose view is stale re-reads `write_seg` instead of recreating a segment
//!   retention deleted. Opening a lane creates no segment.
//! - Consumers claim records through the shared `next` position, oldest
//!   first: a claim is a compare-and-swap of the record's claim word from
//!   ready to claimed-by-owner, so each record is claimed by exactly one
//!   consumer in any process; `next` only moves forward.
//! - A restored record (its claimer let go, closed, died or its lease ran out)
//!   goes back to ready in place, and the shared restore mark (the lowest
//!   such position) makes consumers look there before `next`: restored
//!   records come before everything newer, in their original order.

mod chain;
mod claims;
mod layout;
#[cfg(all(test, loom))]
mod loom_model;
mod position;
mod storage;
mod upkeep;

use std::collections::HashMap;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::Arc;

use crate::mem::AtomicU64;
use crate::segment::{RecordMeta, Segment, SegmentError};
use crate::shared_page::SharedPage;
use crate::sync::Mutex;

pub(crate) use layout::at;
pub(crate) use position::{token, Pos, MAX_SEQ, NO_POS};
pub(crate) use storage::prepare_segment;
#[cfg(all(test, loom))]
pub(crate) use storage::ModelDisk;
pub(crate) use storage::Storage;

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
    /// The claim generation (tags the lease deadline).
    pub(crate) generation: u16,
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
    /// A segment is damaged where a writer would append; nothing was
    /// written.
    #[error(transparent)]
    Damaged(crate::segment::AppendError),
    /// The lane used up its segment numbers.
    #[error("lane {dir} used its last segment number ({MAX_SEQ}); purge or recreate the queue")]
    Exhausted {
        /// The lane directory.
        dir: String,
    },
    /// The lane's shared words contradict each other (a damaged state
    /// page); recovery, on the next open with the store to itself, rebuilds
    /// them from the segments.
    #[error("lane {dir}: {detail}; open the store with no other process using it to recover it")]
    Inconsistent {
        /// The lane directory.
        dir: String,
        /// What contradicts what.
        detail: &'static str,
    },
}

/// One lane, open in this process.
#[derive(Debug)]
pub(crate) struct Lane {
    storage: Storage,
    lane: u32,
    segment_size: u64,
    state: Arc<SharedPage>,
    /// Segments this process has mapped.
    segments: Mutex<HashMap<u64, Arc<Segment>>>,
    /// The newest segment looked up (read without a lock).
    #[cfg(not(loom))]
    hot: arc_swap::ArcSwapOption<Segment>,
    /// The last segment looked up behind the newest: where a consumer with
    /// a backlog reads (read without a lock too).
    #[cfg(not(loom))]
    behind: arc_swap::ArcSwapOption<Segment>,
    /// Highest segment this process asked to prepare in the background.
    prepared: std::sync::atomic::AtomicU64,
    /// The consumers' `taken` counters as this process last read them.
    taken_seen: std::sync::atomic::AtomicU64,
    taken_bytes_seen: std::sync::atomic::AtomicU64,
    /// Records this process found with a damaged claim word and set aside.
    damaged_claims: std::sync::atomic::AtomicU64,
    /// The missing segment this process last warned of (each walk passes
    /// it again; one warning a gap is enough).
    gap_warned: std::sync::atomic::AtomicU64,
    /// This process has read the lane (claims, upkeep scans): it keeps the
    /// segments it mapped until retention deletes them, as its scans walk
    /// them again; a process that only writes lets go of those behind it.
    reads: std::sync::atomic::AtomicBool,
}

impl Lane {
    /// Opens the lane stored in `storage` (its state page is created if
    /// missing; no segment is).
    pub(crate) fn open(storage: Storage, lane: u32, segment_size: u64) -> Result<Lane, LaneError> {
        let state = storage.state_page()?;
        let l = Lane {
            storage,
            lane,
            segment_size,
            state,
            segments: Mutex::new(HashMap::new()),
            #[cfg(not(loom))]
            hot: arc_swap::ArcSwapOption::empty(),
            #[cfg(not(loom))]
            behind: arc_swap::ArcSwapOption::empty(),
            prepared: std::sync::atomic::AtomicU64::new(0),
            taken_seen: std::sync::atomic::AtomicU64::new(0),
            taken_bytes_seen: std::sync::atomic::AtomicU64::new(0),
            damaged_claims: std::sync::atomic::AtomicU64::new(0),
            gap_warned: std::sync::atomic::AtomicU64::new(u64::MAX),
            reads: std::sync::atomic::AtomicBool::new(false),
        };
        // A fresh page: `next` and `head` at the first record of segment 0,
        // no restore mark. (Zero means "not set"; whoever comes first sets.)
        for w in [at::NEXT, at::HEAD] {
            let _ = l
                .word(w)
                .compare_exchange(0, Pos::start(0).pack(), AcqRel, Acquire);
        }
        let _ = l
            .word(at::RESTORE_LOW)
            .compare_exchange(0, NO_POS, AcqRel, Acquire);
        Ok(l)
    }

    /// Opens the lane in directory `dir`, allocating segments with
    /// `fallocate(2)` in the writer (tests; the store passes its allocator).
    #[cfg(test)]
    pub(crate) fn open_dir(
        dir: &std::path::Path,
        lane: u32,
        segment_size: u64,
    ) -> Result<Lane, LaneError> {
        Self::open(
            Storage::Files {
                dir: dir.to_owned(),
                alloc: crate::alloc::Allocator::direct(),
            },
            lane,
            segment_size,
        )
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        self.state.u64_at(off)
    }

    fn load(&self, off: usize) -> u64 {
        self.word(off).load(Acquire)
    }

    fn pos(&self, off: usize) -> Pos {
        Pos::unpack(self.load(off))
    }

    /// A shared word of the lane's state page (tests force states with it).
    #[cfg(test)]
    pub(crate) fn shared_word(&self, off: usize) -> &AtomicU64 {
        self.word(off)
    }

    /// Notes that this process reads the lane (one load once it has).
    fn reading(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.reads.load(Relaxed) {
            self.reads.store(true, Relaxed);
        }
    }

    /// Records this process found with a damaged claim word and set aside.
    pub(crate) fn damaged_claims(&self) -> u64 {
        self.damaged_claims.load(Acquire)
    }

    /// The lane's storage name (its directory), for errors.
    pub(crate) fn name(&self) -> String {
        self.storage.name()
    }

    /// Ready records, their body bytes, and claimed-not-settled records,
    /// across all processes.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        // Taken last: it only grows, so a late read can only lower the result.
        let (made, made_b) = self.made_ready();
        let taken = self.load(at::TAKEN);
        let taken_b = self.load(at::TAKEN_BYTES);
        self.taken_seen.fetch_max(taken, AcqRel);
        self.taken_bytes_seen.fetch_max(taken_b, AcqRel);
        (
            made.saturating_sub(taken),
            made_b.saturating_sub(taken_b),
            (self.load(at::UNACKED) as i64).max(0) as u64,
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

    /// Records (and body bytes) ever made ready: appended plus restored
    /// (wrapping: shared words a damaged page filled must not panic).
    fn made_ready(&self) -> (u64, u64) {
        (
            self.load(at::APPENDED)
                .wrapping_add(self.load(at::RESTORED)),
            self.load(at::APPENDED_BYTES)
                .wrapping_add(self.load(at::RESTORED_BYTES)),
        )
    }
}
