//! A small file mapped shared by every process of a store: the home of the
//! atomic words processes coordinate through (positions, counters, futex
//! words). Created zero-filled; every word is only accessed atomically.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64};

use memmap2::MmapRaw;

/// Size of a state page.
pub const STATE_LEN: u64 = 4096;

/// A mapped state page.
#[derive(Debug)]
pub struct StatePage {
    map: MmapRaw,
}

impl StatePage {
    /// Opens `path`, creating it zero-filled if needed.
    pub fn open(path: &Path) -> std::io::Result<StatePage> {
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
        Ok(StatePage { map })
    }

    /// The shared word at byte `off`.
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
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
    pub fn i64_at(&self, off: usize) -> &AtomicI64 {
        assert!(
            off % 8 == 0 && off + 8 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: as for `u64_at`.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicI64) }
    }
}
