//! Which processes use a store, and whether one that claimed a record or
//! reserved space still runs.
//!
//! Every process that opens a store registers under `<root>/procs/` with a
//! number unique in the store (from a counter in the control page) and
//! holds an exclusive `flock` on its file while it has the store open. A
//! process is alive exactly while somebody holds that lock: the kernel
//! releases it when the process ends, however it ends. Locks are seen alike
//! from every PID namespace on the host (containers sharing a volume), which
//! a process id read through one namespace's `/proc` is not.
//!
//! # Invariants
//! - A claim or reservation is its owner's only while the owner's lock is
//!   held; a process's own id is always alive to itself.
//! - Ids are never reused while the counter runs (2^32 registrations); after
//!   a restart of every user (a recovery), no claim of an earlier id is left
//!   in the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::AcqRel;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::shared_page::SharedPage;

/// Where the control page keeps the next process number.
pub(crate) const NEXT_ID_AT: usize = 192;

/// This process's registration: its id and the locked file that says it
/// runs (released when dropped or when the process ends).
#[derive(Debug)]
pub(crate) struct Registration {
    id: u32,
    path: PathBuf,
    /// Let go of in a forked child (`forked.rs`); released before the
    /// descriptor closes.
    held: crate::forked::HeldLock,
    _file: File,
}

impl Registration {
    /// Registers this process with the store at `root`.
    pub(crate) fn register(root: &Path, control: &SharedPage) -> std::io::Result<Registration> {
        let dir = root.join("procs");
        std::fs::create_dir_all(&dir)?;
        loop {
            let n = control
                .u64_at(NEXT_ID_AT)
                .fetch_add(1, AcqRel)
                .wrapping_add(1);
            let id = (n % (1 << 32)) as u32;
            if id == 0 {
                continue;
            }
            let path = dir.join(format!("{id:08x}"));
            let mut file = match OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                // Somebody raced us onto a file of an id the counter gave
                // again (after 2^32 registrations): take another.
                Err(Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(e.into()),
            }
            // The pid, for people reading the directory.
            let _ = writeln!(file, "{}", std::process::id());
            return Ok(Registration {
                id,
                path,
                held: crate::forked::HeldLock::new(std::os::fd::AsRawFd::as_raw_fd(&file)),
                _file: file,
            });
        }
    }

    /// This process's id in the store.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The store is closed in this process: its claims were settled or
        // restored by the engine, so the file can go (the lock goes with the
        // descriptor either way). Never in a forked child: the file and
        // its lock are the parent's, which runs on.
        if self.held.here() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// True while process `id` of the store at `root` runs (holds its lock).
pub(crate) fn alive(root: &Path, id: u32) -> bool {
    let path = root.join("procs").join(format!("{id:08x}"));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        // Cannot tell (permissions, descriptors): never take a live
        // process's work for a dead one's.
        Err(_) => return true,
    };
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        // Nobody holds it: its process has ended.
        Ok(()) => false,
        Err(_) => true,
    }
}

/// Removes the files of every process that no longer runs (with exclusive
/// access to the store: recovery), keeping `keep`.
pub(crate) fn sweep(root: &Path, keep: u32) {
    let Ok(entries) = std::fs::read_dir(root.join("procs")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(id) = u32::from_str_radix(&name, 16) else {
            continue;
        };
        if id != keep && !alive(root, id) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_process_is_alive_until_it_lets_go() {
        let dir = dashi_test_support::TestDir::new();
        let control = SharedPage::open(&dir.join("control")).unwrap();
        let a = Registration::register(&dir, &control).unwrap();
        let b = Registration::register(&dir, &control).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(alive(&dir, a.id()) && alive(&dir, b.id()));
        assert!(!alive(&dir, 9999), "never registered");
        let id = a.id();
        drop(a);
        assert!(!alive(&dir, id), "let go");
        sweep(&dir, b.id());
        assert!(alive(&dir, b.id()));
    }

    /// A process killed with SIGKILL is dead to the others at once (the
    /// kernel drops its lock), whatever its pid namespace.
    #[test]
    fn a_killed_process_is_dead() {
        let dir = dashi_test_support::TestDir::new();
        let control = SharedPage::open(&dir.join("control")).unwrap();
        let _me = Registration::register(&dir, &control).unwrap();
        // `flock` from a shell holds the lock in a child; kill it.
        let lock = dir.join("procs").join("ffff0000");
        std::fs::write(&lock, b"").unwrap();
        // -o: the lock is held by flock(1) itself, not by its command.
        let mut child = std::process::Command::new("flock")
            .args(["-o", "-x"])
            .arg(&lock)
            .args(["sleep", "5"])
            .spawn()
            .expect("flock(1) runs");
        let start = std::time::Instant::now();
        while !alive(&dir, 0xffff_0000) {
            assert!(start.elapsed().as_secs() < 10, "the child never locked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // flock(1) forks its command and the child closes its copy of the
        // locked descriptor before exec (`-o`): a kill that lands in
        // between leaves the lock with that child for a moment more.
        let start = std::time::Instant::now();
        while alive(&dir, 0xffff_0000) {
            assert!(
                start.elapsed().as_secs() < 3,
                "the lock outlived its holder"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
