//! A filesystem that loses power on command: the disk under `dashi
//! torture --faults power-loss`.
//!
//! It serves a backing directory through FUSE and keeps every write it
//! receives in memory until an `fsync`/`fdatasync` of that file moves the
//! file's pending pages to the backing file. When told to cut (a line `cut`
//! on standard input, or standard input closed), it writes a seeded random
//! share (`keep`, 0 to 1) of the pending 512-byte sectors to the backing
//! files, as a disk that had written some of its cache back in any order,
//! and exits at once: the kernel aborts the FUSE connection, so writes still
//! in the page cache are dropped and every later call on the mount fails.
//! With `keep = 0` this is the LazyFS model (every write not covered by a
//! completed sync is lost); with `keep > 0` sectors of one page can come
//! from before and after its last write (torn pages).
//!
//! What is not modelled: metadata. Creating, linking, renaming, removing and
//! resizing files reach the backing directory at once (as on a filesystem
//! with an ordered journal that commits metadata eagerly), so a file's size
//! can survive without its data (the bytes read back as zeros).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::BufRead;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::worker::Rng;

const PAGE: u64 = 4096;
const SECTOR: u64 = 512;
/// How long the kernel may cache names and attributes: every change goes
/// through this filesystem, so the cache is never stale.
const TTL: Duration = Duration::from_secs(60);

/// One file or directory the kernel knows.
#[derive(Default)]
struct Node {
    /// Its names, relative to the backing directory (several after `link`;
    /// none once unlinked).
    paths: Vec<PathBuf>,
    /// The backing file, read and written by this filesystem.
    file: Option<Arc<File>>,
    /// Pages written and not yet synced, by page number.
    pending: BTreeMap<u64, Box<[u8]>>,
    /// Opens not yet released.
    open: u32,
}

#[derive(Default)]
struct State {
    next_ino: u64,
    by_path: HashMap<PathBuf, u64>,
    nodes: HashMap<u64, Node>,
    /// Directory listings taken at `opendir`, by handle.
    listings: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_fh: u64,
}

/// The filesystem; shared with the thread that waits for the cut.
#[derive(Clone)]
pub(crate) struct LossyFs {
    backing: Arc<PathBuf>,
    state: Arc<Mutex<State>>,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn kind_of(t: std::fs::FileType) -> FileType {
    FileType::from_std(t).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr_of(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: PAGE as u32,
        flags: 0,
    }
}

/// Reads `buf.len()` bytes at `off` (zeros past the end of the file).
fn read_full(f: &File, mut off: u64, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                off += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl State {
    /// The inode number of `rel`, assigned on first sight.
    fn ino_for(&mut self, rel: PathBuf) -> u64 {
        if let Some(&i) = self.by_path.get(&rel) {
            return i;
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.by_path.insert(rel.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                paths: vec![rel],
                ..Node::default()
            },
        );
        ino
    }

    /// The name `name` in directory `parent`, relative to the backing
    /// directory.
    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        self.path(parent).map(|p| p.join(name))
    }

    fn path(&self, ino: u64) -> Result<&Path, Errno> {
        self.nodes
            .get(&ino)
            .and_then(|n| n.paths.first())
            .map(PathBuf::as_path)
            .ok_or(Errno::ENOENT)
    }

    /// Forgets name `rel` (unlinked or replaced); drops its node once it has
    /// no name and no open.
    fn unname(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.paths.retain(|p| p != rel);
                if n.paths.is_empty() && n.open == 0 {
                    self.nodes.remove(&ino);
                }
            }
        }
    }
}

impl LossyFs {
    pub(crate) fn new(backing: PathBuf) -> LossyFs {
        let mut st = State {
            next_ino: 1,
            next_fh: 1,
            ..State::default()
        };
        st.by_path.insert(PathBuf::new(), 1);
        st.nodes.insert(
            1,
            Node {
                paths: vec![PathBuf::new()],
                ..Node::default()
            },
        );
        LossyFs {
            backing: Arc::new(backing),
            state: Arc::new(Mutex::new(st)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a handler poisons nothing we cannot go on with.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn attr(&self, st: &State, ino: u64) -> Result<FileAttr, Errno> {
        let n = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let m = match (&n.file, n.paths.first()) {
            (Some(f), _) => f.metadata(),
            (None, Some(p)) => std::fs::symlink_metadata(self.full(p)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(errno)?;
        Ok(attr_of(ino, &m))
    }

    /// The backing file of `ino`, opened for reading and writing once.
    fn file(&self, st: &mut State, ino: u64) -> Result<Arc<File>, Errno> {
        let n = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(f) = &n.file {
            return Ok(f.clone());
        }
        let full = self.full(n.paths.first().ok_or(Errno::ENOENT)?);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&full)
            .or_else(|_| File::open(&full))
            .map_err(errno)?;
        let f = Arc::new(f);
        n.file = Some(f.clone());
        Ok(f)
    }

    fn entry(&self, st: &mut State, rel: PathBuf, reply: ReplyEntry) {
        let ino = st.ino_for(rel);
        match self.attr(st, ino) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => {
                let rel = st.path(ino).map(Path::to_path_buf);
                if let Ok(rel) = rel {
                    st.unname(&rel);
                }
                reply.error(e)
            }
        }
    }

    /// Moves `ino`'s pending pages to its backing file (what `fdatasync`
    /// makes durable).
    fn sync(&self, st: &mut State, ino: u64) -> Result<(), Errno> {
        let Some(n) = st.nodes.get_mut(&ino) else {
            return Ok(());
        };
        let Some(f) = n.file.clone() else {
            return Ok(());
        };
        let size = f.metadata().map_err(errno)?.len();
        for (p, page) in std::mem::take(&mut n.pending) {
            let at = p * PAGE;
            if at < size {
                let len = (size - at).min(PAGE) as usize;
                f.write_all_at(&page[..len], at).map_err(errno)?;
            }
        }
        Ok(())
    }

    /// The power cut: a seeded share `keep` of the pending sectors reach
    /// the backing files, the rest is gone. Returns the sectors kept and
    /// dropped.
    pub(crate) fn cut(&self, keep: f64, seed: u64) -> (u64, u64) {
        let st = self.lock();
        let rng = Rng::new(seed);
        let (mut kept, mut dropped) = (0, 0);
        let mut inos: Vec<&u64> = st.nodes.keys().collect();
        inos.sort();
        for ino in inos {
            let n = &st.nodes[ino];
            let Some(f) = &n.file else { continue };
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            for (p, page) in &n.pending {
                for s in 0..PAGE / SECTOR {
                    let at = p * PAGE + s * SECTOR;
                    if at >= size {
                        break;
                    }
                    if (rng.below(1_000_000) as f64) < keep * 1_000_000.0 {
                        let len = (size - at).min(SECTOR) as usize;
                        let from = (s * SECTOR) as usize;
                        let _ = f.write_all_at(&page[from..from + len], at);
                        kept += 1;
                    } else {
                        dropped += 1;
                    }
                }
            }
        }
        // The lock stays held: nothing more is served before the exit.
        std::mem::forget(st);
        (kept, dropped)
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.lock();
        let Ok(rel) = st.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        if std::fs::symlink_metadata(self.full(&rel)).is_err() {
            return reply.error(Errno::ENOENT);
        }
        self.entry(&mut st, rel, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        match self.attr(&st, ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let r = (|| {
            let full = st.path(ino.0).map(|p| self.full(p));
            if let Some(m) = mode {
                std::fs::set_permissions(full.clone()?, std::fs::Permissions::from_mode(m))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(full?, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                let f = self.file(&mut st, ino.0)?;
                f.set_len(size).map_err(errno)?;
                let n = st.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
                n.pending.retain(|p, _| p * PAGE < size);
                if let Some(last) = n.pending.get_mut(&(size / PAGE)) {
                    last[(size % PAGE) as usize..].fill(0);
                }
            }
            self.attr(&st, ino.0)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let Ok(rel) = st.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        let full = self.full(&rel);
        if let Err(e) = std::fs::create_dir(&full).and_then(|()| {
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask))
        }) {
            return reply.error(errno(e));
        }
        self.entry(&mut st, rel, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let Ok(rel) = st.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        let gone = std::fs::remove_file(self.full(&rel));
        match gone {
            Ok(()) => {
                st.unname(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let Ok(rel) = st.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        match std::fs::remove_dir(self.full(&rel)) {
            Ok(()) => {
                st.unname(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let (from, to) = match (st.path(parent.0), st.path(newparent.0)) {
            (Ok(a), Ok(b)) => (a.join(name), b.join(newname)),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let (fa, fb) = (self.full(&from), self.full(&to));
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && std::fs::symlink_metadata(&fb).is_ok() {
            return reply.error(Errno::EEXIST);
        }
        if let Err(e) = std::fs::rename(&fa, &fb) {
            return reply.error(errno(e));
        }
        st.unname(&to);
        // The renamed node and, for a directory, everything under it.
        let mut moved = Vec::new();
        for (ino, n) in st.nodes.iter_mut() {
            for p in n.paths.iter_mut() {
                if let Ok(rest) = p.strip_prefix(&from) {
                    let new = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    moved.push((std::mem::replace(p, new.clone()), new, *ino));
                }
            }
        }
        for (old, new, ino) in moved {
            st.by_path.remove(&old);
            st.by_path.insert(new, ino);
        }
        reply.ok()
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let (from, to) = match (st.path(ino.0), st.path(newparent.0)) {
            (Ok(a), Ok(b)) => (a.to_path_buf(), b.join(newname)),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if let Err(e) = std::fs::hard_link(self.full(&from), self.full(&to)) {
            return reply.error(errno(e));
        }
        st.by_path.insert(to.clone(), ino.0);
        if let Some(n) = st.nodes.get_mut(&ino.0) {
            n.paths.push(to);
        }
        match self.attr(&st, ino.0) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let r = self.file(&mut st, ino.0).and_then(|f| {
            if flags.0 & libc::O_TRUNC != 0 {
                f.set_len(0).map_err(errno)?;
                if let Some(n) = st.nodes.get_mut(&ino.0) {
                    n.pending.clear();
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                if let Some(n) = st.nodes.get_mut(&ino.0) {
                    n.open += 1;
                }
                reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        let Ok(rel) = st.child(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        let mut o = OpenOptions::new();
        o.read(true).write(true).mode(mode & !umask);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
        if flags & libc::O_TRUNC != 0 {
            o.truncate(true);
        }
        let f = match o.open(self.full(&rel)) {
            Ok(f) => Arc::new(f),
            Err(e) => return reply.error(errno(e)),
        };
        st.unname(&rel);
        let ino = st.ino_for(rel);
        let n = st.nodes.get_mut(&ino).expect("just added");
        n.file = Some(f);
        n.open += 1;
        match self.attr(&st, ino) {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(ino),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut st = self.lock();
        let r = (|| {
            let f = self.file(&mut st, ino.0)?;
            let len = f.metadata().map_err(errno)?.len();
            let end = (offset + u64::from(size)).min(len);
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            read_full(&f, offset, &mut buf).map_err(errno)?;
            let n = st.nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
            if !buf.is_empty() {
                for (p, page) in n.pending.range(offset / PAGE..=(end - 1) / PAGE) {
                    let at = p * PAGE;
                    let (lo, hi) = (at.max(offset), (at + PAGE).min(end));
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&page[(lo - at) as usize..(hi - at) as usize]);
                }
            }
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        let r = (|| {
            let f = self.file(&mut st, ino.0)?;
            let end = offset + data.len() as u64;
            let n = st.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if !data.is_empty() {
                for p in offset / PAGE..=(end - 1) / PAGE {
                    let at = p * PAGE;
                    let page = match n.pending.entry(p) {
                        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
                            read_full(&f, at, &mut b).map_err(errno)?;
                            v.insert(b)
                        }
                    };
                    let (lo, hi) = (at.max(offset), (at + PAGE).min(end));
                    page[(lo - at) as usize..(hi - at) as usize]
                        .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
                }
            }
            if end > f.metadata().map_err(errno)?.len() {
                f.set_len(end).map_err(errno)?;
            }
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing is not syncing.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        if let Some(n) = st.nodes.get_mut(&ino.0) {
            n.open = n.open.saturating_sub(1);
            if n.open == 0 && n.paths.is_empty() {
                st.nodes.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        match self.sync(&mut st, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let r = (|| {
            let rel = st.path(ino.0)?.to_path_buf();
            let mut list = vec![
                (ino.0, FileType::Directory, ".".into()),
                (1, FileType::Directory, "..".into()),
            ];
            for e in std::fs::read_dir(self.full(&rel)).map_err(errno)? {
                let e = e.map_err(errno)?;
                let kind = e.file_type().map(kind_of).unwrap_or(FileType::RegularFile);
                let i = st.ino_for(rel.join(e.file_name()));
                list.push((i, kind, e.file_name()));
            }
            let fh = st.next_fh;
            st.next_fh += 1;
            st.listings.insert(fh, list);
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.lock();
        let Some(list) = st.listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (k, (i, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*i), k as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are written through at once (see the module's note).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(self.backing.as_path()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let flags = match mode {
            0 => rustix::fs::FallocateFlags::empty(),
            libc::FALLOC_FL_KEEP_SIZE => rustix::fs::FallocateFlags::KEEP_SIZE,
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        let r = self.file(&mut st, ino.0).and_then(|f| {
            rustix::fs::fallocate(&*f, flags, offset, length)
                .map_err(|e| Errno::from_i32(e.raw_os_error()))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// `dashi torture-fs`: mounts the filesystem, says `ready`, serves until
/// the cut.
pub(crate) fn serve(backing: &Path, mount: &Path, keep: f64, seed: u64) -> Result<(), String> {
    std::fs::create_dir_all(backing).map_err(|e| format!("creating {}: {e}", backing.display()))?;
    std::fs::create_dir_all(mount).map_err(|e| format!("creating {}: {e}", mount.display()))?;
    let fs = LossyFs::new(backing.to_path_buf());
    let cutter = fs.clone();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("dashi-lossy".into()),
        fuser::MountOption::Subtype("dashi-lossy".into()),
    ];
    let session = fuser::Session::new(fs, mount, &cfg).map_err(|e| {
        format!(
            "mounting a FUSE filesystem on {} (power-loss runs need root and /dev/fuse): {e}",
            mount.display()
        )
    })?;
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        // A line `cut`, or the parent gone (end of input): the power goes.
        while matches!(stdin.lock().read_line(&mut line), Ok(n) if n > 0) {
            if line.trim() == "cut" {
                break;
            }
            line.clear();
        }
        let (kept, dropped) = cutter.cut(keep, seed);
        // Not `eprintln!`: it panics when nobody reads the other end, and
        // this thread must reach the exit (it holds the lock).
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "power cut: {kept} pending sectors written, {dropped} lost"
        );
        std::process::exit(0);
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready").and_then(|()| out.flush());
    }
    session
        .run()
        .map_err(|e| format!("serving {}: {e}", mount.display()))
}
