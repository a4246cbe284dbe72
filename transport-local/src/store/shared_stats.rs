//! Figures every process of a store sees, not only its own: the event
//! counters, summed in the control page, and the consumers of each queue, in
//! slots of the queue's state page.
//!
//! # Invariants
//! - Counters: each process adds to the shared totals what its own counters
//!   grew by since its last flush (one `fetch_add` per counter that moved),
//!   so the totals are the sum over every process whichever order they flush
//!   in. Flushes run every 100 ms on the store runtime, before figures are
//!   read, and when the store closes in this process; the publish and
//!   delivery paths never touch the shared words. A process killed with
//!   SIGKILL loses at most its last 100 ms of counts.
//! - Consumer slots: a slot word is `owner << 32 | consumers`. A process
//!   takes a free slot, or one whose owner is dead, with a compare-and-swap,
//!   and only the owner changes its count; readers count only slots whose
//!   owner is alive, so a killed consumer process stops counting at once.

use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashi_engine::spi::Counters;
use dashi_engine::CounterSnapshot;
use parking_lot::Mutex;

use crate::cut::CutFlag;
use crate::shared_page::SharedPage;

/// Where the shared counters start in the control page (one word each, in
/// [`CounterSnapshot::to_array`] order).
pub(super) const COUNTERS_AT: usize = 512;
/// How often a process adds its counts to the shared totals.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// This process's counters and what of them the shared totals already hold.
pub(super) struct CounterFlush {
    pub(super) counters: Arc<Counters>,
    control: Arc<SharedPage>,
    flushed: Mutex<[u64; CounterSnapshot::LEN]>,
    /// The store's: the control page cut short stops the flushes.
    cut: Arc<CutFlag>,
}

impl CounterFlush {
    pub(super) fn new(control: Arc<SharedPage>, cut: Arc<CutFlag>) -> Arc<CounterFlush> {
        Arc::new(CounterFlush {
            counters: Arc::new(Counters::default()),
            control,
            flushed: Mutex::new([0; CounterSnapshot::LEN]),
            cut,
        })
    }

    fn word(&self, i: usize) -> &crate::mem::AtomicU64 {
        self.control.u64_at(COUNTERS_AT + 8 * i)
    }

    /// Adds what this process counted since the last flush to the totals.
    pub(super) fn flush(&self) {
        let Ok(_g) = self.cut.enter() else {
            return;
        };
        let mut last = self.flushed.lock();
        let now = self.counters.snapshot().to_array();
        for (i, (n, l)) in now.iter().zip(last.iter()).enumerate() {
            let grew = n.wrapping_sub(*l);
            if grew != 0 {
                self.word(i).fetch_add(grew, AcqRel);
            }
        }
        *last = now;
    }

    /// The totals of every process, this one's counts included; `None`
    /// once a file of the store was found cut short here (the control page
    /// may be the one: its words would read zeros).
    pub(super) fn totals(&self) -> Option<CounterSnapshot> {
        self.flush();
        let _g = self.cut.enter().ok()?;
        let totals =
            CounterSnapshot::from_array(std::array::from_fn(|i| self.word(i).load(Acquire)));
        (!self.cut.is_set()).then_some(totals)
    }

    /// Flushes every [`FLUSH_EVERY`] on `rt` until the store closes here.
    pub(super) fn start(self: &Arc<Self>, rt: &dashi_rt::Runtime) {
        let weak: Weak<CounterFlush> = Arc::downgrade(self);
        drop(rt.spawn(0, move || async move {
            loop {
                if dashi_rt::io::idle(FLUSH_EVERY).await.is_err() {
                    return;
                }
                // Holds no runtime: dropping the last reference here is fine.
                let Some(f) = weak.upgrade() else { return };
                f.flush();
            }
        }));
    }
}

impl Drop for CounterFlush {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Consumer slots of a queue's state page: slot `k` (1..64) is the word at
/// `64 * k` (word 0 holds the bitmap of lanes used).
const SLOTS: std::ops::Range<usize> = 1..64;

fn slot_owner(w: u64) -> u32 {
    (w >> 32) as u32
}

/// Adds `delta` (+1 or -1) to this process's consumer count of the queue
/// whose state page is `page`; `slot` is the slot this process took (0 =
/// none yet), locked so that one process takes one slot. A process that
/// finds no slot (63 other live processes consume the queue) goes uncounted.
pub(super) fn add_consumers(
    page: &SharedPage,
    slot: &Mutex<usize>,
    me: u32,
    delta: i64,
    alive: impl Fn(u32) -> bool,
) {
    let mut k = slot.lock();
    if *k == 0 {
        if delta < 0 {
            return;
        }
        *k = SLOTS
            .clone()
            .find(|&k| slot_owner(page.u64_at(64 * k).load(Acquire)) == me)
            .or_else(|| {
                SLOTS.clone().find(|&k| {
                    let w = page.u64_at(64 * k).load(Acquire);
                    let owner = slot_owner(w);
                    (owner == 0 || !alive(owner))
                        && page
                            .u64_at(64 * k)
                            .compare_exchange(w, u64::from(me) << 32, AcqRel, Acquire)
                            .is_ok()
                })
            })
            .unwrap_or(0);
        if *k == 0 {
            return;
        }
    }
    let word = page.u64_at(64 * *k);
    if delta >= 0 {
        word.fetch_add(delta as u64, AcqRel);
    } else if word.load(Acquire) & 0xffff_ffff >= delta.unsigned_abs() {
        word.fetch_sub(delta.unsigned_abs(), AcqRel);
    }
}

/// Consumers of the queue in live processes other than `me`. Ordered after
/// this process's own last change to its slot (a sequentially consistent
/// fence): of two processes that each count their last consumer out and
/// then look here, at least one sees the other's count gone.
pub(super) fn consumers_elsewhere(page: &SharedPage, me: u32, alive: impl Fn(u32) -> bool) -> u64 {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    SLOTS
        .map(|k| page.u64_at(64 * k).load(Acquire))
        .filter(|&w| {
            let owner = slot_owner(w);
            owner != 0 && owner != me && alive(owner)
        })
        .map(|w| w & 0xffff_ffff)
        .sum()
}

/// Consumers of the queue in every live process.
pub(super) fn consumers(page: &SharedPage, me: u32, alive: impl Fn(u32) -> bool) -> u64 {
    SLOTS
        .map(|k| page.u64_at(64 * k).load(Acquire))
        .filter(|&w| {
            let owner = slot_owner(w);
            owner != 0 && (owner == me || alive(owner))
        })
        .map(|w| w & 0xffff_ffff)
        .sum()
}
