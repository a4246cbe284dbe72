//! Advisory file locks (`flock`) for the slow paths that change the store's
//! metadata, and to know whether this process is the store's only user.

use std::fs::File;

use std::os::fd::AsRawFd;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::forked::HeldLock;

/// Held lock; released on drop (closing the descriptor releases it too),
/// but never by a forked child (`forked.rs`): an unlock acts on the
/// description the child shares with the parent.
#[derive(Debug)]
pub(crate) struct FileLock {
    held: HeldLock,
    file: File,
}

impl FileLock {
    fn held(file: File) -> FileLock {
        FileLock {
            held: HeldLock::new(file.as_raw_fd()),
            file,
        }
    }
}

fn lock(file: &File, op: FlockOperation) -> Result<(), Errno> {
    loop {
        match flock(file, op) {
            Err(Errno::INTR) => continue,
            r => return r,
        }
    }
}

impl FileLock {
    /// Blocks until the exclusive lock is held.
    pub(crate) fn exclusive(file: File) -> std::io::Result<FileLock> {
        lock(&file, FlockOperation::LockExclusive)?;
        Ok(FileLock::held(file))
    }

    /// Blocks until a shared lock is held.
    pub(crate) fn shared(file: File) -> std::io::Result<FileLock> {
        lock(&file, FlockOperation::LockShared)?;
        Ok(FileLock::held(file))
    }

    /// The exclusive lock if nobody else holds the file locked, else `None`.
    pub(crate) fn try_exclusive(file: File) -> std::io::Result<Option<FileLock>> {
        match lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock::held(file))),
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Turns an exclusive lock into a shared one.
    pub(crate) fn downgrade(self) -> std::io::Result<FileLock> {
        lock(&self.file, FlockOperation::LockShared)?;
        Ok(self)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if self.held.here() {
            let _ = lock(&self.file, FlockOperation::Unlock);
        }
    }
}
