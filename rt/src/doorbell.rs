//! The wake-up handshake between threads that hand work to a core and the core
//! that sleeps (in `poll` on its ring) when it has none.
//!
//! # Invariants
//! - A submitter makes its work visible (pushes to a core queue), then calls
//!   [`Doorbell::ring`], which costs one fence and one load while the core is
//!   awake: no syscall when the core is busy.
//! - The core calls [`Doorbell::prepare_sleep`] (marks itself asleep, fence),
//!   then re-checks its queues, and only then blocks. With a `SeqCst` fence on
//!   each side, either the core sees the work or the submitter sees it asleep
//!   (and then writes the core's eventfd, which completes a read armed on its
//!   ring).
//! - Only the first submitter per sleep pays the syscall, and a ring is
//!   spent only on the sleep it saw: `ring` moves the state from asleep to
//!   rung with a compare-and-swap, so a submitter that saw the core asleep
//!   and rings after it woke changes nothing (the core re-checks its queues
//!   before the next sleep anyway). A separate "rung" flag set that late
//!   would outlive the wake-up and silence every ring of the next sleep:
//!   the core then slept until one of its own timers fired.

use crate::sync::{fence, AtomicU8, Ordering::SeqCst};

/// The core runs (or is about to re-check its queues).
const AWAKE: u8 = 0;
/// The core may be asleep on its ring; nobody has woken it yet.
const ASLEEP: u8 = 1;
/// A submitter has claimed the wake-up of this sleep (and writes the
/// eventfd).
const RUNG: u8 = 2;

#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    state: AtomicU8,
}

impl Doorbell {
    /// Call after making work visible; true when the caller must wake the core
    /// (write its eventfd).
    pub(crate) fn ring(&self) -> bool {
        fence(SeqCst);
        self.state.load(SeqCst) == ASLEEP
            && self
                .state
                .compare_exchange(ASLEEP, RUNG, SeqCst, SeqCst)
                .is_ok()
    }

    /// The core is about to sleep; it must re-check its queues afterwards.
    pub(crate) fn prepare_sleep(&self) {
        self.state.store(ASLEEP, SeqCst);
        fence(SeqCst);
    }

    /// The core is awake again (it found work, or it woke up).
    pub(crate) fn awake(&self) {
        self.state.store(AWAKE, SeqCst);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, Ordering::Acquire, Ordering::Release};

    /// A submission racing the core going to sleep: if the core sleeps without
    /// having seen the work, the submitter was told to wake it.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::default());
            let queue = Arc::new(AtomicUsize::new(0));
            let (b, q) = (bell.clone(), queue.clone());
            // The queue push is modelled as a release store: the doorbell must
            // not rely on the queue's own orderings.
            let submitter = loom::thread::spawn(move || {
                q.store(1, Release);
                b.ring()
            });
            bell.prepare_sleep();
            let slept_empty = queue.load(Acquire) == 0;
            if !slept_empty {
                bell.awake();
            }
            let rang = submitter.join().unwrap();
            assert!(
                !(slept_empty && !rang),
                "core slept on work nobody woke it for"
            );
        });
    }

    /// Two sleeps in a row, a submitter for each. The first submitter may
    /// see the core asleep, be preempted, and ring only after the core woke
    /// for something else: its wake-up is spent on an awake core. That must
    /// not stop the second submitter from waking the core's second sleep.
    /// The eventfd is modelled as a counter the core empties when it reaps.
    #[test]
    fn a_late_ring_does_not_silence_the_next_sleep() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::default());
            let (qa, qb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let eventfd = Arc::new(AtomicUsize::new(0));
            let submit = |q: &Arc<AtomicUsize>| {
                let (b, q, e) = (bell.clone(), q.clone(), eventfd.clone());
                loom::thread::spawn(move || {
                    q.store(1, Release);
                    if b.ring() {
                        e.fetch_add(1, SeqCst);
                    }
                })
            };
            let a = submit(&qa);
            // First sleep: prepared, then the core wakes (a timer, a
            // completion) and reaps whatever the eventfd holds.
            bell.prepare_sleep();
            let mut seen_a = qa.load(Acquire) == 1;
            bell.awake();
            eventfd.swap(0, SeqCst);
            let b = submit(&qb);
            // Second sleep.
            bell.prepare_sleep();
            seen_a |= qa.load(Acquire) == 1;
            let seen_b = qb.load(Acquire) == 1;
            a.join().unwrap();
            b.join().unwrap();
            let woken = eventfd.load(Acquire) > 0;
            assert!(
                (seen_a && seen_b) || woken,
                "the core sleeps on work nobody woke it for"
            );
        });
    }

    /// Two submitters while the core sleeps: exactly one pays the syscall.
    #[test]
    fn one_syscall_per_sleep() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::default());
            bell.prepare_sleep();
            let spawn = |b: Arc<Doorbell>| loom::thread::spawn(move || b.ring() as u32);
            let (x, y) = (spawn(bell.clone()), spawn(bell.clone()));
            assert_eq!(x.join().unwrap() + y.join().unwrap(), 1);
        });
    }
}
