//! Disk space for segments: `fallocate` issued on a runtime core's io_uring.
//!
//! A lane asks for its next segment in the background once the current one
//! is half full, so a publisher that crosses a segment boundary normally finds
//! the next file allocated, formatted and linked already, and (brought in by
//! a thread of its own) its pages in the page cache. A publisher that
//! gets there first allocates in the foreground (still through the ring, and
//! waiting for it). Without a runtime (io_uring not permitted here, or a lane
//! opened on its own) the same work is done with `fallocate(2)`.
//!
//! # Invariants
//! - A segment's space is allocated in full before any record is written to
//!   it, so a full disk is an error at allocation, never a fault on a mapped
//!   page.

use std::fs::File;
use std::io;
use std::sync::Arc;

use dashi_rt::{io as rio, Runtime};
use rustix::fs::{fallocate, FallocateFlags};
use rustix::io::Errno;

/// Where segment space comes from.
#[derive(Debug)]
pub(crate) struct Allocator {
    rt: Option<Arc<Runtime>>,
    /// The store's cut flag: background work reads its pages too.
    cut: Option<Arc<crate::cut::CutFlag>>,
}

impl Allocator {
    /// `fallocate(2)` in the calling thread.
    pub(crate) fn direct() -> Arc<Allocator> {
        Arc::new(Allocator {
            rt: None,
            cut: None,
        })
    }

    /// `fallocate` on core 0 of `rt`; lanes also prepare their next segment
    /// there in the background.
    pub(crate) fn on_ring(rt: Arc<Runtime>, cut: Arc<crate::cut::CutFlag>) -> Arc<Allocator> {
        Arc::new(Allocator {
            rt: Some(rt),
            cut: Some(cut),
        })
    }

    /// The store's cut flag, for work on its pages off its operations.
    pub(crate) fn cut(&self) -> Option<&Arc<crate::cut::CutFlag>> {
        self.cut.as_ref()
    }

    /// The runtime background preparation runs on, if any.
    pub(crate) fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.rt.as_ref()
    }

    /// True when allocation goes through io_uring.
    pub(crate) fn uses_ring(&self) -> bool {
        self.rt.is_some()
    }

    /// Allocates `len` bytes for `file` (zero-filled) and waits for it.
    pub(crate) fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        match &self.rt {
            // A core must not wait for itself.
            Some(rt) if rio::current_core().is_none() => {
                let dup = Arc::new(file.try_clone()?);
                rt.spawn(0, move || async move { ring_allocate(&dup, len).await })
                    .wait()
                    .map_err(|e| io::Error::other(format!("io_uring runtime: {e}")))?
            }
            _ => preallocate(file, len),
        }
    }
}

/// `fallocate` through the ring of the calling core; a file system without
/// it gets its blocks by writing zeros (see [`fill_zeros`]).
pub(crate) async fn ring_allocate(file: &Arc<File>, len: u64) -> io::Result<()> {
    if i64::try_from(len).is_err() {
        return Err(Errno::FBIG.into());
    }
    match rio::fallocate(file, 0, len, 0).await {
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => {
            fill_zeros(file, len)
        }
        r => r,
    }
}

/// Allocates `len` bytes by writing zeros, for file systems without
/// `fallocate`: a sparse file would turn a full disk into a `SIGBUS` on the
/// first write to a mapped page; written zeros make it an error here.
pub(crate) fn fill_zeros(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < len {
        let n = CHUNK.min(len - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Allocates `len` bytes of disk for `file` now (`fallocate(2)`), so a full
/// disk is an error here rather than a fault when a mapped page is first
/// written. The file reads as zeros.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if i64::try_from(len).is_err() {
        return Err(Errno::FBIG.into());
    }
    loop {
        match fallocate(file, FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            // Filesystems without fallocate: write the zeros.
            Err(Errno::OPNOTSUPP) => return fill_zeros(file, len),
            Err(e) => return Err(e.into()),
        }
    }
}
