//! A small file mapped shared by every process of a store: the home of the
//! atomic words processes coordinate through (positions, counters, futex
//! words): the store's `control` page, each queue's and each lane's `state`.
//!
//! # Invariants
//! - Created zero-filled, at least [`STATE_LEN`] bytes; every word is only
//!   accessed atomically, by every process, through this type.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64};

use memmap2::MmapRaw;

/// Size of a shared page.
pub(crate) const STATE_LEN: u64 = 4096;

/// A mapped shared page.
#[derive(Debug)]
pub(crate) struct SharedPage {
    map: MmapRaw,
}

impl SharedPage {
    /// Opens `path`, creating it zero-filled if needed.
    pub(crate) fn open(path: &Path) -> std::io::Result<SharedPage> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if f.metadata()?.len() < STATE_LEN {
            f.set_len(STATE_LEN)?;
        }
        let map = MmapRaw::map_raw(&f)?;
        Ok(SharedPage { map })
    }

    /// The shared word at byte `off`.
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: in bounds and 8-aligned (asserted; the mapping is page
        // aligned and at least STATE_LEN bytes); every process accesses these
        // words only atomically; the mapping lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    /// The shared word at byte `off`, read as signed.
    pub(crate) fn i64_at(&self, off: usize) -> &AtomicI64 {
        assert!(
            off % 8 == 0 && off + 8 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: as for `u64_at`.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicI64) }
    }

    /// The shared 32-bit word at byte `off` (futex words).
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU32) }
    }
}
