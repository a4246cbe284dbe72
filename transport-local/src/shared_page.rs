//! A small file mapped shared by every process of a store: the home of the
//! atomic words processes coordinate through (positions, counters, futex
//! words): the store's `control` page, each queue's and each lane's `state`.
//!
//! # Invariants
//! - Created zero-filled, at least [`STATE_LEN`] bytes, its blocks
//!   allocated before it is mapped (a full disk is an error, never a
//!   SIGBUS); every word is only accessed atomically, by every process,
//!   through this type.

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
        // Blocks for the whole page before it is mapped: `set_len` makes a
        // hole, and a write to a hole the disk has no room for is a
        // SIGBUS, not an error (a declare on a nearly full disk killed the
        // process). Allocated blocks stay as they are; a filesystem without
        // `fallocate` keeps the hole, as before.
        match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, STATE_LEN) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(SharedPage {
            region: Region::map(&f)?,
        })
    }

    /// A zero-filled page no other process sees (an anonymous memory
    /// file): the stand-in state page of a queue whose own cannot be opened.
    pub(crate) fn private() -> std::io::Result<SharedPage> {
        let fd = rustix::fs::memfd_create("dashi-state", rustix::fs::MemfdFlags::CLOEXEC)?;
        let f = std::fs::File::from(fd);
        f.set_len(STATE_LEN)?;
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
