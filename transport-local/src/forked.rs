//! A process forked from one that had a store open.
//!
//! `fork(2)` copies the parent's memory into the child (a store's mappings
//! and in-process state with it) but none of its threads (the runtime's
//! cores, the wake-up watcher), and the child shares the parent's open
//! file descriptions, so the parent's `flock`s: its presence lock (the
//! store is in use) and its registration (its claims are its own while it
//! runs). Used in the child, the parent's store acted as the parent: a
//! message the child took was the parent's claim and stayed taken after
//! the child died, for as long as the parent ran; a sync waited for ever
//! for a core the child does not have. Dropped in the child (a prefork
//! server closing what it inherited), it unlocked the parent's presence
//! lock (an unlock acts on the shared description) and removed the
//! parent's registration, so the next process took the store for unused
//! and recovered it under the parent, or took the parent for dead.
//!
//! # Invariants
//! - A store opened before a fork does nothing in the child: every
//!   operation fails with one line ([`Born::check`]), and dropping it
//!   changes nothing outside the child's memory (no unlock, no file
//!   removed, no shared counter written).
//! - Opening a store in a child opens it anew (its own registration,
//!   runtime and locks), never hands back the parent's.
//! - The child lets go of the parent's store locks as it starts: each
//!   descriptor of one ([`HeldLock`]) is pointed at `/dev/null`, so a
//!   parent that ends while the child runs is seen ended. Not so for a
//!   lock being registered or released by another thread of the parent at
//!   the very moment of the fork, nor in a child with no descriptor left
//!   to open `/dev/null` with: the child holds those until it ends. Every
//!   slot is cleared in the child either way.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicI32, AtomicUsize};

/// Forks this process is removed from its first ancestor by (0 in a
/// process that was never forked from one that loaded this crate).
static FORKS: AtomicUsize = AtomicUsize::new(0);

/// Descriptors that hold a store's `flock` in this process (-1: free).
const LOCK_SLOTS: usize = 256;
static LOCKS: [AtomicI32; LOCK_SLOTS] = [const { AtomicI32::new(-1) }; LOCK_SLOTS];

static WATCH: std::sync::Once = std::sync::Once::new();

#[allow(unsafe_code)]
fn watch() {
    WATCH.call_once(|| {
        // SAFETY: registers a handler that is an `extern "C" fn()`; it
        // runs in the child only, before `fork` returns there.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
}

/// In the child, before `fork` returns: the only thread. Calls only
/// `open`, `dup3` and `close` (async-signal-safe). Every slot is cleared,
/// pointed at /dev/null or not: a number left registered could name
/// another file of the child's by the time it forks in turn.
#[allow(unsafe_code)]
extern "C" fn in_child() {
    FORKS.fetch_add(1, SeqCst);
    let mut null = -2;
    for slot in &LOCKS {
        let fd = slot.load(Relaxed);
        if fd < 0 {
            continue;
        }
        slot.store(-1, Relaxed);
        if null == -2 {
            // SAFETY: a constant NUL-terminated path and plain flags.
            null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        }
        if null < 0 {
            // No descriptor to be had (the child is at its limit): the
            // child holds the parent's locks until it ends.
            continue;
        }
        // SAFETY: `fd` is open in this process (copied from the parent,
        // where it was registered while open); pointing it at /dev/null
        // (close-on-exec, as the lock's descriptor was) drops the child's
        // reference to the locked description and leaves the number
        // valid for whoever closes it later.
        unsafe {
            libc::dup3(null, fd, libc::O_CLOEXEC);
        }
    }
    if null >= 0 {
        // SAFETY: the descriptor opened above, closed once.
        unsafe {
            libc::close(null);
        }
    }
}

/// The process something of a store was made in: the one it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Born(usize);

impl Born {
    /// This process.
    pub(crate) fn now() -> Born {
        watch();
        Born(FORKS.load(SeqCst))
    }

    /// Which process this is, as a number: a child forked since has
    /// another.
    pub(crate) fn id(self) -> usize {
        self.0
    }

    /// True in the process it was made in (false in a child forked since).
    pub(crate) fn here(self) -> bool {
        // The child's count is raised on its only thread before `fork`
        // returns: every later load of the child sees it.
        FORKS.load(Relaxed) == self.0
    }

    /// `Err` with one line in a forked child (inline: every store
    /// operation asks; the error is built out of line).
    #[inline]
    pub(crate) fn check(self, root: &std::path::Path) -> Result<(), dashi_engine::Error> {
        if self.here() {
            return Ok(());
        }
        Self::forked(root)
    }

    #[cold]
    fn forked(root: &std::path::Path) -> Result<(), dashi_engine::Error> {
        Err(dashi_engine::Error::Store(
            dashi_engine::StoreFailure::new(
                dashi_engine::FailureKind::Invalid,
                "local store",
                "this connection was opened by the process this one was forked \
                 from, and does nothing here: open a new connection in this process",
            )
            .at(root)
            .refused(),
        ))
    }
}

/// A descriptor holding a store's `flock`, let go of in forked children.
/// Release it before closing the descriptor.
#[derive(Debug)]
pub(crate) struct HeldLock {
    slot: Option<usize>,
    born: Born,
}

impl HeldLock {
    /// Registers `fd` (open, holding a lock). With every slot taken it
    /// goes unregistered: a child then holds the lock until it ends.
    pub(crate) fn new(fd: RawFd) -> HeldLock {
        let born = Born::now();
        let slot = LOCKS
            .iter()
            .position(|s| s.compare_exchange(-1, fd, SeqCst, Relaxed).is_ok());
        HeldLock { slot, born }
    }

    /// True in the process that registered it.
    pub(crate) fn here(&self) -> bool {
        self.born.here()
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // In a child the slot was cleared at the fork and may be another's.
        if let (Some(i), true) = (self.slot, self.born.here()) {
            LOCKS[i].store(-1, SeqCst);
        }
    }
}
