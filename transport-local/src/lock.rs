//! Advisory file locks (`flock`) for the slow paths that change the store's
//! metadata, and to know whether this process is the store's only user.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Held lock; released on drop (closing the descriptor releases it too).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock(2) on a descriptor we own; no pointers.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl FileLock {
    /// Blocks until the exclusive lock is held.
    pub fn exclusive(file: File) -> std::io::Result<FileLock> {
        flock(&file, libc::LOCK_EX)?;
        Ok(FileLock { file })
    }

    /// Blocks until a shared lock is held.
    pub fn shared(file: File) -> std::io::Result<FileLock> {
        flock(&file, libc::LOCK_SH)?;
        Ok(FileLock { file })
    }

    /// The exclusive lock if nobody else holds the file locked, else `None`.
    pub fn try_exclusive(file: File) -> std::io::Result<Option<FileLock>> {
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Turns an exclusive lock into a shared one.
    pub fn downgrade(self) -> std::io::Result<FileLock> {
        flock(&self.file, libc::LOCK_SH)?;
        Ok(self)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}
