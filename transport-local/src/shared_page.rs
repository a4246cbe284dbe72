//! A small file mapped shared by every process of a store: the home of the
//! atomic words processes coordinate through (positions, counters, futex
//! words): the store's `control` page, each queue's and each lane's `state`.
//!
//! # Invariants
//! - Created zero-filled, at least [`STATE_LEN`] bytes; every word is only
//!   accessed atomically, by every process, through this type.

use crate::mem::{AtomicU32, AtomicU64, Region};

/// Size of a shared page.
pub(crate) const STATE_LEN: u64 = 4096;

/// A mapped shared page.
#[derive(Debug)]
pub(crate) struct SharedPage {
    region: Region,
}

impl SharedPage {
    /// Opens `path`, creating it zero-filled if needed.
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<SharedPage> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if f.metadata()?.len() < STATE_LEN {
            f.set_len(STATE_LEN)?;
        }
        Ok(SharedPage {
            region: Region::map(&f)?,
        })
    }

    /// A zero-filled page in modelled memory.
    #[cfg(all(loom, test))]
    pub(crate) fn new_model() -> SharedPage {
        SharedPage {
            region: Region::new_model(STATE_LEN),
        }
    }

    /// The shared word at byte `off`.
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.region.u64_at(off as u64)
    }

    /// The shared 32-bit word at byte `off` (futex words).
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.region.u32_at(off as u64)
    }
}
