//! A file cut short under this process's mapping of it.
//!
//! Every file of a store is mapped shared. When another program cuts one
//! short (`truncate`, a bad restore), the pages past its new end fault with
//! `SIGBUS` in every process that touches them, and a `SIGBUS` kills the
//! process: a load from a mapping cannot return an error. This module turns
//! such a fault, when it happens inside one of the store's own operations
//! on one of its own mappings, into something the operation can report:
//! the rest of the mapping from the faulting page on is replaced by private
//! zero pages (the access completes and reads what the log takes for
//! "nothing written here"), the store's [`CutFlag`] is set, and the store
//! refuses every operation in this process from then on with one line that
//! says what happened.
//!
//! # Invariants
//! - The handler acts only on a `BUS_ADRERR` fault at an address inside a
//!   mapping registered here, of a thread inside a [`Guard`] (the store's
//!   own code) of the store that made the mapping (or of any store, for a
//!   mapping made outside every operation: at a store's opening). Every
//!   other `SIGBUS` (a message body the application reads after the cut,
//!   or hands to another store to publish; a mapping of the application's
//!   own; a `kill -BUS`) goes to the handler that was installed before, or
//!   to the default action, which ends the process as it would without
//!   this module (a signal sent, which does not come again on return, is
//!   sent again).
//! - A mapping is unregistered before it is unmapped, and the thread whose
//!   access faulted borrows it: the handler never replaces a page of a
//!   mapping that is gone, or of one that took its place.
//! - A replaced page is private: nothing this process writes there reaches
//!   the file or another process. An operation that wrote there never
//!   reports success, and every later one of the store fails before it
//!   touches a mapping: a guard is published (below) before the flag is
//!   read, so an operation either sees the flag or is seen in flight.
//! - Replaced pages are closed (`PROT_NONE`) once no operation of their
//!   store is in flight in any thread of the process: a body handed to the
//!   application earlier may point into one, and reading zeros there would
//!   pass for the message. Such a read ends the process (`SIGSEGV`), as the
//!   `SIGBUS` did. A page is closed only while its mapping's registration
//!   is the one it was replaced under: a closer counts itself in the
//!   registration, and unregistering marks it going, then waits for none
//!   to be counted.
//! - The handler calls only `mmap`, `sigaction` and `raise`
//!   (async-signal-safe) and the handler installed before it, keeps
//!   `errno` across all of it, and touches only atomics and thread-locals
//!   with constant initialisers and no destructor, after it has checked the
//!   fault is ours.

use std::cell::Cell;
use std::sync::atomic::AtomicBool;
#[cfg(not(loom))]
use std::sync::atomic::Ordering::Release;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicPtr, AtomicUsize};

/// How many stretches of replaced pages a store keeps: past that, a fault
/// is passed on (the process ends, as without this module). Each fault
/// replaces the rest of its mapping, so a store needs one per mapping cut.
const MAX_REPLACED: usize = 64;

/// One stretch of replaced pages, recorded by the handler.
#[derive(Debug)]
#[cfg_attr(loom, allow(dead_code))]
struct Replaced {
    /// Its first page and length in bytes.
    at: AtomicUsize,
    len: AtomicUsize,
    /// The registration it was replaced under (slot and generation).
    slot: AtomicUsize,
    generation: AtomicUsize,
    /// Written whole (set last by the handler).
    ready: AtomicBool,
    /// Closed (or found gone) by a closer.
    closed: AtomicBool,
}

impl Replaced {
    const fn new() -> Replaced {
        Replaced {
            at: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            slot: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }
}

/// Set when a page of one of a store's mappings was found cut short in this
/// process. From then on the store refuses every operation here: pages it
/// replaced read as zeros, so nothing it reads or writes can be trusted.
#[derive(Debug)]
pub(crate) struct CutFlag {
    set: AtomicBool,
    /// Never the same for two flags of a process (mappings name it).
    #[cfg_attr(loom, allow(dead_code))]
    id: usize,
    /// The store's directory, for the error.
    root: std::path::PathBuf,
    /// What the handler replaced, to close.
    replaced: [Replaced; MAX_REPLACED],
    recorded: AtomicUsize,
    /// Stretches closed so far (all closed: no closer needs to look).
    closed: AtomicUsize,
    /// The process the store was opened in: a child forked since gets
    /// nothing done (`forked.rs`).
    born: crate::forked::Born,
}

impl CutFlag {
    /// A flag for the store at `root`, not set.
    pub(crate) fn new(root: &std::path::Path) -> CutFlag {
        static IDS: AtomicUsize = AtomicUsize::new(1);
        CutFlag {
            set: AtomicBool::new(false),
            id: IDS.fetch_add(1, Relaxed),
            root: root.to_path_buf(),
            replaced: [const { Replaced::new() }; MAX_REPLACED],
            recorded: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            born: crate::forked::Born::now(),
        }
    }

    /// True in the process the store was opened in.
    pub(crate) fn here(&self) -> bool {
        self.born.here()
    }

    /// Whether a cut was found.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(SeqCst)
    }

    /// `Err` with what happened once a cut was found.
    pub(crate) fn check(&self) -> Result<(), dashi_engine::Error> {
        if self.is_set() {
            return Err(dashi_engine::Error::Store(self.failure()));
        }
        Ok(())
    }

    /// Starts an operation of the store on this thread: `Err` once a cut
    /// was found (the operation must not touch a mapping) or in a child
    /// forked since the store was opened (`forked.rs`), else the guard
    /// under which a fault on a cut page is survived.
    pub(crate) fn enter(&self) -> Result<Guard<'_>, dashi_engine::Error> {
        // A store inherited through a fork is the parent's.
        self.born.check(&self.root)?;
        // Refused at once when set (not counted in flight: a caller
        // retrying in a loop never holds the closing off).
        if self.is_set() {
            return Err(dashi_engine::Error::Store(self.failure()));
        }
        let g = Guard::new(self);
        // After the guard is published (SeqCst both): a closer that set
        // the flag before this load sees the guard, or this load sees it.
        self.check()?;
        Ok(g)
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
        self.set.store(true, SeqCst);
    }

    /// Closes every stretch replaced so far, once no operation of this
    /// store is in flight (another's end closes them otherwise).
    fn close_replaced(&self) {
        let n = self.recorded.load(SeqCst).min(MAX_REPLACED);
        if n == 0 || self.closed.load(SeqCst) >= n || in_flight(self) {
            return;
        }
        for r in &self.replaced[..n] {
            if !r.ready.load(Acquire) || r.closed.load(Acquire) {
                continue;
            }
            // Two closers may both close a stretch (harmless); it counts as
            // closed only once it was (or its mapping is gone).
            #[cfg(not(loom))]
            let done = close(
                r.at.load(Relaxed),
                r.len.load(Relaxed),
                r.slot.load(Relaxed),
                r.generation.load(Relaxed),
            );
            #[cfg(loom)]
            let done = true;
            if done && !r.closed.swap(true, AcqRel) {
                self.closed.fetch_add(1, SeqCst);
            }
        }
    }
}

thread_local! {
    /// The flag of the store whose operation this thread is running (null:
    /// none). A plain pointer with a constant initialiser: no destructor,
    /// no lazy initialisation, so the handler can read it.
    static GUARDED: Cell<*const CutFlag> = const { Cell::new(std::ptr::null()) };
    /// This thread's slot in [`THREADS`] (`NO_SLOT`: none yet; `ENDED`:
    /// given back as the thread ends).
    static THREAD_SLOT: Cell<usize> = const { Cell::new(NO_SLOT) };
}

const NO_SLOT: usize = usize::MAX;
const ENDED: usize = usize::MAX - 1;

/// Threads that can run guarded operations at once with a published guard;
/// past that, a thread counts in [`UNTRACKED`] instead.
const THREAD_SLOTS: usize = 4096;

/// A thread's outermost guarded store (null: none), read by closers; a
/// cache line each (every operation writes its own twice).
#[repr(align(64))]
struct ThreadSlot(AtomicPtr<CutFlag>);

/// Each thread's slot.
static THREADS: [ThreadSlot; THREAD_SLOTS] =
    [const { ThreadSlot(AtomicPtr::new(std::ptr::null_mut())) }; THREAD_SLOTS];
/// Which slots of [`THREADS`] belong to a thread.
static THREAD_TAKEN: [AtomicBool; THREAD_SLOTS] = [const { AtomicBool::new(false) }; THREAD_SLOTS];
/// Guarded operations in flight on threads without a slot: while any is,
/// nothing is closed.
static UNTRACKED: AtomicUsize = AtomicUsize::new(0);

/// Gives a thread's slot back when the thread ends.
struct SlotOwner(usize);

impl Drop for SlotOwner {
    fn drop(&mut self) {
        // A guard after this (another thread-local's destructor) counts in
        // `UNTRACKED`: the slot may be another thread's by then.
        let _ = THREAD_SLOT.try_with(|s| s.set(ENDED));
        THREADS[self.0].0.store(std::ptr::null_mut(), SeqCst);
        THREAD_TAKEN[self.0].store(false, SeqCst);
    }
}

thread_local! {
    static SLOT_OWNER: Cell<Option<SlotOwner>> = const { Cell::new(None) };
}

/// This thread's slot, taken on its first guard (`None`: all taken, or the
/// thread is ending).
fn thread_slot() -> Option<usize> {
    let s = THREAD_SLOT.try_with(|s| s.get()).unwrap_or(ENDED);
    if s == ENDED {
        return None;
    }
    if s != NO_SLOT {
        return Some(s);
    }
    let i = (0..THREAD_SLOTS).find(|&i| {
        THREAD_TAKEN[i]
            .compare_exchange(false, true, SeqCst, Relaxed)
            .is_ok()
    })?;
    let kept = SLOT_OWNER.try_with(|o| o.set(Some(SlotOwner(i)))).is_ok();
    if !kept {
        THREAD_TAKEN[i].store(false, SeqCst);
        return None;
    }
    THREAD_SLOT.with(|s| s.set(i));
    Some(i)
}

/// The id of the store whose operation this thread is running (0: none).
#[cfg(not(loom))]
#[allow(unsafe_code)]
fn guarded_id() -> usize {
    let flag = GUARDED.with(|g| g.get());
    if flag.is_null() {
        return 0;
    }
    // SAFETY: a guard of this thread borrows the flag, alive until it ends.
    unsafe { (*flag).id }
}

/// Whether an operation of `flag`'s store is in flight in any thread.
fn in_flight(flag: &CutFlag) -> bool {
    let me = flag as *const CutFlag as *mut CutFlag;
    UNTRACKED.load(SeqCst) > 0 || THREADS.iter().any(|t| t.0.load(SeqCst) == me)
}

/// While alive, a fault of this thread on a cut page of a registered mapping
/// is survived and sets `flag`. Guards nest (the innermost flag is set;
/// the outermost store is the one counted in flight).
#[must_use]
pub(crate) struct Guard<'a> {
    prev: *const CutFlag,
    flag: &'a CutFlag,
    /// The slot published in (outermost guard only), or `Some(usize::MAX)`
    /// when counted in [`UNTRACKED`].
    published: Option<usize>,
}

impl<'a> Guard<'a> {
    /// Runs the calling thread's next accesses under `flag`. Prefer
    /// [`CutFlag::enter`], which refuses once the flag is set.
    pub(crate) fn new(flag: &'a CutFlag) -> Guard<'a> {
        let prev = GUARDED.with(|g| g.replace(flag));
        let published = prev.is_null().then(|| match thread_slot() {
            Some(i) => {
                THREADS[i]
                    .0
                    .store(flag as *const CutFlag as *mut CutFlag, SeqCst);
                i
            }
            None => {
                UNTRACKED.fetch_add(1, SeqCst);
                usize::MAX
            }
        });
        Guard {
            prev,
            flag,
            published,
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        GUARDED.with(|g| g.set(self.prev));
        match self.published {
            None => return,
            Some(usize::MAX) => {
                UNTRACKED.fetch_sub(1, SeqCst);
            }
            Some(i) => THREADS[i].0.store(std::ptr::null_mut(), SeqCst),
        }
        if self.flag.is_set() {
            self.flag.close_replaced();
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

/// A slot whose range is being written, cleared, or closed.
#[cfg(not(loom))]
const BUSY: usize = 1;

/// Registered mappings: `STARTS[i]` is the first address (0: free, `BUSY`:
/// changing), `ENDS[i]` one past the last, `GENERATIONS[i]` counts its
/// registrations.
#[cfg(not(loom))]
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
#[cfg(not(loom))]
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
#[cfg(not(loom))]
static GENERATIONS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// The id of the store whose operation made each mapping (0: made outside
/// one, at a store's opening).
#[cfg(not(loom))]
static OWNERS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Closers at work in each slot's mapping.
#[cfg(not(loom))]
static CLOSERS: [std::sync::atomic::AtomicU32; SLOTS] =
    [const { std::sync::atomic::AtomicU32::new(0) }; SLOTS];
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
            GENERATIONS[i].fetch_add(1, SeqCst);
            OWNERS[i].store(guarded_id(), SeqCst);
            ENDS[i].store(start.saturating_add(len), SeqCst);
            STARTS[i].store(start, SeqCst);
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
        let Some(i) = self.0 else { return };
        // Marked going first, then the closers at work waited out: one
        // either sees the mark (and closes nothing) or is waited for.
        STARTS[i].store(BUSY, SeqCst);
        GENERATIONS[i].fetch_add(1, SeqCst);
        let mut spins = 0u32;
        while CLOSERS[i].load(SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::thread::yield_now();
            } else {
                // A closer of lower priority must get to run.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        ENDS[i].store(0, SeqCst);
        STARTS[i].store(0, SeqCst);
    }
}

/// The registration `addr` lies in: slot, generation, the mapping's end
/// and the store that made it.
#[cfg(not(loom))]
fn registered(addr: usize) -> Option<(usize, usize, usize, usize)> {
    let high = HIGH.load(SeqCst).min(SLOTS);
    (0..high).find_map(|i| {
        let s = STARTS[i].load(SeqCst);
        let g = GENERATIONS[i].load(SeqCst);
        let e = ENDS[i].load(SeqCst);
        let o = OWNERS[i].load(SeqCst);
        // Read again: a slot freed and taken between the loads would pair
        // one mapping's start with another's end.
        let whole = s > BUSY && STARTS[i].load(SeqCst) == s && GENERATIONS[i].load(SeqCst) == g;
        (whole && addr >= s && addr < e).then_some((i, g, e, o))
    })
}

/// Closes `[at, at + len)` if slot `slot` still holds generation
/// `generation`, counted in the slot's closers meanwhile (unregistering
/// waits for them). True when closed, or when its mapping is gone or going
/// (nothing of it to close).
#[cfg(not(loom))]
#[allow(unsafe_code)]
fn close(at: usize, len: usize, slot: usize, generation: usize) -> bool {
    CLOSERS[slot].fetch_add(1, SeqCst);
    if STARTS[slot].load(SeqCst) > BUSY && GENERATIONS[slot].load(SeqCst) == generation {
        // SAFETY: the range lies in the mapping registered in `slot` under
        // `generation` (the handler replaced it there), which stays mapped
        // while this closer is counted; closing it changes no other memory.
        unsafe {
            libc::mprotect(at as *mut libc::c_void, len, libc::PROT_NONE);
        }
    }
    CLOSERS[slot].fetch_sub(1, SeqCst);
    true
}

/// In a child just forked: no closer and no other thread of the parent runs
/// here, so none is waited for or counted in flight.
#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    // Written only where set: most of these pages were never touched.
    for c in &CLOSERS {
        if c.load(Relaxed) != 0 {
            c.store(0, SeqCst);
        }
    }
    let mine = THREAD_SLOT.with(|s| s.get());
    for (i, t) in THREADS.iter().enumerate() {
        if i != mine && !t.0.load(Relaxed).is_null() {
            t.0.store(std::ptr::null_mut(), SeqCst);
        }
    }
    UNTRACKED.store(0, SeqCst);
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
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

#[cfg(not(loom))]
#[allow(unsafe_code)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: this thread's errno, saved and put back: the interrupted
    // code may be between a call and its read of errno.
    let errno = unsafe { *libc::__errno_location() };
    handle(sig, info, ctx);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

#[cfg(not(loom))]
#[allow(unsafe_code)]
fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an SA_SIGINFO
    // handler; for a fault, `si_addr` is the faulting address.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code != libc::BUS_ADRERR {
        return pass_on(sig, info, ctx);
    }
    // The thread-locals last: a thread of a library loaded at run time may
    // reach them through `__tls_get_addr`, and a guarded thread has.
    let Some((slot, generation, end, owner)) = registered(addr) else {
        return pass_on(sig, info, ctx);
    };
    let flag = GUARDED.with(|g| g.get());
    // Another store's mapping (a body of it published into this one) is
    // the application's data here: its read ends the process, as the
    // application's own would.
    if flag.is_null() {
        return pass_on(sig, info, ctx);
    }
    // SAFETY: the guard that set the pointer borrows the flag and is alive
    // on this thread (it is the thread that faulted).
    let flag = unsafe { &*flag };
    if owner != 0 && owner != flag.id {
        return pass_on(sig, info, ctx);
    }
    let k = flag.recorded.fetch_add(1, SeqCst);
    if k >= MAX_REPLACED {
        return pass_on(sig, info, ctx);
    }
    let page = PAGE.load(Relaxed);
    let at = addr & !(page - 1);
    let len = end - at;
    // SAFETY: `[at, end)` lies in a mapping of a store's file that the
    // faulting thread is using (registered, and unregistered only before
    // it is unmapped); past the fault it is past the file's end too.
    // Replacing it with private zero pages changes no file and no other
    // mapping.
    let r = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return pass_on(sig, info, ctx);
    }
    let rec = &flag.replaced[k];
    rec.at.store(at, Relaxed);
    rec.len.store(len, Relaxed);
    rec.slot.store(slot, Relaxed);
    rec.generation.store(generation, Relaxed);
    rec.ready.store(true, Release);
    flag.set.store(true, SeqCst);
}

/// Hands a `SIGBUS` that is not ours to the handler installed before, or
/// restores the default action so that the fault, repeated on return, ends
/// the process as it would have without us.
#[cfg(not(loom))]
#[allow(unsafe_code)]
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: `info` is valid (see `on_sigbus`).
    let sent = unsafe { (*info).si_code } <= 0;
    let prev = PREVIOUS.get().copied();
    // The previous handler was one-shot: it ran once, as the kernel would
    // have delivered it, and nothing is sent again.
    let mut one_shot = false;
    match prev {
        // Ignored before us: a signal sent stays ignored. (A fault cannot
        // be ignored: the kernel ends the process when it comes again.)
        Some(p) if p.sa_sigaction == libc::SIG_IGN && sent => return,
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_RESETHAND != 0 {
                one_shot = true;
                // What the kernel would have done delivering it to that
                // handler: the next one ends the process.
                // SAFETY: sets the default action.
                unsafe {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigemptyset(&mut dfl.sa_mask);
                    libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
                }
            }
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
            // SAFETY: restores the default action; a fault runs again on
            // return and the signal, no longer caught, ends the process.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut dfl.sa_mask);
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
    // A signal that does not come again on return (sent with `kill`, or a
    // machine-check notice), left with the default action (ours restored
    // it, or the previous handler did, as Rust's does), is sent again: it
    // ends the process as the default would. Blocked while this handler
    // runs, it is delivered on return. A fault comes again by itself,
    // with its address for a core dump.
    // SAFETY: `info` is valid; `sigaction` with a null new action only
    // reads the action.
    unsafe {
        let code = (*info).si_code;
        let mut now: libc::sigaction = std::mem::zeroed();
        if (code <= 0 || code == libc::BUS_MCEERR_AO)
            && !one_shot
            && libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) == 0
            && now.sa_sigaction == libc::SIG_DFL
        {
            libc::raise(sig);
        }
    }
}
