//! A file cut short under this process's mapping of it.
//!
//! Every file of a store is mapped shared. When another program cuts one
//! short (`truncate`, a bad restore), the pages past its new end fault with
//! `SIGBUS` in every process that touches them, and a `SIGBUS` kills the
//! process: a load from a mapping cannot return an error. This module turns
//! such a fault, when it happens inside one of the store's own operations
//! on one of its own mappings, into something the operation can report:
//! the faulting page is replaced by a private page of zeros (the access
//! completes and reads what the log takes for "nothing written here"), the
//! store's [`CutFlag`] is set, and the store refuses every operation in this
//! process from then on with one line that says what happened.
//!
//! # Invariants
//! - The handler acts only on a `BUS_ADRERR` fault at an address inside a
//!   mapping registered here, of a thread inside a [`Guard`] (the store's
//!   own code). Every other `SIGBUS` (a message body the application reads
//!   after the cut, a mapping of the application's own, a `kill -BUS`) goes
//!   to the handler that was installed before, or to the default action,
//!   which kills the process as it would without this module.
//! - A mapping is unregistered before it is unmapped, and the thread whose
//!   access faulted borrows it: the handler never replaces a page of a
//!   mapping that is gone, or of one that took its place.
//! - A replaced page is private: nothing this process writes there reaches
//!   the file or another process. An operation that wrote there never
//!   reports success (see [`CutFlag`]), and every later one of the store
//!   fails before it touches a mapping.
//! - A replaced page is closed (`PROT_NONE`) when the operation that met it
//!   ends: a body handed to the application earlier may point into it, and
//!   reading zeros there would pass for the message. Such a read ends the
//!   process (`SIGSEGV`), as the `SIGBUS` did.
//! - The handler calls only `mmap` and `sigaction` (async-signal-safe
//!   system calls), keeps `errno`, and touches only atomics and
//!   thread-locals with constant initialisers and no destructor, after it
//!   has checked the fault is ours.
//! - The guarded thread's store is the one whose flag is set: a guarded
//!   operation touches only its own store's mappings.

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
#[cfg(not(loom))]
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};

#[cfg(not(loom))]
use std::sync::atomic::AtomicUsize;

/// Set when a page of one of a store's mappings was found cut short in this
/// process. From then on the store refuses every operation here: pages it
/// replaced read as zeros, so nothing it reads or writes can be trusted.
#[derive(Debug)]
pub(crate) struct CutFlag {
    set: AtomicBool,
    /// The store's directory, for the error.
    root: std::path::PathBuf,
}

impl CutFlag {
    /// A flag for the store at `root`, not set.
    pub(crate) fn new(root: &std::path::Path) -> CutFlag {
        CutFlag {
            set: AtomicBool::new(false),
            root: root.to_path_buf(),
        }
    }

    /// Whether a cut was found.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Relaxed)
    }

    /// `Err` with what happened once a cut was found.
    pub(crate) fn check(&self) -> Result<(), dashi_engine::Error> {
        if self.is_set() {
            Err(dashi_engine::Error::Store(self.failure()))
        } else {
            Ok(())
        }
    }

    /// What happened, as a failure: damaged, not transient (retrying in
    /// this process cannot help).
    pub(crate) fn failure(&self) -> dashi_engine::StoreFailure {
        dashi_engine::StoreFailure::new(
            dashi_engine::FailureKind::Damaged,
            "local store",
            "a page of one of its files could not be read or written through \
             its mapping (the file was cut short under this process, or the \
             disk failed); this process does nothing more with the store: once \
             every process has closed it, the next open sets a short file aside",
        )
        .at(&self.root)
    }

    /// Marks the store as cut in this process (as the handler does).
    #[cfg(test)]
    pub(crate) fn set(&self) {
        self.set.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Most pages one operation can have replaced: past that, a fault is passed
/// on (the process ends, as without this module).
#[cfg(not(loom))]
const MAX_REPLACED: usize = 64;

thread_local! {
    /// The flag of the store whose operation this thread is running (null:
    /// none). A plain pointer with a constant initialiser: no destructor,
    /// no lazy initialisation, so the handler can read it.
    static GUARDED: Cell<*const AtomicBool> = const { Cell::new(std::ptr::null()) };
}

#[cfg(not(loom))]
thread_local! {
    /// Pages the handler replaced during this thread's operation, closed
    /// (`PROT_NONE`) when the outermost guard ends.
    static REPLACED: [Cell<usize>; MAX_REPLACED] = const { [const { Cell::new(0) }; MAX_REPLACED] };
    static N_REPLACED: Cell<usize> = const { Cell::new(0) };
}

/// While alive, a fault of this thread on a cut page of a registered mapping
/// is survived and sets `flag`. Guards nest (the innermost flag is set).
#[must_use]
pub(crate) struct Guard<'a> {
    prev: *const AtomicBool,
    _flag: std::marker::PhantomData<&'a CutFlag>,
}

impl<'a> Guard<'a> {
    /// Runs the calling thread's next accesses under `flag`.
    pub(crate) fn new(flag: &'a CutFlag) -> Guard<'a> {
        let prev = GUARDED.with(|g| g.replace(&flag.set));
        Guard {
            prev,
            _flag: std::marker::PhantomData,
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        GUARDED.with(|g| g.set(self.prev));
        if self.prev.is_null() {
            #[cfg(not(loom))]
            close_replaced();
        }
    }
}

/// Closes the pages this thread's operation had replaced: a message body
/// handed out earlier may point into one, and the application must never
/// read zeros for it. Its next read faults (`SIGSEGV`) and ends the process,
/// as the `SIGBUS` would have; the store refuses every operation by now, so
/// its own code does not come back to them.
#[cfg(not(loom))]
#[allow(unsafe_code)]
fn close_replaced() {
    let n = N_REPLACED.with(|n| n.replace(0)).min(MAX_REPLACED);
    let page = PAGE.load(Relaxed);
    for i in 0..n {
        let at = REPLACED.with(|r| r[i].replace(0));
        // SAFETY: `at` is a page of a registered mapping this thread's
        // operation was using when the handler replaced it; the mapping is
        // unregistered only before it is unmapped, and closing a page of a
        // mapping already gone fails harmlessly (`ENOMEM`).
        unsafe {
            libc::mprotect(at as *mut libc::c_void, page, libc::PROT_NONE);
        }
    }
}

impl std::fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// How many mappings can be registered at once: about the kernel's default
/// limit of mappings per process (`vm.max_map_count`, 65,530). A mapping
/// made when every slot is taken is not registered, and a cut under it
/// kills the process, as without this module.
#[cfg(not(loom))]
const SLOTS: usize = 1 << 16;

/// A slot whose range is being written or cleared.
#[cfg(not(loom))]
const BUSY: usize = 1;

/// Registered mappings: `STARTS[i]` is the first address (0: free, `BUSY`:
/// changing), `ENDS[i]` one past the last.
#[cfg(not(loom))]
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
#[cfg(not(loom))]
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// One past the highest slot ever used (the handler's scan stops there).
#[cfg(not(loom))]
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Where the next registration starts looking.
#[cfg(not(loom))]
static HINT: AtomicUsize = AtomicUsize::new(0);

/// A registered mapping; unregisters it when dropped (before the mapping
/// itself goes: hold it in a field declared before the mapping).
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct Registration(Option<usize>);

#[cfg(not(loom))]
impl Registration {
    /// No registration (a region that maps no file).
    #[cfg(test)]
    pub(crate) fn none() -> Registration {
        Registration(None)
    }
}

/// Registers `[start, start + len)` as a mapping of a store's file, and
/// installs the handler the first time.
#[cfg(not(loom))]
pub(crate) fn register(start: usize, len: usize) -> Registration {
    if start <= BUSY || len == 0 {
        return Registration(None);
    }
    install();
    let from = HINT.load(Relaxed);
    for k in 0..SLOTS {
        let i = (from + k) % SLOTS;
        if STARTS[i]
            .compare_exchange(0, BUSY, Acquire, Relaxed)
            .is_ok()
        {
            ENDS[i].store(start.saturating_add(len), Relaxed);
            STARTS[i].store(start, Release);
            HIGH.fetch_max(i + 1, SeqCst);
            HINT.store(i + 1, Relaxed);
            return Registration(Some(i));
        }
    }
    Registration(None)
}

#[cfg(not(loom))]
impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            STARTS[i].store(BUSY, SeqCst);
            ENDS[i].store(0, Relaxed);
            STARTS[i].store(0, Release);
        }
    }
}

/// Whether `addr` lies in a registered mapping.
#[cfg(not(loom))]
fn registered(addr: usize) -> bool {
    let high = HIGH.load(Acquire).min(SLOTS);
    (0..high).any(|i| {
        let s = STARTS[i].load(Acquire);
        let e = ENDS[i].load(Acquire);
        // The start read again: a slot freed and taken between the two
        // loads would pair one mapping's start with another's end.
        s > BUSY && STARTS[i].load(Acquire) == s && addr >= s && addr < e
    })
}

/// The handler found when ours was installed (to pass on what is not ours).
#[cfg(not(loom))]
static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

#[cfg(not(loom))]
static INSTALL: std::sync::Once = std::sync::Once::new();

#[cfg(not(loom))]
static PAGE: AtomicUsize = AtomicUsize::new(4096);

#[cfg(not(loom))]
#[allow(unsafe_code)]
fn install() {
    INSTALL.call_once(|| {
        PAGE.store(rustix::param::page_size(), Relaxed);
        // SAFETY: `sigaction` with a zeroed struct as the output reads the
        // current action; the new action names a handler that is an
        // `extern "C"` function of the signature SA_SIGINFO requires.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            let _ = PREVIOUS.set(old);
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut());
        }
    });
}

#[cfg(not(loom))]
#[allow(unsafe_code)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO
    // handler; for a fault, `si_addr` is the faulting address.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // The thread-locals last: a thread of a library loaded at run time may
    // reach them through `__tls_get_addr`, and a guarded thread has.
    if code != libc::BUS_ADRERR || !registered(addr) {
        return pass_on(sig, info, ctx);
    }
    let flag = GUARDED.with(|g| g.get());
    let n = N_REPLACED.with(|n| n.get());
    if !flag.is_null() && n < MAX_REPLACED {
        // SAFETY: this thread's errno, saved and put back: the interrupted
        // code may be between a call and its read of errno.
        let errno = unsafe { *libc::__errno_location() };
        let page = PAGE.load(Relaxed);
        let at = addr & !(page - 1);
        // SAFETY: the page lies in a mapping of a store's file that the
        // faulting thread is using (registered, and unregistered only
        // before it is unmapped); replacing it with a private zero page
        // changes no file and no other mapping.
        let r = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        if r != libc::MAP_FAILED {
            REPLACED.with(|p| p[n].set(at));
            N_REPLACED.with(|c| c.set(n + 1));
            // SAFETY: the guard that set the pointer borrows the flag and is
            // alive on this thread (it is the thread that faulted).
            unsafe { (*flag).store(true, SeqCst) };
            return;
        }
    }
    pass_on(sig, info, ctx);
}

/// Hands a `SIGBUS` that is not ours to the handler installed before, or
/// restores the default action so that the fault, repeated on return, ends
/// the process as it would have without us.
#[cfg(not(loom))]
#[allow(unsafe_code)]
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.get().copied();
    match prev {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous action named an SA_SIGINFO handler
                // of this signature; it is called as the kernel would.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: the previous action named a plain handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: restores the default action; the faulting access runs
            // again on return and the signal, no longer caught, ends the
            // process.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut dfl.sa_mask);
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}
