//! A small file mapped shared by every process of a store: the home of the
//! atomic words processes coordinate through (positions, counters, futex
//! words). Created zero-filled; every word is only accessed atomically.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64};
use std::time::Duration;

use memmap2::MmapRaw;

/// Size of a state page.
pub const STATE_LEN: u64 = 4096;

/// A mapped state page.
#[derive(Debug)]
pub struct StatePage {
    map: MmapRaw,
}

impl StatePage {
    /// Opens `path`, creating it zero-filled if needed.
    pub fn open(path: &Path) -> std::io::Result<StatePage> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if f.metadata()?.len() < STATE_LEN {
            f.set_len(STATE_LEN)?;
        }
        let map = MmapRaw::map_raw(&f)?;
        Ok(StatePage { map })
    }

    /// The shared word at byte `off`.
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: in bounds and 8-aligned (asserted; the mapping is page
        // aligned and at least STATE_LEN bytes); every process accesses these
        // words only atomically; the mapping lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    /// The shared word at byte `off`, read as signed.
    pub fn i64_at(&self, off: usize) -> &AtomicI64 {
        assert!(
            off % 8 == 0 && off + 8 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: as for `u64_at`.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicI64) }
    }
}

impl StatePage {
    /// The shared 32-bit word at byte `off` (futex words).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off % 4 == 0 && off + 4 <= STATE_LEN as usize,
            "state word out of bounds"
        );
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU32) }
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout` (a shared futex:
/// wakes for any process's `futex_wake` on the same file page).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the 32-bit word at a valid, aligned address in a
    // shared mapping and a timespec on our stack; the result (woken, timed out,
    // value changed, interrupted) needs no handling: callers re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes every process sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; no memory is read.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Allocates `len` bytes of disk for `file` now (`fallocate(2)`), so a full
/// disk is an error here rather than a fault when a mapped page is first
/// written. The file reads as zeros.
pub fn preallocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: fallocate(2) on a descriptor we own; no pointers.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Filesystems without fallocate: fall back to a sparse file.
            Some(libc::EOPNOTSUPP) => return file.set_len(len as u64),
            _ => return Err(e),
        }
    }
}
