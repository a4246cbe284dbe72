//! Wake-ups across processes. Each publish bumps a 32-bit futex word in the
//! control page; a consumer about to sleep arms its process's watcher thread
//! with the value it saw before its last look at the queue; the watcher
//! sleeps on the word from that value and wakes the process's waiters.
//!
//! # Invariants
//! - No lost wake-up: the watcher raises the shared "somebody sleeps" flag,
//!   then looks at the word, then sleeps only if it still holds the armed
//!   value; a publisher bumps the word, then reads the flag (both
//!   sequentially consistent, as the watcher's raise and look are), so
//!   either the watcher sees the bump or the publisher sees the flag.
//! - Only the first publish after a watcher sleeps pays the `futex_wake`
//!   syscall (it clears the flag); the others pay one atomic add and a load.
//! - The armed value is the oldest one a consumer asked for: waking early is
//!   harmless, waking late is not.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};

use crate::futex;

use super::queue::LocalQueue;
use super::{Inner, PUBLISHED, SLEEPERS};

impl Inner {
    /// After a publish: one atomic add, and a futex wake only for the first
    /// publish since some process's watcher went to sleep.
    pub(super) fn wake_other_processes(&self) {
        let word = self.control.u32_at(PUBLISHED);
        // Both SeqCst: the add and the look at the flag are ordered against
        // the watcher's raising of the flag and its look at the word (the
        // store-buffer pattern). A separate fence here cost an `mfence` on
        // every publish.
        word.fetch_add(1, SeqCst);
        let sleepers = self.control.u32_at(SLEEPERS);
        if sleepers.load(SeqCst) != 0 && sleepers.swap(0, SeqCst) != 0 {
            futex::wake(word);
        }
    }

    /// Starts (once) the thread that wakes this process's sleeping consumers
    /// when another process publishes.
    pub(super) fn ensure_watcher(self: &Arc<Self>) {
        self.watcher.get_or_init(|| {
            let (weak, arm) = (Arc::downgrade(self), self.arm.clone());
            let _ = std::thread::Builder::new()
                .name("dashi-local-watch".into())
                .spawn(move || watch(weak, arm));
        });
    }
}

/// The publish-counter value the watcher must wait from, set by consumers
/// about to sleep (the oldest value wins: waking early is harmless, late is
/// not).
#[derive(Default)]
pub(super) struct Arm {
    from: parking_lot::Mutex<Option<u32>>,
    cv: parking_lot::Condvar,
}

impl Arm {
    pub(super) fn arm(&self, seen: u32) {
        let mut from = self.from.lock();
        if from.is_none() {
            *from = Some(seen);
            self.cv.notify_one();
        }
    }

    /// Waits up to `timeout` for an arming; takes it.
    fn take(&self, timeout: std::time::Duration) -> Option<u32> {
        let mut from = self.from.lock();
        if from.is_none() {
            self.cv.wait_for(&mut from, timeout);
        }
        from.take()
    }
}

/// Body of the watcher thread. Idle until a consumer of this process is about
/// to sleep (it arms the watcher with the publish counter it saw); then sleeps
/// on the shared futex word from that value, so a publish by any process
/// after the consumer's last look wakes it, and wakes this process's waiting
/// consumers. While consumers keep waiting it re-arms itself; once a second it
/// wakes them anyway, so records of dead processes get reclaimed. Exits when
/// the transport is dropped.
fn watch(weak: Weak<Inner>, arm: Arc<Arm>) {
    let second = std::time::Duration::from_secs(1);
    loop {
        let seen = arm.take(second);
        let Some(mut inner) = weak.upgrade() else {
            return;
        };
        let Some(seen) = seen else { continue };
        // Under the cut guard, but not while asleep: pages replaced under
        // a cut are closed only once no operation is in flight.
        let sleep = match inner.cut.enter() {
            Ok(_g) => {
                let word = inner.control.u32_at(PUBLISHED);
                // Raise the flag, then look: a publish either comes before
                // the look (the word moved: no sleep) or sees the flag (and
                // wakes us).
                inner.control.u32_at(SLEEPERS).store(1, SeqCst);
                std::sync::atomic::fence(SeqCst);
                (word.load(SeqCst) == seen).then_some(word)
            }
            Err(_) => {
                // Nothing more to watch: consumers asleep here are woken
                // once, and their next look fails.
                for q in inner.topo.lock().queues.values() {
                    q.state.notify_all();
                }
                return;
            }
        };
        if sleep.is_some() {
            // Asleep holding the control page only: the store itself closes
            // when its last user lets go of it, not up to a second later
            // here (a process that closed a store and opened it again got
            // the old one back, so never recovered and recounted it).
            let control = inner.control.clone();
            drop(inner);
            // A page closed meanwhile fails the wait (`EFAULT`): no signal.
            futex::wait(control.u32_at(PUBLISHED), seen, second);
            drop(control);
            let Some(again) = weak.upgrade() else { return };
            inner = again;
        }
        let waiting: Vec<Arc<LocalQueue>> = inner
            .topo
            .lock()
            .queues
            .values()
            .filter(|q| q.state.waiters() > 0)
            .cloned()
            .collect();
        if !waiting.is_empty() {
            // Those still asleep after this wake-up wait from here on.
            if let Ok(_g) = inner.cut.enter() {
                arm.arm(inner.control.u32_at(PUBLISHED).load(SeqCst));
            }
        }
        for q in &waiting {
            q.state.notify_all();
        }
    }
}
