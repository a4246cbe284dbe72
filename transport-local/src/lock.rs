//! Advisory file locks (`flock`) for the slow paths that change the store's
//! metadata, and to know whether this process is the store's only user.

use std::fs::File;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// Held lock; released on drop (closing the descriptor releases it too).
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
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
        Ok(FileLock { file })
    }

    /// Blocks until a shared lock is held.
    pub(crate) fn shared(file: File) -> std::io::Result<FileLock> {
        lock(&file, FlockOperation::LockShared)?;
        Ok(FileLock { file })
    }

    /// The exclusive lock if nobody else holds the file locked, else `None`.
    pub(crate) fn try_exclusive(file: File) -> std::io::Result<Option<FileLock>> {
        match lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { file })),
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
        let _ = lock(&self.file, FlockOperation::Unlock);
    }
}
