//! Durability of confirmed publishes: `fdatasync` of the segments written,
//! issued on a runtime core's io_uring.
//!
//! # Invariants
//! - `fsync=always`: a publish takes a ticket on each segment it wrote after
//!   committing its record, and returns only when a sync that started after
//!   the ticket finished (`done >= ticket`). A sync serves every ticket taken
//!   before it began, so concurrent publishers share syncs (group commit).
//!   Up to two syncs per segment are in flight: a publish that arrives while
//!   one runs starts the next at once instead of waiting for it to end (its
//!   confirm takes about one sync, not one and a half); `started` (the
//!   highest ticket a started sync covers) keeps a third from starting.
//! - `fsync=interval`: one task on a core syncs every segment with tickets
//!   newer than its last sync, once per interval; synchronous publishes do
//!   not wait, pipelined ones are confirmed by the sync that covers them.
//!   A segment's sync state stays until the timer has synced what it owes,
//!   mapped or not. After a failed sync of a segment, or once the runtime
//!   has died, a synchronous publish to it is not confirmed (the segment is
//!   sealed): no timer sync would ever cover it.
//! - A pipelined publish ([`Tickets`]) takes the same tickets and is
//!   confirmed by the same syncs, but starts none by itself: its ticket is
//!   `wanted` (and a sync started) when its confirm is awaited, and until then
//!   it rides along with any sync that runs (a sync covers every ticket
//!   taken before it began). A pipelined publisher thus appends on while a
//!   sync runs and the next sync covers all of it: fewer, larger syncs.
//!   Syncs chain while `wanted` is ahead of `started`; a sync wakes the blocked waiters (condvar)
//!   and the async ones (wakers registered before they look at `done`, so a
//!   sync that ends between the look and the registration still wakes them).
//! - A failed `fdatasync` fails every publish waiting on that file and every
//!   later one (the kernel may have dropped the dirty pages, so nothing after
//!   it can be confirmed from that file): `done` never moves again, the
//!   failure is sticky, and the publisher seals the segment so new records
//!   go to a fresh file. A segment this process cannot open to sync (a
//!   mapped segment keeps no descriptor: it is opened by path for its
//!   first sync, and checked to be the file mapped) fails the publish the
//!   same way, in every mode, and is sealed.
//! - A file's sync state lives while a segment or a waiter uses it: it is
//!   keyed by the segment's open file (not its path, which a later file
//!   may take), and let go once nothing else holds the file or the state,
//!   so segments that retention or a queue delete removed do not keep
//!   their descriptors (and their disk space) for the life of the process.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{
    AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::SeqCst,
};
use std::sync::{Arc, Condvar, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use dashi_rt::{io, Runtime};
use parking_lot::Mutex;

use super::Fsync;
use crate::cut::CutFlag;
use crate::segment::Segment;

/// Syncs of one file in flight at once.
const MAX_IN_FLIGHT: u32 = 2;

struct FileSync {
    file: Arc<File>,
    core: usize,
    requested: AtomicU64,
    /// Highest ticket someone waits for: a synchronous publish, or a
    /// pipelined one whose confirm is awaited. Syncs run while it is ahead
    /// of `started`; tickets nobody waits for yet ride along with the next
    /// sync (a pipelined publisher appends on while one runs).
    wanted: AtomicU64,
    done: AtomicU64,
    /// Highest ticket covered by a sync that has started.
    started: AtomicU64,
    /// Syncs of this file in flight (at most [`MAX_IN_FLIGHT`]).
    in_flight: AtomicU32,
    /// Set (for good) by the first failed sync.
    failed: Mutex<Option<String>>,
    wait: std::sync::Mutex<()>,
    cv: Condvar,
    /// Async waiters, woken after each sync.
    wakers: Mutex<Vec<Waker>>,
    syncs: AtomicU64,
}

impl FileSync {
    /// One fdatasync covering every ticket taken so far, unless a sync that
    /// already started covers them all (two tasks can race here).
    async fn sync_once(&self) {
        let target = self.requested.load(SeqCst);
        if self.started.fetch_max(target, SeqCst) >= target {
            return;
        }
        // A group commit about to sync, confirms waiting on it.
        crate::failpoint!("durability::sync");
        #[cfg_attr(not(feature = "failpoints"), allow(unused_mut))]
        let mut r = io::fdatasync(&self.file).await;
        // Tests make the sync fail here, as a disk error would (EIO).
        #[cfg(feature = "failpoints")]
        if fail::eval("durability::fdatasync", |_| ()).is_some() {
            r = Err(std::io::Error::from_raw_os_error(5));
        }
        self.syncs.fetch_add(1, AcqRel);
        match r {
            Ok(()) if self.failed.lock().is_none() => {
                self.done.fetch_max(target, AcqRel);
            }
            Ok(()) => {}
            Err(e) => {
                self.failed
                    .lock()
                    .get_or_insert_with(|| format!("fdatasync failed: {e}"));
            }
        }
        let _g = self.wait.lock();
        self.cv.notify_all();
        drop(_g);
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers {
            w.wake();
        }
    }

    /// The outcome for `ticket` if known: `Some(Ok)` once a finished sync
    /// covers it, `Some(Err)` once a sync failed.
    fn outcome(&self, ticket: u64) -> Option<Result<(), String>> {
        if self.done.load(Acquire) >= ticket {
            return Some(Ok(()));
        }
        self.failed.lock().clone().map(Err)
    }
}

/// The syncing side of a store.
pub(crate) struct Durability {
    mode: Fsync,
    rt: Arc<Runtime>,
    /// By the address of the segment's `Arc<File>`: the entry holds a
    /// clone, so no other file takes that address while it is here.
    files: Mutex<HashMap<usize, Arc<FileSync>>>,
    /// Syncs of the files let go of (for [`Durability::syncs`]).
    retired_syncs: AtomicU64,
    /// Files seen, to spread their syncs over the cores.
    seen: AtomicU64,
    /// The store's: sealing a segment writes its header (`cut.rs`).
    cut: Arc<CutFlag>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("mode", &self.mode)
            .finish()
    }
}

impl Durability {
    /// Seals `seg` (nothing more is confirmed from it), under the store's
    /// cut guard; not once a file of the store was found cut short here.
    fn seal(&self, seg: &Segment) {
        if let Ok(_g) = self.cut.enter() {
            seg.seal();
        }
    }
}

impl Durability {
    /// Syncs on `rt` (the store's runtime); `None` for `fsync=never`.
    pub(crate) fn start(
        mode: Fsync,
        rt: Result<Arc<Runtime>, String>,
        cut: Arc<CutFlag>,
    ) -> Result<Option<Arc<Durability>>, String> {
        if mode == Fsync::Never {
            return Ok(None);
        }
        let rt = rt.map_err(|e| format!("fsync needs the io_uring runtime: {e}"))?;
        let d = Arc::new(Durability {
            mode,
            rt,
            files: Mutex::new(HashMap::new()),
            retired_syncs: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            cut,
        });
        if let Fsync::Interval(every) = mode {
            let weak = Arc::downgrade(&d);
            d.rt.spawn(0, move || interval_loop(weak, every));
        }
        Ok(Some(d))
    }

    fn state(&self, file: &Arc<File>) -> Arc<FileSync> {
        let mut files = self.files.lock();
        let key = Arc::as_ptr(file) as usize;
        if let Some(st) = files.get(&key) {
            return st.clone();
        }
        // A new file (rare: one per segment written): first let go of the
        // files no segment and no waiter or sync holds any more, and that
        // hold nothing a timer sync still owes (`fsync=interval`: a
        // publish confirmed at commit is synced at the next tick, whether
        // or not its segment is still mapped here).
        files.retain(|_, st| {
            let owed = matches!(self.mode, Fsync::Interval(_))
                && st.requested.load(Acquire) > st.done.load(Acquire)
                && st.failed.lock().is_none();
            let used = owed || Arc::strong_count(&st.file) > 1 || Arc::strong_count(st) > 1;
            if !used {
                self.retired_syncs.fetch_add(st.syncs.load(Acquire), AcqRel);
            }
            used
        });
        let n = self.seen.fetch_add(1, AcqRel);
        files
            .entry(key)
            .or_insert_with(|| {
                Arc::new(FileSync {
                    file: file.clone(),
                    core: (n % self.rt.cores() as u64) as usize,
                    requested: AtomicU64::new(0),
                    wanted: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    started: AtomicU64::new(0),
                    in_flight: AtomicU32::new(0),
                    failed: Mutex::new(None),
                    wait: std::sync::Mutex::new(()),
                    cv: Condvar::new(),
                    wakers: Mutex::new(Vec::new()),
                    syncs: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Marks `ticket` as awaited and makes sure a sync covering it has
    /// started or will start.
    fn ensure_running(&self, st: &Arc<FileSync>, ticket: u64) {
        st.wanted.fetch_max(ticket, SeqCst);
        loop {
            if st.started.load(SeqCst) >= ticket {
                return;
            }
            let n = st.in_flight.load(SeqCst);
            if n >= MAX_IN_FLIGHT {
                // A sync in flight starts another when it ends.
                return;
            }
            if st
                .in_flight
                .compare_exchange(n, n + 1, SeqCst, SeqCst)
                .is_ok()
            {
                break;
            }
        }
        let st = st.clone();
        let core = st.core;
        drop(self.rt.spawn(core, move || async move {
            loop {
                st.sync_once().await;
                // Awaited tickets no started sync covers need another.
                if st.wanted.load(SeqCst) > st.started.load(SeqCst) {
                    continue;
                }
                st.in_flight.fetch_sub(1, SeqCst);
                // A publisher that found every slot taken just now relies
                // on us: look again after giving the slot back.
                if st.wanted.load(SeqCst) <= st.started.load(SeqCst) {
                    break;
                }
                let n = st.in_flight.load(SeqCst);
                if n >= MAX_IN_FLIGHT
                    || st
                        .in_flight
                        .compare_exchange(n, n + 1, SeqCst, SeqCst)
                        .is_err()
                {
                    break;
                }
            }
        }));
    }

    /// Takes a ticket on each of `segments` (records were just committed to
    /// them). With `fsync=always` and `awaited` (a synchronous publish), a
    /// sync covering it starts now; a pipelined publish's ticket starts its
    /// sync when its confirm is awaited (or rides along with one that runs).
    pub(crate) fn tickets(self: &Arc<Self>, segments: Vec<Arc<Segment>>, awaited: bool) -> Tickets {
        let mut waits = Vec::with_capacity(segments.len());
        let mut failed = None;
        for seg in segments {
            // Every segment of a store is a file (only models have none).
            // One this process cannot open to sync (no descriptor left, the
            // file replaced) cannot be made durable: the publish fails as a
            // failed sync does, and nothing more is confirmed from it.
            let file = match seg.file() {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    self.seal(&seg);
                    failed.get_or_insert(format!("cannot sync the record: {e}"));
                    continue;
                }
            };
            let st = self.state(&file);
            let ticket = st.requested.fetch_add(1, SeqCst) + 1;
            if awaited && matches!(self.mode, Fsync::Always) {
                self.ensure_running(&st, ticket);
            }
            waits.push((st, ticket, seg));
        }
        Tickets {
            durability: self.clone(),
            waits,
            failed,
        }
    }

    /// Called after records were committed to `segments`: returns once they
    /// are durable as the mode promises (at once with `fsync=interval`).
    /// `Err` when a sync that had to cover them failed, or a segment could
    /// not be opened to sync (they may or may not be on disk).
    pub(crate) fn commit(self: &Arc<Self>, segments: Vec<Arc<Segment>>) -> Result<(), String> {
        let t = self.tickets(segments, true);
        if matches!(self.mode, Fsync::Always) {
            t.wait(None).unwrap_or(Ok(()))
        } else {
            // No timer sync will cover a segment that could not be opened,
            // nor one whose timer sync failed (the kernel may have dropped
            // its dirty pages, and the timer passes a failed file): the
            // record may or may not be stored, and nothing more is
            // confirmed from that segment (sealed, so publishes go on in a
            // fresh one). Publishes returned Ok there until it filled.
            if let Some(e) = t.failed.clone() {
                return Err(e);
            }
            // Nor will any, once the runtime the timer runs on has died.
            self.health()?;
            for (st, _, _) in &t.waits {
                if let Some(e) = st.failed.lock().clone() {
                    t.seal();
                    return Err(e);
                }
            }
            Ok(())
        }
    }

    /// `fdatasync` calls made so far (all segments).
    pub(crate) fn syncs(&self) -> u64 {
        let files = self.files.lock();
        self.retired_syncs.load(Acquire)
            + files.values().map(|f| f.syncs.load(Acquire)).sum::<u64>()
    }

    /// Health of the runtime the syncs run on.
    pub(crate) fn health(&self) -> Result<(), String> {
        self.rt.health().map_err(|e| e.to_string())
    }

    /// Makes runtime core `core` panic (tests).
    #[cfg(test)]
    pub(crate) fn inject_core_panic(&self, core: usize) {
        self.rt.inject_core_panic(core);
    }
}

async fn interval_loop(weak: Weak<Durability>, every: Duration) {
    loop {
        // Ends when the store closes (the runtime stops), not an interval
        // later: by then the durability state is gone, nothing to sync.
        if io::idle(every).await.is_err() {
            return;
        }
        let Some(d) = weak.upgrade() else { return };
        let dirty: Vec<Arc<FileSync>> = d
            .files
            .lock()
            .values()
            .filter(|f| {
                f.requested.load(Acquire) > f.done.load(Acquire) && f.failed.lock().is_none()
            })
            .cloned()
            .collect();
        drop(d);
        for f in dirty {
            f.sync_once().await;
        }
    }
}

/// A publish awaiting the syncs that make it durable: a ticket on each
/// segment it was written to.
pub(crate) struct Tickets {
    durability: Arc<Durability>,
    waits: Vec<(Arc<FileSync>, u64, Arc<Segment>)>,
    /// Set when a segment written could not be opened to sync.
    failed: Option<String>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("mode", &self.durability.mode)
            .field(
                "tickets",
                &self.waits.iter().map(|(_, t, _)| *t).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Tickets {
    /// The outcome if known: every ticket covered, or the first failure
    /// (its segments are sealed: nothing more is confirmed from them).
    fn outcome(&self) -> Option<Result<(), String>> {
        if let Some(e) = &self.failed {
            self.seal();
            return Some(Err(e.clone()));
        }
        for (st, ticket, _) in &self.waits {
            match st.outcome(*ticket) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    self.seal();
                    return Some(Err(e));
                }
                None => {
                    if let Err(e) = self.durability.rt.health() {
                        return Some(Err(e.to_string()));
                    }
                    return None;
                }
            }
        }
        Some(Ok(()))
    }

    fn seal(&self) {
        for (_, _, seg) in &self.waits {
            self.durability.seal(seg);
        }
    }

    /// Waits until every ticket is covered by a finished sync, one failed,
    /// or `deadline` passed (`None`).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Result<(), String>> {
        // Known already (covered, failed, or a runtime that cannot sync: a
        // dead core, or a process forked since, where no lock the parent's
        // threads may have held is taken): said at once.
        if let Some(r) = self.outcome() {
            return Some(r);
        }
        let always = matches!(self.durability.mode, Fsync::Always);
        self.want();
        for (st, ticket, _) in &self.waits {
            let mut g = st.wait.lock().unwrap_or_else(|p| p.into_inner());
            while st.done.load(Acquire) < *ticket {
                if let Some(e) = st.failed.lock().clone() {
                    drop(g);
                    self.seal();
                    return Some(Err(e));
                }
                // The runtime's health is checked on each wake-up, so a dead
                // core is an error here, never a hang.
                if let Err(e) = self.durability.rt.health() {
                    return Some(Err(e.to_string()));
                }
                let mut nap = Duration::from_millis(100);
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    nap = nap.min(left);
                }
                g = st
                    .cv
                    .wait_timeout(g, nap)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                if always && st.in_flight.load(SeqCst) == 0 && st.done.load(Acquire) < *ticket {
                    drop(g);
                    self.durability.ensure_running(st, *ticket);
                    g = st.wait.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        Some(Ok(()))
    }

    /// Starts the syncs this publish needs (`fsync=always`; the timer does
    /// it with `interval`).
    fn want(&self) {
        if matches!(self.durability.mode, Fsync::Always) {
            for (st, ticket, _) in &self.waits {
                if st.started.load(SeqCst) < *ticket {
                    self.durability.ensure_running(st, *ticket);
                }
            }
        }
    }

    /// The outcome if known; otherwise `waker` is woken by the next sync of
    /// a file this publish waits on (started now if needed).
    pub(crate) fn poll(&self, waker: &Waker) -> Poll<Result<(), String>> {
        if let Some(r) = self.outcome() {
            return Poll::Ready(r);
        }
        // Register first, then look: a sync ending in between still wakes us.
        for (st, ticket, _) in &self.waits {
            if st.done.load(Acquire) < *ticket {
                let mut w = st.wakers.lock();
                if !w.iter().any(|x| x.will_wake(waker)) {
                    w.push(waker.clone());
                }
            }
        }
        match self.outcome() {
            Some(r) => Poll::Ready(r),
            None => {
                self.want();
                Poll::Pending
            }
        }
    }
}
