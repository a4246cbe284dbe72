//! Where a lane's segments and state page live: files in the lane's
//! directory, or (under `--cfg loom`) modelled memory that several `Lane`
//! values share the way processes share the files.
//!
//! # Invariants
//! - A segment file appears under its final name only complete: allocated,
//!   formatted under a unique temporary name created exclusively (two
//!   processes, or two containers whose processes share a pid, never open
//!   the same temporary file), then hard-linked into place, so exactly one
//!   file wins and nobody maps a half-made one.
//! - A new segment's directory entry is synced before any record in it can
//!   be confirmed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::alloc::Allocator;
use crate::segment::{Segment, SegmentError};
use crate::shared_page::SharedPage;

use super::LaneError;

/// The file name of segment `seq`.
pub(crate) fn seg_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

/// The segment number a file name stands for, if it is a segment's.
pub(crate) fn seg_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A lane's storage.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Files in a directory; segment space from `alloc`.
    Files {
        /// The lane directory.
        dir: PathBuf,
        /// Where segment space comes from.
        alloc: Arc<Allocator>,
    },
    /// Modelled memory shared by the `Lane`s of a loom model.
    #[cfg(all(loom, test))]
    Model(Arc<ModelDisk>),
}

/// The modelled "disk" of one lane: its segments and its state page.
#[cfg(all(loom, test))]
#[derive(Debug)]
pub(crate) struct ModelDisk {
    pub(crate) segments: crate::sync::Mutex<std::collections::BTreeMap<u64, Arc<Segment>>>,
    pub(crate) state: Arc<SharedPage>,
    pub(crate) segment_size: u64,
}

#[cfg(all(loom, test))]
impl ModelDisk {
    pub(crate) fn new(segment_size: u64) -> Arc<ModelDisk> {
        Arc::new(ModelDisk {
            segments: crate::sync::Mutex::new(Default::default()),
            state: Arc::new(SharedPage::new_model()),
            segment_size,
        })
    }
}

impl Storage {
    /// What to call the lane in errors.
    pub(crate) fn name(&self) -> String {
        match self {
            Storage::Files { dir, .. } => dir.display().to_string(),
            #[cfg(all(loom, test))]
            Storage::Model(_) => "model".into(),
        }
    }

    fn io(&self, source: std::io::Error) -> LaneError {
        LaneError::Io {
            dir: self.name(),
            source,
        }
    }

    /// The state page (created zero-filled if missing).
    pub(crate) fn state_page(&self) -> Result<Arc<SharedPage>, LaneError> {
        match self {
            Storage::Files { dir, .. } => {
                std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
                Ok(Arc::new(
                    SharedPage::open(&dir.join("state")).map_err(|e| self.io(e))?,
                ))
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => Ok(d.state.clone()),
        }
    }

    /// Maps segment `seq` if it exists.
    pub(crate) fn open_segment(&self, seq: u64) -> Result<Option<Arc<Segment>>, LaneError> {
        match self {
            Storage::Files { dir, .. } => {
                let path = dir.join(seg_name(seq));
                let file = match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    // A directory (or a socket) cannot be opened to write.
                    Err(_) if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) => {
                        return Err(SegmentError::NotAFile {
                            path: path.display().to_string(),
                        }
                        .into())
                    }
                    Err(source) => {
                        return Err(SegmentError::Io {
                            path: path.display().to_string(),
                            source,
                        }
                        .into())
                    }
                };
                Ok(Some(Arc::new(Segment::open(&path, file)?)))
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => Ok(d.segments.lock().get(&seq).cloned()),
        }
    }

    /// True when segment `seq` exists.
    pub(crate) fn exists(&self, seq: u64) -> bool {
        match self {
            Storage::Files { dir, .. } => dir.join(seg_name(seq)).exists(),
            #[cfg(all(loom, test))]
            Storage::Model(d) => d.segments.lock().contains_key(&seq),
        }
    }

    /// Creates segment `seq` of `size` bytes unless it exists (whoever
    /// creates it first wins; the others use theirs).
    pub(crate) fn create_segment(&self, lane: u32, seq: u64, size: u64) -> Result<(), LaneError> {
        match self {
            Storage::Files { dir, alloc } => {
                if self.exists(seq) {
                    return Ok(());
                }
                let (tmp, file) = new_tmp(dir, seq).map_err(|e| self.io(e))?;
                if let Err(e) = alloc.allocate(&file, size) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(no_space(dir, size, e));
                }
                finish(dir, &tmp, file, lane, seq, false)
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => {
                d.segments
                    .lock()
                    .entry(seq)
                    .or_insert_with(|| Arc::new(Segment::new_model(size, lane, seq)));
                Ok(())
            }
        }
    }

    /// Deletes segment `seq` (retention); a segment already gone is fine.
    pub(crate) fn delete_segment(&self, seq: u64) -> Result<(), LaneError> {
        match self {
            Storage::Files { dir, .. } => match std::fs::remove_file(dir.join(seg_name(seq))) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io(e)),
            },
            #[cfg(all(loom, test))]
            Storage::Model(d) => {
                d.segments.lock().remove(&seq);
                Ok(())
            }
        }
    }

    /// Moves segment file `seq` (damaged beyond reading) to the lane's
    /// `damaged/` directory; returns where it went.
    pub(crate) fn set_aside(&self, seq: u64) -> std::io::Result<String> {
        match self {
            Storage::Files { dir, .. } => {
                let to_dir = dir.join("damaged");
                std::fs::create_dir_all(&to_dir)?;
                let to = to_dir.join(seg_name(seq));
                std::fs::rename(dir.join(seg_name(seq)), &to)?;
                Ok(to.display().to_string())
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => {
                d.segments.lock().remove(&seq);
                Ok(format!("model segment {seq}"))
            }
        }
    }

    /// Every segment number present, ascending (half-made temporary files
    /// are removed on the way: the caller has the store to itself).
    /// The lowest segment above `seq`, if any (looks only: unlike
    /// [`Storage::list_segments`] it leaves temporary files alone, as other
    /// processes may be making segments).
    pub(crate) fn next_segment(&self, seq: u64) -> Result<Option<u64>, LaneError> {
        match self {
            Storage::Files { dir, .. } => {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(self.io(e)),
                };
                let mut next = None;
                for e in entries {
                    let e = e.map_err(|e| self.io(e))?;
                    if let Some(s) = seg_seq(&e.file_name().to_string_lossy()) {
                        if s > seq && next.is_none_or(|n| s < n) {
                            next = Some(s);
                        }
                    }
                }
                Ok(next)
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => Ok(d.segments.lock().keys().copied().filter(|&s| s > seq).min()),
        }
    }

    pub(crate) fn list_segments(&self) -> Result<Vec<u64>, LaneError> {
        match self {
            Storage::Files { dir, .. } => {
                let mut seqs = Vec::new();
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seqs),
                    Err(e) => return Err(self.io(e)),
                };
                for e in entries {
                    let e = e.map_err(|e| self.io(e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("tmp-") {
                        let _ = std::fs::remove_file(e.path());
                    } else if let Some(seq) = seg_seq(&name) {
                        seqs.push(seq);
                    }
                }
                seqs.sort_unstable();
                Ok(seqs)
            }
            #[cfg(all(loom, test))]
            Storage::Model(d) => Ok(d.segments.lock().keys().copied().collect()),
        }
    }

    /// Appends a quarantine entry (recovery): a line naming the record, then
    /// its bytes.
    pub(crate) fn quarantine(
        &self,
        seq: u64,
        off: u64,
        reason: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        match self {
            Storage::Files { dir, .. } => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("quarantine"))?;
                writeln!(
                    f,
                    "segment {seq} offset {off} {reason} {} bytes",
                    bytes.len()
                )?;
                f.write_all(bytes)?;
                writeln!(f)?;
                f.sync_all()
            }
            #[cfg(all(loom, test))]
            Storage::Model(_) => {
                let _ = (seq, off, reason, bytes);
                Ok(())
            }
        }
    }

    /// The allocator, for background preparation (files only).
    pub(crate) fn allocator(&self) -> Option<&Arc<Allocator>> {
        match self {
            Storage::Files { alloc, .. } => Some(alloc),
            #[cfg(all(loom, test))]
            Storage::Model(_) => None,
        }
    }

    /// The lane directory (files only).
    pub(crate) fn dir(&self) -> Option<&Path> {
        match self {
            Storage::Files { dir, .. } => Some(dir),
            #[cfg(all(loom, test))]
            Storage::Model(_) => None,
        }
    }
}

/// A fresh temporary file for segment `seq` in `dir`, under a random name
/// created exclusively (`O_EXCL`): never someone else's file, even in another
/// container whose process has our pid.
fn new_tmp(dir: &Path, seq: u64) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    loop {
        let salt = RandomState::new().hash_one((
            std::process::id(),
            ATTEMPT.fetch_add(1, Relaxed),
            std::time::SystemTime::now(),
        ));
        let tmp = dir.join(format!("tmp-{seq:016x}-{salt:016x}"));
        match std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn no_space(dir: &Path, size: u64, e: std::io::Error) -> LaneError {
    LaneError::Io {
        dir: dir.display().to_string(),
        source: std::io::Error::new(
            e.kind(),
            format!(
                "cannot allocate a {size}-byte segment{}: {e}",
                allocation_hint(&e)
            ),
        ),
    }
}

/// What most likely stopped an allocation, by its error: a guess only
/// where the error names the cause (a full disk is not the reason a process
/// ran out of descriptors).
fn allocation_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => " (the disk or the quota is full)",
        Some(libc::EFBIG) => " (larger than the filesystem or RLIMIT_FSIZE allows)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (no file descriptor left: raise the limit, `ulimit -n`)"
        }
        _ => "",
    }
}

/// Whether bringing a new segment into the page cache ahead of need pays on
/// `file`'s filesystem: on a local disk's (ext4, XFS, btrfs, F2FS) it makes
/// and zeroes pages of unwritten blocks in memory. Elsewhere it would read
/// the whole file through a network or a FUSE daemon (NFS, FUSE) or do
/// nothing useful (tmpfs: `fallocate` made the pages already).
fn worth_warming(file: &std::fs::File) -> bool {
    const LOCAL_DISKS: [u32; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010];
    // (Magic numbers are 32 bits; `f_type` is as wide as a word.)
    rustix::fs::fstatfs(file).is_ok_and(|s| LOCAL_DISKS.contains(&(s.f_type as u32)))
}

/// Brings a new segment into the page cache on a thread of its own, so the
/// publisher that reaches it does not make and zero its pages (a quarter of
/// a lone publisher's time). A few milliseconds for 64 MiB here, more on a
/// cold machine: never on a runtime core, whose syncs would wait. One
/// thread per process, started at the first segment made ahead of need,
/// takes them in turn (many lanes rotating at once start no more threads:
/// a container may allow few). Best effort: with no thread to be had, the
/// publisher's writes do it.
fn warm_in_background(seg: Segment) {
    use std::sync::mpsc::{channel, Sender};
    static WARMER: std::sync::OnceLock<Option<Sender<Segment>>> = std::sync::OnceLock::new();
    let warmer = WARMER.get_or_init(|| {
        let (tx, rx) = channel::<Segment>();
        std::thread::Builder::new()
            .name("dashi-warm".into())
            .spawn(move || rx.into_iter().for_each(|s| s.warm()))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = warmer {
        let _ = tx.send(seg);
    }
}

/// Formats an allocated temporary file as segment `seq` and links it into
/// place (whoever links first wins; the temporary name goes either way),
/// then syncs the directory. `warm`: made ahead of need, so its pages are
/// brought in meanwhile.
fn finish(
    dir: &Path,
    tmp: &Path,
    file: std::fs::File,
    lane: u32,
    seq: u64,
    warm: bool,
) -> Result<(), LaneError> {
    let warm = warm && worth_warming(&file);
    let seg = Segment::format(tmp, file, lane, seq).map(|s| {
        if warm {
            warm_in_background(s);
        }
    });
    let linked = seg.and_then(
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
        std::fs::File::open(dir)
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
pub(crate) async fn prepare_segment(
    dir: &Path,
    lane: u32,
    seq: u64,
    size: u64,
) -> Result<(), LaneError> {
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
    finish(dir, &tmp, file, lane, seq, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_nothing_else_is_one() {
        assert_eq!(seg_name(0x2a), "000000000000002a.seg");
        assert_eq!(
            seg_seq(&seg_name(u64::from(u32::MAX))),
            Some(u64::from(u32::MAX))
        );
        for other in [
            "state",
            "quarantine",
            "2a.seg",
            "tmp-000000000000002a-1",
            "zzzzzzzzzzzzzzzz.seg",
        ] {
            assert_eq!(seg_seq(other), None, "{other}");
        }
    }

    /// Two containers whose processes both run as pid 1 once made the same
    /// temporary name and truncated each other's mapped file. Every
    /// temporary file is a new one: a name already taken is never opened.
    #[test]
    fn temporary_segment_files_never_reuse_an_existing_file() {
        let d = dashi_test_support::TestDir::new();
        let mut names = std::collections::BTreeSet::new();
        for i in 0..200u32 {
            let (p, f) = new_tmp(&d, 7).unwrap();
            std::io::Write::write_all(&mut &f, &i.to_le_bytes()).unwrap();
            assert!(names.insert(p), "a name was handed out twice");
        }
        for (i, p) in names.iter().enumerate() {
            assert_eq!(std::fs::read(p).unwrap().len(), 4, "{} was reopened", i);
        }
        // Listing the lane removes leftovers (a process died mid-creation).
        let st = Storage::Files {
            dir: d.to_path_buf(),
            alloc: crate::alloc::Allocator::direct(),
        };
        assert!(st.list_segments().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn an_allocation_error_guesses_only_what_its_errno_names() {
        let e = |errno| {
            no_space(
                Path::new("/l"),
                4096,
                std::io::Error::from_raw_os_error(errno),
            )
            .to_string()
        };
        assert!(e(libc::ENOSPC).contains("(the disk or the quota is full)"));
        assert!(e(libc::EDQUOT).contains("(the disk or the quota is full)"));
        assert!(e(libc::EFBIG).contains("RLIMIT_FSIZE"));
        let fds = e(libc::EMFILE);
        assert!(fds.contains("no file descriptor left"), "{fds}");
        assert!(!fds.contains("disk"), "{fds}");
        let io = e(libc::EIO);
        assert!(
            io.contains("cannot allocate a 4096-byte segment: Input/output error"),
            "no guess for an I/O error: {io}"
        );
    }
}
