//! The chain of segments: finding and mapping segment `seq`, creating the
//! next one (allocated, formatted under a unique temporary name, hard-linked
//! into place: one file wins), appending records at the lane's write segment.
//!
//! # Invariants
//! - Producers append only to the segment named by `write_seg`; the first
//!   writer to find it full makes sure the next exists and moves `write_seg`
//!   on with a compare-and-swap.
//! - A segment is fully allocated and its directory entry synced before any
//!   record in it can be confirmed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;

use crate::segment::{AppendError, Segment, SegmentError};

use super::layout::at;
use super::{seg_name, Lane, LaneError, Pos};

/// A fresh, uniquely named temporary file for segment `seq` in `dir`.
pub(super) fn new_tmp(dir: &Path, seq: u64) -> std::io::Result<(PathBuf, File)> {
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

pub(super) fn no_space(dir: &Path, size: u64, e: std::io::Error) -> LaneError {
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
pub(super) fn finish(
    dir: &Path,
    tmp: &Path,
    file: File,
    lane: u32,
    seq: u64,
) -> Result<(), LaneError> {
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

impl Lane {
    /// The mapped segment `seq`, if its file exists.
    pub(crate) fn segment(&self, seq: u64) -> Result<Option<Arc<Segment>>, LaneError> {
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
    pub(super) fn segment_or_create(&self, seq: u64) -> Result<Arc<Segment>, LaneError> {
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
    pub(crate) fn append(
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
    pub(super) fn prepare(&self, seq: u64) {
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
}
